"""Set elements over netlink: the transaction's bytes, and the reading of the kernel's answers on
crafted datagrams (pure: a scripted socket stands in for the kernel)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from f2bext.kernel import netlink, nftelem, nftgen
from f2bext.kernel.netlink import HEADER, NLA_F_NESTED, NLM_F_ACK_TLVS, NLMSG_ERROR


def decoded(data: bytes) -> list[tuple[int, int, int, bytes]]:
    return list(netlink._messages(data))


def attributes(payload: bytes, start: int = 0) -> dict[int, bytes]:
    return {kind: payload[a:b] for kind, a, b in netlink.attrs(payload, start, len(payload))}


def test_one_address_is_one_message_between_batch_begin_and_end():
    key = ipaddress.ip_address("203.0.113.7").packed
    (begin, change, end) = decoded(nftelem.pack_setelem_batch(40, "add", "inet", "f2bext", "postfix-v4", [key]))
    assert [m[0] for m in (begin, change, end)] == [nftgen.NFNL_MSG_BATCH_BEGIN, nftelem.NFT_MSG_NEWSETELEM,
                                                    nftgen.NFNL_MSG_BATCH_END]
    assert [m[2] for m in (begin, change, end)] == [40, 41, 42]
    assert begin[3][2:4] == struct.pack(">H", nftgen.NFNL_SUBSYS_NFTABLES)  # res_id names nf_tables
    flags = change[1]
    assert flags & netlink.NLM_F_ACK and flags & nftelem.NLM_F_ECHO and flags & netlink.NLM_F_CREATE
    assert not flags & netlink.NLM_F_EXCL, "an address banned already is no error"
    payload = change[3]
    assert payload[0] == nftgen.NFPROTO["inet"]
    found = attributes(payload, netlink.NFGEN.size)
    assert found[nftelem.NFTA_SET_ELEM_LIST_TABLE] == b"f2bext\0"
    assert found[nftelem.NFTA_SET_ELEM_LIST_SET].rstrip(b"\0") == b"postfix-v4"
    (elem,) = attributes(found[nftelem.NFTA_SET_ELEM_LIST_ELEMENTS]).items()
    assert elem[0] == nftelem.NFTA_LIST_ELEM
    keyattr = attributes(elem[1])[nftelem.NFTA_SET_ELEM_KEY]
    assert attributes(keyattr) == {nftelem.NFTA_DATA_VALUE: key}
    offset = netlink.NFGEN.size  # past the table and the set: the elements, nested, say so (as libnftnl)
    for _ in range(2):
        offset += (netlink.ATTR.unpack_from(payload, offset)[0] + 3) & ~3
    assert netlink.ATTR.unpack_from(payload, offset)[1] == nftelem.NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED


def test_an_element_is_the_three_nested_attributes_libnftnl_writes():
    for size in (4, 16, 5):
        key = bytes(range(1, size + 1))
        expected = netlink.nest(nftelem.NFTA_LIST_ELEM, netlink.nest(nftelem.NFTA_SET_ELEM_KEY,
                                                                     netlink.attr(nftelem.NFTA_DATA_VALUE, key)))
        assert nftelem.pack_elements([key]) == expected


def test_elements_joined_at_once_are_the_elements_packed_one_by_one():
    for size in (4, 16, 5):
        keys = [bytes([i] * size) for i in range(1, 40)]
        assert nftelem.pack_elements(keys) == b"".join(nftelem.pack_elements([k]) for k in keys)
    assert nftelem.pack_elements([]) == b""
    with pytest.raises(ValueError):
        nftelem.pack_elements([bytes(4), bytes(16)])


def test_a_bulk_load_asks_for_no_echo_and_its_largest_message_fits_the_16_bit_attribute_length():
    keys = [ipaddress.ip_address(0x20010db8 << 96 | i).packed for i in range(nftelem.BULK_KEYS)]
    _, change, _ = decoded(nftelem.pack_setelem_batch(7, "add", "inet", "f2bext", "j-v6", keys, echo=False))
    assert change[1] & netlink.NLM_F_ACK and not change[1] & nftelem.NLM_F_ECHO
    found = attributes(change[3], netlink.NFGEN.size)
    assert len(found[nftelem.NFTA_SET_ELEM_LIST_ELEMENTS]) + netlink.ATTR.size <= 0xFFFF
    assert len(attributes(found[nftelem.NFTA_SET_ELEM_LIST_ELEMENTS])) <= 1  # dict by kind: all NFTA_LIST_ELEM


def test_a_delete_of_several_ipv6_addresses_is_one_message():
    keys = [ipaddress.ip_address(f"2001:db8::{i}").packed for i in (1, 2, 3)]
    _, change, _ = decoded(nftelem.pack_setelem_batch(7, "delete", "inet", "f2bext", "j-v6", keys))
    assert change[0] == nftelem.NFT_MSG_DELSETELEM and not change[1] & netlink.NLM_F_CREATE
    elements = attributes(change[3], netlink.NFGEN.size)[nftelem.NFTA_SET_ELEM_LIST_ELEMENTS]
    assert elements.count(keys[1]) == 1 and len(list(netlink.attrs(elements, 0, len(elements)))) == 3


class Scripted:
    """A socket whose datagrams are scripted; records what was sent."""

    def __init__(self, *datagrams: bytes) -> None:
        self.datagrams, self.sent = list(datagrams), []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv_into(self, buf: bytearray) -> int:
        data = self.datagrams.pop(0)
        buf[:len(data)] = data
        return len(data)


def newgen(seq: int, generation: int) -> bytes:
    payload = netlink.NFGEN.pack(socket.AF_UNSPEC, 0, 0) + netlink.attr(nftgen.NFTA_GEN_ID, struct.pack(">L", generation))
    return netlink.message(nftelem.NFT_MSG_NEWGEN, 0, seq, payload)


def ack(seq: int, code: int = 0, text: str = "") -> bytes:
    """An NLMSG_ERROR as the kernel writes it: -code, the request echoed, then the extended ack."""
    payload = struct.pack("=i", -code) + netlink.message(nftelem.NFT_MSG_NEWSETELEM, 0, seq, b"\0" * 4)
    if text:
        payload += netlink.attr(netlink.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
    return netlink.message(NLMSG_ERROR, NLM_F_ACK_TLVS if text else 0, seq, payload)


def test_the_answer_gives_the_generation_the_transaction_made():
    echo = netlink.message(nftelem.NFT_MSG_NEWSETELEM, 0, 11, b"\0" * 4)
    stale = ack(3)  # the rest of an answer given up on: another seq
    elements = nftelem.Elements()
    elements.sock = sock = Scripted(stale, echo, newgen(nftelem.SEQ + 4, 77), ack(nftelem.SEQ + 4))
    assert elements.change("add", "inet", "f2bext", "j-v4", [b"\1\2\3\4"]) == 77
    assert sock.datagrams == [], "the answer is read to its end"
    assert decoded(sock.sent[0])[1][2] == nftelem.SEQ + 4


def test_an_add_that_changed_nothing_has_no_generation():
    assert nftelem.read_answer(Scripted(ack(11)), 10, bytearray(4096)) is None


def test_a_refusal_carries_the_kernels_code_and_words():
    sock = Scripted(ack(11, errno.ENOENT, "No such set"))
    with pytest.raises(OSError) as e:
        nftelem.read_answer(sock, 10, bytearray(4096))
    assert e.value.errno == errno.ENOENT and "No such set" in str(e.value)
    # A batch refused whole answers its begin (seq), and nothing else comes.
    with pytest.raises(OSError) as e:
        nftelem.read_answer(Scripted(ack(10, errno.EPERM)), 10, bytearray(4096))
    assert e.value.errno == errno.EPERM


def test_messages_in_one_datagram_are_all_read():
    assert nftelem.read_answer(Scripted(newgen(11, 5) + ack(11)), 10, bytearray(4096)) == 5
    assert HEADER.unpack_from(ack(11))[1] == NLMSG_ERROR
