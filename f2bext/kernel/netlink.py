"""The one minimal netlink client f2bext's kernel layers share: messages and attributes packed and
parsed by hand, one request at a time on a socket its owner keeps.

pyroute2 would do, but importing it costs fail2ban-server 13 MiB and each `f2bext` command 0.1 s, and
its ipset client grew fail2ban's memory with every ban. What f2bext asks of netlink is small.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Callable, Iterator


NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER = 0, 4, 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x300
NLM_F_DUMP_INTR = 0x10  # the table changed while it was dumped: the dump may miss or repeat entries
DUMP_TRIES = 5
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version 0, resource id (big-endian) 0
ATTR = struct.Struct("=HH")  # nlattr: length, type
_RECV_SIZE = 1 << 17


def message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(payload), msg_type, flags, seq, 0) + payload


def parse_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, msg_type, _, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield msg_type, seq, data[offset + HEADER.size:offset + length]
        offset += (length + 3) & ~3


def _headers(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, flags, seq) of each message header in a datagram; the payloads are not read."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, msg_type, flags, msg_seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield msg_type, flags, msg_seq
        offset += (length + 3) & ~3


def _ends(data: bytes, seq: int) -> bool:
    """Whether the datagram holds the end of the answer to `seq`, or an error."""
    return any(msg_seq == seq and msg_type in (NLMSG_ERROR, NLMSG_DONE) for msg_type, _, msg_seq in _headers(data))


def interrupted(data: bytes, seq: int) -> bool:
    """Whether a message of the datagram answering `seq` carries NLM_F_DUMP_INTR."""
    return any(msg_seq == seq and flags & NLM_F_DUMP_INTR for _, flags, msg_seq in _headers(data))


def consistent(read: Callable[[], tuple[list[bytes], bool]], tries: int = DUMP_TRIES) -> list[bytes]:
    """The payloads of a dump no change interrupted: `read()` gives (payloads, interrupted) and is tried
    again, up to `tries` times in all, before OSError(EINTR)."""
    for _ in range(tries):
        payloads, was_interrupted = read()
        if not was_interrupted:
            return payloads
    raise OSError(errno.EINTR, f"the dump was interrupted by changes {tries} times in a row")


def attr(kind: int, data: bytes) -> bytes:
    return ATTR.pack(ATTR.size + len(data), kind) + data + bytes(-len(data) % 4)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each netlink attribute's payload within data[start:end]."""
    while start + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, start)
        if length < ATTR.size:
            return
        yield kind & 0x3FFF, start + ATTR.size, start + length  # without the nested and byte order flags
        start += (length + 3) & ~3


class Socket:
    """One netlink socket, one request at a time; answers are read to their end."""

    def __init__(self, protocol: int, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.settimeout(timeout)  # a wedged kernel must not hang the caller
        self.sock.bind((0, 0))
        self.seq = 0
        self.interrupted = False  # whether the last answer carried NLM_F_DUMP_INTR

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Socket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, make: Callable[[int], bytes], needles: tuple[bytes, ...] = ()) -> Iterator[bytes]:
        """Send the request `make(seq)` builds; yield the payloads answering it until its end, raising
        OSError with the kernel's (positive) error code when it refuses.

        With `needles`, a datagram that contains none of them yields nothing: a dump of a large table
        mostly returns what the caller does not want, and one search of the datagram is far cheaper
        than cutting it into messages."""
        self.seq += 1
        self.interrupted = False
        self.sock.send(make(self.seq))
        while True:
            data = self.sock.recv(_RECV_SIZE)
            self.interrupted = self.interrupted or interrupted(data, self.seq)
            if needles and not any(needle in data for needle in needles) and not _ends(data, self.seq):
                continue
            for msg_type, seq, payload in parse_messages(data):
                if seq != self.seq:
                    continue
                if msg_type in (NLMSG_ERROR, NLMSG_DONE):
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code > 0:
                        raise OSError(code, os.strerror(code))
                    return
                yield payload

    def dump(self, make: Callable[[int], bytes]) -> list[bytes]:
        """A whole dump, asked again while a change interrupts it (NLM_F_DUMP_INTR), up to DUMP_TRIES."""
        return consistent(lambda: (list(self.ask(make)), self.interrupted))
