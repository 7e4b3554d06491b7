"""Which master a server follows, told to the others and to `f2bext doctor`: each server's follower
writes one entry a few seconds apart into f2bext:servers (a hash: instance id -> origin, the master's
run id and address, when) and reads the others'. A master is known by its run id (redis-server makes
a new one at each start), not its name: servers may reach one Redis by different names."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from typing import Any, Optional

from .events import INSTANCE, ORIGIN

SERVERS = "f2bext:servers"
BEAT = 5.0  # seconds between a follower's entries
FORGET = 86400.0  # an entry this old is a server long gone: removed by whoever reads it
PEERS_READ = 100  # entries read at most per beat, whatever a peer writes
RUN_ID = re.compile(r"[0-9a-f]{40}")
ADDRESS = re.compile(r"[A-Za-z0-9_.:\[\]/-]{1,200}")


class Health:
    """The follower's view of its Redis, kept for `fail2ban-client get JAIL action ACT share_status`."""

    def __init__(self, url: str, sentinel: bool) -> None:
        self._lock = threading.Lock()
        self.url, self.sentinel = url, sentinel
        self.master_id: Optional[str] = None  # the run id of the master followed, once one answered
        self.address = ""
        self.failovers = 0  # masters changed since fail2ban started (failovers, or a Redis restarted)
        self.contact = 0.0  # epoch of the follower's last answer from Redis
        self.sent = 0.0  # epoch of the publisher's last acknowledged send
        self.pending_since = 0.0  # epoch the publisher's queue last went from empty to not; 0: empty
        self.peers: list[dict[str, Any]] = []
        self._beaten = -math.inf

    def connected(self, run_id: str, address: str) -> Optional[str]:
        """The follower reached a master; returns the previous one's address when it is another."""
        with self._lock:
            moved = self.master_id is not None and self.master_id != run_id
            before = self.address
            self.master_id, self.address, self.contact = run_id, address, time.time()
            self.failovers += moved
        return before if moved else None

    def heard(self) -> None:
        self.contact = time.time()

    def beat(self, client: Any, instance: str, origin: str) -> None:
        """Every BEAT seconds: this server's entry written, the others' read (a write to a master that
        became a replica fails: the follower then reconnects, to the master the Sentinels name)."""
        now = time.time()
        if time.monotonic() - self._beaten < BEAT:
            return
        self._beaten = time.monotonic()
        client.hset(SERVERS, instance, json.dumps({"origin": origin, "master": self.master_id,
                                                   "address": self.address, "at": now}))
        _, raw = client.hscan(SERVERS, 0, count=PEERS_READ)
        peers, gone = [], []
        for key, value in list(raw.items())[:PEERS_READ]:
            peer = parse_entry(key, value, now)
            if peer is None or peer["age"] > FORGET:
                gone.append(key)
            elif peer["instance"] != instance:
                peers.append(peer)
        if gone:
            client.hdel(SERVERS, *gone)
        with self._lock:
            self.peers = peers

    def status(self, queued: int) -> dict[str, Any]:
        with self._lock:
            return {"url": self.url, "sentinel": self.sentinel, "master": self.address, "master_id": self.master_id,
                    "failovers": self.failovers, "contact": self.contact, "sent": self.sent, "queued": queued,
                    "pending_since": self.pending_since, "peers": list(self.peers), "now": time.time()}


def parse_entry(key: Any, value: Any, now: float) -> Optional[dict[str, Any]]:
    """A peer's entry, checked (it is untrusted): None when it is not one a server writes."""
    try:
        instance = key.decode() if isinstance(key, bytes) else str(key)
        entry = json.loads(value[:1000])
        at = float(entry["at"])
        fields = (str(entry["origin"]), str(entry["master"]), str(entry["address"]))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError):
        return None
    if not (INSTANCE.fullmatch(instance) and ORIGIN.fullmatch(fields[0]) and RUN_ID.fullmatch(fields[1])
            and ADDRESS.fullmatch(fields[2]) and math.isfinite(at)):
        return None
    return {"instance": instance, "origin": fields[0], "master_id": fields[1], "address": fields[2],
            "age": max(0.0, now - at)}
