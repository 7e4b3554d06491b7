"""The one minimal netlink client f2bext's kernel layers share: messages and attributes packed and
parsed by hand, one request at a time on a socket its owner keeps.

pyroute2 would do, but importing it costs fail2ban-server 13 MiB and each `f2bext` command 0.1 s, and
its ipset client grew fail2ban's memory with every ban. What f2bext asks of netlink is small; what
pyroute2 checks of the answers, this checks too: a dump a change interrupted (NLM_F_DUMP_INTR) is
asked again, a refusal carries the kernel's own words (extended ack), and no datagram is cut short.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
from typing import Callable, Iterator, Optional

NETLINK_ROUTE, NETLINK_SOCK_DIAG, NETLINK_NETFILTER = 0, 4, 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLM_F_DUMP_INTR = 0x10  # the table changed while it was dumped: the dump may miss or repeat entries
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # on an NLMSG_ERROR: request echoed header only; TLVs follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK, NETLINK_EXT_ACK = 270, 11
DUMP_TRIES = 5
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version 0, resource id (big-endian) 0
ATTR = struct.Struct("=HH")  # nlattr: length, type
ERRNO = struct.Struct("=i")
# A dump datagram is one kernel buffer: 32 KiB at most unless a family asks more for one message
# (netlink_dump). The receive buffer holds four; a larger datagram grows it and the dump is asked again.
RECV_SIZE = 1 << 17
RCVBUF = 1 << 20  # the socket's queue, as pyroute2 sets it: room for answers that come faster than read


def message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(payload), msg_type, flags, seq, 0) + payload


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, msg_type, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield msg_type, flags, seq, data[offset + HEADER.size:offset + length]
        offset += (length + 3) & ~3


def parse_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in one datagram."""
    return ((msg_type, seq, payload) for msg_type, _, seq, payload in _messages(data))


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


def parse_error(msg_type: int, flags: int, payload: bytes) -> tuple[int, str]:
    """The (positive) error code of an NLMSG_ERROR or NLMSG_DONE, 0 for success, and the kernel's
    extended ack text for it ("" when it gave none). An NLMSG_ERROR echoes the request after the
    code (its header only when capped); the attributes follow it. NLMSG_DONE's follow the code."""
    if len(payload) < ERRNO.size:
        return 0, ""
    code = -ERRNO.unpack_from(payload)[0]
    if code <= 0:
        return 0, ""
    start = ERRNO.size
    if msg_type == NLMSG_ERROR:
        if len(payload) < ERRNO.size + HEADER.size:
            return code, ""
        echoed = HEADER.size if flags & NLM_F_CAPPED else HEADER.unpack_from(payload, ERRNO.size)[0]
        start += (echoed + 3) & ~3
    if flags & NLM_F_ACK_TLVS:
        for kind, a, b in attrs(payload, start, len(payload)):
            if kind == NLMSGERR_ATTR_MSG:
                return code, payload[a:b].split(b"\0", 1)[0].decode(errors="replace")
    return code, ""


def refusal(code: int, text: str) -> OSError:
    """The kernel's refusal as an OSError: its code, and its own words after the code's."""
    return OSError(code, f"{os.strerror(code)}: {text}" if text else os.strerror(code))


class Truncated(OSError):
    """A datagram larger than the receive buffer arrived, and was lost."""


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
        try:
            self.sock.settimeout(timeout)  # a wedged kernel must not hang the caller
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            try:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            except OSError:
                pass  # a kernel before 4.12: refusals come without words
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self.interrupted = False  # whether the last answer carried NLM_F_DUMP_INTR
        # Anonymous memory: a page costs resident memory only once an answer fills it (a bytearray is
        # zeroed, 128 KiB at once per socket); most answers are a few KiB.
        self._buf: mmap.mmap | bytearray = mmap.mmap(-1, RECV_SIZE)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Socket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self) -> bytes:
        """One whole datagram. One too large for the buffer is lost: the buffer grows for the next
        request and Truncated ends this one (a dump asks again)."""
        size = self.sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
        if size > len(self._buf):
            self._buf = bytearray(size)
            raise Truncated(errno.EMSGSIZE, f"a netlink answer of {size} bytes was cut short")
        return bytes(memoryview(self._buf)[:size])

    def ask(self, make: Callable[[int], bytes], needles: tuple[bytes, ...] = ()) -> Iterator[bytes]:
        """Send the request `make(seq)` builds; yield the payloads answering it until its end, raising
        OSError with the kernel's (positive) error code, and its words, when it refuses.

        With `needles`, a datagram that contains none of them yields nothing: a dump of a large table
        mostly returns what the caller does not want, and one search of the datagram is far cheaper
        than cutting it into messages."""
        self.seq += 1
        self.interrupted = False
        self.sock.send(make(self.seq))
        while True:
            data = self._recv()
            self.interrupted = self.interrupted or interrupted(data, self.seq)
            if needles and not any(needle in data for needle in needles) and not _ends(data, self.seq):
                continue
            for msg_type, flags, seq, payload in _messages(data):
                if seq != self.seq:
                    continue  # the rest of an answer given up on
                if msg_type in (NLMSG_ERROR, NLMSG_DONE):
                    code, text = parse_error(msg_type, flags, payload)
                    if code:
                        raise refusal(code, text)
                    return
                yield payload

    def dump(self, make: Callable[[int], bytes]) -> list[bytes]:
        """A whole dump, asked again while a change interrupts it (NLM_F_DUMP_INTR) or a datagram
        outgrows the buffer, up to DUMP_TRIES in all."""
        def read() -> tuple[list[bytes], bool]:
            try:
                return list(self.ask(make)), self.interrupted
            except Truncated:
                return [], True
        return consistent(read)


def port_process(protocol: int, portid: int) -> Optional[tuple[int, str]]:
    """(pid, command name) of the process holding the netlink socket bound to `portid`, in this
    network namespace: /proc/net/netlink gives the socket's inode, a process's fd links name it."""
    inode = ""
    try:
        with open("/proc/net/netlink") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) >= 10 and fields[1] == str(protocol) and fields[2] == str(portid):
                    inode = fields[9]
    except OSError:
        return None
    if not inode:
        return None
    wanted = f"socket:[{inode}]"
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == wanted for fd in os.listdir(f"/proc/{pid}/fd")):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
                return int(pid), _program(argv)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return None


def _program(argv: list[str]) -> str:
    """The program a command line runs: its script for an interpreter (fail2ban-server, not python3)."""
    names = [os.path.basename(a) for a in argv[:2]]
    if len(names) == 2 and names[0].startswith("python") and not argv[1].startswith("-"):
        return names[1]
    return names[0] if names else "?"
