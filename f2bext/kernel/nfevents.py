"""nf_tables' change notifications (NFNLGRP_NFTABLES, what `nft monitor` reads): every transaction of
anyone's (nft, iptables-nft, firewalld, Docker) ends in an NFT_MSG_NEWGEN naming the process that
made it. One socket subscribed to the group tells a waiter that someone else changed the ruleset."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from typing import Iterator

from .netlink import NETLINK_NETFILTER, NFGEN, SOL_NETLINK, _messages, attrs

NFNLGRP_NFTABLES = 7
NETLINK_ADD_MEMBERSHIP = 1
NFT_MSG_NEWGEN = (10 << 8) | 15  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN
NFTA_GEN_PROC_PID = 2
RECV_SIZE = 1 << 16


def parse_changers(data: bytes) -> Iterator[int]:
    """The process (thread) id of each transaction a datagram of notifications ends; 0 when unsaid."""
    for msg_type, _, _, payload in _messages(data):
        if msg_type != NFT_MSG_NEWGEN:
            continue
        pid = 0
        for kind, start, end in attrs(payload, NFGEN.size, len(payload)):
            if kind == NFTA_GEN_PROC_PID and end - start == 4:
                pid = struct.unpack_from(">L", payload, start)[0]
        yield pid


def is_ours(tid: int) -> bool:
    """Whether a thread id is one of this process's threads (the kernel names the thread, not the process)."""
    return tid > 0 and os.path.exists(f"/proc/self/task/{tid}")


class RulesetEvents:
    """A socket subscribed to nf_tables' notifications. Its queue is the kernel's default: a flood
    overflows it (ENOBUFS), cheaper than reading every message, and is read as "something changed"."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._buf = bytearray(RECV_SIZE)
        self._ours: set[int] = set()  # thread ids seen to be this process's: asked of /proc once

    def close(self) -> None:
        self.sock.close()

    def wait(self, timeout: float) -> bool:
        """Whether anything arrived within `timeout` seconds (nothing is read)."""
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        return bool(readable)

    def drain(self) -> bool:
        """Read everything queued; True when another process changed the ruleset (or the queue
        overflowed, which may hide one), False when every change was this process's own."""
        foreign = False
        while True:
            try:
                size = self.sock.recv_into(self._buf)
            except BlockingIOError:
                return foreign
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                foreign = True
                continue
            for tid in parse_changers(bytes(memoryview(self._buf)[:size])):
                if tid in self._ours:
                    continue
                if is_ours(tid):
                    self._ours.add(tid)
                else:
                    foreign = True
