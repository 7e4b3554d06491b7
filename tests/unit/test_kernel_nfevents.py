"""nf_tables' change notifications as the watchdog reads them, on crafted datagrams (pure)."""

from __future__ import annotations

import struct

from f2bext.kernel import netlink, nfevents


def newgen(pid: int | None, seq: int = 0) -> bytes:
    payload = netlink.NFGEN.pack(0, 0, 0) + netlink.attr(1, struct.pack(">L", 7))
    if pid is not None:
        payload += netlink.attr(nfevents.NFTA_GEN_PROC_PID, struct.pack(">L", pid))
    return netlink.message(nfevents.NFT_MSG_NEWGEN, 0, seq, payload)


def test_each_transaction_names_the_thread_that_made_it():
    rule = netlink.message((10 << 8) | 6, 0, 0, netlink.NFGEN.pack(1, 0, 0))  # an NFT_MSG_NEWRULE: not an end
    data = rule + newgen(4242) + rule + newgen(17) + newgen(None)
    assert list(nfevents.parse_changers(data)) == [4242, 17, 0]


def test_a_cut_or_empty_datagram_names_nobody():
    assert list(nfevents.parse_changers(b"")) == []
    assert list(nfevents.parse_changers(newgen(4242)[:10])) == []


def test_only_this_process_threads_are_ours():
    import os
    import threading
    assert nfevents.is_ours(threading.get_native_id()) and nfevents.is_ours(os.getpid())
    assert not nfevents.is_ours(0) and not nfevents.is_ours(1 if os.getpid() != 1 else 2)
