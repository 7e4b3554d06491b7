"""Routing netlink answers parsed to the host's addresses and next hops (pure: crafted messages)."""

from __future__ import annotations

import ipaddress
import socket
import struct

from f2bext.kernel import netlink, rtnl

ip = ipaddress.ip_address


def test_an_address_is_the_hosts_own_even_on_a_point_to_point_link():
    header = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 7)
    peer, own = ip("192.0.2.9").packed, ip("192.0.2.1").packed
    payload = header + netlink.attr(rtnl.IFA_ADDRESS, peer) + netlink.attr(rtnl.IFA_LOCAL, own)
    assert rtnl.parse_addr(payload) == (ip("192.0.2.1"), 7)
    assert rtnl.parse_addr(header + netlink.attr(rtnl.IFA_ADDRESS, peer)) == (ip("192.0.2.9"), 7)
    assert rtnl.parse_addr(struct.pack("=BBBBI", socket.AF_PACKET, 0, 0, 0, 7)) is None


def _hop(index: int, gateway: str) -> bytes:
    """One rtnexthop of an RTA_MULTIPATH, with its gateway."""
    body = netlink.attr(rtnl.RTA_GATEWAY, ip(gateway).packed)
    return struct.pack("=HBBi", 8 + len(body), 0, 0, index) + body


def test_every_path_of_a_multipath_route_and_a_gateway_of_another_family_are_next_hops():
    header = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 0, 0, 1, 0)
    multipath = netlink.attr(rtnl.RTA_MULTIPATH, _hop(2, "192.0.2.254") + _hop(3, "198.51.100.254"))
    assert rtnl.parse_route(header + multipath) == [(ip("192.0.2.254"), 2), (ip("198.51.100.254"), 3)]
    via = netlink.attr(rtnl.RTA_OIF, struct.pack("=i", 4)) + \
        netlink.attr(rtnl.RTA_VIA, struct.pack("=H", socket.AF_INET6) + ip("fe80::1").packed)
    assert rtnl.parse_route(header + via) == [(ip("fe80::1"), 4)]
    assert rtnl.parse_route(b"short") == []


def test_a_nexthop_object_gives_its_gateway_and_interface():
    header = struct.pack("=BBBBI", socket.AF_INET6, 0, 0, 0, 0)
    payload = header + netlink.attr(rtnl.NHA_OIF, struct.pack("=i", 5)) + \
        netlink.attr(rtnl.NHA_GATEWAY, ip("2001:db8::1").packed)
    assert rtnl.parse_nexthop(payload) == [(ip("2001:db8::1"), 5)]
    assert rtnl.parse_nexthop(header) == []


def test_a_link_gives_its_name_and_a_link_without_one_gives_none():
    header = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, 5, 0, 0)
    assert rtnl.parse_link_name(header + netlink.attr(rtnl.IFLA_IFNAME, b"veth0\0")) == "veth0"
    assert rtnl.parse_link_name(header + netlink.attr(1, bytes(6))) is None  # IFLA_ADDRESS only
