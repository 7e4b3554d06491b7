"""Address parsing: the only door through which untrusted address text enters f2bext."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Iterable, Union

from .errors import InputError

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Never a source worth banning, always a lockout risk: a link-local ban drops the router's neighbour
# advertisements (IPv6 loses its default gateway), a multicast one the protocols that run on it.
_NEVER = ((ipaddress.ip_network("169.254.0.0/16"), "link-local"), (ipaddress.ip_network("fe80::/10"), "link-local"),
          (ipaddress.ip_network("224.0.0.0/4"), "multicast"), (ipaddress.ip_network("ff00::/8"), "multicast"))
_MAX_TEXT = 64
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Exactly the IPv4 address text ipaddress accepts (four decimal octets, no leading zeros, ASCII only).
_PLAIN4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
# Every IPv4 range the checks below refuse (0.0.0.0 included), as integers: the fast path leaves
# any address in them to the full path, which says why.
_REFUSED4 = tuple((int(n.network_address), int(n.broadcast_address))
                  for n in (ipaddress.ip_network("0.0.0.0/32"), *_LOOPBACK, *(n for n, _ in _NEVER)) if n.version == 4)


def parse_target(text: object) -> Network:
    """Parse one address or CIDR to ban; refuse anything that is not plainly one.

    IPv4-mapped IPv6 addresses become IPv4 (the kernel sees them as IPv4 packets), and a
    CIDR with host bits set is normalised, as fail2ban does.
    """
    raw = str(text)
    if _PLAIN4.fullmatch(raw):  # nearly every ban: one IPv4 address, checked with integers
        value = int.from_bytes(socket.inet_aton(raw), "big")
        if not any(low <= value <= high for low, high in _REFUSED4):
            return ipaddress.IPv4Network(value)
    return _parse(raw)


def _parse(raw: str) -> Network:
    """parse_target's full path: any text, every check on ipaddress' objects."""
    if not raw or len(raw) > _MAX_TEXT or raw != raw.strip() or not raw.isascii():
        raise InputError(f"not an IP address or CIDR: {raw[:_MAX_TEXT]!r}")
    if "%" in raw:
        raise InputError(f"scoped IPv6 addresses cannot be banned: {raw!r}")
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise InputError(f"not an IP address or CIDR: {raw!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.ip_network(mapped)
    if net.network_address.is_unspecified and net.prefixlen == net.max_prefixlen:
        raise InputError(f"the unspecified address cannot be banned: {raw!r}")
    if any(net.version == lo.version and net.overlaps(lo) for lo in _LOOPBACK):
        raise InputError(f"refusing to ban loopback: {raw!r}")
    for never, kind in _NEVER:
        if net.version == never.version and net.overlaps(never):
            raise InputError(f"refusing to ban {kind} addresses: {raw!r} overlaps {never}")
    return net


def parse_targets(texts: Iterable[object]) -> list[Network]:
    """Parse every address first, so that one bad entry changes nothing."""
    return [parse_target(t) for t in texts]


def is_single(net: Network) -> bool:
    return net.prefixlen == net.max_prefixlen


def to_text(net: Network) -> str:
    """An address as fail2ban and nft write it: bare for a host, CIDR for a network."""
    return str(net.network_address) if is_single(net) else str(net)
