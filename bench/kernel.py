"""Reading the kernel for the benchmark: how many bans each action enforces right now, and a fast
way to fill a conntrack table.

Counting goes to netlink directly (an nf_tables set-element or rule dump, only counted, never
parsed into Python objects): `nft -j list set` on a 100,000-element set takes a second of CPU, which
would compete with the fail2ban-server being measured on a 2-core machine.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
from typing import Iterable, Optional, Sequence

from f2bext.kernel import netlink
from f2bext.kernel.netlink import HEADER, NETLINK_NETFILTER, NLM_F_ACK, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR

NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 1, 2, 10
NFT_MSG_GETRULE, NFT_MSG_GETSETELEM = (10 << 8) | 7, (10 << 8) | 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NLM_F_CREATE = 0x400


def _strz(text: str) -> bytes:
    return text.encode() + b"\0"


class Netfilter:
    """One NETLINK_NETFILTER socket, opened in the caller's network namespace and staying there."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.settimeout(10)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _dump(self, msg_type: int, family: int, attrs: bytes, count_attr: Optional[int]) -> int:
        """Messages answering a dump (count_attr None), or the nested attributes of type
        count_attr's children summed over them; 0 when the object does not exist."""
        self.seq += 1
        self.sock.send(netlink.message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, self.seq, netlink.NFGEN.pack(family, 0, 0) + attrs))
        total = 0
        while True:
            data = self.sock.recv(1 << 20)
            offset = 0
            while offset + HEADER.size <= len(data):
                length, kind, _, seq, _ = HEADER.unpack_from(data, offset)
                if length < HEADER.size:
                    break
                if seq == self.seq:
                    if kind == NLMSG_DONE:
                        return total
                    if kind == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + HEADER.size)[0]
                        if code == 0:
                            return total
                        return 0  # ENOENT and the like: nothing there (yet)
                    if count_attr is None:
                        total += 1
                    else:
                        total += _count_children(data, offset + HEADER.size + netlink.NFGEN.size, offset + length, count_attr)
                offset += (length + 3) & ~3

    def set_elements(self, family: int, table: str, name: str) -> int:
        attrs = netlink.attr(NFTA_SET_ELEM_LIST_TABLE, _strz(table)) + netlink.attr(NFTA_SET_ELEM_LIST_SET, _strz(name))
        return self._dump(NFT_MSG_GETSETELEM, family, attrs, NFTA_SET_ELEM_LIST_ELEMENTS)

    def rules(self, family: int, table: str, chain: str) -> int:
        attrs = netlink.attr(NFTA_RULE_TABLE, _strz(table)) + netlink.attr(NFTA_RULE_CHAIN, _strz(chain))
        return self._dump(NFT_MSG_GETRULE, family, attrs, None)


def _count_children(data: bytes, start: int, end: int, kind: int) -> int:
    return sum(1 for k, s, e in netlink.attrs(data, start, end) if k == kind for _ in netlink.attrs(data, s, e))


def ipset_entries(argv_prefix: Sequence[str], names: Iterable[str]) -> int:
    """Sum of `Number of entries` of the named ipsets (missing ones count 0); header only, cheap."""
    total = 0
    for name in names:
        out = subprocess.run([*argv_prefix, "ipset", "list", "-t", name], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Number of entries:"):
                total += int(line.split(":")[1])
    return total


# ---- conntrack --------------------------------------------------------------------------------

IPCTNL_MSG_CT_NEW = 1 << 8
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
IPS_CONFIRMED_SEEN_REPLY_ASSURED = (1 << 1) | (1 << 2) | (1 << 3)


def _tuple(kind: int, src: ipaddress._BaseAddress, dst: ipaddress._BaseAddress, sport: int, dport: int) -> bytes:
    v4 = src.version == 4
    ip = netlink.attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, src.packed) + netlink.attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, dst.packed)
    proto = (netlink.attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP])) + netlink.attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
             + netlink.attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return netlink.nest(kind, netlink.nest(CTA_TUPLE_IP, ip), netlink.nest(CTA_TUPLE_PROTO, proto))


def ct_new_message(seq: int, src: str, dst: str, sport: int, dport: int, timeout: int = 3600) -> bytes:
    """An established TCP flow src:sport -> dst:dport, as `conntrack -I` would create it."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = (netlink.NFGEN.pack(NFPROTO_IPV4 if s.version == 4 else NFPROTO_IPV6, 0, 0)
            + _tuple(CTA_TUPLE_ORIG, s, d, sport, dport) + _tuple(CTA_TUPLE_REPLY, d, s, dport, sport)
            + netlink.attr(CTA_STATUS, struct.pack("!I", IPS_CONFIRMED_SEEN_REPLY_ASSURED))
            + netlink.attr(CTA_TIMEOUT, struct.pack("!I", timeout))
            + netlink.nest(CTA_PROTOINFO, netlink.nest(CTA_PROTOINFO_TCP, netlink.attr(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED])))))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return netlink.message(IPCTNL_MSG_CT_NEW, flags, seq, body)


def ct_insert(flows: Sequence[tuple[str, str, int, int]], window: int = 256) -> int:
    """Create the flows (src, dst, sport, dport) over one ctnetlink socket in the caller's namespace,
    `window` requests in flight at a time; returns how many the kernel refused."""
    nl = Netfilter()
    refused = pending = 0
    try:
        for i, flow in enumerate(flows, 1):
            nl.sock.send(ct_new_message(i, *flow))
            pending += 1
            if pending >= window or i == len(flows):
                while pending:
                    data = nl.sock.recv(1 << 16)
                    offset = 0
                    while offset + HEADER.size <= len(data):
                        length, kind = HEADER.unpack_from(data, offset)[:2]
                        if kind == NLMSG_ERROR:
                            pending -= 1
                            refused += struct.unpack_from("=i", data, offset + HEADER.size)[0] != 0
                        offset += (length + 3) & ~3
    finally:
        nl.close()
    return refused
