"""Cut a banned address's live sessions: delete its conntrack entries and destroy its local sockets.

A ban rule only stops new packets from being accepted; a session the address already holds keeps its
server process busy (and, with `ct state established accept` ahead of the ban, keeps flowing). Killing
its conntrack entries and sockets makes the ban take effect at once, like `conntrack -D` plus `ss -K`.

This module decides what to cut, in the ban's terms; kernel/ctnetlink.py and kernel/sockdiag.py carry
the messages.
"""

from __future__ import annotations

import errno
import ipaddress
import queue
import socket
import threading
from typing import Callable, NamedTuple, Optional, Sequence

from .addr import Address, Network, Spans, is_single
from .kernel.ctnetlink import Conntrack, CtFilter, CtTuple, pack_tuple, parse_ct_handle, parse_ct_orig
from .kernel.sockdiag import MAX_NETS, DiagSocket, SockDiag, diag_bytecode, nets_per_dump
from .spec import PROTOCOL_NUMBERS, PortRange

Ports = tuple[PortRange, ...]


class KillReport(NamedTuple):
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
    ct: Optional[Conntrack] = None
    if "conntrack" in kinds:
        try:
            ct = Conntrack()
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


class Banned:
    """The addresses of a kill's nets, merged into ranges: a membership test by bisection, however
    many bans a burst holds (a loop over the nets at each of a dump's entries would not be)."""

    def __init__(self, nets: Sequence[Network]) -> None:
        self._spans = Spans((net.version, int(net.network_address), int(net.broadcast_address)) for net in nets)

    def __contains__(self, addr: Address) -> bool:
        return self._spans.covers(addr.version, int(addr))


def conntrack_in_scope(src: Address, dst: Address, dport: Optional[int], banned: Banned, ports: Ports) -> bool:
    """An entry (original direction) is in scope when the address opened it to a banned port or,
    for an all-ports ban, when either end is the address (flows the host opened to it)."""
    if ports:
        return dport is not None and port_in(dport, ports) and src in banned
    return src in banned or dst in banned


def mapped(net: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The IPv4 network as the v4-mapped IPv6 prefix a dual-stack (`::`) socket sees its peers in."""
    base = int(ipaddress.IPv6Address("::ffff:0:0"))
    return ipaddress.IPv6Network((base | int(net.network_address), 96 + net.prefixlen))


def diag_targets(nets: Sequence[Network], per_dump: int = MAX_NETS) -> list[tuple[int, list[Network]]]:
    """(socket family, remote prefixes) to dump, each list at most `per_dump` long: IPv4 peers also
    live in AF_INET6 sockets, v4-mapped. One dump per list: each walks the kernel's whole socket hash."""
    by_family: dict[int, list[Network]] = {socket.AF_INET: [], socket.AF_INET6: []}
    for net in nets:
        if isinstance(net, ipaddress.IPv4Network):
            by_family[socket.AF_INET].append(net)
            by_family[socket.AF_INET6].append(mapped(net))
        else:
            by_family[socket.AF_INET6].append(net)
    return [(family, found[i:i + per_dump]) for family, found in by_family.items()
            for i in range(0, len(found), per_dump)]


# --- conntrack ----------------------------------------------------------------------------------------

def _why(e: OSError) -> str:
    return e.strerror or str(e)  # a timeout has no errno


def _family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


# Up to this many ports, conntrack dumps are narrowed in the kernel one port at a time. Each such dump
# walks the whole table (~30 ms per 100,000 entries), while one dump of the family and protocol costs
# ~3 us per entry it returns: with a table full of unrelated entries the two meet at about ten ports.
NARROW_PORTS = 8


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
    # Every dump walks the whole table, however narrow its filter: for a burst of more IPv4 hosts than
    # ports, a dump per port (the hosts matched here) takes fewer walks than a dump per host.
    hosts4 = sum(1 for net in nets if net.version == 4 and is_single(net))
    hosts4_by_port = bool(few) and hosts4 > len(few)
    filters: list[CtFilter] = []
    for net in nets:
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        for proto in protos:
            by_port = bool(few) and proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP)
            if is_single(net) and net.version == 4 and not (hosts4_by_port and by_port):
                addr = str(net.network_address)
                filters.append(CtFilter(family, saddr=addr, protocol=proto))
                if not ports:
                    filters.append(CtFilter(family, daddr=addr, protocol=proto))
            # ctnetlink filters compare whole addresses, never a prefix, and invert the IPv6 compare
            # (`!ipv6_addr_cmp` in ctnetlink_filter_match_tuple, 5.8 to 6.18 at least: an IPv6 address
            # filter returns every entry but that address, in the reply direction too; no mark or zone
            # tells a ban's entries apart). So for a CIDR or an IPv6 address the kernel narrows by
            # family, protocol and destination port (it compares ports for TCP and UDP only); the
            # address is matched here. The dumps are then the floor: bench/killbench.py times both.
            elif by_port:
                filters += [CtFilter(family, protocol=proto, dport=port) for port in few]
            else:
                # Every port, many ports, or SCTP: the slow path, all the family's entries of the protocol
                # come here (~0.3 s per 100,000). fail2ban.SessionKiller runs kills in a background
                # worker, so fail2ban's ban path never waits for this.
                filters.append(CtFilter(family, protocol=proto))
    return list(dict.fromkeys(filters))


SWEEPERS = 4  # conntrack walks at once: more only queue for the same cores
MAX_NEEDLES = 16  # banned prefixes looked for as bytes in each datagram and entry, at most


def _sweeper(sweep: Callable[[Conntrack, CtFilter], None], todo: "queue.SimpleQueue[CtFilter]",
             problems: list[str]) -> None:
    try:
        sock = Conntrack()
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


def _delete_conntrack(ct: Conntrack, nets: Sequence[Network], protocols: tuple[str, ...], ports: Ports,
                      problems: list[str]) -> int:
    """Delete the entries in scope that the socket pass did not: forwarded and DNAT'd flows, half-open
    ones, unconnected UDP, and those of sockets that ended meanwhile."""
    # Most dumped entries are others': a datagram, then an entry, whose bytes do not even contain the
    # whole bytes of a banned prefix cannot be in scope, and that test costs little beside parsing,
    # for a few prefixes; a burst of many is matched by bisection alone (a substring search per
    # prefix, over every datagram of a dump by port, would cost more than parsing each entry).
    needles = tuple({net.network_address.packed[:net.prefixlen // 8] for net in nets})
    if len(needles) > MAX_NEEDLES:
        needles = ()
    banned = Banned(nets)
    doomed: dict[bytes, int] = {}  # handle -> family

    def sweep(sock: Conntrack, wanted: CtFilter) -> None:
        try:
            for payload in sock.entries(wanted, needles):
                if needles and not any(needle in payload for needle in needles):
                    continue
                orig = parse_ct_orig(payload)
                if orig and conntrack_in_scope(orig.src, orig.dst, orig.dport, banned, ports):
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


# --- sockets ------------------------------------------------------------------------------------------

# Session states only: LISTEN and CLOSE hold no peer, TIME_WAIT is already over. Bits are 1 << state:
# ESTABLISHED 1, SYN_SENT 2, SYN_RECV 3, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11,
# NEW_SYN_RECV 12 (a half-open connection).
_TCP_STATES = sum(1 << s for s in (1, 2, 3, 4, 5, 8, 9, 11, 12))
_UDP_STATES = 1 << 1  # connected UDP sockets (ESTABLISHED); unconnected ones are servers, not sessions

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
                     ct: Optional[Conntrack], problems: list[str]) -> tuple[int, int]:
    """Destroy the sockets in scope and, with `ct`, delete each one's conntrack entry by its exact
    tuple (a lookup, no table dump). Returns (sockets destroyed, entries deleted)."""
    try:
        diag = SockDiag()
    except OSError as e:
        problems.append(f"could not open a sock_diag netlink socket: {_why(e)}")
        return 0, 0
    try:
        doomed: dict[tuple[int, int, bytes], DiagSocket] = {}
        # Thousands of port ranges leave the kernel's filter no room for prefixes: ports are then
        # matched here only (below, as always).
        filtered = ports if nets_per_dump(ports) >= MAX_NETS // 16 else ()
        per_dump = nets_per_dump(filtered)
        for protocol in socket_protocols(protocols):
            name = "TCP" if protocol == socket.IPPROTO_TCP else "UDP"
            states = _TCP_STATES if protocol == socket.IPPROTO_TCP else _UDP_STATES
            for family, targets in diag_targets(nets, per_dump):
                try:
                    found = diag.sockets(family, protocol, states, diag_bytecode(targets, filtered))
                except OSError as e:
                    problems.append(f"kernel lacks {name} socket diagnostics (CONFIG_INET_{name}_DIAG)"
                                    if e.errno == errno.ENOENT else f"could not list {name} sockets: {_why(e)}")
                    continue
                remotes = Banned(targets)
                for sock in found:
                    # The kernel filtered already; this keeps a destroy from ever reaching a socket outside
                    # the ban, whatever a kernel made of the filter.
                    if sock.remote in remotes and port_in(sock.local_port, ports):
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


def _delete_flow(ct: Conntrack, sock: DiagSocket, problems: list[str]) -> int:
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
