"""Cut a banned address's live sessions: delete its conntrack entries and destroy its local sockets.

A ban rule only stops new packets from being accepted; a session the address already holds keeps its
server process busy (and, with `ct state established accept` ahead of the ban, keeps flowing). Killing
its conntrack entries and sockets makes the ban take effect at once, like `conntrack -D` plus `ss -K`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from pyroute2.conntrack import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from .addr import Network, is_single
from .spec import PROTOCOL_NUMBERS, PortRange

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Ports = tuple[PortRange, ...]


@dataclass(frozen=True)
class KillReport:
    """What a kill did, and what it could not do."""

    conntrack: int  # conntrack entries deleted
    sockets: int  # sockets destroyed
    problems: tuple[str, ...]  # what could not be done, one plain sentence each


def kill_sessions(nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports,
                  kinds: frozenset[str]) -> KillReport:
    """Cut the sessions of `nets` within the ban's protocols and ports, in the caller's network namespace.

    Kernel trouble and races end up in `problems`: a ban must never fail because of its sessions.
    """
    problems: list[str] = []
    # Sockets first: the resets they send still pass through (and update) the entries deleted next.
    sockets = _destroy_sockets(nets, protocols, ports, problems) if "sockets" in kinds else 0
    entries = _delete_conntrack(nets, protocols, ports, problems) if "conntrack" in kinds else 0
    return KillReport(entries, sockets, tuple(dict.fromkeys(problems)))


# --- scope --------------------------------------------------------------------------------------------

def port_in(port: int, ports: Ports) -> bool:
    """True when `port` is in one of the ranges; no ranges means every port."""
    return not ports or any(low <= port <= high for low, high in ports)


def in_nets(addr: Address, nets: Sequence[Network]) -> bool:
    return any(addr in net for net in nets)  # a version mismatch is simply False


def conntrack_in_scope(src: Address, dst: Address, dport: Optional[int], nets: Sequence[Network],
                       ports: Ports) -> bool:
    """An entry (original direction) is in scope when the address opened it to a banned port or,
    for an all-ports ban, when either end is the address (flows the host opened to it)."""
    if ports:
        return dport is not None and port_in(dport, ports) and in_nets(src, nets)
    return in_nets(src, nets) or in_nets(dst, nets)


def mapped(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The IPv4 network as the v4-mapped IPv6 prefix a dual-stack (`::`) socket sees its peers in."""
    base = int(ipaddress.IPv6Address("::ffff:0:0"))
    return ipaddress.IPv6Network((base | int(net.network_address), 96 + net.prefixlen))


def diag_targets(nets: Sequence[Network]) -> list[tuple[int, Network]]:
    """(socket family, remote prefix) pairs to dump: IPv4 peers also live in AF_INET6 sockets."""
    targets: list[tuple[int, Network]] = []
    for net in nets:
        if isinstance(net, ipaddress.IPv4Network):
            targets += [(socket.AF_INET, net), (socket.AF_INET6, mapped(net))]
        else:
            targets.append((socket.AF_INET6, net))
    return targets


# --- conntrack ----------------------------------------------------------------------------------------

CtFilter = tuple[int, Optional[str], Optional[str], Optional[int]]  # family, saddr, daddr, protocol number


def conntrack_filters(nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports) -> list[CtFilter]:
    """The kernel-side dump filters (original direction) that together cover the ban's scope."""
    protos: list[Optional[int]] = [PROTOCOL_NUMBERS[p] for p in protocols] or [None]
    filters: list[CtFilter] = []
    for net in nets:
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        for proto in protos:
            if not is_single(net) or net.version == 6:
                # ctnetlink filters compare whole addresses, never a prefix, and invert the IPv6 compare
                # (`!ipv6_addr_cmp` in ctnetlink_filter_match_tuple, 5.8 to 6.18 at least: an IPv6
                # address filter returns every entry but that address). So for a CIDR or an IPv6
                # address the kernel narrows by family and protocol only; the address is matched here.
                filters.append((family, None, None, proto))
                continue
            addr = str(net.network_address)
            filters.append((family, addr, None, proto))
            if not ports:
                filters.append((family, None, addr, proto))
    return list(dict.fromkeys(filters))


@dataclass(frozen=True)
class _Entry:
    key: tuple[int, int]  # family, conntrack id
    orig: NFCTAttrTuple
    zone: Optional[int]


def _entry(family: int, msg) -> _Entry:
    orig_nla = msg.get_attr("CTA_TUPLE_ORIG")
    orig = NFCTAttrTuple.from_netlink(family, orig_nla)
    if orig.sport is None:
        # pyroute2 reads ports for TCP and UDP only; SCTP (and the rest) need them to be deleted.
        proto = orig_nla.get_attr("CTA_TUPLE_PROTO")
        orig.sport = proto.get_attr("CTA_PROTO_SRC_PORT")
        orig.dport = proto.get_attr("CTA_PROTO_DST_PORT")
    return _Entry((family, msg.get_attr("CTA_ID")), orig, msg.get_attr("CTA_ZONE"))


def _delete_conntrack(nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports,
                      problems: list[str]) -> int:
    filters = conntrack_filters(nets, protocols, ports)
    deleted = 0
    for family in sorted({f[0] for f in filters}):
        name = "IPv4" if family == socket.AF_INET else "IPv6"
        try:
            with Conntrack(nfgen_family=family) as ct:
                doomed: dict[tuple[int, int], _Entry] = {}
                for _, saddr, daddr, proto in (f for f in filters if f[0] == family):
                    wanted = NFCTAttrTuple(family=family, saddr=saddr, daddr=daddr, proto=proto)
                    for msg in ct.dump(tuple_orig=wanted):
                        entry = _entry(family, msg)
                        src, dst = ipaddress.ip_address(entry.orig.saddr), ipaddress.ip_address(entry.orig.daddr)
                        if conntrack_in_scope(src, dst, entry.orig.dport, nets, ports):
                            doomed[entry.key] = entry
                # Every dump above has ended before the first delete: deleting while the kernel still
                # walks the table for a dump on this socket could skip or repeat entries.
                for entry in doomed.values():
                    try:
                        # The id makes the kernel refuse a newer flow that reuses the same tuple.
                        ct.entry("del", tuple_orig=entry.orig, id=entry.key[1], zone=entry.zone)
                        deleted += 1
                    except NetlinkError as e:
                        if e.code != errno.ENOENT:  # ENOENT: it ended between the dump and now
                            problems.append(f"could not delete an {name} conntrack entry: {_reason(e.code)}")
        except NetlinkError as e:
            problems.append(f"could not read the {name} conntrack table: {_reason(e.code)}")
        except OSError as e:
            problems.append(f"could not read the {name} conntrack table: {_why(e)}")
    return deleted


def _reason(code: Optional[int]) -> str:
    return os.strerror(code) if code else "unknown error"


def _why(e: OSError) -> str:
    return e.strerror or str(e)  # a timeout has no errno


# --- sockets (NETLINK_SOCK_DIAG) --------------------------------------------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_S_GE, BC_S_LE, BC_D_COND = 1, 2, 3, 8

# Session states only: LISTEN and CLOSE hold no peer, TIME_WAIT is already over. Bits are 1 << state:
# ESTABLISHED 1, SYN_SENT 2, SYN_RECV 3, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11,
# NEW_SYN_RECV 12 (a half-open connection).
_TCP_STATES = sum(1 << s for s in (1, 2, 3, 4, 5, 8, 9, 11, 12))
_UDP_STATES = 1 << 1  # connected UDP sockets (ESTABLISHED); unconnected ones are servers, not sessions

_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2 up to its inet_diag_sockid
_SOCKID_LEN = 48
_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
_HOSTCOND = struct.Struct("=BBxxi")  # inet_diag_hostcond: family, prefix_len, port; the address follows
_ACCEPT, _REJECT = -1, -2
_RECV_SIZE = 1 << 17


def diag_bytecode(net: Network, ports: Ports) -> bytes:
    """inet_diag filter: remote address in `net`, and local port in one of `ports` (if any)."""
    cond = _HOSTCOND.pack(socket.AF_INET if net.version == 4 else socket.AF_INET6, net.prefixlen, -1)
    # Each op falls through to the next when true, as the kernel's bytecode audit requires; when
    # false it jumps to an op index, to the end (_ACCEPT) or past it (_REJECT).
    ops: list[tuple[int, bytes, int]] = [(BC_D_COND, cond + net.network_address.packed, _REJECT)]
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


def _nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _NLMSG.pack(_NLMSG.size + len(payload), msg_type, flags, seq, 0) + payload


def pack_dump_request(seq: int, family: int, protocol: int, states: int, bytecode: bytes) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump of `protocol` sockets in `states`, filtered by `bytecode`."""
    attr = struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    request = _REQ.pack(family, protocol, 0, states) + bytes(_SOCKID_LEN) + attr
    return _nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, request)


@dataclass(frozen=True)
class DiagSocket:
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
    return _nlmsg(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, request)


def parse_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, msg_type, _, seq, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return
        yield msg_type, seq, data[offset + _NLMSG.size:offset + length]
        offset += (length + 3) & ~3


def parse_diag_msg(protocol: int, payload: bytes) -> DiagSocket:
    """An inet_diag_msg (as answered for `protocol`) to a DiagSocket."""
    family, state = payload[0], payload[1]
    sport, dport, src, dst = struct.unpack_from("!HH16s16s", payload, 4)
    width = 4 if family == socket.AF_INET else 16
    return DiagSocket(family, protocol, state, ipaddress.ip_address(src[:width]), sport,
                      ipaddress.ip_address(dst[:width]), dport, payload[4:4 + _SOCKID_LEN])


class _SockDiag:
    """A minimal sock_diag client: one request at a time, answers read to the end."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self.sock.settimeout(10)  # a wedged kernel must not hang the ban
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _ask(self, make: Callable[[int], bytes]) -> Iterator[bytes]:
        """Send one request; yield the payloads answering it until its end, raising OSError on an error."""
        self.seq += 1
        self.sock.send(make(self.seq))
        while True:
            for msg_type, seq, payload in parse_messages(self.sock.recv(_RECV_SIZE)):
                if seq != self.seq:
                    continue
                if msg_type in (NLMSG_ERROR, NLMSG_DONE):
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code > 0:
                        raise OSError(code, os.strerror(code))
                    return
                yield payload

    def dump(self, family: int, protocol: int, states: int, bytecode: bytes) -> list[DiagSocket]:
        return [parse_diag_msg(protocol, p)
                for p in self._ask(lambda seq: pack_dump_request(seq, family, protocol, states, bytecode))]

    def destroy(self, sock: DiagSocket) -> None:
        for _ in self._ask(lambda seq: pack_destroy_request(seq, sock)):
            pass


def socket_protocols(protocols: tuple[str, ...]) -> list[int]:
    """The protocols whose sockets can be listed and destroyed: TCP and UDP (SCTP's diag has no destroy)."""
    return [PROTOCOL_NUMBERS[p] for p in (protocols or ("tcp", "udp")) if p != "sctp"]


def _destroy_sockets(nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports,
                     problems: list[str]) -> int:
    try:
        diag = _SockDiag()
    except OSError as e:
        problems.append(f"could not open a sock_diag netlink socket: {_why(e)}")
        return 0
    try:
        doomed: dict[tuple[int, int, bytes], DiagSocket] = {}
        for protocol in socket_protocols(protocols):
            name = "TCP" if protocol == socket.IPPROTO_TCP else "UDP"
            states = _TCP_STATES if protocol == socket.IPPROTO_TCP else _UDP_STATES
            for family, net in diag_targets(nets):
                try:
                    found = diag.dump(family, protocol, states, diag_bytecode(net, ports))
                except OSError as e:
                    problems.append(f"kernel lacks {name} socket diagnostics (CONFIG_INET_{name}_DIAG)"
                                    if e.errno == errno.ENOENT else f"could not list {name} sockets: {_why(e)}")
                    continue
                for sock in found:
                    # The kernel filtered already; this keeps a destroy from ever reaching a socket outside
                    # the ban, whatever a kernel made of the filter.
                    if sock.remote in net and port_in(sock.local_port, ports):
                        doomed[(sock.family, sock.protocol, sock.sockid)] = sock
        destroyed = 0
        for sock in doomed.values():
            try:
                diag.destroy(sock)
                destroyed += 1
            except OSError as e:
                if e.errno == errno.EOPNOTSUPP:
                    problems.append("kernel lacks socket destroy (CONFIG_INET_DIAG_DESTROY)")
                    break
                if e.errno != errno.ENOENT:  # ENOENT: it closed between the dump and now
                    problems.append(f"could not destroy a socket of {sock.remote}: {_why(e)}")
        return destroyed
    finally:
        diag.close()
