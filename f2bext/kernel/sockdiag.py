"""Socket diagnostics over netlink (NETLINK_SOCK_DIAG): inet_diag dumps filtered by bytecode, the
sockets they list, destroys by socket id; and the one socket that carries them."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple, Sequence

from ..addr import Address, Network
from . import netlink
from .netlink import NETLINK_SOCK_DIAG, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST

SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_S_GE, BC_S_LE, BC_D_COND = 1, 2, 3, 8

_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2 up to its inet_diag_sockid
_SOCKID_LEN = 48
_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
_HOSTCOND = struct.Struct("=BBxxi")  # inet_diag_hostcond: family, prefix_len, port; the address follows
_ACCEPT, _REJECT = -1, -2


MAX_NETS = 1024  # remote prefixes in one dump's bytecode at most
BYTECODE_ROOM = 0xFFFF - 4  # a netlink attribute's length is 16 bits, its header included
PREFIX_BYTES, RANGE_BYTES = 32, 20  # an IPv6 prefix's condition and its jump; a port range's two ops and jump


def nets_per_dump(ports: Sequence[tuple[int, int]]) -> int:
    """How many remote prefixes fit one dump's bytecode beside the `ports` ranges (none: the ranges
    alone would not leave room for a useful number, and are matched after the dump instead)."""
    return max(0, min(MAX_NETS, (BYTECODE_ROOM - RANGE_BYTES * len(ports)) // PREFIX_BYTES))


def diag_bytecode(nets: Sequence[Network], ports: Sequence[tuple[int, int]]) -> bytes:
    """inet_diag filter: remote address in one of `nets` (all of one family), and local port in one of
    `ports` (if any). One dump for a burst of bans: each dump walks the kernel's whole socket hash."""
    # Each op falls through to the next when true, as the kernel's bytecode audit requires; when
    # false it jumps forward to an op index, to the end (_ACCEPT) or past it (_REJECT). A remote
    # prefix that matches jumps on to the ports; one that does not tries the next prefix.
    if not nets:
        raise ValueError("a socket filter needs a remote prefix: without one it would match every socket")
    last_net = len(nets) - 1
    port_start = 2 * len(nets) - 1 if ports else _ACCEPT  # the first port op's index
    ops: list[tuple[int, bytes, int]] = []
    for i, net in enumerate(nets):
        cond = _HOSTCOND.pack(socket.AF_INET if net.version == 4 else socket.AF_INET6, net.prefixlen, -1)
        ops.append((BC_D_COND, cond + net.network_address.packed, _REJECT if i == last_net else len(ops) + 2))
        if i != last_net:
            ops.append((BC_JMP, b"", port_start))
    for i, (low, high) in enumerate(ports):
        last = i == len(ports) - 1
        miss = _REJECT if last else len(ops) + 3  # the next range's first op, after GE, LE and JMP
        ops.append((BC_S_GE, _OP.pack(0, 0, low), miss))
        ops.append((BC_S_LE, _OP.pack(0, 0, high), miss))
        if not last:
            ops.append((BC_JMP, b"", _ACCEPT))
    starts, size = [], 0
    for _, arg, _ in ops:
        starts.append(size)
        size += _OP.size + len(arg)
    code = b""
    for (op, arg, miss), start in zip(ops, starts):
        target = size if miss == _ACCEPT else size + 4 if miss == _REJECT else starts[miss]
        code += _OP.pack(op, _OP.size + len(arg), target - start) + arg
    return code


def pack_dump_request(seq: int, family: int, protocol: int, states: int, bytecode: bytes) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump of `protocol` sockets in `states`, filtered by `bytecode` (none: all)."""
    request = _REQ.pack(family, protocol, 0, states) + bytes(_SOCKID_LEN)
    request += netlink.attr(INET_DIAG_REQ_BYTECODE, bytecode) if bytecode else b""
    return netlink.message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, request)


class DiagSocket(NamedTuple):
    """One socket from a sock_diag dump."""

    family: int
    protocol: int
    state: int
    local: Address
    local_port: int
    remote: Address
    remote_port: int
    sockid: bytes  # the kernel's inet_diag_sockid, cookie included: destroy names exactly this socket


def pack_destroy_request(seq: int, sock: DiagSocket) -> bytes:
    request = _REQ.pack(sock.family, sock.protocol, 0, 1 << sock.state) + sock.sockid
    return netlink.message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, request)


def parse_diag_msg(protocol: int, payload: bytes) -> DiagSocket:
    """An inet_diag_msg (as answered for `protocol`) to a DiagSocket."""
    family, state = payload[0], payload[1]
    sport, dport, src, dst = struct.unpack_from("!HH16s16s", payload, 4)
    width = 4 if family == socket.AF_INET else 16
    return DiagSocket(family, protocol, state, ipaddress.ip_address(src[:width]), sport,
                      ipaddress.ip_address(dst[:width]), dport, payload[4:4 + _SOCKID_LEN])


class SockDiag(netlink.Socket):
    """A sock_diag socket in the caller's network namespace."""

    def __init__(self) -> None:
        super().__init__(NETLINK_SOCK_DIAG)

    def sockets(self, family: int, protocol: int, states: int, bytecode: bytes = b"") -> list[DiagSocket]:
        return [parse_diag_msg(protocol, p)
                for p in self.ask(lambda seq: pack_dump_request(seq, family, protocol, states, bytecode))]

    def destroy(self, sock: DiagSocket) -> None:
        for _ in self.ask(lambda seq: pack_destroy_request(seq, sock)):
            pass
