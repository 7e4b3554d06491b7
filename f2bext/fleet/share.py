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
from urllib.parse import urlsplit

from ..addr import Network, parse_target
from ..errors import InputError
from .diskqueue import QUEUE_LIMIT, DiskQueue
from .events import FLEET_JAIL, BanEvent, check_origin, check_url, instance_id, redact, too_wide

STREAM = "f2bext:events"
CURRENT = "f2bext:bans"
STREAM_MAXLEN = 100_000
BATCH = 500
STOP_WAIT = 6.0  # seconds a stop waits for the publisher to flush (a send times out after 5)
NOTICE_BURST, NOTICE_PERIOD = 10, 60.0  # lines about peers' entries: this many a minute, then one summary
TWIN_PERIOD = 3600.0  # seconds between warnings that another server publishes under our origin

log = logging.getLogger("fail2ban.f2bext.share")


class Notices:
    """Warnings about what peers wrote, bounded whatever they write: per kind, the first NOTICE_BURST
    lines of each minute, then one summary line for the rest of it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, list[Any]] = {}  # kind -> [start, lines said, lines held back, latest]

    def say(self, kind: str, message: str, *args: Any) -> None:
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= NOTICE_PERIOD:
            self._close(kind)
            window = self._windows[kind] = [now, 0, 0, ""]
        if window[1] < NOTICE_BURST:
            window[1] += 1
            log.warning(message, *args)
        else:
            window[2] += 1
            window[3] = message % args

    def tick(self) -> None:
        """Summarize the minutes that ended (the follower calls this about every second)."""
        now = self._clock()
        for kind in [k for k, w in self._windows.items() if now - w[0] >= NOTICE_PERIOD]:
            self._close(kind)

    def _close(self, kind: str) -> None:
        window = self._windows.pop(kind, None)
        if window and window[2]:
            log.warning("f2bext share: %d more of these in the last minute (%s), the latest: %s",
                        window[2], kind, window[3])


Apply = Callable[[str, str, list[Network]], None]  # (jail, "add"/"delete"/"replace", nets)


class Fleet:
    """One Redis URL in one fail2ban-server: publishes this server's bans, follows the others'."""

    def __init__(self, url: str, origin: str, folder: str, apply: Apply, jails: Callable[[], set[str]],
                 scope_all: bool = False, allowed: Callable[[str, Network], Optional[str]] = lambda j, n: None,
                 max_prefix: tuple[int, int] = (16, 32)) -> None:
        """folder: where the queue and the instance id survive a reboot (state.lib_dir())."""
        self._url = check_url(url)
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
        self._twin_said = self._clone_said = -math.inf
        self._sent: "OrderedDict[tuple[str, str, str, float], None]" = OrderedDict()  # the latest, bounded
        self._sent_lock = threading.Lock()
        self.remote: dict[str, dict[str, float]] = {}  # jail -> address -> expiry, as applied here
        self._threads = [threading.Thread(target=self._publish_loop, name="f2b/f2bext-share-pub", daemon=True),
                         threading.Thread(target=self._follow_loop, name="f2b/f2bext-share-sub", daemon=True)]

    @property
    def url(self) -> str:
        return redact(self._url)

    @property
    def host(self) -> str:
        """The host the URL connects to ("" for a unix socket)."""
        return "" if self._url.startswith("unix:") else urlsplit(self._url).hostname or "localhost"

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
        import redis  # Debian's python3-redis
        if not self._url.startswith("unix:"):  # redis-py's unix socket connection takes no connect timeout
            kw["socket_connect_timeout"] = 2
        return redis.Redis.from_url(self._url, **kw)

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
                if self._unsaved or len(self.queue):
                    client = client or self._client(socket_timeout=5)
                    sent = self._send_some(client)
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
                backoff = min(backoff * 2, 5.0)
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
        backoff = 0.2
        while not self._stop.is_set():
            try:
                client = self._client(socket_timeout=10)
                last = self._load_present(client)
                backoff = 0.2
                self._said.discard("sub-down")
                while not self._stop.is_set():
                    for _stream, entries in client.xread({STREAM: last}, block=1000, count=BATCH) or []:
                        for entry_id, fields in entries:
                            self._receive(entry_id, fields)
                            last = entry_id
                        self._save_last(last)
                    self._expire()
                    self._notices.tick()
            except Exception as e:  # noqa: BLE001 - the follower must outlive any error; Redis's are expected
                if not isinstance(e, (redis.RedisError, OSError)):
                    log.error("f2bext share: following failed: %s: %s", type(e).__name__, e)
                self._say_once("sub-down", "f2bext share: cannot follow %s (%s); retrying", self.url,
                               type(e).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

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
            self._clone(event)
        elif event.origin == self.origin and event.instance and not ours:
            self._twin(event)
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

    def _twin(self, event: BanEvent) -> None:
        """Another live server publishes under our origin: sharing works (instance ids tell the two
        apart), but logs and `f2bext doctor` cannot; an hour between warnings, whatever a peer sends."""
        now = time.monotonic()
        if now - self._twin_said >= TWIN_PERIOD:
            self._twin_said = now
            log.warning("f2bext share: another server (instance %s) publishes to %s as %r, this server's "
                        "origin; give each server its own share_origin", event.instance, self.url, self.origin)

    def _clone(self, event: BanEvent) -> None:
        now = time.monotonic()
        if now - self._clone_said >= TWIN_PERIOD:
            self._clone_said = now
            log.warning("f2bext share: %s's %s of %s in jail %s carries this server's instance id, and this "
                        "server did not send it: if this repeats, another server has a copy of %s (a cloned "
                        "image?); delete it there and restart that fail2ban", event.origin, event.op,
                        event.address, event.jail, os.path.join(self._folder, "instance-id"))

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
