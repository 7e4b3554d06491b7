"""What a jail asks for: ports, protocols, ban type, block type, hooks; validated once, immutable."""

from __future__ import annotations

import re
import socket
from typing import Mapping, NamedTuple, Optional

from .errors import InputError

PortRange = tuple[int, int]

PROTOCOLS = ("tcp", "udp", "sctp")
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
HOOKS = ("input", "forward")
KILL_KINDS = ("conntrack", "sockets")
BLOCKTYPES = ("reject", "drop")
TYPES = ("multiport", "allports")

# 23 characters keep "f2bext6-<jail>" within ipset's 31-character set names.
JAIL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,22}")
_SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,31}")
_PORT_TOKEN = re.compile(r"([^:-]+)(?:[:-]([^:-]+))?")

# Parameters fail2ban may hand to a banaction; `name` is the legacy jail alias of the stock actions.
PARAMETERS = ("port", "protocol", "type", "blocktype", "hooks", "chain", "kill", "name")


def parse_jail(text: object) -> str:
    name = str(text)
    if not JAIL_NAME.fullmatch(name):
        raise InputError(
            f"jail name {name[:40]!r} must be 1-23 letters, digits, '-' or '_', starting with a letter or digit")
    return name


def _split_list(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", text.strip().strip("{}")) if t]


def parse_protocols(text: str) -> tuple[str, ...]:
    """`tcp`, `udp`, `sctp`, a list of them, or `all` (returned as an empty tuple: no protocol match)."""
    names = [t.lower() for t in _split_list(text)]
    if not names:
        raise InputError("protocol is empty")
    if names == ["all"]:
        return ()
    for name in names:
        if name not in PROTOCOLS:
            raise InputError(f"unknown protocol {name[:20]!r}: use tcp, udp, sctp, a list of them, or all")
    return tuple(sorted(set(names), key=PROTOCOLS.index))


def _port_number(token: str, protocols: tuple[str, ...]) -> int:
    if token.isascii() and token.isdigit():
        if len(token) > 5 or int(token) > 65535:
            raise InputError(f"port {token[:10]} is out of range 0-65535")
        return int(token)
    if not _SERVICE_NAME.fullmatch(token):
        raise InputError(f"not a port number or service name: {token[:40]!r}")
    port = _service(token, protocols)
    if port is not None:
        return port
    raise InputError(f"unknown service name {token!r} (not in /etc/services for {'/'.join(protocols or PROTOCOLS)})")


def _service(name: str, protocols: tuple[str, ...]) -> Optional[int]:
    """The port /etc/services gives a name for any of the protocols, or None."""
    for proto in protocols or PROTOCOLS:
        try:
            return socket.getservbyname(name, proto)
        except OSError:
            continue
    return None


def parse_ports(text: str, protocols: tuple[str, ...] = ("tcp",)) -> tuple[PortRange, ...]:
    """Numbers, /etc/services names and ranges (`a:b` or `a-b`), merged and sorted."""
    tokens = _split_list(text)
    if not tokens:
        raise InputError("port list is empty")
    ranges = []
    for token in tokens:
        whole = _service(token, protocols) if "-" in token and _SERVICE_NAME.fullmatch(token) else None
        if whole is not None:  # a name with a dash (http-alt, ftp-data), not a range
            ranges.append((whole, whole))
            continue
        match = _PORT_TOKEN.fullmatch(token)
        if not match:
            raise InputError(f"not a port or port range: {token[:40]!r}")
        low = _port_number(match.group(1), protocols)
        high = _port_number(match.group(2), protocols) if match.group(2) else low
        if high < low:
            raise InputError(f"port range {token!r} runs backwards")
        ranges.append((low, high))
    merged: list[PortRange] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return tuple(merged)


def format_ports(ports: tuple[PortRange, ...]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ports)


def _hooks_from_chain(chain: str) -> tuple[str, ...]:
    """Map fail2ban's `chain` (INPUT, FORWARD, DOCKER-USER, or the unresolved `<known/chain>`) to hooks."""
    value = chain.strip()
    if not value or value.startswith("<"):
        return ("input",)
    lowered = value.lower()
    if lowered == "input":
        return ("input",)
    if lowered in ("forward", "docker-user"):
        return ("forward",)
    raise InputError(f"chain {value[:40]!r} is not one f2bext can hook: use INPUT, FORWARD or DOCKER-USER, or set hooks")


def _parse_hooks(text: str) -> tuple[str, ...]:
    names = [t.lower() for t in _split_list(text)]
    if not names:
        raise InputError("hooks is empty")
    for name in names:
        if name not in HOOKS:
            raise InputError(f"unknown hook {name[:20]!r}: use input, forward or input,forward")
    return tuple(sorted(set(names), key=HOOKS.index))


def _parse_kill(text: str) -> frozenset[str]:
    names = [t.lower() for t in _split_list(text)]
    if names == ["none"]:
        return frozenset()
    for name in names:
        if name not in KILL_KINDS:
            raise InputError(f"unknown kill kind {name[:20]!r}: use conntrack,sockets, conntrack, sockets or none")
    if not names:
        raise InputError("kill is empty")
    return frozenset(names)


def _choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, not {text[:30]!r}")
    return value


class JailSpec(NamedTuple):  # not a dataclass: `dataclasses` costs fail2ban-server 1 MiB
    """One jail's ban, as the kernel should enforce it."""

    jail: str
    ports: tuple[PortRange, ...] = ()  # empty: all ports
    protocols: tuple[str, ...] = ("tcp",)  # empty: every protocol
    blocktype: str = "reject"
    hooks: tuple[str, ...] = ("input",)
    kill: frozenset[str] = frozenset(KILL_KINDS)

    @property
    def allports(self) -> bool:
        return not self.ports

    @classmethod
    def from_params(cls, jail: object, params: Mapping[str, object]) -> "JailSpec":
        """Validate fail2ban-style parameters (all text); unknown ones are an error."""
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise InputError(f"unknown option {unknown[0]!r}; known: {', '.join(PARAMETERS)}")
        text = {k: str(v) for k, v in params.items()}
        protocols = parse_protocols(text.get("protocol", "tcp"))
        kind = _choice("type", text.get("type", "multiport"), TYPES)
        if kind == "allports":
            ports: tuple[PortRange, ...] = ()
        else:
            if not protocols:
                raise InputError("protocol=all needs type=allports: ports only exist for tcp, udp and sctp")
            ports = parse_ports(text.get("port", "0:65535"), protocols)
            if ports == ((0, 65535),):
                ports = ()
        if "hooks" in text:
            hooks = _parse_hooks(text["hooks"])
        else:
            hooks = _hooks_from_chain(text.get("chain", ""))
        return cls(
            jail=parse_jail(jail),
            ports=ports,
            protocols=protocols,
            blocktype=_choice("blocktype", text.get("blocktype", "reject"), BLOCKTYPES),
            hooks=hooks,
            kill=_parse_kill(text.get("kill", "conntrack,sockets")),
        )

    def to_params(self) -> dict[str, str]:
        """The parameters that rebuild this spec with from_params."""
        return {
            "port": format_ports(self.ports) if self.ports else "0:65535",
            "protocol": ",".join(self.protocols) or "all",
            "type": "allports" if self.allports else "multiport",
            "blocktype": self.blocktype,
            "hooks": ",".join(self.hooks),
            "kill": ",".join(k for k in KILL_KINDS if k in self.kill) or "none",
        }
