"""nf_tables' change notifications as the watchdog reads them, on crafted datagrams (pure), and whose
sockets are this process's."""

from __future__ import annotations

import socket
import struct

from f2bext.kernel import netlink, nfevents


def newgen(port: int, seq: int = 0) -> bytes:
    payload = netlink.NFGEN.pack(0, 0, 0) + netlink.attr(1, struct.pack(">L", 7))
    return netlink.HEADER.pack(netlink.HEADER.size + len(payload), nfevents.NFT_MSG_NEWGEN, 0, seq, port) + payload


def test_each_transaction_names_the_port_that_asked_for_it():
    rule = netlink.message((10 << 8) | 6, 0, 0, netlink.NFGEN.pack(1, 0, 0))  # an NFT_MSG_NEWRULE: not an end
    data = rule + newgen(4242) + rule + newgen(17) + newgen(0)
    assert list(nfevents.parse_changers(data)) == [4242, 17, 0]


def test_a_cut_or_empty_datagram_names_nobody():
    assert list(nfevents.parse_changers(b"")) == []
    assert list(nfevents.parse_changers(newgen(4242)[:10])) == []


def test_this_process_netfilter_sockets_are_its_own_ports():
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        assert sock.getsockname()[0] in nfevents.own_ports()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        port = sock.getsockname()[0]
    assert port not in nfevents.own_ports()
