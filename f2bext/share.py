"""Fleet sharing through Redis: a ban on one server enforced on every server.

Redis holds two keys (no protocol of ours, no daemon listening on the network):
  f2bext:events  a stream of ban/unban events (XADD, bounded by MAXLEN), followed with XREAD BLOCK;
  f2bext:bans    the current bans, a sorted set of "JAIL ADDRESS" scored by expiry (+inf: never),
                 so a server that joins or restarts loads the present in one read, not the history.
Each server runs one Fleet per Redis URL inside fail2ban-server: a publisher thread (bans and unbans
of the local fail2ban, queued on disk while Redis is away) and a follower thread (the others' bans,
into each jail's remote sets, which local unbans and flushes never touch). A server never
re-publishes what it received. Everything read from Redis is untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .addr import Network, parse_target, to_text
from .errors import InputError
from .spec import parse_jail

STREAM = "f2bext:events"
CURRENT = "f2bext:bans"
STREAM_MAXLEN = 100_000
MAX_BANTIME = 10 * 365 * 86400  # a longer one from a peer is absurd: refused
QUEUE_LIMIT = 10_000  # events kept on disk while Redis is unreachable; the oldest go first
BATCH = 500
ORIGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
SCOPES = ("jail", "all")
FLEET_JAIL = "f2bext-fleet"  # share_scope = all: bans for jails this server does not run, on every port

log = logging.getLogger("fail2ban.f2bext.share")


def redact(url: str) -> str:
    """The URL without its password (in the user part or a `password=` query argument, which redis-py
    honours too), fit for logs and for `fail2ban-client get`."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        user = f"{parts.username}:***@" if parts.username else ":***@"
        netloc = user + netloc.rpartition("@")[2]
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name.lower() == "password" for name, _ in pairs):
        query = urlencode([(name, "***" if name.lower() == "password" else value) for name, value in pairs],
                          safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    shown = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return shown.replace(":", "://", 1) if not netloc and url.startswith(parts.scheme + "://") else shown


def check_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise InputError(f"share must be a redis://, rediss:// or unix:// URL, not {redact(url)[:60]!r}")
    return url


def parse_max_prefix(text: str) -> tuple[int, int]:
    """share_max_prefix: `V4,V6`, the shortest prefix of a network a peer may share (16,32: nothing
    wider than a /16 or a /32)."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*", text)
    if not m or int(m.group(1)) > 32 or int(m.group(2)) > 128:
        raise InputError(f"share_max_prefix must be V4,V6 prefix lengths (0-32,0-128), e.g. 16,32, not {text[:20]!r}")
    return int(m.group(1)), int(m.group(2))


def too_wide(net: Network, max_prefix: tuple[int, int]) -> Optional[str]:
    """Why a peer's network is wider than share_max_prefix allows; None when it is not."""
    shortest = max_prefix[0] if net.version == 4 else max_prefix[1]
    if net.prefixlen < shortest:
        return f"it is wider than /{shortest}, the widest network a peer may share here (share_max_prefix)"
    return None


def check_origin(origin: str) -> str:
    if not ORIGIN.fullmatch(origin):
        raise InputError(f"share_origin {origin[:40]!r} must be a host name (letters, digits, '.', '-', '_')")
    return origin


@dataclass(frozen=True)
class BanEvent:
    op: str  # "ban" or "unban"
    jail: str
    address: str
    bantime: int  # seconds; -1: never expires
    expires: float  # epoch seconds; math.inf: never
    origin: str
    reason: str = ""

    @property
    def member(self) -> str:
        return f"{self.jail} {self.address}"

    def fields(self) -> dict[str, str]:
        return {k: ("inf" if v == math.inf else str(v)) for k, v in asdict(self).items()}

    @classmethod
    def parse(cls, raw: dict[Any, Any], now: float) -> "BanEvent":
        """An event as a peer wrote it; InputError for anything that is not plainly valid."""
        fields = {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode("utf-8", "replace")
                  if isinstance(v, bytes) else str(v)) for k, v in raw.items()}
        op = fields.get("op", "")
        if op not in ("ban", "unban"):
            raise InputError(f"unknown op {op[:20]!r}")
        jail = parse_jail(fields.get("jail", ""))
        address = to_text(parse_target(fields.get("address", "")))
        try:
            bantime = int(fields.get("bantime", "0"))
            expires = float(fields.get("expires", "0"))
        except ValueError:
            raise InputError("bantime and expires must be numbers") from None
        if not (bantime == -1 or 0 <= bantime <= MAX_BANTIME) or math.isnan(expires) \
                or (expires != math.inf and expires > now + MAX_BANTIME):
            raise InputError(f"absurd ban time {bantime} / expiry {expires}")
        return cls(op, jail, address, bantime, expires, check_origin(fields.get("origin", "")),
                   fields.get("reason", "")[:200])


class DiskQueue:
    """Events not yet published, kept across Redis outages and restarts (JSON lines, bounded)."""

    def __init__(self, path: str, limit: int = QUEUE_LIMIT) -> None:
        self.path, self.limit = path, limit
        self._lock = threading.Lock()

    def extend(self, events: list[BanEvent]) -> None:
        with self._lock:
            kept = self._read() + [e.fields() for e in events]
            self._write(kept[-self.limit:])

    def take(self) -> list[BanEvent]:
        with self._lock:
            items = self._read()
            self._write([])
        now = time.time()
        out = []
        for item in items:
            try:
                out.append(BanEvent.parse(item, now))
            except InputError:
                continue
        return out

    def _read(self) -> list[dict[str, str]]:
        try:
            with open(self.path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    def _write(self, items: list[dict[str, str]]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(i) + "\n" for i in items)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


Apply = Callable[[str, str, list[Network]], None]  # (jail, "add"/"delete"/"replace", nets)


class Fleet:
    """One Redis URL in one fail2ban-server: publishes this server's bans, follows the others'."""

    def __init__(self, url: str, origin: str, state_dir: str, apply: Apply, jails: Callable[[], set[str]],
                 scope_all: bool = False, allowed: Callable[[str, Network], Optional[str]] = lambda j, n: None,
                 max_prefix: tuple[int, int] = (16, 32)) -> None:
        self._url = check_url(url)
        self.max_prefix = max_prefix
        self.origin = check_origin(origin)
        self.scope_all = scope_all
        self._apply, self._jails, self._allowed = apply, jails, allowed
        key = hashlib.sha256(url.encode()).hexdigest()[:12]
        self.queue = DiskQueue(os.path.join(state_dir, f"share-{key}.queue"))
        self.id_path = os.path.join(state_dir, f"share-{key}.last-id")
        self._outbox: "queue.SimpleQueue[Optional[BanEvent]]" = queue.SimpleQueue()
        self._stop = threading.Event()
        self._said: set[str] = set()
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

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)

    def publish(self, event: BanEvent) -> None:
        """Never blocks: the publisher thread sends it, or keeps it on disk until Redis is back."""
        self._outbox.put(event)

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
        import redis
        client, backoff = None, 0.2
        while not self._stop.is_set():
            batch = self._next_batch(timeout=1.0)
            pending = self.queue.take() + batch
            if not pending:
                continue
            try:
                client = client or self._client(socket_timeout=5)
                self._send(client, pending)
                if backoff > 0.2:
                    log.info("f2bext share: %s reachable again, %d queued events sent", self.url, len(pending))
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - the publisher must outlive any error; Redis's are expected
                self.queue.extend(pending)
                if not isinstance(e, (redis.RedisError, OSError)):
                    log.error("f2bext share: publishing failed: %s: %s", type(e).__name__, e)
                self._say_once("pub-down", "f2bext share: cannot publish to %s (%s); queuing on disk", self.url,
                               type(e).__name__)
                client = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                self._said.discard("pub-down")

    def _next_batch(self, timeout: float) -> list[BanEvent]:
        out: list[BanEvent] = []
        try:
            item = self._outbox.get(timeout=timeout)
            while item is not None:
                out.append(item)
                if len(out) >= BATCH:
                    break
                item = self._outbox.get_nowait()
        except queue.Empty:
            pass
        return out

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
                self._say_once(f"bad:{member[:80]!r}", "f2bext share: skipping a current ban from Redis: %s", e)
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
            self._say_once(f"bad:{entry_id!r}", "f2bext share: skipping event %s from Redis: %s",
                           entry_id.decode(errors="replace"), e)
            return
        target = self._target(event)
        if target is None:
            return
        current = self.remote.setdefault(target, {})
        if event.op == "unban":  # from anyone, ourselves included: an unban lifts it everywhere,
            current.pop(event.address, None)  # the local fail2ban's own ban of it too
            self._apply(target, "delete", [parse_target(event.address)])
        elif event.origin != self.origin and self._accept(target, event):
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
            self._say_once(f"refuse:{event.address}", "f2bext share: refusing %s's ban of %s in jail %s: %s",
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
        os.makedirs(os.path.dirname(self.id_path), exist_ok=True)
        with open(self.id_path + ".tmp", "w") as f:
            f.write(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
        os.replace(self.id_path + ".tmp", self.id_path)
