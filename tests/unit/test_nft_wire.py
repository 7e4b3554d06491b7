"""The builders' commands as nf_tables messages (backends/nft/wire.py), without a kernel: what is packed
reads back through the dump parser (kernel/nftdump.py) as what was asked. The kernel's own view of the
same messages is tests/lab/test_nft_dump.py."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import example, given, strategies as st

from f2bext.backends import nft
from f2bext.backends.nft import wire
from f2bext.kernel import nftbatch, nftdump
from f2bext.kernel.netlink import attrs
from f2bext.spec import JailSpec

from fuzzing import fuzz


def elements_of(messages):
    """Every element the NEWSETELEM messages add, by set name, read as the kernel's dump is read."""
    found = {}
    for msg in messages:
        if msg.msg_type != (nftbatch.NFNL_SUBSYS_NFTABLES << 8) | nftbatch.NEWSETELEM:
            continue
        name = next(msg.body[a:b].rstrip(b"\0").decode() for kind, a, b in attrs(msg.body, 4, len(msg.body))
                    if kind == nftbatch.NFTA_SET_ELEM_LIST_SET)
        found.setdefault(name, []).extend(nftdump.parse_elements(msg.body))
    return found


@fuzz(60)
@given(st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(1, 127)), min_size=1, max_size=3000))
@example([((0x20010db8 << 96) + (i << 65), 64) for i in range(2500)])  # 5,000 keys: five messages
@example([((0x20010db8 << 96) + (1 << 80), 48), ((0x20010db8 << 96) + (2 << 80), 48)])  # one ends where one starts
def test_thousands_of_ipv6_prefixes_in_one_command_pack_and_read_back_as_those_prefixes(prefixes):
    nets = nft.collapsed_networks(ipaddress.ip_network((ipaddress.IPv6Address(a), n), strict=False)
                                  for a, n in prefixes)
    messages = wire.encode(nft.build_network_sets("postfix", nets, (6,)))  # every attribute fits its 16 bits
    keys = elements_of(messages)["postfix-net6"]
    assert max(len(nftdump.parse_elements(m.body)) for m in messages if m.msg_type & 0xFF == nftbatch.NEWSETELEM) \
        <= wire.ELEMENTS_PER_MESSAGE
    interval = nftdump.Set("postfix-net6", 0, nftbatch.NFT_SET_INTERVAL, 8, 16)
    assert nft.networks_of(interval, keys) == nets


def test_a_rules_anonymous_sets_are_made_before_it_and_looked_up_by_their_id():
    spec = JailSpec.from_params("postfix", {"port": "25,465,1000:2000", "protocol": "tcp,udp"})
    messages = wire.encode(nft.build_structure(spec))
    sets = [nftdump.parse_set(b"\0" * 4 + m.body[4:]) for m in messages
            if m.msg_type & 0xFF == nftbatch.NEWSET]
    anonymous = [s for s in sets if s.flags & nftbatch.NFT_SET_ANONYMOUS]
    assert len(anonymous) == 2 * 8  # protocols and ports, for each of the rules' eight sets
    rule = next(nftdump.parse_rule(m.body) for m in messages if m.msg_type & 0xFF == nftbatch.NEWRULE)
    looked_up = [e for e in rule.exprs if e.name == "lookup"]
    assert [e.text(1) for e in looked_up] == ["postfix-v4", wire.ANONYMOUS, wire.ANONYMOUS]


@pytest.mark.parametrize("cmd", [
    {"add": {"map": {"family": "inet", "table": "f2bext", "name": "m"}}},
    {"add": {"rule": {"family": "inet", "table": "f2bext", "chain": "c", "expr": [{"accept": None}]}}},
    {"add": {"rule": {"family": "inet", "table": "f2bext", "chain": "c",
                      "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}]}}},
])
def test_a_command_the_builders_never_make_is_refused_before_anything_is_sent(cmd):
    with pytest.raises(ValueError, match="no netlink form"):
        wire.encode(nft.build_structure(JailSpec.from_params("postfix", {})) + [cmd])


def first_rule(spec):
    messages = wire.encode(nft.build_structure(spec))
    return next(nftdump.parse_rule(m.body) for m in messages if m.msg_type & 0xFF == nftbatch.NEWRULE)


def u32(value):
    return struct.pack(">L", value)


def test_our_rule_reads_as_ours_and_a_change_in_any_register_or_dependency_reads_as_not_ours():
    spec = JailSpec.from_params("postfix", {"port": "25", "protocol": "tcp"})
    exprs = list(first_rule(spec).exprs)

    def signature(changed):
        return nft.rule_signature({"expr": nft.rule_exprs(changed, {}, {})})
    assert signature(exprs) == nft.expected_signatures(spec)[0]._replace(set="postfix-v4")
    mark_in_reg8 = nftdump.Expr("meta", {1: u32(8), 2: u32(3)})  # a 32-bit register inside register 1
    assert signature(exprs[:3] + [mark_in_reg8] + exprs[3:]) is None
    ipv6_too = [exprs[0], nftdump.Expr("cmp", {**exprs[1].attrs, 3: exprs[1].attrs[3].replace(b"\x02", b"\x0a")})]
    assert signature(exprs[:2] + ipv6_too + exprs[2:]) is None  # meta nfproto ipv4 meta nfproto ipv6: never matches
    lookup_reg2 = nftdump.Expr("lookup", {**exprs[3].attrs, 2: u32(2)})
    assert signature(exprs[:3] + [lookup_reg2] + exprs[4:]) is None
    inverted = nftdump.Expr("lookup", {**exprs[3].attrs, 5: u32(1)})
    assert signature(exprs[:3] + [inverted] + exprs[4:]) is None
