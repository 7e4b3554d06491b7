"""Reading the kernel for the benchmark: how many bans each action enforces right now, and a way to
fill a conntrack table; over f2bext.kernel's netlink transport and ctnetlink messages.

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

from f2bext.kernel import netlink, nftelem
from f2bext.kernel.ctnetlink import CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CtTuple, pack_tuple
from f2bext.kernel.netlink import NETLINK_NETFILTER, NFGEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST

NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 1, 2, 10
NFT_MSG_GETRULE, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = (10 << 8) | 7, (10 << 8) | 12, (10 << 8) | 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2


def _strz(text: str) -> bytes:
    return text.encode() + b"\0"


class Netfilter(netlink.Socket):
    """One NETLINK_NETFILTER socket, opened in the caller's network namespace and staying there."""

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER)

    def _count(self, msg_type: int, family: int, attrs: bytes, count_attr: Optional[int]) -> int:
        """Messages answering a dump (count_attr None), or the nested attributes of type
        count_attr's children summed over them; 0 when the object does not exist."""
        request = NFGEN.pack(family, 0, 0) + attrs
        total = 0
        try:
            for payload in self.ask(lambda seq: netlink.message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, request)):
                total += 1 if count_attr is None else _count_children(payload, NFGEN.size, len(payload), count_attr)
        except OSError as e:
            if e.errno is None:  # no answer at all
                raise
            return 0  # ENOENT and the like: nothing there (yet)
        return total

    def set_elements(self, family: int, table: str, name: str) -> int:
        attrs = netlink.attr(NFTA_SET_ELEM_LIST_TABLE, _strz(table)) + netlink.attr(NFTA_SET_ELEM_LIST_SET, _strz(name))
        return self._count(NFT_MSG_GETSETELEM, family, attrs, NFTA_SET_ELEM_LIST_ELEMENTS)

    def held_keys(self, family: int, table: str, name: str, keys: Sequence[bytes], per_message: int = 1) -> int:
        """How many of `keys` (packed addresses of one size) set `name` holds, by lookups: GETSETELEM
        messages of `per_message` keys each, acknowledged, `per_send` to a datagram. The kernel answers
        each key found with its element, and stops a message at the first key it lacks: with one key a
        message this is the exact count, with many it is exact when every key is there (and less
        otherwise), at a fraction of the cost. About 64 keys go in a datagram: the kernel queues an
        answer for each before this reads any. A dump of a hash set walks it from the start again for
        each datagram of its answer: 56 s for 1,000,000 elements, where lookups take about a second."""
        head = (NFGEN.pack(family, 0, 0) + netlink.attr(NFTA_SET_ELEM_LIST_TABLE, _strz(table))
                + netlink.attr(NFTA_SET_ELEM_LIST_SET, _strz(name)))
        held = 0
        step = per_message * max(1, 64 // per_message)
        for at in range(0, len(keys), step):
            first = self.seq + 1
            bodies = [head + netlink.nest(NFTA_SET_ELEM_LIST_ELEMENTS, nftelem.pack_elements(keys[k:k + per_message]))
                      for k in range(at, min(at + step, len(keys)), per_message)]
            self.seq += len(bodies)
            self.sock.send(b"".join(netlink.message(NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_ACK, first + i, body)
                                    for i, body in enumerate(bodies)))
            answered = 0
            while answered < len(bodies):
                data = self._recv()
                for msg_type, _, seq in netlink._headers(data):
                    if not first <= seq < first + len(bodies):
                        continue  # the rest of an earlier answer
                    if msg_type == netlink.NLMSG_ERROR:  # the acknowledgement, or ENOENT: the message's end
                        answered += 1
                    elif msg_type == NFT_MSG_NEWSETELEM:
                        held += 1
        return held

    def rules(self, family: int, table: str, chain: str) -> int:
        attrs = netlink.attr(NFTA_RULE_TABLE, _strz(table)) + netlink.attr(NFTA_RULE_CHAIN, _strz(chain))
        return self._count(NFT_MSG_GETRULE, family, attrs, None)


def _count_children(data: bytes, start: int, end: int, kind: int) -> int:
    """Children of the attributes of type `kind`, walked by their lengths only: a poll of 100,000 set
    elements through netlink.attrs took 0.6 s of the core fail2ban-server shares."""
    total = 0
    length_of = netlink.ATTR.unpack_from
    for k, s, e in netlink.attrs(data, start, end):
        while k == kind and s + netlink.ATTR.size <= e:
            length = length_of(data, s)[0]
            if length < netlink.ATTR.size:
                break
            total += 1
            s += (length + 3) & ~3
    return total


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
CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 3, 4, 7
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
IPS_CONFIRMED_SEEN_REPLY_ASSURED = (1 << 1) | (1 << 2) | (1 << 3)


def ct_new_message(seq: int, src: str, dst: str, sport: int, dport: int, timeout: int = 3600) -> bytes:
    """An established TCP flow src:sport -> dst:dport, as `conntrack -I` would create it."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = (NFGEN.pack(NFPROTO_IPV4 if s.version == 4 else NFPROTO_IPV6, 0, 0)
            + pack_tuple(CtTuple(socket.IPPROTO_TCP, s, d, sport, dport), CTA_TUPLE_ORIG)
            + pack_tuple(CtTuple(socket.IPPROTO_TCP, d, s, dport, sport), CTA_TUPLE_REPLY)
            + netlink.attr(CTA_STATUS, struct.pack("!I", IPS_CONFIRMED_SEEN_REPLY_ASSURED))
            + netlink.attr(CTA_TIMEOUT, struct.pack("!I", timeout))
            + netlink.nest(CTA_PROTOINFO, netlink.nest(CTA_PROTOINFO_TCP, netlink.attr(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED])))))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return netlink.message(IPCTNL_MSG_CT_NEW, flags, seq, body)


def ct_insert(flows: Sequence[tuple[str, str, int, int]]) -> int:
    """Create the flows (src, dst, sport, dport) over one ctnetlink socket in the caller's namespace;
    returns how many the kernel refused."""
    refused = 0
    with Netfilter() as nl:
        for flow in flows:
            try:
                for _ in nl.ask(lambda seq: ct_new_message(seq, *flow)):
                    pass
            except OSError as e:
                if e.errno is None:  # no answer at all
                    raise
                refused += 1
    return refused
