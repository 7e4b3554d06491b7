"""No lockouts: what must stay reachable is never banned, whoever asks: this host's own addresses and
gateways (read from the kernel over netlink), the jail's ignoreip, and the servers f2bext itself talks
to (a share's Redis). A ban is refused when it overlaps any of them, not only when it starts there."""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from .kernel import netlink
from .addr import Network, to_text
from .errors import InputError, KernelError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

IGNOREIP = "the jail's ignoreip"  # the name a jail's ignoreip goes by in refusals and in the state files
log = logging.getLogger("fail2ban.f2bext.guard")

_REFRESH = 5.0  # seconds; addresses and routes change rarely, and a ban must stay cheap
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")
_WORD = re.compile(r"[A-Za-z0-9_.:/-]{1,253}")  # what an ignoreip entry fail2ban accepts is made of


@dataclass(frozen=True)
class Keep:
    """Something that must stay reachable: one address of the host (`why` names it), or an entry of
    a list (`listed`, `why` names the list)."""

    net: Network
    why: str
    listed: bool = False

    def refusal(self, net: Network) -> str:
        if not self.listed:
            return f"it holds {self.net.network_address}, {self.why}"
        if net.subnet_of(self.net):  # type: ignore[arg-type]  # same version: checked by the caller
            return f"it is in {self.why}"
        return f"it overlaps {to_text(self.net)} in {self.why}"


# ---- what the kernel says: addresses (RTM_GETADDR) and next hops (RTM_GETROUTE, RTM_GETNEXTHOP) ----

RTM_GETADDR, RTM_GETROUTE, RTM_GETNEXTHOP = 22, 26, 106
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA = 4, 5, 9, 18
NHA_OIF, NHA_GATEWAY = 5, 6
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src length, tos, table, protocol, scope, type, flags
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, interface index
_NHMSG = struct.Struct("=BBBBI")  # family, scope, protocol, reserved, flags
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 16}


def pack_addr_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETADDR, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def pack_route_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETROUTE, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0))


def pack_nexthop_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETNEXTHOP, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def parse_addr(payload: bytes) -> tuple[Address, int] | None:
    """(address, interface index) of one RTM_NEWADDR. IFA_LOCAL is the host's own address where it
    differs (point-to-point links name the peer in IFA_ADDRESS)."""
    family, _, _, _, index = _IFADDRMSG.unpack_from(payload)
    if family not in _FAMILIES:
        return None
    found = {kind: payload[start:end] for kind, start, end in netlink.attrs(payload, _IFADDRMSG.size, len(payload))
             if kind in (IFA_ADDRESS, IFA_LOCAL)}
    packed = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    return (ipaddress.ip_address(packed), index) if packed else None


def _address(family: int, packed: bytes) -> Optional[Address]:
    return ipaddress.ip_address(packed) if len(packed) == _FAMILIES.get(family) else None


def _via(packed: bytes) -> Optional[Address]:
    """RTA_VIA: a next hop of another family (an IPv4 route via an IPv6 router)."""
    if len(packed) < 2:
        return None
    return _address(struct.unpack_from("=H", packed)[0], packed[2:])


def _hops(family: int, payload: bytes, start: int, end: int, index: int) -> list[tuple[Address, int]]:
    out = []
    for kind, a, b in netlink.attrs(payload, start, end):
        hop = _address(family, payload[a:b]) if kind == RTA_GATEWAY else _via(payload[a:b]) if kind == RTA_VIA else None
        if hop is not None:
            out.append((hop, index))
    return out


def parse_route(payload: bytes) -> list[tuple[Address, int]]:
    """(next hop, interface index) of one RTM_NEWROUTE, every path of a multipath route included."""
    if len(payload) < _RTMSG.size:
        return []
    family = payload[0]
    attrs = list(netlink.attrs(payload, _RTMSG.size, len(payload)))
    index = next((struct.unpack_from("=i", payload, a)[0] for kind, a, b in attrs if kind == RTA_OIF and b - a >= 4), 0)
    out = _hops(family, payload, _RTMSG.size, len(payload), index)
    for kind, a, b in attrs:
        while kind == RTA_MULTIPATH and a + _RTNEXTHOP.size <= b:
            length, _, _, hop_index = _RTNEXTHOP.unpack_from(payload, a)
            if length < _RTNEXTHOP.size:
                break
            out += _hops(family, payload, a + _RTNEXTHOP.size, min(a + length, b), hop_index)
            a += (length + 3) & ~3
    return out


def parse_nexthop(payload: bytes) -> list[tuple[Address, int]]:
    """(gateway, interface index) of one RTM_NEWNEXTHOP (nexthop objects, `ip nexthop`)."""
    if len(payload) < _NHMSG.size:
        return []
    found = {kind: payload[a:b] for kind, a, b in netlink.attrs(payload, _NHMSG.size, len(payload))}
    hop = _address(payload[0], found.get(NHA_GATEWAY, b""))
    index = struct.unpack("=i", found[NHA_OIF])[0] if len(found.get(NHA_OIF, b"")) == 4 else 0
    return [(hop, index)] if hop is not None else []


def _read_host() -> tuple[list[tuple[Address, int]], list[tuple[Address, int]]]:
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl:
        own = [a for a in map(parse_addr, nl.dump(pack_addr_dump)) if a]
        hops = [h for p in nl.dump(pack_route_dump) for h in parse_route(p)]
        try:
            hops += [h for p in nl.dump(pack_nexthop_dump) for h in parse_nexthop(p)]
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a kernel before nexthop objects (5.3)
                raise
    return own, hops


def _interface(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return "?"  # gone since the dump


_lock = threading.Lock()
_cache: tuple[float, tuple[Keep, ...]] = (-_REFRESH, ())
_protected: dict[str, tuple[Keep, ...]] = {}


def host_keeps(fresh: bool = False) -> tuple[Keep, ...]:
    """This host's addresses and next hops, as the kernel holds them (read again every few seconds, or
    now when `fresh`)."""
    global _cache
    with _lock:
        if not fresh and time.monotonic() - _cache[0] < _REFRESH:
            return _cache[1]
        try:
            own, hops = _read_host()
        except OSError as e:
            if _cache[0] < 0:  # never read: nothing to guard with
                raise KernelError("cannot read this host's addresses and routes", str(e)) from None
            # A busy routing table (a dump interrupted again and again): the last good read, and the
            # next try a few seconds on, rather than no ban at all.
            log.warning("cannot read this host's addresses and routes (%s): guarding with the last read", e)
            _cache = (time.monotonic(), _cache[1])
            return _cache[1]
        keeps = {Keep(ipaddress.ip_network(a), f"an address of this host ({_interface(i)})") for a, i in own}
        keeps |= {Keep(ipaddress.ip_network(a), f"a gateway of this host ({_interface(i)})") for a, i in hops
                  if not any(k.net.network_address == a for k in keeps)}
        _cache = (time.monotonic(), tuple(sorted(keeps, key=lambda k: (k.net.version, k.net, k.why))))
        return _cache[1]


def protect(owner: str, keeps: Iterable[Keep]) -> None:
    """Keep these reachable in this process for as long as `owner` needs them (a share's Redis)."""
    with _lock:
        _protected[owner] = tuple(keeps)


def unprotect(owner: str) -> None:
    with _lock:
        _protected.pop(owner, None)


def protected() -> tuple[Keep, ...]:
    with _lock:
        return tuple(k for keeps in _protected.values() for k in keeps)


def resolve(host: str, why: str) -> list[Keep]:
    """Every address a host name or address text stands for, as Keeps; none when it does not resolve."""
    try:
        found = {ipaddress.ip_address(info[4][0].split("%")[0])
                 for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError, ValueError):
        return []
    return [Keep(ipaddress.ip_network(a), why) for a in sorted(found, key=lambda a: (a.version, a))]


def parse_list(text: str, why: str) -> list[Keep]:
    """An ignoreip-style list (addresses, CIDRs, host names; space or comma separated) as Keeps; a host
    name stands for every address it resolves to, as in fail2ban. InputError for anything else."""
    keeps = []
    for word in re.split(r"[\s,]+", text.strip()):
        if not word:
            continue
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            if not _WORD.fullmatch(word):
                raise InputError(f"not an address, CIDR or host name in {why}: {word[:64]!r}") from None
            if not _HOST_NAME.fullmatch(word):
                # fail2ban takes such a word (10.0.0/24, my_host) and matches nothing with it: so do
                # we, rather than refuse every ban of the jail.
                log.warning("%s: %r is not an address, CIDR or host name: left out", why, word[:64])
                continue
            keeps += [Keep(k.net, why, listed=True) for k in resolve(word, why)]
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128 and net.network_address.ipv4_mapped:
            net = ipaddress.ip_network(net.network_address.ipv4_mapped)
        keeps.append(Keep(net, why, listed=True))
    return keeps


class Guard:
    """Everything a ban must not overlap, gathered once for a batch of checks (a rebuild checks every
    held ban: a single address is one set lookup and a comparison of integers per network kept)."""

    def __init__(self, keeps: Sequence[Keep] = ()) -> None:
        self._single: dict[tuple[int, int], Keep] = {}
        self._ranges: list[tuple[int, int, int, Keep]] = []  # networks: version, first and last, as integers
        for k in list(host_keeps()) + list(protected()) + list(keeps):
            first, last = int(k.net.network_address), int(k.net.broadcast_address)
            if first == last:
                self._single.setdefault((k.net.version, first), k)
            else:
                self._ranges.append((k.net.version, first, last, k))

    def refusal(self, net: Network) -> Optional[str]:
        """Why banning `net` would lock out what must stay reachable; None when it would not."""
        version, first = net.version, int(net.network_address)
        if net.prefixlen == net.max_prefixlen:
            found = self._single.get((version, first))
            if found:
                return found.refusal(net)
            last = first
        else:
            last = int(net.broadcast_address)
            for (kept_version, address), k in self._single.items():
                if kept_version == version and first <= address <= last:
                    return k.refusal(net)
        for kept_version, low, high, k in self._ranges:
            if kept_version == version and low <= last and first <= high:
                return k.refusal(net)
        return None

    def refuse(self, nets: Sequence[Network]) -> None:
        """Raise InputError, changing nothing, if any of `nets` must not be banned."""
        for net in nets:
            why = self.refusal(net)
            if why:
                raise InputError(f"refusing to ban {to_text(net)}: {why}")

    def allowed(self, nets: Iterable[Network]) -> list[Network]:
        return [net for net in nets if self.refusal(net) is None]

