"""Routing netlink (NETLINK_ROUTE): dumps of the host's addresses (RTM_GETADDR), routes
(RTM_GETROUTE) and nexthop objects (RTM_GETNEXTHOP), parsed to (address, interface index) pairs,
and of its interfaces' names (RTM_GETLINK); and the one socket that reads them."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Optional

from ..addr import Address
from . import netlink

RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEXTHOP = 18, 22, 26, 106
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA = 4, 5, 9, 18
NHA_OIF, NHA_GATEWAY = 5, 6
_IFINFOMSG = struct.Struct("=BxHiII")  # family, device type, interface index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src length, tos, table, protocol, scope, type, flags
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, interface index
_NHMSG = struct.Struct("=BBBBI")  # family, scope, protocol, reserved, flags
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 16}


def pack_link_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETLINK, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def pack_addr_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETADDR, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def pack_route_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETROUTE, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0))


def pack_nexthop_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETNEXTHOP, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def parse_link_name(payload: bytes) -> Optional[str]:
    """The interface name (IFLA_IFNAME) of one RTM_NEWLINK."""
    for kind, start, end in netlink.attrs(payload, _IFINFOMSG.size, len(payload)):
        if kind == IFLA_IFNAME:
            return payload[start:end].rstrip(b"\0").decode("utf-8", "replace")
    return None


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


def read_host() -> tuple[list[tuple[Address, int]], list[tuple[Address, int]]]:
    """(address, interface index) of this host's own addresses, and of its next hops: each a whole dump
    that no change interrupted."""
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl:
        own = [a for a in map(parse_addr, nl.dump(pack_addr_dump)) if a]
        hops = [h for p in nl.dump(pack_route_dump) for h in parse_route(p)]
        try:
            hops += [h for p in nl.dump(pack_nexthop_dump) for h in parse_nexthop(p)]
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a kernel before nexthop objects (5.3)
                raise
    return own, hops


def read_link_names() -> list[str]:
    """The names of this host's interfaces, in index order."""
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl:
        return [n for n in map(parse_link_name, nl.dump(pack_link_dump)) if n]
