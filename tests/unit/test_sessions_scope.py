"""What a session kill asks of the kernel, checked without one: sock_diag bytecode, ctnetlink messages, the ban's scope."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given, strategies as st

from f2bext import lab
from fuzzing import fuzz
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from f2bext.kernel import ctnetlink, netlink
from f2bext.kernel.ctnetlink import (
    CTA_ID, CTA_ZONE, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_GET, CtFilter, CtTuple, pack_ct_delete,
    pack_ct_dump_request, pack_tuple, parse_ct_handle, parse_ct_orig,
)
from f2bext.kernel.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, parse_messages
from f2bext.kernel.sockdiag import (
    BC_D_COND, BC_JMP, BC_S_GE, BC_S_LE, INET_DIAG_REQ_BYTECODE, MAX_NETS, SOCK_DESTROY, SOCK_DIAG_BY_FAMILY, DiagSocket,
    diag_bytecode, nets_per_dump, pack_destroy_request, pack_dump_request, parse_diag_msg,
)
from f2bext.sessions import (
    Banned, conntrack_filters, conntrack_in_scope, diag_targets, mapped, narrow_ports, socket_flows, socket_protocols,
)

net = ipaddress.ip_network
ip = ipaddress.ip_address
ATT4, ATT4B, ATT6 = lab.ATTACKER4, lab.ATTACKER_NET_PEER4, lab.ATTACKER6
BY4 = lab.BYSTANDER4
SRV4, SRV6 = lab.SERVER4, lab.SERVER6
SMTP = ((25, 25), (587, 587))


def _cond_width(code: bytes, pos: int) -> int:
    return 4 if code[pos + 4] == socket.AF_INET else 16


def _op_len(code: bytes, pos: int) -> int:
    op = code[pos]
    if op == BC_D_COND:
        return 4 + 8 + _cond_width(code, pos)
    return 8 if op in (BC_S_GE, BC_S_LE) else 4


def audit(code: bytes) -> None:
    """The kernel's inet_diag_bc_audit: the true branches walk every op to the end exactly; false
    branches land on an op start, on the end (accept) or 4 bytes past it (reject)."""
    starts, pos = [], 0
    while pos < len(code):
        starts.append(pos)
        _, yes, _ = struct.unpack_from("=BBH", code, pos)
        assert yes == _op_len(code, pos)
        pos += yes
    assert pos == len(code)
    for start in starts:
        _, _, no = struct.unpack_from("=BBH", code, start)
        assert no >= _op_len(code, start) and no % 4 == 0
        assert start + no in starts or start + no in (len(code), len(code) + 4)


def run(code: bytes, family: int, remote: str, local_port: int) -> bool:
    """The kernel's inet_diag_bc_run for the ops diag_bytecode uses."""
    pos = 0
    while 0 <= pos < len(code):
        op, yes, no = struct.unpack_from("=BBH", code, pos)
        if op == BC_D_COND:
            cond_family, prefix_len, port = struct.unpack_from("=BBxxi", code, pos + 4)
            width = _cond_width(code, pos)
            prefix = ipaddress.ip_network((int.from_bytes(code[pos + 12:pos + 12 + width], "big"), prefix_len))
            ok = port == -1 and cond_family == family and ip(remote) in prefix
        elif op in (BC_S_GE, BC_S_LE):
            bound = struct.unpack_from("=BBH", code, pos + 4)[2]
            ok = local_port >= bound if op == BC_S_GE else local_port <= bound
        else:
            assert op == BC_JMP
            ok = False
        pos += yes if ok else no
    return pos == len(code)


def test_bytecode_without_ports_is_one_remote_prefix_condition():
    code = diag_bytecode([net("203.0.113.7/32")], ())
    assert code == struct.pack("=BBHBBxxi4s", BC_D_COND, 16, 20, socket.AF_INET, 32, -1, ip(ATT4).packed)
    audit(code)
    assert run(code, socket.AF_INET, ATT4, 12345)
    assert not run(code, socket.AF_INET, ATT4B, 12345)


@pytest.mark.parametrize("ports", [SMTP, ((20, 25), (100, 200), (1000, 2000)), ((587, 587),)])
def test_bytecode_matches_remote_prefix_and_local_port_ranges_as_the_kernel_runs_it(ports):
    for target, family, inside, outside in [
        (net("203.0.113.0/24"), socket.AF_INET, [ATT4, ATT4B], [BY4, "203.0.114.7"]),
        (mapped(net("203.0.113.7/32")), socket.AF_INET6, ["::ffff:" + ATT4], ["::ffff:" + ATT4B, ATT6]),
        (net("2001:db8::/64"), socket.AF_INET6, [ATT6, lab.BYSTANDER6], ["2001:db9::7", "::ffff:" + ATT4]),
    ]:
        code = diag_bytecode([target], ports)
        audit(code)
        for port in range(0, 2100):
            wanted = any(low <= port <= high for low, high in ports)
            for remote in inside:
                assert run(code, family, remote, port) == wanted, (target, remote, port)
            for remote in outside:
                assert not run(code, family, remote, port)


NEAR = 0xCB007100  # 203.0.113.0: prefixes and probes drawn around it, so that they meet


@fuzz(150)
@given(st.lists(st.tuples(st.integers(0, 511), st.integers(23, 32)).map(
           lambda a: net((NEAR + a[0], a[1]), strict=False)), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 700), st.integers(0, 60)).map(lambda r: (r[0], r[0] + r[1])), max_size=3),
       st.lists(st.tuples(st.integers(0, 511).map(lambda a: ip(NEAR + a)), st.integers(0, 800)), max_size=12))
def test_bytecode_of_a_burst_matches_any_of_its_prefixes_and_a_port_as_the_kernel_runs_it(nets, ports, probes):
    """One dump for many bans: a remote in any of the prefixes, at a local port in any of the ranges."""
    code = diag_bytecode(nets, ports)
    audit(code)
    probes += [(n.network_address, port) for n in nets for port, _ in ports[:1] or [(0, 0)]]
    for remote, port in probes:
        wanted = any(remote in n for n in nets) and (not ports or any(lo <= port <= hi for lo, hi in ports))
        assert run(code, socket.AF_INET, str(remote), port) == wanted, (remote, port)


@pytest.mark.parametrize("ranges", [0, 1, 100, 1000, 3000, 3300])
def test_a_dumps_bytecode_fits_its_attribute_beside_any_number_of_port_ranges(ranges):
    """Prefixes of the largest kind (IPv6) as many as nets_per_dump allows beside the ranges: the
    request still packs (a 16-bit attribute length); past what leaves room, none fit."""
    ports = tuple((2 * i, 2 * i) for i in range(ranges))
    per = nets_per_dump(ports)
    assert per <= MAX_NETS and (per == MAX_NETS or ranges >= 1000)
    if per:
        code = diag_bytecode([net(f"2001:db8::{i:x}/128") for i in range(per)], ports)
        assert len(code) + 4 <= 0xFFFF
        pack_dump_request(1, socket.AF_INET6, socket.IPPROTO_TCP, 1, code)
    else:
        assert ranges * 20 > 0xFFFF - 4 - 32


def test_a_socket_filter_without_a_prefix_is_refused_not_one_that_matches_everything():
    with pytest.raises(ValueError):
        diag_bytecode([], SMTP)


def test_ipv4_peers_are_also_looked_for_as_v4_mapped_in_ipv6_sockets_and_a_burst_in_one_dump_per_family():
    assert mapped(net("203.0.113.0/24")) == net("::ffff:203.0.113.0/120")
    assert diag_targets([net("203.0.113.7/32"), net("2001:db8::7/128"), net("198.51.100.0/24")]) == [
        (socket.AF_INET, [net("203.0.113.7/32"), net("198.51.100.0/24")]),
        (socket.AF_INET6, [net("::ffff:203.0.113.7/128"), net("2001:db8::7/128"), net("::ffff:198.51.100.0/120")])]
    many = [net(f"100.64.{i // 256}.{i % 256}/32") for i in range(MAX_NETS + 5)]
    assert [(family, len(found)) for family, found in diag_targets(many)] == [
        (socket.AF_INET, MAX_NETS), (socket.AF_INET, 5), (socket.AF_INET6, MAX_NETS), (socket.AF_INET6, 5)]


def test_dump_request_carries_protocol_states_and_bytecode():
    code = diag_bytecode([net("203.0.113.7/32")], SMTP)
    msg = pack_dump_request(7, socket.AF_INET6, socket.IPPROTO_TCP, 0x1234, code)
    length, msg_type, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, msg_type, flags, seq, pid) == (len(msg), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 7, 0)
    assert struct.unpack_from("=BBBxI", msg, 16) == (socket.AF_INET6, socket.IPPROTO_TCP, 0, 0x1234)
    assert msg[24:72] == bytes(48)  # no exact socket: the bytecode selects
    assert struct.unpack_from("=HH", msg, 72) == (4 + len(code), INET_DIAG_REQ_BYTECODE)
    assert msg[76:] == code


def _diag_msg(family: int, state: int, local: str, lport: int, remote: str, rport: int, cookie: int) -> bytes:
    sockid = struct.pack("!HH16s16s", lport, rport, ip(local).packed.ljust(16, b"\0"),
                         ip(remote).packed.ljust(16, b"\0")) + struct.pack("=IQ", 0, cookie)
    return struct.pack("=BBBB", family, state, 0, 0) + sockid + struct.pack("=5I", 0, 0, 0, 0, 4242)


def test_diag_answer_is_parsed_and_its_sockid_sent_back_verbatim_to_destroy():
    payload = _diag_msg(socket.AF_INET6, 1, "::ffff:" + SRV4, 25, "::ffff:" + ATT4, 40000, 99)
    sock = parse_diag_msg(socket.IPPROTO_TCP, payload)
    assert sock == DiagSocket(socket.AF_INET6, socket.IPPROTO_TCP, 1, ip("::ffff:" + SRV4), 25,
                              ip("::ffff:" + ATT4), 40000, payload[4:52])
    v4 = parse_diag_msg(socket.IPPROTO_UDP, _diag_msg(socket.AF_INET, 1, SRV4, 53, ATT4, 5353, 1))
    assert (v4.local, v4.remote, v4.local_port, v4.remote_port) == (ip(SRV4), ip(ATT4), 53, 5353)

    msg = pack_destroy_request(3, sock)
    assert struct.unpack_from("=IHHII", msg) == (len(msg), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 3, 0)
    assert struct.unpack_from("=BBBxI", msg, 16) == (socket.AF_INET6, socket.IPPROTO_TCP, 0, 1 << 1)
    assert msg[24:] == payload[4:52]


def test_netlink_datagram_is_split_into_aligned_messages():
    first = struct.pack("=IHHII", 21, 20, 2, 5, 0) + b"abcde" + b"\0\0\0"  # padded to 4 bytes
    done = struct.pack("=IHHII", 20, NLMSG_DONE, 2, 5, 0) + struct.pack("=i", 0)
    assert list(parse_messages(first + done)) == [(20, 5, b"abcde"), (NLMSG_DONE, 5, bytes(4))]
    assert list(parse_messages(b"")) == []


def test_conntrack_filters_are_exact_for_ipv4_hosts_and_by_port_for_ipv6_and_cidrs():
    v4, v6, cidr = net("203.0.113.7/32"), net("2001:db8::7/128"), net("203.0.113.0/24")
    v4f, v6f = socket.AF_INET, socket.AF_INET6
    assert conntrack_filters([v4], ("tcp", "udp"), SMTP) == [(v4f, ATT4, None, 6, None), (v4f, ATT4, None, 17, None)]
    assert conntrack_filters([v4], ("tcp",), ()) == [(v4f, ATT4, None, 6, None), (v4f, None, ATT4, 6, None)]
    # IPv6 and CIDRs: the kernel can match neither, so it narrows by port, one dump per protocol and port.
    assert conntrack_filters([v6], ("tcp", "udp"), SMTP) == [
        CtFilter(v6f, protocol=6, dport=25), CtFilter(v6f, protocol=6, dport=587),
        CtFilter(v6f, protocol=17, dport=25), CtFilter(v6f, protocol=17, dport=587)]
    assert conntrack_filters([cidr, net("198.51.100.0/24")], ("tcp",), SMTP) == [
        CtFilter(v4f, protocol=6, dport=25), CtFilter(v4f, protocol=6, dport=587)]
    # Every port, many ports, or SCTP (whose ports the kernel does not compare): family and protocol only.
    assert conntrack_filters([v6], ("tcp",), ()) == [CtFilter(v6f, protocol=6)]
    assert conntrack_filters([cidr], ("tcp",), ((1000, 1008),)) == [CtFilter(v4f, protocol=6)]
    assert conntrack_filters([v6], ("sctp",), ((5060, 5060),)) == [CtFilter(v6f, protocol=132)]
    assert conntrack_filters([v6], (), ()) == [CtFilter(v6f)]
    # A burst of more IPv4 hosts than ports: a dump per port (each walks the whole table), not per host.
    burst = [v4, net("203.0.113.8/32"), net("198.51.100.9/32")]
    assert conntrack_filters(burst, ("tcp", "sctp"), SMTP) == [
        CtFilter(v4f, protocol=6, dport=25), CtFilter(v4f, protocol=6, dport=587),
        *[CtFilter(v4f, saddr=str(n.network_address), protocol=132) for n in burst]]
    assert conntrack_filters(burst[:2], ("tcp",), SMTP) == [CtFilter(v4f, saddr=str(n.network_address), protocol=6)
                                                             for n in burst[:2]]  # as many as the ports: by host


def test_few_ports_are_listed_one_by_one_and_many_not_at_all():
    assert narrow_ports(SMTP) == [25, 587]
    assert narrow_ports(((1000, 1007),)) == list(range(1000, 1008))
    assert narrow_ports(((25, 26), (25, 25))) == [25, 26]
    assert narrow_ports(((1000, 1008),)) == []
    assert narrow_ports(()) == []


def _decoded(data: bytes) -> nfct_msg:
    """A ctnetlink message as pyroute2 reads it: an independent check of what is sent."""
    msg = nfct_msg(data)
    msg.decode()
    return msg


def test_dump_request_filters_in_the_kernel_by_protocol_and_destination_port():
    msg = _decoded(pack_ct_dump_request(9, CtFilter(socket.AF_INET6, protocol=6, dport=587)))
    assert (msg["header"]["type"], msg["header"]["flags"], msg["header"]["sequence_number"]) == \
        (IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 9)
    assert msg["nfgen_family"] == socket.AF_INET6
    proto = msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_PROTO")
    assert (proto.get_attr("CTA_PROTO_NUM"), proto.get_attr("CTA_PROTO_DST_PORT")) == (6, 587)
    assert msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_IP") is None
    assert msg.get_attr("CTA_FILTER").get_attr("CTA_FILTER_ORIG_FLAGS") == (1 << 3) | (1 << 5)  # proto, dport

    msg = _decoded(pack_ct_dump_request(1, CtFilter(socket.AF_INET, saddr=ATT4, protocol=17)))
    assert msg.get_attr("CTA_TUPLE_ORIG").get_attr("CTA_TUPLE_IP").get_attr("CTA_IP_V4_SRC") == ATT4
    assert msg.get_attr("CTA_FILTER").get_attr("CTA_FILTER_ORIG_FLAGS") == (1 << 0) | (1 << 3)  # saddr, proto

    msg = _decoded(pack_ct_dump_request(1, CtFilter(socket.AF_INET6)))
    assert msg["nfgen_family"] == socket.AF_INET6 and msg["attrs"] == []  # the family alone filters


def test_a_socket_flow_is_deleted_by_its_exact_tuple_and_v4_mapped_ones_as_ipv4():
    sock = DiagSocket(socket.AF_INET6, socket.IPPROTO_TCP, 1, ip("::ffff:" + SRV4), 25, ip("::ffff:" + ATT4),
                      40000, bytes(48))
    assert socket_flows(sock) == [CtTuple(6, ip(ATT4), ip(SRV4), 40000, 25), CtTuple(6, ip(SRV4), ip(ATT4), 25, 40000)]
    sock6 = DiagSocket(socket.AF_INET6, socket.IPPROTO_UDP, 1, ip(SRV6), 53, ip(ATT6), 5353, bytes(48))
    assert socket_flows(sock6)[0] == CtTuple(17, ip(ATT6), ip(SRV6), 5353, 53)

    msg = _decoded(pack_ct_delete(4, socket.AF_INET6, pack_tuple(socket_flows(sock6)[0])))
    assert (msg["header"]["type"], msg["header"]["flags"]) == (IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK)
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    assert (orig.get_attr("CTA_TUPLE_IP").get_attr("CTA_IP_V6_SRC"),
            orig.get_attr("CTA_TUPLE_IP").get_attr("CTA_IP_V6_DST")) == (ATT6, SRV6)
    proto = orig.get_attr("CTA_TUPLE_PROTO")
    assert [proto.get_attr(a) for a in ("CTA_PROTO_NUM", "CTA_PROTO_SRC_PORT", "CTA_PROTO_DST_PORT")] == [17, 5353, 53]


def _dumped(orig: CtTuple, *extra: bytes) -> bytes:
    """A dumped entry as ctnetlink writes it: nfgenmsg, the original tuple, then the rest."""
    family = socket.AF_INET6 if orig.src.version == 6 else socket.AF_INET
    return struct.pack("=BBH", family, 0, 0) + pack_tuple(orig) + b"".join(extra)


def test_dumped_entry_gives_its_original_tuple_and_the_handle_that_deletes_exactly_it():
    orig = CtTuple(6, ip(ATT6), ip(SRV6), 40000, 25)
    reply = pack_tuple(CtTuple(6, ip(SRV6), ip(ATT6), 25, 40000))
    reply = struct.pack("=HH", len(reply), 0x8000 | 2) + reply[4:]  # CTA_TUPLE_REPLY
    status = struct.pack("=HH", 8, 3) + struct.pack("!I", 0xE)  # CTA_STATUS
    ident = struct.pack("=HH", 8, CTA_ID) + struct.pack("!I", 1234)
    zone = struct.pack("=HH", 6, CTA_ZONE) + struct.pack("!H", 7) + bytes(2)  # padded to 4 bytes
    payload = _dumped(orig, reply, status, ident, zone)

    assert parse_ct_orig(payload) == orig
    assert parse_ct_handle(payload) == pack_tuple(orig) + ident + zone
    sctp = CtTuple(132, ip(ATT4), ip(SRV4), 1, 5060)
    assert parse_ct_orig(_dumped(sctp)) == sctp
    assert parse_ct_orig(_dumped(CtTuple(1, ip(ATT4), ip(SRV4)))) == CtTuple(1, ip(ATT4), ip(SRV4), None, None)
    assert parse_ct_orig(struct.pack("=BBH", 2, 0, 0) + status) is None


def test_dumped_entry_gives_its_tcp_state_in_conntracks_words():
    tcp = CtTuple(6, ip(ATT4), ip(SRV4), 40000, 587)

    def protoinfo(state: int) -> bytes:
        return netlink.nest(ctnetlink.CTA_PROTOINFO, netlink.nest(
            ctnetlink.CTA_PROTOINFO_TCP, netlink.attr(ctnetlink.CTA_PROTOINFO_TCP_STATE, bytes([state]))))
    assert ctnetlink.parse_ct_tcp_state(_dumped(tcp, protoinfo(3))) == "ESTABLISHED"
    assert ctnetlink.parse_ct_tcp_state(_dumped(tcp, protoinfo(1))) == "SYN_SENT"
    assert ctnetlink.parse_ct_tcp_state(_dumped(tcp, protoinfo(200))) == "200"
    assert ctnetlink.parse_ct_tcp_state(_dumped(CtTuple(17, ip(ATT4), ip(SRV4), 5353, 53))) == ""


def test_a_dump_request_without_bytecode_asks_for_every_socket():
    msg = pack_dump_request(7, socket.AF_INET, socket.IPPROTO_TCP, 1 << 1, b"")
    assert len(msg) == 72 and struct.unpack_from("=I", msg)[0] == 72


def test_conntrack_scope_is_the_ban_scope():
    nets = Banned([net("203.0.113.0/24")])
    srv, att, by = ip(SRV4), ip(ATT4), ip(BY4)
    assert conntrack_in_scope(att, srv, 25, nets, SMTP)
    assert not conntrack_in_scope(att, srv, 8080, nets, SMTP)
    assert not conntrack_in_scope(att, srv, None, nets, SMTP)  # no ports (icmp): not in a port ban
    assert not conntrack_in_scope(srv, att, 25, nets, SMTP)  # the host's own flows: allports only
    assert not conntrack_in_scope(by, srv, 25, nets, SMTP)
    assert conntrack_in_scope(att, srv, None, nets, ())
    assert conntrack_in_scope(srv, att, 443, nets, ())
    assert not conntrack_in_scope(by, srv, 25, nets, ())
    assert not conntrack_in_scope(ip(ATT6), ip(SRV6), 25, nets, ())


@fuzz(200)
@given(st.lists(st.one_of(
           st.tuples(st.integers(0, 511), st.integers(23, 32)).map(lambda a: net((NEAR + a[0], a[1]), strict=False)),
           st.tuples(st.integers(0, 511), st.integers(120, 128)).map(
               lambda a: net(((0x20010DB8 << 96) + a[0], a[1]), strict=False))), max_size=40),
       st.lists(st.one_of(st.integers(0, 511).map(lambda a: ip(NEAR + a)),
                          st.integers(0, 511).map(lambda a: ip((0x20010DB8 << 96) + a))), max_size=20))
def test_a_bursts_banned_addresses_are_those_of_any_of_its_nets(nets, probes):
    """Merged into ranges and bisected: the same answer as asking each net, for both IP versions
    (an IPv4 address is never in an IPv6 net, nor the other way round)."""
    banned = Banned(nets)
    for addr in probes + [n.network_address for n in nets] + [n.broadcast_address for n in nets]:
        assert (addr in banned) == any(addr in n for n in nets), addr


def test_sockets_are_looked_for_in_tcp_and_udp_only():
    assert socket_protocols(()) == [socket.IPPROTO_TCP, socket.IPPROTO_UDP]
    assert socket_protocols(("udp", "sctp")) == [socket.IPPROTO_UDP]
    assert socket_protocols(("sctp",)) == []
