"""No lockouts: never ban this host's own addresses (or a network holding one), whoever asks."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from typing import Sequence

from . import netlink
from .addr import Network, to_text
from .errors import InputError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_REFRESH = 5.0  # seconds; addresses change rarely, and a ban must stay cheap
_lock = threading.Lock()
_cache: tuple[float, list[tuple[Address, int]]] = (0.0, [])

RTM_GETADDR = 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index


def pack_addr_dump(seq: int) -> bytes:
    return netlink.message(RTM_GETADDR, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq,
                           _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def parse_addr(payload: bytes) -> tuple[Address, int] | None:
    """(address, interface index) of one RTM_NEWADDR. IFA_LOCAL is the host's own address where it
    differs (point-to-point links name the peer in IFA_ADDRESS)."""
    family, _, _, _, index = _IFADDRMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    found = {kind: payload[start:end] for kind, start, end in netlink.attrs(payload, _IFADDRMSG.size, len(payload))
             if kind in (IFA_ADDRESS, IFA_LOCAL)}
    packed = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    return (ipaddress.ip_address(packed), index) if packed else None


def local_addresses() -> list[tuple[Address, int]]:
    """(address, interface index) for every address of this network namespace, refreshed every few seconds."""
    global _cache
    with _lock:
        if time.monotonic() - _cache[0] < _REFRESH:
            return _cache[1]
        with netlink.Socket(netlink.NETLINK_ROUTE) as nl:
            found = [a for a in map(parse_addr, nl.ask(pack_addr_dump)) if a]
        _cache = (time.monotonic(), found)
        return found


def _interface(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return "?"  # gone since the dump


def refuse_own(nets: Sequence[Network]) -> None:
    """Raise InputError, changing nothing, if any network holds one of this host's addresses."""
    own = local_addresses()
    for net in nets:
        for addr, index in own:
            if addr.version == net.version and addr in net:
                raise InputError(f"refusing to ban {to_text(net)}: it holds {addr}, an address of this host "
                                 f"({_interface(index)})")
