"""Address parsing: the only door through which untrusted address text enters f2bext."""

from __future__ import annotations

import bisect
import ipaddress
import socket
from typing import Callable, Iterable, Optional, Union

from .errors import InputError

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Never a source worth banning, always a lockout risk: a link-local ban drops the router's neighbour
# advertisements (IPv6 loses its default gateway), a multicast one the protocols that run on it.
_NEVER = ((ipaddress.ip_network("169.254.0.0/16"), "link-local"), (ipaddress.ip_network("fe80::/10"), "link-local"),
          (ipaddress.ip_network("224.0.0.0/4"), "multicast"), (ipaddress.ip_network("ff00::/8"), "multicast"))
_MAX_TEXT = 64
# What parse_single leaves to parse_target: every address parse_target refuses or rewrites. IPv4:
# 0.0.0.0, loopback, link-local and multicast, by their first bytes. IPv6, as (first, last) integers:
# ::/96 (::, ::1, and the IPv4-compatible form glibc writes dotted), IPv4-mapped, link-local, multicast.
_V4_SLOW_FIRST = frozenset([0, 127, *range(224, 240)])  # 0.0.0.0/8 is only slow for 0.0.0.0 (below)
_V6_SLOW = ((0, 2**32 - 1), (0xFFFF << 32, (0xFFFF << 32) | (2**32 - 1)),
            (0xFE80 << 112, (0xFEC0 << 112) - 1), (0xFF00 << 112, 2**128 - 1))


def parse_target(text: object) -> Network:
    """Parse one address or CIDR to ban; refuse anything that is not plainly one.

    IPv4-mapped IPv6 addresses become IPv4 (the kernel sees them as IPv4 packets), and a
    CIDR with host bits set is normalised, as fail2ban does.
    """
    found = parse_single(text)  # nearly every ban: one address, checked with integers
    if found is not None:
        return single_network(*found)
    return _parse(str(text))


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


def parse_single(text: object) -> Optional[tuple[int, int]]:
    """parse_target's fast path, and the bulk one of a restore of 100,000 bans: (IP version,
    address as an integer) of text that is one address, written exactly as parse_target writes it back, that
    parse_target accepts unchanged. None for anything else: parse_target decides it, and says why."""
    if not isinstance(text, str):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        pass
    else:
        # glibc reads only dotted decimal without leading zeros: the text is as parse_target writes it.
        value = int.from_bytes(packed, "big")
        return (4, value) if is_plain(4, value) else None
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    if socket.inet_ntop(socket.AF_INET6, packed) != text:
        return None  # upper case, leading zeros, a :: that RFC 5952 puts elsewhere
    value = int.from_bytes(packed, "big")
    return (6, value) if is_plain(6, value) else None


def is_plain(version: int, value: int) -> bool:
    """Whether one address, as (IP version, integer), is one parse_target takes unchanged, with no
    closer look: parse_single's test, also for addresses that come as integers (fail2ban's IPAddr)."""
    if version == 4:
        first = value >> 24
        return not ((first in _V4_SLOW_FIRST and (first or not value)) or value >> 16 == 0xA9FE)
    for low, high in _V6_SLOW:
        if low <= value <= high:
            return False
    return True


def sort_singles(texts: Iterable[str], clear: Callable[[int, int], bool],
                 skip: Optional[Callable[[str, Optional[tuple[int, int]]], bool]] = None
                 ) -> tuple[dict[int, list[int]], list[str]]:
    """Texts a bulk load takes as they are: single addresses parse_single reads and `clear(version,
    integer)` allows, as integers by IP version; and the rest, as text, for parse_target and the full
    check one by one. `skip(text, parse_single's answer)` leaves a text out of both. An integer is all
    that is kept of a single address: a restore sorts 1,000,000 of them."""
    singles: dict[int, list[int]] = {4: [], 6: []}
    rest = []
    for text in texts:
        found = parse_single(text)
        if skip is not None and skip(text, found):
            continue
        if found is not None and clear(*found):
            singles[found[0]].append(found[1])
        else:
            rest.append(text)
    return singles, rest


def single_text(version: int, value: int) -> str:
    """A single address given as (IP version, integer), as parse_target writes it."""
    family, size = (socket.AF_INET, 4) if version == 4 else (socket.AF_INET6, 16)
    return socket.inet_ntop(family, value.to_bytes(size, "big"))


def single_network(version: int, value: int) -> Network:
    return ipaddress.IPv4Network(value) if version == 4 else ipaddress.IPv6Network(value)


def parse_targets(texts: Iterable[object]) -> list[Network]:
    """Parse every address first, so that one bad entry changes nothing."""
    return [parse_target(t) for t in texts]


def is_single(net: Network) -> bool:
    return net.prefixlen == net.max_prefixlen


def to_text(net: Network) -> str:
    """An address as fail2ban and nft write it: bare for a host, CIDR for a network."""
    return str(net.network_address) if is_single(net) else str(net)


class Spans:
    """Ranges of addresses of both IP versions as integers, merged, for a membership test by bisection:
    a restore checks each of 100,000 addresses against ignoreip and the guard (a loop over every range
    kept cost 0.7 µs an address)."""

    def __init__(self, spans: Iterable[tuple[int, int, int]]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for version, low, high in sorted(spans):
            starts, ends = self._starts[version], self._ends[version]
            if ends and low <= ends[-1] + 1:
                ends[-1] = max(ends[-1], high)
            else:
                starts.append(low)
                ends.append(high)

    def covers(self, version: int, value: int) -> bool:
        i = bisect.bisect_right(self._starts[version], value) - 1
        return i >= 0 and value <= self._ends[version][i]

    def split(self, version: int, values: Iterable[int]) -> tuple[list[int], list[int]]:
        """`values` (one IP version) in two: those no range covers, and those one does; covers() for
        each, in one loop: a heal sorts 100,000."""
        starts, ends, right = self._starts[version], self._ends[version], bisect.bisect_right
        clear: list[int] = []
        covered: list[int] = []
        if not starts:
            clear.extend(values)
            return clear, covered
        for value in values:
            i = right(starts, value) - 1
            (covered if i >= 0 and value <= ends[i] else clear).append(value)
        return clear, covered

