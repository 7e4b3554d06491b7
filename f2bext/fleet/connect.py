"""The `share` URL and the Redis client it makes: redis://, rediss://, unix:// as redis-py reads them,
and Redis Sentinel's form (the one Prefect's and docket's clients read), where the Sentinels name the
master and a failover moves the clients to the new one:

    redis+sentinel://[USER:PASS@]HOST[:PORT][,HOST[:PORT]...]/MASTER_NAME[/DB][?OPTIONS]
    rediss+sentinel://...   TLS to the Sentinels and to the master

USER:PASS is the master's (and its replicas'); `sentinel_username` / `sentinel_password` are the
Sentinels' own. Sentinels listen on 26379 unless a port is given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import InputError
from .events import redact

PLAIN = ("redis", "rediss", "unix")
SENTINEL = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253}")
CONNECT_TIMEOUT = 2.0  # seconds: a dead master or Sentinel costs this much, not the kernel's minutes
TLS_OPTIONS = {"ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str, "ssl_cert_reqs": str,
               "ssl_check_hostname": bool}


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str  # the master's name in the Sentinels' configuration (`sentinel monitor NAME ...`)
    db: int = 0
    username: str = ""
    password: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    tls: dict[str, Any] = field(default_factory=dict)  # {} for plain TCP; else redis-py's ssl_* arguments

    def master_kwargs(self) -> dict[str, Any]:
        return dict(self._auth(self.username, self.password), db=self.db, **self.tls)

    def sentinel_kwargs(self) -> dict[str, Any]:
        return dict(self._auth(self.sentinel_username, self.sentinel_password), **self.tls)

    @staticmethod
    def _auth(username: str, password: str) -> dict[str, str]:
        return {k: v for k, v in (("username", username), ("password", password)) if v}


def scheme(url: str) -> str:
    """The URL's scheme, read by hand: urlsplit refuses a Sentinel list with an IPv6 member."""
    name, colon, _ = url.partition(":")
    return name.lower() if colon else ""


def is_sentinel(url: str) -> bool:
    return scheme(url) in SENTINEL


def check_url(url: str) -> str:
    """The URL, if it is one `share` takes; InputError (the password hidden) if not."""
    if is_sentinel(url):
        parse_sentinel(url)
    elif scheme(url) not in PLAIN:
        raise InputError(f"share must be a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// "
                         f"URL, not {redact(url).partition('?')[0][:60]!r}")
    return url


def parse_sentinel(url: str) -> SentinelUrl:
    """A redis+sentinel:// or rediss+sentinel:// URL, read whole; InputError naming what is wrong."""
    shown = redact(url).partition("?")[0][:80]  # no query: a misspelt password option is no password= one

    def bad(why: str) -> InputError:
        return InputError(f"share {shown!r}: {why}")
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL or not rest:
        raise bad("not a redis+sentinel:// URL")
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if "#" in query or "#" in path:
        raise bad("a URL fragment (#) means nothing here")
    userinfo, at, members = netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    sentinels = tuple(_member(m, bad) for m in members.split(","))
    names = path.split("/")
    if not names[0] or not SERVICE.fullmatch(unquote(names[0])):
        raise bad("name the master after the Sentinels: .../MASTER_NAME[/DB] (letters, digits, '.', '-', '_')")
    if len(names) > 2 or (len(names) == 2 and not re.fullmatch(r"\d{1,2}", names[1])):
        raise bad("after the master's name, only a database number: .../MASTER_NAME/DB")
    options = _options(query, scheme.lower() == "rediss+sentinel", bad)
    db = options.pop("db", int(names[1]) if len(names) == 2 else 0)
    return SentinelUrl(sentinels, unquote(names[0]), db, unquote(username), unquote(password),
                       options.pop("sentinel_username", ""), options.pop("sentinel_password", ""), options)


def _member(text: str, bad) -> tuple[str, int]:
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::(\d{1,5}))?", text)
    if not m or not HOST.fullmatch(m.group(1)):
        raise bad(f"{text[:40]!r} is not a Sentinel's HOST[:PORT]")
    port = int(m.group(2)) if m.group(2) else SENTINEL_PORT
    if not 0 < port < 65536:
        raise bad(f"{text[:40]!r}: no such port")
    return m.group(1).strip("[]"), port


def _options(query: str, tls: bool, bad) -> dict[str, Any]:
    known: dict[str, Any] = {"db": int, "sentinel_username": str, "sentinel_password": str, **(TLS_OPTIONS if tls else {})}
    out: dict[str, Any] = {"ssl": True} if tls else {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        kind = known.get(name)
        if kind is None:
            raise bad(f"unknown option {name[:30]!r} (known: {', '.join(sorted(known))})")
        if kind is int and not re.fullmatch(r"\d{1,2}", value):
            raise bad(f"{name} must be a database number")
        if kind is bool and value.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise bad(f"{name} must be true or false")
        if name == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
            raise bad("ssl_cert_reqs must be none, optional or required")
        out[name] = int(value) if kind is int else value.lower() in ("true", "yes", "1") if kind is bool else value
    return out


def hosts(url: str) -> list[str]:
    """The hosts the URL names: the Sentinels, or the one Redis ([] for a unix socket)."""
    if is_sentinel(url):
        return [host for host, _ in parse_sentinel(url).sentinels]
    return [] if url.startswith("unix:") else [urlsplit(url).hostname or "localhost"]


def client(url: str, **kw: Any) -> Any:
    """A redis-py client for the URL's master (for Sentinel's form, whichever master the Sentinels name
    at each connection: a failover needs nothing more than a reconnection)."""
    import redis  # Debian's python3-redis
    if not is_sentinel(url):
        if not url.startswith("unix:"):  # redis-py's unix socket connection takes no connect timeout
            kw["socket_connect_timeout"] = CONNECT_TIMEOUT
        return redis.Redis.from_url(url, **kw)
    from redis.sentinel import Sentinel
    parsed = parse_sentinel(url)
    timeouts = dict(socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
    sentinels = Sentinel(list(parsed.sentinels), sentinel_kwargs=dict(parsed.sentinel_kwargs(), **timeouts))
    return sentinels.master_for(parsed.service, socket_connect_timeout=CONNECT_TIMEOUT, **parsed.master_kwargs(), **kw)


def address(connected: Any) -> str:
    """Where a client made by client() is connected now: HOST:PORT, or the socket's path."""
    pool = connected.connection_pool
    if getattr(pool, "master_address", None):
        host, port = pool.master_address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return kwargs["path"]
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
