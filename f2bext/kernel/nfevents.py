"""nf_tables' change notifications (NFNLGRP_NFTABLES, what `nft monitor` reads): every transaction of
anyone's (nft, iptables-nft, firewalld, Docker) ends in an NFT_MSG_NEWGEN naming the process that
made it, sent from the netlink port of the socket that asked for it. One socket subscribed to the group
tells a waiter that someone else changed the ruleset: a port that is none of this process's sockets."""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Iterator

from .netlink import HEADER, NETLINK_NETFILTER, SOL_NETLINK
from .nftelem import netfilter_sockets

NFNLGRP_NFTABLES = 7
NETLINK_ADD_MEMBERSHIP, NETLINK_DROP_MEMBERSHIP = 1, 2
NFT_MSG_NEWGEN = (10 << 8) | 15  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN
RECV_SIZE = 1 << 16


def parse_changers(data: bytes) -> Iterator[int]:
    """The netlink port of the socket that made each transaction a datagram of notifications ends
    (the kernel sends NFT_MSG_NEWGEN from the asker's port; 0: the kernel's own)."""
    for msg_type, port in _sources(data):
        if msg_type == NFT_MSG_NEWGEN:
            yield port


def _sources(data: bytes) -> Iterator[tuple[int, int]]:
    """(type, netlink port it came from) of each message in one datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, msg_type, _, _, port = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield msg_type, port
        offset += (length + 3) & ~3


def own_ports() -> set[int]:
    """The netlink ports of this process's NETLINK_NETFILTER sockets. A port names a socket within
    the network namespace whatever PID namespace the process is in; a thread id in the notification
    is the root PID namespace's, which /proc does not show inside a container."""
    ports = set()
    for fd in netfilter_sockets():
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                ports.add(sock.getsockname()[0])
        except OSError:
            continue  # closed meanwhile
    return ports


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
        self._ours = own_ports()

    def close(self) -> None:
        self.sock.close()

    def pause(self) -> None:
        """Leave the group: the kernel builds a notification of every element for each listener (0.19 s
        of a 0.33 s load of 100,000 addresses), and none at all when no one listens. What changes
        meanwhile is not told: the caller looks again after resume()."""
        self.sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, NFNLGRP_NFTABLES)

    def resume(self) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)

    def wait(self, timeout: float) -> bool:
        """Whether anything arrived within `timeout` seconds (nothing is read)."""
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        return bool(readable)

    def drain(self) -> bool:
        """Read everything queued; True when another process changed the ruleset (or the queue
        overflowed, which may hide one), False when every change was this process's own."""
        foreign = looked = False
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
            for port in parse_changers(bytes(memoryview(self._buf)[:size])):
                if foreign or port in self._ours:
                    continue  # the answer is known already, or the change was ours
                # A port not known: a socket this process opened since (a backend's first ban), or
                # another process's. Asked of /proc once per drain at most: a storm costs no read per change.
                if port and not looked:
                    self._ours, looked = own_ports(), True
                    if port in self._ours:
                        continue
                foreign = True
