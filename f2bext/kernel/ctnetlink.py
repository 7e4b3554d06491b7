"""Conntrack over netlink (ctnetlink): dump requests filtered in the kernel, a dumped entry's tuple
and handle, deletes by tuple or handle; and the one socket that carries them."""

from __future__ import annotations

import errno
import ipaddress
import struct
from typing import Iterator, NamedTuple, Optional

from ..addr import Address
from . import netlink
from .netlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST

IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0x101, 0x102  # NFNL_SUBSYS_CTNETLINK << 8 | message
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_PROTOINFO, CTA_ID, CTA_ZONE, CTA_FILTER = 1, 2, 4, 12, 18, 25
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS = 1
FILTER_IP_SRC, FILTER_IP_DST, FILTER_PROTO_NUM, FILTER_PROTO_DST_PORT = 1 << 0, 1 << 1, 1 << 3, 1 << 5
# enum tcp_conntrack, in the words `conntrack -L` prints them
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
              "CLOSE", "SYN_SENT2")


class CtFilter(NamedTuple):
    """A kernel-side filter for a conntrack dump, on the original direction; None matches anything."""

    family: int
    saddr: Optional[str] = None
    daddr: Optional[str] = None
    protocol: Optional[int] = None
    dport: Optional[int] = None


class CtTuple(NamedTuple):
    """One direction of a conntrack flow; no ports for protocols without them."""

    protocol: int
    src: Address
    dst: Address
    sport: Optional[int] = None
    dport: Optional[int] = None


def _ip_attrs(src: Optional[Address], dst: Optional[Address]) -> bytes:
    """CTA_TUPLE_IP's contents: the addresses given."""
    out = b""
    for addr, v4, v6 in ((src, CTA_IP_V4_SRC, CTA_IP_V6_SRC), (dst, CTA_IP_V4_DST, CTA_IP_V6_DST)):
        if addr is not None:
            out += netlink.attr(v4 if addr.version == 4 else v6, addr.packed)
    return out


def pack_ct_dump_request(seq: int, wanted: CtFilter) -> bytes:
    """IPCTNL_MSG_CT_GET dump of `wanted.family`'s entries, filtered in the kernel by CTA_FILTER."""
    family, saddr, daddr, proto, dport = wanted
    ip_part = _ip_attrs(saddr and ipaddress.ip_address(saddr), daddr and ipaddress.ip_address(daddr))
    proto_part = b"" if proto is None else netlink.attr(CTA_PROTO_NUM, bytes([proto]))
    proto_part += b"" if dport is None else netlink.attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    flags = ((FILTER_IP_SRC if saddr else 0) | (FILTER_IP_DST if daddr else 0)
             | (0 if proto is None else FILTER_PROTO_NUM) | (0 if dport is None else FILTER_PROTO_DST_PORT))
    attrs = b""
    if flags:  # without any, the family in the header is the filter
        tuple_part = (netlink.nest(CTA_TUPLE_IP, ip_part) if ip_part else b"") + \
            (netlink.nest(CTA_TUPLE_PROTO, proto_part) if proto_part else b"")
        attrs = netlink.nest(CTA_TUPLE_ORIG, tuple_part) + \
            netlink.nest(CTA_FILTER, netlink.attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags)))
    return netlink.message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, netlink.NFGEN.pack(family, 0, 0) + attrs)


def pack_tuple(flow: CtTuple, kind: int = CTA_TUPLE_ORIG) -> bytes:
    """CTA_TUPLE_ORIG (or `kind`) naming `flow`: the kernel finds an entry by it in either direction."""
    proto = [netlink.attr(CTA_PROTO_NUM, bytes([flow.protocol]))]
    if flow.sport is not None and flow.dport is not None:
        proto += [netlink.attr(CTA_PROTO_SRC_PORT, struct.pack("!H", flow.sport)),
                  netlink.attr(CTA_PROTO_DST_PORT, struct.pack("!H", flow.dport))]
    return netlink.nest(kind, netlink.nest(CTA_TUPLE_IP, _ip_attrs(flow.src, flow.dst)),
                        netlink.nest(CTA_TUPLE_PROTO, *proto))


def pack_ct_delete(seq: int, family: int, attrs: bytes) -> bytes:
    return netlink.message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, netlink.NFGEN.pack(family, 0, 0) + attrs)


def parse_ct_orig(payload: bytes) -> Optional[CtTuple]:
    """The original tuple of a dumped entry (an nfgenmsg and its attributes); None if it has none."""
    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload)):
        if kind != CTA_TUPLE_ORIG:
            continue
        found: dict[tuple[int, int], bytes] = {}  # (CTA_TUPLE_IP or _PROTO, field) -> value
        for part, p_start, p_end in netlink.attrs(payload, start, end):
            for field, f_start, f_end in netlink.attrs(payload, p_start, p_end):
                found[(part, field)] = payload[f_start:f_end]
        src = found.get((CTA_TUPLE_IP, CTA_IP_V4_SRC)) or found.get((CTA_TUPLE_IP, CTA_IP_V6_SRC))
        dst = found.get((CTA_TUPLE_IP, CTA_IP_V4_DST)) or found.get((CTA_TUPLE_IP, CTA_IP_V6_DST))
        proto = found.get((CTA_TUPLE_PROTO, CTA_PROTO_NUM))
        if not (src and dst and proto):
            return None
        sport, dport = (found.get((CTA_TUPLE_PROTO, field)) for field in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT))
        return CtTuple(proto[0], ipaddress.ip_address(src), ipaddress.ip_address(dst),
                       sport and int.from_bytes(sport, "big"), dport and int.from_bytes(dport, "big"))
    return None


def parse_ct_tcp_state(payload: bytes) -> str:
    """A dumped entry's TCP state as `conntrack -L` names it; "" when it has none (not TCP)."""
    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload)):
        if kind != CTA_PROTOINFO:
            continue
        for part, p_start, p_end in netlink.attrs(payload, start, end):
            for field, f_start, f_end in netlink.attrs(payload, p_start, p_end):
                if part == CTA_PROTOINFO_TCP and field == CTA_PROTOINFO_TCP_STATE and f_end > f_start:
                    state = payload[f_start]
                    return TCP_STATES[state] if state < len(TCP_STATES) else str(state)
    return ""


def parse_ct_handle(payload: bytes) -> bytes:
    """A dumped entry's CTA_TUPLE_ORIG, CTA_ID and CTA_ZONE, verbatim: sent back, they delete exactly
    that entry (the id makes the kernel refuse a newer flow that reuses the tuple)."""
    return b"".join(payload[start - netlink.ATTR.size:end] + bytes(-end % 4)
                    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload))
                    if kind in (CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE))


class Conntrack(netlink.Socket):
    """A ctnetlink socket in the caller's network namespace."""

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER)

    def entries(self, wanted: CtFilter, needles: tuple[bytes, ...] = ()) -> Iterator[bytes]:
        """The payloads of a dump of the entries `wanted` passes (none from datagrams without any of
        `needles`); read them to the end before the next request."""
        return self.ask(lambda seq: pack_ct_dump_request(seq, wanted), needles)

    def delete(self, family: int, attrs: bytes) -> bool:
        """Delete the entry `attrs` name; False when there is none."""
        try:
            for _ in self.ask(lambda seq: pack_ct_delete(seq, family, attrs)):
                pass
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True
