"""The netlink transport's reading of the kernel's answers, on crafted datagrams (pure: a scripted
socket stands in for the kernel)."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from f2bext.kernel import netlink
from f2bext.kernel.netlink import HEADER, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR

REQUEST_TYPE = 20  # any request; the answers below echo it


def error(seq: int, code: int, request: bytes, text: str = "", capped: bool = False) -> bytes:
    """An NLMSG_ERROR as the kernel writes it: -code, the request echoed, then the extended ack."""
    echoed = request[:HEADER.size] if capped else request
    payload = struct.pack("=i", -code) + echoed + bytes(-len(echoed) % 4)
    flags = NLM_F_CAPPED if capped else 0
    if text:
        payload += netlink.attr(netlink.NLMSGERR_ATTR_MSG, text.encode() + b"\0") + netlink.attr(2, struct.pack("=I", 20))
        flags |= NLM_F_ACK_TLVS
    return netlink.message(NLMSG_ERROR, flags, seq, payload)


def test_a_refusal_carries_the_kernels_extended_ack_text():
    request = netlink.message(REQUEST_TYPE, netlink.NLM_F_REQUEST, 9, b"\x01\x02\x03")  # unaligned length
    for capped in (False, True):
        (msg_type, flags, seq, payload), = netlink._messages(error(9, errno.EINVAL, request, "Unknown family", capped))
        assert netlink.parse_error(msg_type, flags, payload) == (errno.EINVAL, "Unknown family")
    (msg_type, flags, seq, payload), = netlink._messages(error(9, errno.ENOENT, request))
    assert netlink.parse_error(msg_type, flags, payload) == (errno.ENOENT, "")
    ack = netlink.message(NLMSG_ERROR, 0, 9, struct.pack("=i", 0) + request)
    assert netlink.parse_error(NLMSG_ERROR, 0, list(netlink.parse_messages(ack))[0][2]) == (0, "")
    # A dump that fails at its end: NLMSG_DONE's attributes follow the code directly.
    done = struct.pack("=i", -errno.EBUSY) + netlink.attr(netlink.NLMSGERR_ATTR_MSG, b"table busy\0")
    assert netlink.parse_error(NLMSG_DONE, NLM_F_ACK_TLVS, done) == (errno.EBUSY, "table busy")


class ScriptedKernel:
    """A netlink socket whose answers are scripted: `answer(request, seq)` gives the datagrams."""

    def __init__(self, answer) -> None:
        self.answer, self.requests, self.queue, self.options = answer, [], [], {}

    def __call__(self, family, kind, protocol):
        assert family == socket.AF_NETLINK
        return self

    def settimeout(self, timeout) -> None:
        pass

    def setsockopt(self, level, option, value) -> None:
        self.options[(level, option)] = value

    def bind(self, address) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        seq = HEADER.unpack_from(data)[3]
        self.requests.append(seq)
        self.queue += self.answer(data, seq)
        return len(data)

    def recv_into(self, buf, nbytes, flags) -> int:
        data = self.queue.pop(0)
        buf[:min(len(data), len(buf))] = data[:len(buf)]
        return len(data) if flags & socket.MSG_TRUNC else min(len(data), len(buf))


@pytest.fixture
def kernel(monkeypatch):
    def install(answer) -> ScriptedKernel:
        scripted = ScriptedKernel(answer)
        monkeypatch.setattr(netlink.socket, "socket", scripted)
        return scripted
    return install


def entries(seq: int, flags: int, *payloads: bytes) -> list[bytes]:
    """One datagram: a message per payload (each padded to 4 bytes), then NLMSG_DONE."""
    return [b"".join(netlink.message(REQUEST_TYPE, flags, seq, p) + bytes(-len(p) % 4) for p in payloads)
            + netlink.message(NLMSG_DONE, flags, seq, struct.pack("=i", 0))]


def test_the_socket_asks_for_extended_acks_and_a_large_queue(kernel):
    scripted = kernel(lambda request, seq: [])
    netlink.Socket(netlink.NETLINK_ROUTE).close()
    assert scripted.options[(netlink.SOL_NETLINK, netlink.NETLINK_EXT_ACK)] == 1
    assert scripted.options[(socket.SOL_SOCKET, socket.SO_RCVBUF)] == netlink.RCVBUF


def test_a_refused_request_raises_with_the_kernels_code_and_words(kernel):
    kernel(lambda request, seq: [error(seq, errno.EOPNOTSUPP, request, "Nexthop objects not supported")])
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl, pytest.raises(OSError) as refused:
        nl.dump(lambda seq: netlink.message(REQUEST_TYPE, netlink.NLM_F_DUMP, seq, b""))
    assert refused.value.errno == errno.EOPNOTSUPP
    assert refused.value.strerror == f"{os.strerror(errno.EOPNOTSUPP)}: Nexthop objects not supported"


def test_a_dump_a_change_interrupted_is_asked_again(kernel):
    def answer(request, seq):
        if seq == 1:  # the table changed under the first dump
            return entries(seq, NLM_F_DUMP_INTR, b"old", b"repeated")
        return entries(seq, 0, b"new")
    scripted = kernel(answer)
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl:
        assert nl.dump(lambda seq: netlink.message(REQUEST_TYPE, netlink.NLM_F_DUMP, seq, b"")) == [b"new"]
    assert scripted.requests == [1, 2]


def test_a_dump_interrupted_every_time_fails_after_a_bounded_number_of_tries(kernel):
    scripted = kernel(lambda request, seq: entries(seq, NLM_F_DUMP_INTR, b"partial"))
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl, pytest.raises(OSError, match="interrupted"):
        nl.dump(lambda seq: netlink.message(REQUEST_TYPE, netlink.NLM_F_DUMP, seq, b""))
    assert len(scripted.requests) == netlink.DUMP_TRIES


def test_a_datagram_larger_than_the_buffer_grows_it_and_the_dump_is_asked_again(kernel):
    big = bytes(netlink.RECV_SIZE)  # one message larger than the receive buffer

    def answer(request, seq):
        return entries(seq, 0, big) + ([] if seq > 1 else entries(seq, 0, b"rest of the lost answer"))
    scripted = kernel(answer)
    with netlink.Socket(netlink.NETLINK_ROUTE) as nl:
        assert nl.dump(lambda seq: netlink.message(REQUEST_TYPE, netlink.NLM_F_DUMP, seq, b"")) == [big]
    assert scripted.requests == [1, 2]  # the first answer's rest (seq 1) was passed over
