"""What fleet servers write to each other through Redis, and the checks everything read back passes:
a ban event, a server's origin and instance id, the sharing options' values. Pure, but for the
instance id kept on disk. Everything read from Redis is untrusted input."""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass
from typing import Any, Optional
from urllib.parse import parse_qsl, urlencode

from ..addr import Network, parse_target, to_text
from ..errors import InputError
from ..spec import parse_jail

MAX_BANTIME = 10 * 365 * 86400  # a longer one from a peer is absurd: refused
ORIGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
INSTANCE = re.compile(r"[0-9a-f]{32}")
SCOPES = ("jail", "all")
FLEET_JAIL = "f2bext-fleet"  # share_scope = all: bans for jails this server does not run, on every port

log = logging.getLogger("fail2ban.f2bext.share")


def redact(url: str) -> str:
    """The URL without its passwords (in the user part, or a `password=` or `sentinel_password=` query
    argument, which redis-py and the Sentinel form honour too), fit for logs and `fail2ban-client get`.
    Read by hand, not with urlsplit: a Sentinel URL's host list is no single netloc."""
    head, q, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    netloc, slash, path = rest.partition("/") if sep else ("", "", "")
    userinfo, at, members = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{members}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name.lower().endswith("password") for name, _ in pairs):
        query = urlencode([(name, "***" if name.lower().endswith("password") else value) for name, value in pairs],
                          safe="*")
    return (f"{scheme}{sep}{netloc}{slash}{path}" if sep else head) + q + query


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
    instance: str = ""  # the publishing server's instance id; "" from versions before it

    @property
    def member(self) -> str:
        return f"{self.jail} {self.address}"

    @property
    def key(self) -> tuple[str, str, str, float]:
        """What tells one event from another, as it reads back from Redis."""
        return self.op, self.jail, self.address, self.expires

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
        instance = fields.get("instance", "")
        if instance and not INSTANCE.fullmatch(instance):
            raise InputError(f"instance {instance[:40]!r} is not an instance id")
        return cls(op, jail, address, bantime, expires, check_origin(fields.get("origin", "")),
                   fields.get("reason", "")[:200], instance)


_instance_lock = threading.Lock()


def instance_id(folder: str) -> str:
    """This server's instance id, made once and kept in folder/instance-id: what tells its own events
    from a peer's when both carry the same origin."""
    path = os.path.join(folder, "instance-id")
    with _instance_lock:
        try:
            with open(path) as f:
                kept = f.read().strip()
            if INSTANCE.fullmatch(kept):
                return kept
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("f2bext share: cannot read %s (%s); making a new instance id", path, e)
        made, tmp = secrets.token_hex(16), ""
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-instance-")
            with os.fdopen(fd, "w") as f:
                f.write(made + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
            log.warning("f2bext share: cannot keep an instance id in %s (%s); this one lasts until "
                        "fail2ban restarts", folder, e)
        return made
