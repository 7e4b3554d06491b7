"""Set elements over netlink (NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM): one transaction adding or
deleting addresses in a named set, as libnftables would send it, without a command to parse or a cache
to fill. It asks for an echo (NLM_F_ECHO on the batch's first message: the kernel then also sends the
new generation to the sender), so a ban knows from its own answer whether anyone else changed the
ruleset since its last look."""

from __future__ import annotations

import functools
import os
import socket
from typing import Optional, Sequence

from .netlink import (ATTR, ERRNO, HEADER, NETLINK_NETFILTER, NFGEN, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE,
                      NLM_F_REQUEST, NLMSG_ERROR, SOL_NETLINK, Socket, attr, parse_error, refusal)
from .nftgen import NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO, parse_generation

NLM_F_ECHO = 0x8
NFT_MSG_NEWGEN = (10 << 8) | 15
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = (10 << 8) | 12, (10 << 8) | 14
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
OPS = {"add": NFT_MSG_NEWSETELEM, "delete": NFT_MSG_DELSETELEM}
_BATCH = NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
RECV = 65536
SEQ = 0x10000000  # our sequence numbers on the socket, apart from nftbatch's


@functools.lru_cache(maxsize=8)
def _element_head(size: int) -> bytes:
    """The three attribute headers before a key of `size` bytes: they depend on nothing else."""
    value = ATTR.size + size
    return (ATTR.pack(3 * ATTR.size + size + -size % 4, NFTA_LIST_ELEM | NLA_F_NESTED)
            + ATTR.pack(2 * ATTR.size + size + -size % 4, NFTA_SET_ELEM_KEY | NLA_F_NESTED)
            + ATTR.pack(value, NFTA_DATA_VALUE))


# Keys per message of a bulk load: the elements' attribute length is 16 bits (65,535 bytes), and an
# IPv6 element takes 28 bytes (an IPv4 one 16).
BULK_KEYS = 2048


def pack_elements(keys: Sequence[bytes]) -> bytes:
    """The NFTA_LIST_ELEMs of `keys`, all of one size, joined in C: a load packs 100,000 of them."""
    if not keys:
        return b""
    size = len(keys[0])
    if any(len(k) != size for k in keys):
        raise ValueError("set keys of one transaction differ in size")
    head, pad = _element_head(size), bytes(-size % 4)
    return head + (pad + head).join(keys) + pad


def messages(keys: Sequence[bytes]) -> int:
    """How many messages a transaction of `keys` takes: BULK_KEYS to a message, one at least."""
    return max(1, -(-len(keys) // BULK_KEYS))


def pack_setelem_batch(seq: int, op: str, family: str, table: str, name: str, keys: Sequence[bytes],
                       echo: bool = True) -> bytes:
    """One nf_tables transaction adding (`add`: present ones are no error) or deleting (`delete`: an
    absent one fails it whole) `keys` in set `name`, BULK_KEYS to a message: messages seq + 1 to
    seq + messages(keys), each acknowledged; with `echo` the change and the new generation are echoed
    with `seq + 1`. A bulk load asks for no echo: the kernel would send every element back."""
    msg_type, flags, head = _head(op, family, table, name)
    if not echo:
        flags &= ~NLM_F_ECHO
    parts = [HEADER.pack(HEADER.size + len(_BATCH), NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0), _BATCH]
    count = messages(keys)
    for i in range(count):
        elements = pack_elements(keys[i * BULK_KEYS:(i + 1) * BULK_KEYS])
        size = HEADER.size + len(head) + ATTR.size + len(elements)
        parts += [HEADER.pack(size, msg_type, flags, seq + 1 + i, 0), head,
                  ATTR.pack(ATTR.size + len(elements), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED), elements]
    parts += [HEADER.pack(HEADER.size + len(_BATCH), NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1 + count, 0), _BATCH]
    return b"".join(parts)


@functools.lru_cache(maxsize=256)
def _head(op: str, family: str, table: str, name: str) -> tuple[int, int, bytes]:
    """What every change of one set's elements begins with: packed once per set (the ban path is hot)."""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | (NLM_F_CREATE if op == "add" else 0)
    return OPS[op], flags, (NFGEN.pack(NFPROTO[family], 0, 0) + attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                            + attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))


def read_answer(sock: socket.socket, seq: int, buf: bytearray, count: int = 1) -> Optional[int]:
    """Read the answers to the batch sent with `seq` (of `count` messages) to their end, on a socket
    another reader may share (what answers another seq is the rest of an answer given up on). The
    generation the transaction echoed; None when it changed nothing (every element there already) or
    was sent without an echo. OSError when the kernel refused it (then none of it was made)."""
    generation, view, last = None, memoryview(buf), seq + count
    refused: Optional[OSError] = None  # a message's refusal: the others' answers still come, and are read
    while True:
        size, offset = sock.recv_into(buf), 0
        while offset + HEADER.size <= size:  # every message of the datagram, read in place
            length, msg_type, flags, got, _ = HEADER.unpack_from(buf, offset)
            if length < HEADER.size:
                break
            if msg_type == NFT_MSG_NEWGEN and got == seq + 1:
                generation = parse_generation(bytes(view[offset + HEADER.size:offset + length]))
            elif msg_type == NLMSG_ERROR and seq <= got <= last:
                if ERRNO.unpack_from(buf, offset + HEADER.size)[0] < 0 and refused is None:
                    refused = refusal(*parse_error(msg_type, flags, bytes(view[offset + HEADER.size:offset + length])))
                if got == seq and refused is not None:
                    raise refused  # the batch itself refused: no message of it was read
                if got == last:
                    if refused is not None:
                        raise refused
                    return generation
            offset += (length + 3) & ~3


SMALL = 4096  # a datagram any socket's send buffer takes (a ban's transaction is about 120 bytes)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def make_room(sock: socket.socket, size: int) -> None:
    """Let one datagram of `size` bytes through `sock`: netlink refuses one larger than the socket's
    send buffer (212,992 bytes by default; 14,000 IPv4 bans at once are 224 KB). libnftables grows
    its own buffer the same way, and never shrinks it."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32 >= size:  # the kernel's own test
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)  # root: past net.core.wmem_max; doubled
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


ANSWER_ROOM = 1024  # bytes of receive buffer per acknowledged message, as libnftables reserves them
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
NETLINK_CAP_ACK = 10


def make_answer_room(sock: socket.socket, count: int) -> None:
    """Room in the receive buffer for the answers to `count` messages, which the kernel queues while
    the batch is still being sent: a rebuild of 500,000 bans is 500 of them, past the default buffer."""
    size = count * ANSWER_ROOM
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= size:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def netfilter_sockets() -> set[int]:
    """This process's open NETLINK_NETFILTER sockets, by file descriptor."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.family == socket.AF_NETLINK and sock.proto == NETLINK_NETFILTER:
                    found.add(int(name))
        except OSError:
            continue  # closed meanwhile
    return found


class Elements:
    """The socket our changes are sent on, kept open: with an owned table, the one that owns it."""

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self._seq = SEQ
        self._span = 3  # seqs the last transaction used: its begin, messages and end
        self._buf = bytearray(RECV)

    def own(self) -> None:
        if self.sock is None:
            sock = Socket(NETLINK_NETFILTER).sock
            try:  # a refusal's answer without the whole request echoed: a refused load is 30 KB a message
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                pass  # a kernel before 4.2: the answers are larger, and still read whole
            self.sock = sock

    def change(self, op: str, family: str, table: str, name: str, keys: Sequence[bytes],
               echo: bool = True) -> Optional[int]:
        """Send one transaction and read its answer to the end; see read_answer. Past BULK_KEYS it goes
        without an echo, which would send every element back (more than a socket's buffer holds)."""
        assert self.sock is not None
        count = messages(keys)
        self._seq = SEQ + (self._seq + self._span - SEQ) % (1 << 24)  # past every seq the last one used
        self._span = count + 2
        batch = pack_setelem_batch(self._seq, op, family, table, name, keys, echo and count == 1)
        if len(batch) > SMALL:
            make_room(self.sock, len(batch))
        self.sock.send(batch)
        return read_answer(self.sock, self._seq, self._buf, count)

    def load(self, family: str, table: str, name: str, keys: Sequence[bytes]) -> None:
        """Add many keys, BULK_KEYS to a transaction, each answered before the next is sent; no echo."""
        for i in range(0, len(keys), BULK_KEYS):
            self.change("add", family, table, name, keys[i:i + BULK_KEYS], echo=False)
