"""Fleet sharing through Redis: a ban on one server enforced on every server.

Redis holds two keys (no protocol of ours, no daemon listening on the network):
  f2bext:events  a stream of ban/unban events (XADD, bounded by MAXLEN), followed with XREAD BLOCK;
  f2bext:bans    the current bans, a sorted set of "JAIL ADDRESS" scored by expiry (+inf: never),
                 so a server that joins or restarts loads the present in one read, not the history.
Each server runs one Fleet per Redis URL inside fail2ban-server: a publisher thread (bans and unbans
of the local fail2ban, on disk until Redis acknowledged them) and a follower thread (the others' bans,
into each jail's remote sets, which local unbans and flushes never touch). A server never
re-publishes what it received, and knows its own events by a random instance id (host names repeat
across cloned machines). Everything read from Redis is untrusted input.

Redis replicates asynchronously: after a failover (a new master: a new run id) what the old master
acknowledged may be gone. Each server then publishes again its own current bans the present lacks,
and each follower resumes from its position in the stream if the new master has it, else reloads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Optional

from ..addr import Network, parse_target
from ..errors import InputError
from . import connect
from .diskqueue import QUEUE_LIMIT, DiskQueue
from .events import FLEET_JAIL, BanEvent, check_origin, instance_id, redact, too_wide
from .health import Health
from .notices import Doubles, Notices

STREAM = "f2bext:events"
CURRENT = "f2bext:bans"
STREAM_MAXLEN = 100_000
BATCH = 500
STOP_WAIT = 6.0  # seconds a stop waits for the publisher to flush (a send times out after 5)
MAX_BACKOFF = 2.0  # seconds between retries at most: a failover is found this long after it at worst

log = logging.getLogger("fail2ban.f2bext.share")


Apply = Callable[[str, str, list[Network]], None]  # (jail, "add"/"delete"/"replace", nets)


class Fleet:
    """One Redis URL in one fail2ban-server: publishes this server's bans, follows the others'."""

    def __init__(self, url: str, origin: str, folder: str, apply: Apply, jails: Callable[[], set[str]],
                 scope_all: bool = False, allowed: Callable[[str, Network], Optional[str]] = lambda j, n: None,
                 max_prefix: tuple[int, int] = (16, 32), own: Callable[[], list[BanEvent]] = list,
                 reached: Callable[[str], None] = lambda host: None) -> None:
        """folder: where the queue and the instance id survive a reboot (state.lib_dir()); own: this
        server's current bans in the jails sharing through this URL; reached(host): the Sentinels
        named this master (to be kept reachable)."""
        self._url = connect.check_url(url)
        self._own, self._reached = own, reached
        self._reconcile = threading.Event()  # the master changed: publish again what it may have lost
        self.health = Health(redact(url), connect.is_sentinel(url))
        self.max_prefix = max_prefix
        self.origin = check_origin(origin)
        self.instance = instance_id(folder)
        self._folder = folder
        self.scope_all = scope_all
        self._apply, self._jails, self._allowed = apply, jails, allowed
        key = hashlib.sha256(url.encode()).hexdigest()[:12]
        self.queue = DiskQueue(os.path.join(folder, f"share-{key}.queue"))
        self.id_path = os.path.join(folder, f"share-{key}.last-id")
        # Bounded like the disk queue, the oldest dropped first: while the disk refuses writes and
        # Redis is away, memory is all that is left, and it must not grow with every ban.
        self._outbox: "queue.Queue[Optional[BanEvent]]" = queue.Queue(QUEUE_LIMIT)
        self._unsaved: list[BanEvent] = []  # taken from the outbox, not on disk (it refused): newest last
        self._lost = 0  # events dropped for those bounds, not yet logged
        self._stop = threading.Event()
        self._said: set[str] = set()  # conditions said once until they clear (a small fixed set of keys)
        self._notices = Notices()
        self._doubles = Doubles()
        self._sent: "OrderedDict[tuple[str, str, str, float], None]" = OrderedDict()  # the latest, bounded
        self._sent_lock = threading.Lock()
        self.remote: dict[str, dict[str, float]] = {}  # jail -> address -> expiry, as applied here
        self._threads = [threading.Thread(target=self._publish_loop, name="f2b/f2bext-share-pub", daemon=True),
                         threading.Thread(target=self._follow_loop, name="f2b/f2bext-share-sub", daemon=True)]

    @property
    def url(self) -> str:
        return redact(self._url)

    @property
    def hosts(self) -> list[str]:
        """The hosts the URL names (the Sentinels'; none for a unix socket)."""
        return connect.hosts(self._url)

    def status(self) -> dict[str, Any]:
        """Whom the follower follows and how sharing goes, for `f2bext doctor` (no Redis round trip)."""
        return self.health.status(len(self.queue) + len(self._unsaved))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Stop following; give the publisher up to `wait` seconds to send what is queued (what it
        cannot send stays on disk for the next start)."""
        self._stop.set()
        self._offer(None)
        self._threads[0].join(wait)

    def publish(self, event: BanEvent) -> None:
        """Never blocks: the publisher thread sends it, or keeps it on disk until Redis is back."""
        self._offer(dataclasses.replace(event, instance=self.instance))

    def _offer(self, item: Optional[BanEvent]) -> None:
        while True:
            try:
                self._outbox.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._outbox.get_nowait()
                    self._lost += 1
                except queue.Empty:
                    pass

    def _client(self, **kw: Any):
        return connect.client(self._url, **kw)

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    # -- publishing -------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        """Every event goes to disk first and leaves it once Redis acknowledged it. Survives any
        error: a publisher that dies takes every later ban's sharing with it, silently."""
        import redis
        client, backoff = None, 0.2
        while True:
            stopping = self._stop.is_set()
            try:
                self._take(wait=0.0 if stopping or self._unsaved or len(self.queue) else 1.0)
                self._save()
                pending = bool(self._unsaved or len(self.queue))
                self.health.pending_since = (self.health.pending_since or time.time()) if pending else 0.0
                if not pending and self._reconcile.is_set() and not stopping:
                    client = client or self._client(socket_timeout=5)
                    self._republish(client)
                if pending:
                    client = client or self._client(socket_timeout=5)
                    sent = self._send_some(client)
                    self.health.sent = time.time()
                    if backoff > 0.2:
                        log.info("f2bext share: %s reachable again; sending %d queued events", self.url,
                                 sent + len(self.queue) + len(self._unsaved))
                    backoff = 0.2
                    self._said.discard("pub-down")
            except Exception as e:  # noqa: BLE001 - see the docstring; Redis's errors are expected
                client = None
                if isinstance(e, (redis.RedisError, OSError)):
                    self._say_once("pub-down", "f2bext share: cannot publish to %s (%s); queuing on disk",
                                   self.url, type(e).__name__)
                elif f"pub-{type(e).__name__}" not in self._said:
                    self._said.add(f"pub-{type(e).__name__}")
                    log.exception("f2bext share: publishing to %s failed; trying again", self.url)
                if stopping:
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                if stopping and not (self._unsaved or len(self.queue)):
                    return

    def _take(self, wait: float) -> None:
        """Everything in the outbox, after the events not yet on disk (dropping the oldest beyond
        QUEUE_LIMIT); waits up to `wait` seconds for the first."""
        try:
            item = self._outbox.get(timeout=wait) if wait else self._outbox.get_nowait()
            while True:
                if item is not None:
                    self._unsaved.append(item)
                item = self._outbox.get_nowait()
        except queue.Empty:
            pass
        excess = len(self._unsaved) - QUEUE_LIMIT
        if excess > 0:
            del self._unsaved[:excess]
            self._lost += excess
        if self._lost:
            log.error("f2bext share: %d events to publish to %s dropped (the queue holds %d at most)",
                      self._lost, self.url, QUEUE_LIMIT)
            self._lost = 0

    def _save(self) -> None:
        """The events taken onto disk, in order after those already there (or all kept in memory)."""
        if not self._unsaved:
            return
        try:
            dropped = self.queue.append([e.fields() for e in self._unsaved])
        except OSError as e:
            self._say_once("queue-down", "f2bext share: cannot queue events in %s (%s); holding up to %d in "
                           "memory until it can", self.queue.path, e, QUEUE_LIMIT)
            return
        self._unsaved = []
        if "queue-down" in self._said:
            self._said.discard("queue-down")
            log.info("f2bext share: queuing in %s again", self.queue.path)
        if dropped:
            log.error("f2bext share: %d queued events for %s dropped, the oldest (the queue holds %d at most)",
                      dropped, self.url, QUEUE_LIMIT)

    def _send_some(self, client: Any) -> int:
        """One batch, oldest first: from the disk queue, then (only once it is empty, so order holds)
        the events the disk refused. Returns how many were sent."""
        if len(self.queue):
            start, count, items = self.queue.head(BATCH)
            now, events = time.time(), []
            for item in items:
                try:
                    events.append(BanEvent.parse(item, now))
                except InputError:
                    pass  # not one we wrote: never send it
            if events:
                self._remember(events)
                self._send(client, events)
            try:
                self.queue.ack(start, count)
            except OSError as e:  # the queue remembers what was acknowledged: nothing is sent twice
                self._say_once("queue-down", "f2bext share: cannot update the queue in %s (%s)", self.queue.path, e)
            return len(events)
        events = self._unsaved[:BATCH]
        self._remember(events)
        self._send(client, events)
        del self._unsaved[:len(events)]
        return len(events)

    def _republish(self, client: Any) -> None:
        """This server's current bans that the present lacks, published again (after the events queued
        meanwhile, so what they already carried is not sent twice)."""
        self._reconcile.clear()
        try:
            own = [e for e in self._own() if e.expires > time.time()]
            missing = []
            for at in range(0, len(own), 10 * BATCH):
                pipe = client.pipeline(transaction=False)
                for e in own[at:at + 10 * BATCH]:
                    pipe.zscore(CURRENT, e.member)
                missing += [e for e, score in zip(own[at:], pipe.execute()) if score is None]
        except Exception:
            self._reconcile.set()
            raise
        for e in missing:
            self.publish(e)
        log.log(logging.WARNING if missing else logging.INFO, "f2bext share: %s: %d of this server's %d current "
                "bans were missing on the new master and are published again", self.url, len(missing), len(own))

    def _remember(self, events: list[BanEvent]) -> None:
        """Note what this server sends, before it is sent (the follower may read it back at once)."""
        with self._sent_lock:
            for e in events:
                self._sent[e.key] = None
                self._sent.move_to_end(e.key)
            while len(self._sent) > QUEUE_LIMIT:
                self._sent.popitem(last=False)

    @staticmethod
    def _send(client: Any, events: list[BanEvent]) -> None:
        """One round trip: the events into the stream, the present into the sorted set, the expired out."""
        pipe = client.pipeline(transaction=True)
        for e in events:
            pipe.xadd(STREAM, e.fields(), maxlen=STREAM_MAXLEN, approximate=True)
            if e.op == "ban":
                pipe.zadd(CURRENT, {e.member: e.expires})
            else:
                pipe.zrem(CURRENT, e.member)
        pipe.zremrangebyscore(CURRENT, "-inf", time.time())
        pipe.execute()

    # -- following --------------------------------------------------------------------------------

    def _follow_loop(self) -> None:
        import redis
        backoff, last = 0.2, None  # last: the position in the stream; None until the present is loaded
        while not self._stop.is_set():
            try:
                client = self._client(socket_timeout=10)
                last = self._resume(client, last)
                backoff = 0.2
                self._said.discard("sub-down")
                while not self._stop.is_set():
                    for _stream, entries in client.xread({STREAM: last}, block=1000, count=BATCH) or []:
                        for entry_id, fields in entries:
                            self._receive(entry_id, fields)
                            last = entry_id
                        self._save_last(last)
                    self.health.heard()
                    self.health.beat(client, self.instance, self.origin)
                    self._expire()
                    self._notices.tick()
            except Exception as e:  # noqa: BLE001 - the follower must outlive any error; Redis's are expected
                if not isinstance(e, (redis.RedisError, OSError)):
                    log.error("f2bext share: following failed: %s: %s", type(e).__name__, e)
                self._say_once("sub-down", "f2bext share: cannot follow %s (%s); retrying", self.url,
                               type(e).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _resume(self, client: Any, last: Optional[bytes]) -> bytes:
        """On each connection: note the master; follow on from `last` if this master's stream holds
        it, else (a first start, a stream cut back by a failover or trimmed meanwhile) load the present."""
        before = self.health.connected(client.info("server")["run_id"], connect.address(client))
        if self.health.sentinel:
            self._reached(self.health.address.rpartition(":")[0].strip("[]"))
        if before is not None:
            log.warning("f2bext share: %s: following a new master at %s (was %s)", self.url,
                        self.health.address, before)
            self._reconcile.set()
        if last is not None and client.xrange(STREAM, last, last, count=1):
            return last
        if last is not None:
            log.warning("f2bext share: %s: the stream no longer holds this server's position; reloading "
                        "the present", self.url)
        return self._load_present(client)

    def _load_present(self, client: Any) -> bytes:
        """Every current ban in one read, applied in one transaction per jail; returns the stream
        position to follow from (taken first, so nothing between the two is missed)."""
        newest = client.xrevrange(STREAM, count=1)
        last = newest[0][0] if newest else b"0-0"
        now = time.time()
        present: dict[str, dict[str, float]] = {}
        for member, score in client.zrangebyscore(CURRENT, now, "+inf", withscores=True):
            try:
                jail, address = member.decode().split(" ", 1)
                event = BanEvent.parse({"op": "ban", "jail": jail, "address": address, "bantime": "-1",
                                        "expires": "inf" if score == math.inf else str(score),
                                        "origin": "redis"}, now)
            except (InputError, ValueError, UnicodeDecodeError) as e:
                self._notices.say("entries skipped", "f2bext share: skipping a current ban from Redis: %s", e)
                continue
            target = self._target(event)
            if target and self._accept(target, event):
                present.setdefault(target, {})[event.address] = event.expires
        for jail in set(self.remote) | set(present):
            self._apply(jail, "replace", [parse_target(a) for a in present.get(jail, {})])
        self.remote = present
        self._save_last(last)
        return last

    def _receive(self, entry_id: bytes, fields: dict[Any, Any]) -> None:
        try:
            event = BanEvent.parse(fields, time.time())
        except InputError as e:
            self._notices.say("entries skipped", "f2bext share: skipping event %s from Redis: %s",
                              entry_id.decode(errors="replace")[:40], e)
            return
        # Our instance id on an event we did not send: another server has a copy of our id (a cloned
        # image). It is applied, as any peer's; one of ours applied again would change nothing.
        with self._sent_lock:
            ours = event.instance == self.instance and event.key in self._sent
        if event.instance == self.instance and not ours:
            self._doubles.clone(event, os.path.join(self._folder, "instance-id"))
        elif event.origin == self.origin and event.instance and not ours:
            self._doubles.twin(event, self.url, self.origin)
        target = self._target(event)
        if target is None:
            return
        current = self.remote.setdefault(target, {})
        if event.op == "unban":  # from anyone, ourselves included: an unban lifts it everywhere,
            current.pop(event.address, None)  # the local fail2ban's own ban of it too
            self._apply(target, "delete", [parse_target(event.address)])
        elif not ours and self._accept(target, event):
            current[event.address] = event.expires
            self._apply(target, "add", [parse_target(event.address)])

    def _target(self, event: BanEvent) -> Optional[str]:
        """The local jail a ban is enforced in: the same name, or every port under share_scope = all."""
        if event.jail in self._jails():
            return event.jail
        return FLEET_JAIL if self.scope_all else None

    def _accept(self, jail: str, event: BanEvent) -> bool:
        net = parse_target(event.address)
        refusal = too_wide(net, self.max_prefix) or self._allowed(jail, net)
        if refusal:
            self._notices.say("bans refused", "f2bext share: refusing %s's ban of %s in jail %s: %s",
                              event.origin, event.address, jail, refusal)
            return False
        return True

    def _expire(self) -> None:
        now = time.time()
        for jail, bans in self.remote.items():
            gone = [a for a, expires in bans.items() if expires <= now]
            for address in gone:
                del bans[address]
            if gone:
                self._apply(jail, "delete", [parse_target(a) for a in gone])

    def _save_last(self, entry_id: bytes) -> None:
        try:
            os.makedirs(os.path.dirname(self.id_path), exist_ok=True)
            with open(self.id_path + ".tmp", "w") as f:
                f.write(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
            os.replace(self.id_path + ".tmp", self.id_path)
        except OSError:
            pass  # a full disk must not stop the following: the position is only for the curious
