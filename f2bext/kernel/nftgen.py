"""The nf_tables ruleset generation (NFT_MSG_GETGEN), and the socket that reads it. Every nf_tables
transaction, anyone's, moves it: nft, iptables-nft, firewalld, Docker. Reading it is how both backends
know, in microseconds, that no listing is needed."""

from __future__ import annotations

import socket
import struct
import threading

from ..errors import KernelError
from .netlink import NETLINK_NETFILTER, NFGEN, NLM_F_REQUEST, Socket, attrs, message

NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
NFTA_GEN_ID = 1


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
