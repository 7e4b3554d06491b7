"""Cut a banned address's live sessions: delete its conntrack entries and destroy its local sockets.

A ban rule only stops new packets from being accepted; a session the address already holds keeps its
server process busy (and, with `ct state established accept` ahead of the ban, keeps flowing). Killing
its conntrack entries and sockets makes the ban take effect at once, like `conntrack -D` plus `ss -K`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import queue
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

from .kernel import netlink
from .addr import Network, is_single
from .kernel.netlink import NETLINK_NETFILTER, NETLINK_SOCK_DIAG, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST
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
    ct: Optional[_Conntrack] = None
    if "conntrack" in kinds:
        try:
            ct = _Conntrack()
        except OSError as e:
            problems.append(f"could not open a conntrack netlink socket: {_why(e)}")
    try:
        sockets = entries = 0
        # Sockets first, each followed by its flow's conntrack entry: the reset a destroy sends still
        # passes through (and updates) the entry, and the exact tuple finds the entry without a dump.
        if "sockets" in kinds:
            sockets, entries = _destroy_sockets(nets, protocols, ports, ct, problems)
        # Then the entries no socket led to, by a dump the kernel narrows as far as it can.
        if ct is not None:
            entries += _delete_conntrack(ct, nets, protocols, ports, problems)
    finally:
        if ct is not None:
            ct.close()
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


# --- netlink ------------------------------------------------------------------------------------------

def _why(e: OSError) -> str:
    return e.strerror or str(e)  # a timeout has no errno


def _family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


# --- conntrack (ctnetlink) ----------------------------------------------------------------------------

IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0x101, 0x102  # NFNL_SUBSYS_CTNETLINK << 8 | message
CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE, CTA_FILTER = 1, 12, 18, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS = 1
FILTER_IP_SRC, FILTER_IP_DST, FILTER_PROTO_NUM, FILTER_PROTO_DST_PORT = 1 << 0, 1 << 1, 1 << 3, 1 << 5


# Up to this many ports, conntrack dumps are narrowed in the kernel one port at a time. Each such dump
# walks the whole table (~25 ms per 100,000 entries), while one dump of the family and protocol costs
# ~3 us per entry it returns: with a table full of unrelated entries the two meet at about ten ports.
NARROW_PORTS = 8


class CtFilter(NamedTuple):
    """A kernel-side filter for a conntrack dump, on the original direction; None matches anything."""

    family: int
    saddr: Optional[str] = None
    daddr: Optional[str] = None
    protocol: Optional[int] = None
    dport: Optional[int] = None


def narrow_ports(ports: Ports) -> list[int]:
    """The ban's ports one by one when they are few enough for a dump each, else [] (every port or many)."""
    if not ports or sum(high - low + 1 for low, high in ports) > NARROW_PORTS:
        return []
    return sorted({port for low, high in ports for port in range(low, high + 1)})


def conntrack_filters(nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports) -> list[CtFilter]:
    """The kernel-side dump filters that together cover the ban's scope: each dump walks the whole table
    in the kernel, and only the entries that pass its filter are sent here to be matched."""
    protos: list[Optional[int]] = [PROTOCOL_NUMBERS[p] for p in protocols] or [None]
    few = narrow_ports(ports)
    filters: list[CtFilter] = []
    for net in nets:
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        for proto in protos:
            if is_single(net) and net.version == 4:
                addr = str(net.network_address)
                filters.append(CtFilter(family, saddr=addr, protocol=proto))
                if not ports:
                    filters.append(CtFilter(family, daddr=addr, protocol=proto))
            # ctnetlink filters compare whole addresses, never a prefix, and invert the IPv6 compare
            # (`!ipv6_addr_cmp` in ctnetlink_filter_match_tuple, 5.8 to 6.18 at least: an IPv6 address
            # filter returns every entry but that address). So for a CIDR or an IPv6 address the kernel
            # narrows by family, protocol and destination port (it compares ports for TCP and UDP only);
            # the address is matched here.
            elif few and proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                filters += [CtFilter(family, protocol=proto, dport=port) for port in few]
            else:
                # Every port, many ports, or SCTP: the slow path, all the family's entries of the protocol
                # come here (~0.3 s per 100,000). fail2ban.SessionKiller runs kills in a background
                # worker, so fail2ban's ban path never waits for this.
                filters.append(CtFilter(family, protocol=proto))
    return list(dict.fromkeys(filters))


class CtTuple(NamedTuple):
    """One direction of a conntrack flow; no ports for protocols without them."""

    protocol: int
    src: Address
    dst: Address
    sport: Optional[int] = None
    dport: Optional[int] = None


def _ip_attrs(src: Optional[Address], dst: Optional[Address]) -> bytes:
    """CTA_TUPLE_IP's contents: the addresses given."""
    out = b""
    for addr, v4, v6 in ((src, CTA_IP_V4_SRC, CTA_IP_V6_SRC), (dst, CTA_IP_V4_DST, CTA_IP_V6_DST)):
        if addr is not None:
            out += netlink.attr(v4 if addr.version == 4 else v6, addr.packed)
    return out


def pack_ct_dump_request(seq: int, wanted: CtFilter) -> bytes:
    """IPCTNL_MSG_CT_GET dump of `wanted.family`'s entries, filtered in the kernel by CTA_FILTER."""
    family, saddr, daddr, proto, dport = wanted
    ip_part = _ip_attrs(saddr and ipaddress.ip_address(saddr), daddr and ipaddress.ip_address(daddr))
    proto_part = b"" if proto is None else netlink.attr(CTA_PROTO_NUM, bytes([proto]))
    proto_part += b"" if dport is None else netlink.attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    flags = ((FILTER_IP_SRC if saddr else 0) | (FILTER_IP_DST if daddr else 0)
             | (0 if proto is None else FILTER_PROTO_NUM) | (0 if dport is None else FILTER_PROTO_DST_PORT))
    attrs = b""
    if flags:  # without any, the family in the header is the filter
        tuple_part = (netlink.nest(CTA_TUPLE_IP, ip_part) if ip_part else b"") + \
            (netlink.nest(CTA_TUPLE_PROTO, proto_part) if proto_part else b"")
        attrs = netlink.nest(CTA_TUPLE_ORIG, tuple_part) + \
            netlink.nest(CTA_FILTER, netlink.attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags)))
    return netlink.message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, netlink.NFGEN.pack(family, 0, 0) + attrs)


def pack_tuple(flow: CtTuple) -> bytes:
    """CTA_TUPLE_ORIG naming `flow`: the kernel finds an entry by it in either direction."""
    proto = [netlink.attr(CTA_PROTO_NUM, bytes([flow.protocol]))]
    if flow.sport is not None and flow.dport is not None:
        proto += [netlink.attr(CTA_PROTO_SRC_PORT, struct.pack("!H", flow.sport)),
                  netlink.attr(CTA_PROTO_DST_PORT, struct.pack("!H", flow.dport))]
    return netlink.nest(CTA_TUPLE_ORIG, netlink.nest(CTA_TUPLE_IP, _ip_attrs(flow.src, flow.dst)), netlink.nest(CTA_TUPLE_PROTO, *proto))


def pack_ct_delete(seq: int, family: int, attrs: bytes) -> bytes:
    return netlink.message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, netlink.NFGEN.pack(family, 0, 0) + attrs)


def parse_ct_orig(payload: bytes) -> Optional[CtTuple]:
    """The original tuple of a dumped entry (an nfgenmsg and its attributes); None if it has none."""
    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload)):
        if kind != CTA_TUPLE_ORIG:
            continue
        found: dict[tuple[int, int], bytes] = {}  # (CTA_TUPLE_IP or _PROTO, field) -> value
        for part, p_start, p_end in netlink.attrs(payload, start, end):
            for field, f_start, f_end in netlink.attrs(payload, p_start, p_end):
                found[(part, field)] = payload[f_start:f_end]
        src = found.get((CTA_TUPLE_IP, CTA_IP_V4_SRC)) or found.get((CTA_TUPLE_IP, CTA_IP_V6_SRC))
        dst = found.get((CTA_TUPLE_IP, CTA_IP_V4_DST)) or found.get((CTA_TUPLE_IP, CTA_IP_V6_DST))
        proto = found.get((CTA_TUPLE_PROTO, CTA_PROTO_NUM))
        if not (src and dst and proto):
            return None
        sport, dport = (found.get((CTA_TUPLE_PROTO, field)) for field in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT))
        return CtTuple(proto[0], ipaddress.ip_address(src), ipaddress.ip_address(dst),
                       sport and int.from_bytes(sport, "big"), dport and int.from_bytes(dport, "big"))
    return None


def parse_ct_handle(payload: bytes) -> bytes:
    """A dumped entry's CTA_TUPLE_ORIG, CTA_ID and CTA_ZONE, verbatim: sent back, they delete exactly
    that entry (the id makes the kernel refuse a newer flow that reuses the tuple)."""
    return b"".join(payload[start - netlink.ATTR.size:end] + bytes(-end % 4)
                    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload))
                    if kind in (CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE))


class _Conntrack(netlink.Socket):
    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER)

    def dump(self, wanted: CtFilter, needles: tuple[bytes, ...] = ()) -> Iterator[bytes]:
        """The dumped entries' payloads (none from datagrams without any of `needles`); read them to
        the end before the next request."""
        return self.ask(lambda seq: pack_ct_dump_request(seq, wanted), needles)

    def delete(self, family: int, attrs: bytes) -> bool:
        """Delete the entry `attrs` name; False when there is none."""
        try:
            for _ in self.ask(lambda seq: pack_ct_delete(seq, family, attrs)):
                pass
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True


SWEEPERS = 4  # conntrack walks at once: more only queue for the same cores


def _sweeper(sweep: Callable[[_Conntrack, CtFilter], None], todo: "queue.SimpleQueue[CtFilter]",
             problems: list[str]) -> None:
    try:
        sock = _Conntrack()
    except OSError as e:
        problems.append(f"could not open a conntrack netlink socket: {_why(e)}")
        return
    try:
        while True:
            try:
                wanted = todo.get_nowait()
            except queue.Empty:
                return
            try:
                sweep(sock, wanted)
            except Exception as e:  # a worker's failure must reach the report, not vanish with the thread
                problems.append(f"could not sweep the conntrack table: {e}")
    finally:
        sock.close()


def _delete_conntrack(ct: _Conntrack, nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports,
                      problems: list[str]) -> int:
    """Delete the entries in scope that the socket pass did not: forwarded and DNAT'd flows, half-open
    ones, unconnected UDP, and those of sockets that ended meanwhile."""
    # Most dumped entries are others': a datagram, then an entry, whose bytes do not even contain the
    # whole bytes of a banned prefix cannot be in scope, and that test costs little beside parsing.
    needles = tuple({net.network_address.packed[:net.prefixlen // 8] for net in nets})
    doomed: dict[bytes, int] = {}  # handle -> family

    def sweep(sock: _Conntrack, wanted: CtFilter) -> None:
        try:
            for payload in sock.dump(wanted, needles):
                if not any(needle in payload for needle in needles):
                    continue
                orig = parse_ct_orig(payload)
                if orig and conntrack_in_scope(orig.src, orig.dst, orig.dport, nets, ports):
                    doomed[parse_ct_handle(payload)] = wanted.family
        except OSError as e:
            problems.append(f"could not read the {_family_name(wanted.family)} conntrack table: {_why(e)}")

    filters = conntrack_filters(nets, protocols, ports)
    if len(filters) == 1:
        sweep(ct, filters[0])
    else:
        # Each dump walks the whole table in the kernel (~30 ms per 100,000 entries) and spends most
        # of its time there, out of the GIL: a few workers, each on a socket of its own, walk side by side.
        todo = queue.SimpleQueue()
        for wanted in filters:
            todo.put(wanted)
        workers = [threading.Thread(target=_sweeper, args=(sweep, todo, problems), daemon=True)
                   for _ in range(min(len(filters), SWEEPERS))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    # Every dump above has ended before the first delete: deleting while the kernel still walks the
    # table for a dump on this socket could skip or repeat entries.
    deleted = 0
    for handle, family in doomed.items():
        try:
            deleted += ct.delete(family, handle)  # False: it ended between the dump and now
        except OSError as e:
            problems.append(f"could not delete an {_family_name(family)} conntrack entry: {_why(e)}")
    return deleted


# --- sockets (NETLINK_SOCK_DIAG) --------------------------------------------------------------------

SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_S_GE, BC_S_LE, BC_D_COND = 1, 2, 3, 8

# Session states only: LISTEN and CLOSE hold no peer, TIME_WAIT is already over. Bits are 1 << state:
# ESTABLISHED 1, SYN_SENT 2, SYN_RECV 3, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11,
# NEW_SYN_RECV 12 (a half-open connection).
_TCP_STATES = sum(1 << s for s in (1, 2, 3, 4, 5, 8, 9, 11, 12))
_UDP_STATES = 1 << 1  # connected UDP sockets (ESTABLISHED); unconnected ones are servers, not sessions

_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2 up to its inet_diag_sockid
_SOCKID_LEN = 48
_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
_HOSTCOND = struct.Struct("=BBxxi")  # inet_diag_hostcond: family, prefix_len, port; the address follows
_ACCEPT, _REJECT = -1, -2


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


def pack_dump_request(seq: int, family: int, protocol: int, states: int, bytecode: bytes) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump of `protocol` sockets in `states`, filtered by `bytecode`."""
    request = _REQ.pack(family, protocol, 0, states) + bytes(_SOCKID_LEN) + netlink.attr(INET_DIAG_REQ_BYTECODE, bytecode)
    return netlink.message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, request)


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
    return netlink.message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, request)


def parse_diag_msg(protocol: int, payload: bytes) -> DiagSocket:
    """An inet_diag_msg (as answered for `protocol`) to a DiagSocket."""
    family, state = payload[0], payload[1]
    sport, dport, src, dst = struct.unpack_from("!HH16s16s", payload, 4)
    width = 4 if family == socket.AF_INET else 16
    return DiagSocket(family, protocol, state, ipaddress.ip_address(src[:width]), sport,
                      ipaddress.ip_address(dst[:width]), dport, payload[4:4 + _SOCKID_LEN])


class _SockDiag(netlink.Socket):
    def __init__(self) -> None:
        super().__init__(NETLINK_SOCK_DIAG)

    def dump(self, family: int, protocol: int, states: int, bytecode: bytes) -> list[DiagSocket]:
        return [parse_diag_msg(protocol, p)
                for p in self.ask(lambda seq: pack_dump_request(seq, family, protocol, states, bytecode))]

    def destroy(self, sock: DiagSocket) -> None:
        for _ in self.ask(lambda seq: pack_destroy_request(seq, sock)):
            pass


def socket_protocols(protocols: tuple[str, ...]) -> list[int]:
    """The protocols whose sockets can be listed and destroyed: TCP and UDP (SCTP's diag has no destroy)."""
    return [PROTOCOL_NUMBERS[p] for p in (protocols or ("tcp", "udp")) if p != "sctp"]


def socket_flows(sock: DiagSocket) -> list[CtTuple]:
    """The tuples a socket's conntrack entry is found by: remote to local (the original direction of
    a flow the peer opened, the reply of one the host opened), then local to remote (the reply of a
    DNAT'd flow, the original of an SNAT'd one). A v4-mapped socket's flow is tracked as IPv4."""
    remote, local = sock.remote, sock.local
    if sock.family == socket.AF_INET6 and remote.ipv4_mapped and local.ipv4_mapped:
        remote, local = remote.ipv4_mapped, local.ipv4_mapped
    return [CtTuple(sock.protocol, remote, local, sock.remote_port, sock.local_port),
            CtTuple(sock.protocol, local, remote, sock.local_port, sock.remote_port)]


def _destroy_sockets(nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports,
                     ct: Optional[_Conntrack], problems: list[str]) -> tuple[int, int]:
    """Destroy the sockets in scope and, with `ct`, delete each one's conntrack entry by its exact
    tuple (a lookup, no table dump). Returns (sockets destroyed, entries deleted)."""
    try:
        diag = _SockDiag()
    except OSError as e:
        problems.append(f"could not open a sock_diag netlink socket: {_why(e)}")
        return 0, 0
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
        destroyed = deleted = 0
        can_destroy = True
        for sock in doomed.values():
            if can_destroy:
                try:
                    diag.destroy(sock)
                    destroyed += 1
                except OSError as e:
                    if e.errno == errno.EOPNOTSUPP:
                        problems.append("kernel lacks socket destroy (CONFIG_INET_DIAG_DESTROY)")
                        can_destroy = False
                    elif e.errno != errno.ENOENT:  # ENOENT: it closed between the dump and now
                        problems.append(f"could not destroy a socket of {sock.remote}: {_why(e)}")
            # The reset the destroy sent has passed through this entry already.
            if ct is not None:
                deleted += _delete_flow(ct, sock, problems)
        return destroyed, deleted
    finally:
        diag.close()


def _delete_flow(ct: _Conntrack, sock: DiagSocket, problems: list[str]) -> int:
    """Delete the conntrack entry of a socket's flow, if it has one; 1 when deleted."""
    for flow in socket_flows(sock):
        family = socket.AF_INET if flow.src.version == 4 else socket.AF_INET6
        try:
            if ct.delete(family, pack_tuple(flow)):
                return 1
        except OSError as e:
            problems.append(f"could not delete an {_family_name(family)} conntrack entry: {_why(e)}")
            return 0
    return 0  # untracked, in another zone (the dump finds it), or already gone
