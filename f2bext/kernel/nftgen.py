"""The nf_tables ruleset generation (NFT_MSG_GETGEN), and the socket that reads it. Every nf_tables
transaction, anyone's, moves it: nft, iptables-nft, firewalld, Docker. Reading it is how both backends
know, in microseconds, that no listing is needed. And one table's flags and owner (NFT_MSG_GETTABLE):
libnftables 1.0.6 lists neither in JSON."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from typing import NamedTuple, Optional

from ..errors import KernelError
from .netlink import NETLINK_NETFILTER, NFGEN, NLM_F_ACK, NLM_F_REQUEST, Socket, attr, attrs, message

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_GETTABLE = (10 << 8) | 1
NFT_MSG_GETGEN = (10 << 8) | 16
NFTA_GEN_ID = 1
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_HANDLE, NFTA_TABLE_OWNER = 1, 2, 4, 7
TABLE_F_DORMANT, TABLE_F_OWNER, TABLE_F_PERSIST = 1, 2, 4
NFPROTO = {"ip": 2, "ip6": 10, "inet": 1, "arp": 3, "bridge": 7, "netdev": 5}


class TableInfo(NamedTuple):
    """A table's flags and, when it is owned, the netlink port id of its owner."""

    flags: int
    owner: Optional[int]
    handle: int

    @property
    def owned(self) -> bool:
        return bool(self.flags & TABLE_F_OWNER)

    @property
    def persist(self) -> bool:
        return bool(self.flags & TABLE_F_PERSIST)


def pack_gettable(seq: int, family: str, name: str) -> bytes:
    payload = NFGEN.pack(NFPROTO[family], 0, 0) + attr(NFTA_TABLE_NAME, name.encode() + b"\0")
    return message(NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_ACK, seq, payload)


def parse_table(payload: bytes) -> TableInfo:
    """An NFT_MSG_NEWTABLE's flags, owner and handle."""
    found = {kind: payload[start:end] for kind, start, end in attrs(payload, NFGEN.size, len(payload))}
    flags = struct.unpack(">L", found[NFTA_TABLE_FLAGS])[0] if len(found.get(NFTA_TABLE_FLAGS, b"")) == 4 else 0
    owner = struct.unpack(">L", found[NFTA_TABLE_OWNER])[0] if len(found.get(NFTA_TABLE_OWNER, b"")) == 4 else None
    handle = struct.unpack(">Q", found[NFTA_TABLE_HANDLE])[0] if len(found.get(NFTA_TABLE_HANDLE, b"")) == 8 else 0
    return TableInfo(flags, owner if flags & TABLE_F_OWNER else None, handle)


def read_table(family: str, name: str) -> Optional[TableInfo]:
    """The table's flags and owner; None when there is no such table."""
    try:
        with Socket(NETLINK_NETFILTER) as nl:
            for payload in nl.ask(lambda seq: pack_gettable(seq, family, name)):
                return parse_table(payload)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise KernelError(f"cannot read table {family} {name}", str(e)) from None
    return None


def pack_getgen(seq: int) -> bytes:
    return message(NFT_MSG_GETGEN, NLM_F_REQUEST, seq, NFGEN.pack(socket.AF_UNSPEC, 0, 0))


def parse_generation(payload: bytes) -> int:
    """NFTA_GEN_ID from an NFT_MSG_NEWGEN's payload (nfgenmsg, then attributes)."""
    for kind, start, _ in attrs(payload, NFGEN.size, len(payload)):
        if kind == NFTA_GEN_ID:
            return struct.unpack_from(">L", payload, start)[0]
    raise OSError("no generation id in the kernel's reply")


class Generation:
    """Reads the ruleset generation on a socket of its own; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Socket | None = None

    def read(self) -> int:
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = Socket(NETLINK_NETFILTER)
                # One message answers GETGEN (no NLM_F_ACK asked): nothing is left unread.
                for payload in self._sock.ask(pack_getgen):
                    return parse_generation(payload)
            raise OSError("the kernel sent no generation")
        except OSError as e:
            raise KernelError("cannot read the nf_tables generation", str(e)) from None
