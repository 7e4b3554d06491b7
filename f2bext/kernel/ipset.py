"""ipset over netlink (NFNL_SUBSYS_IPSET): one element added or deleted, many added at once, every
set's header listed; and the one socket that carries them, kept open across requests."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from typing import Callable, Iterable, Optional, Sequence

from ..addr import Network
from . import netlink

NFNL_SUBSYS_IPSET = 6
IPSET_PROTOCOL = 7
IPSET_CMD_LIST, IPSET_CMD_ADD, IPSET_CMD_DEL = 7, 9, 10
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_TYPENAME, IPSET_ATTR_FAMILY = 1, 2, 3, 5
IPSET_ATTR_FLAGS, IPSET_ATTR_DATA, IPSET_ATTR_ADT, IPSET_ATTR_LINENO = 6, 7, 8, 9
IPSET_ATTR_IP, IPSET_ATTR_CIDR, IPSET_ATTR_MAXELEM, IPSET_ATTR_ELEMENTS = 1, 3, 19, 24
IPSET_ATTR_IPADDR_IPV4, IPSET_ATTR_IPADDR_IPV6 = 1, 2
IPSET_FLAG_LIST_HEADER = 1 << 2
NFPROTO_FAMILIES = {2: "inet", 10: "inet6"}
IPSET_ERRORS = {4097: "protocol error", 4102: "the set is of another type", 4106: "the set is of another family",
                4109: "not an IPv4 address", 4110: "not an IPv6 address", 4352: "the set is full (maxelem)"}


def _ipset_msg(cmd: int, flags: int, seq: int, body: bytes) -> bytes:
    return netlink.message(NFNL_SUBSYS_IPSET << 8 | cmd, netlink.NLM_F_REQUEST | flags, seq,
                           netlink.NFGEN.pack(socket.AF_INET, 0, 0)
                           + netlink.attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + body)


def pack_ipset_change(seq: int, op: str, name: str, net: Network) -> bytes:
    """IPSET_CMD_ADD ("add") or IPSET_CMD_DEL ("delete") of one network; without NLM_F_EXCL the kernel
    takes present (or absent) as done."""
    kind = IPSET_ATTR_IPADDR_IPV4 if net.version == 4 else IPSET_ATTR_IPADDR_IPV6
    data = netlink.nest(IPSET_ATTR_DATA,
                        netlink.nest(IPSET_ATTR_IP, netlink.attr(kind | netlink.NLA_F_NET_BYTEORDER,
                                                                 net.network_address.packed)),
                        netlink.attr(IPSET_ATTR_CIDR | netlink.NLA_F_NET_BYTEORDER, bytes([net.prefixlen])))
    cmd = {"add": IPSET_CMD_ADD, "delete": IPSET_CMD_DEL}[op]
    return _ipset_msg(cmd, netlink.NLM_F_ACK, seq, netlink.attr(IPSET_ATTR_SETNAME, name.encode() + b"\0") + data)


BULK = 2_000  # elements per message: an attribute holds at most 64 KiB, 2,000 IPv6 addresses 56 KiB
_LENGTH = {4: 4, 6: 16}


def _element(version: int) -> bytes:
    """The head of one element of a bulk add, its address's bytes to follow: IPSET_ATTR_DATA holding
    IPSET_ATTR_IP holding the address (no CIDR: a hash:net set takes the host's own prefix)."""
    kind = (IPSET_ATTR_IPADDR_IPV4 if version == 4 else IPSET_ATTR_IPADDR_IPV6) | netlink.NLA_F_NET_BYTEORDER
    size = netlink.ATTR.size + _LENGTH[version]
    return (netlink.ATTR.pack(size + 2 * netlink.ATTR.size, IPSET_ATTR_DATA | netlink.NLA_F_NESTED)
            + netlink.ATTR.pack(size + netlink.ATTR.size, IPSET_ATTR_IP | netlink.NLA_F_NESTED)
            + netlink.ATTR.pack(size, kind))


_ELEMENT = {4: _element(4), 6: _element(6)}


def pack_ipset_adds(seq: int, name: str, version: int, packed: Sequence[bytes]) -> bytes:
    """One IPSET_CMD_ADD of many single addresses (each `packed`, as inet_pton gives it) in one message,
    as `ipset restore` sends them: IPSET_ATTR_ADT holds an IPSET_ATTR_DATA per element, and the kernel
    wants IPSET_ATTR_LINENO beside it. Present ones are not an error (no NLM_F_EXCL)."""
    if any(len(p) != _LENGTH[version] for p in packed):
        raise ValueError(f"not {len(packed)} IPv{version} addresses")
    head = _ELEMENT[version]
    adt = netlink.attr(IPSET_ATTR_ADT | netlink.NLA_F_NESTED, b"".join([head + p for p in packed]))
    return _ipset_msg(IPSET_CMD_ADD, netlink.NLM_F_ACK, seq, netlink.attr(IPSET_ATTR_SETNAME, name.encode() + b"\0")
                      + netlink.attr(IPSET_ATTR_LINENO, struct.pack("=I", 0)) + adt)


def pack_ipset_headers(seq: int) -> bytes:
    """A dump of every set's header, no members: what `ipset list -t` prints."""
    flags = netlink.attr(IPSET_ATTR_FLAGS | netlink.NLA_F_NET_BYTEORDER, struct.pack(">I", IPSET_FLAG_LIST_HEADER))
    return _ipset_msg(IPSET_CMD_LIST, netlink.NLM_F_DUMP, seq, flags)


def parse_ipset_header(payload: bytes) -> Optional[tuple[str, tuple[str, str, int, int]]]:
    """One dumped header -> (set name, (type, family, maxelem, number of entries)), as parse_sets."""
    found: dict[int, bytes] = {}
    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload)):
        if kind == IPSET_ATTR_DATA:
            for inner, i_start, i_end in netlink.attrs(payload, start, end):
                if inner in (IPSET_ATTR_MAXELEM, IPSET_ATTR_ELEMENTS):
                    found[0x100 | inner] = payload[i_start:i_end]
        else:
            found[kind] = payload[start:end]
    if IPSET_ATTR_SETNAME not in found:
        return None  # a member message: none are asked for

    def text(kind: int) -> str:
        return found.get(kind, b"").split(b"\0", 1)[0].decode(errors="replace")

    def number(kind: int) -> int:
        return int.from_bytes(found.get(0x100 | kind, b""), "big")
    family = NFPROTO_FAMILIES.get(found.get(IPSET_ATTR_FAMILY, b"\0")[0], "")
    return text(IPSET_ATTR_SETNAME), (text(IPSET_ATTR_TYPENAME), family, number(IPSET_ATTR_MAXELEM),
                                      number(IPSET_ATTR_ELEMENTS))


def ipset_error(e: OSError) -> str:
    if e.errno is None:
        return str(e) or "no answer"  # a timeout
    if e.errno in IPSET_ERRORS:
        return IPSET_ERRORS[e.errno]
    return "no such set" if e.errno == errno.ENOENT else e.strerror or os.strerror(e.errno)


class Ipset:
    """The ipset netlink socket, opened at first use and kept (no socket per ban); safe across threads.
    Refusals are OSError with the kernel's code: ipset_error says it in words."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Optional[netlink.Socket] = None

    def headers(self) -> dict[str, tuple[str, str, int, int]]:
        """{set name: (type, family, maxelem, number of entries)} of every set: `ipset list -t`."""
        return dict(filter(None, map(parse_ipset_header, self._ask(pack_ipset_headers))))

    def change(self, op: str, name: str, net: Network) -> None:
        self._ask(lambda seq: pack_ipset_change(seq, op, name, net))

    def add_many(self, name: str, version: int, packed: Iterable[bytes]) -> None:
        """Add single addresses (inet_pton's bytes) BULK to a message, one answer each."""
        chunk: list[bytes] = []
        for p in packed:
            chunk.append(p)
            if len(chunk) == BULK:
                self._ask(lambda seq: pack_ipset_adds(seq, name, version, chunk))
                chunk = []
        if chunk:
            self._ask(lambda seq: pack_ipset_adds(seq, name, version, chunk))

    def _ask(self, make: Callable[[int], bytes]) -> list[bytes]:
        with self._lock:
            if self._sock is None:
                self._sock = netlink.Socket(netlink.NETLINK_NETFILTER)
            try:
                return list(self._sock.ask(make))
            except OSError as e:
                if e.errno is None or e.errno < 4096:  # not ipset's own refusal: the socket may be mid-answer
                    self._sock.close()
                    self._sock = None
                raise
