"""Our table read over netlink (kernel/nftdump.py, read.observed_from_dump) against libnftables' own
listing of the same kernel objects, in a namespace of this module's own: whatever a jail asks for, and
whatever someone else puts in its chains, both readers see the same sets, chains and rules, and the
check finds the same faults."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import example, given, strategies as st

from f2bext import lab
from f2bext.backends import nft
from f2bext.kernel import nftdump
from f2bext.lab.netns import Netns
from f2bext.spec import PROTOCOLS, JailSpec

from fuzzing import fuzz, valid_specs
from test_faults import listed_elements

POSTFIX = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})


def both_readers(ns: Netns) -> tuple[nft.Observed, nft.Observed]:
    """(libnftables' terse listing parsed, the netlink dump decoded) of our table as it stands."""
    with ns.entered():
        return nft.parse_ruleset(nft.Nft().listing()), nft.observed_from_dump(nftdump.read(nft.FAMILY, nft.TABLE))


def comparable(rule: dict) -> object:
    """A rule's Signature; a protocol no jail can name (icmp) reads by its number in the dump, so
    such a rule counts only as not one of ours."""
    sig = nft.rule_signature(rule)
    return sig if sig is None or set(sig.protocols) <= set(PROTOCOLS) else "another protocol"


def assert_same(listed: nft.Observed, dumped: nft.Observed, spec: JailSpec) -> None:
    assert (dumped.table, dumped.handle) == (listed.table, listed.handle)
    assert dumped.chains == listed.chains
    assert {name: {k: body.get(k) for k in ("name", "type", "flags", "handle")} for name, body in dumped.sets.items()} \
        == {name: {k: body.get(k) for k in ("name", "type", "flags", "handle")} for name, body in listed.sets.items()}
    assert dumped.rules.keys() == listed.rules.keys()
    for chain, rules in listed.rules.items():
        assert [comparable(r) for r in dumped.rules[chain]] == [comparable(r) for r in rules], \
            json.dumps([r["expr"] for r in rules])
        assert [(r["handle"], r.get("comment")) for r in dumped.rules[chain]] == \
            [(r["handle"], r.get("comment")) for r in rules]
    assert [f.code for f in nft.check_jail(spec, dumped)] == [f.code for f in nft.check_jail(spec, listed)]


def build(ns: Netns, cmds: list, by: str) -> None:
    """The builders' commands sent by libnftables (as f2bext before 1.x did, and nft -j -f does) or by
    our own netlink encoder (wire.py)."""
    if by == "libnftables":
        ns.run(["nft", "-j", "-f", "-"], input=json.dumps({"nftables": cmds}))
        return
    with ns.entered():
        nft.Nft().apply(cmds, "build")


@pytest.mark.parametrize("by", ["libnftables", "netlink"])
@fuzz(60)
@given(spec=valid_specs())
def test_every_jail_as_built_reads_the_same_from_the_dump_as_from_libnftables(scratch, by, spec):
    scratch.nft("flush", "ruleset")
    build(scratch, nft.build_structure(spec), by)
    listed, dumped = both_readers(scratch)
    assert nft.check_jail(spec, dumped) == []
    assert_same(listed, dumped, spec)


# Rules someone else puts in our chain: each reads as ours (the same Signature) or as not ours (None)
# alike through both readers.
FOREIGN_RULES = [
    "ip saddr @postfix-v4 accept",
    "ip saddr != @postfix-v4 drop",
    "ip saddr 192.0.2.1 drop",
    "meta l4proto udp th dport 53 counter drop",
    "counter",
    "ip saddr @postfix-v4 tcp dport 22 counter drop",
    "ip saddr @postfix-v4 udp dport { 53, 123 } drop",
    "ip saddr @postfix-v4 tcp dport 1-65535 counter drop",
    "ip saddr @postfix-v4 tcp dport 1024-65535 counter drop",
    "ip saddr @postfix-v4 meta l4proto tcp th dport { 25, 1000-2000, 60000-65535 } counter reject",
    "ip saddr @postfix-v4 th dport != 25 drop",
    "ip saddr @postfix-v4 th dport < 1024 drop",
    "ip saddr @postfix-v4 meta l4proto { tcp, udp, sctp } counter drop",
    "ip saddr @postfix-v4 meta l4proto icmp drop",
    "ip saddr @postfix-v4 meta l4proto sctp ct original proto-dst 25 counter drop",
    "ip6 saddr @postfix-v6 counter drop",
    "meta mark 1 ip saddr @postfix-v4 drop",
    "iifname \"veth0\" ip saddr @postfix-v4 drop",
    "ip saddr @postfix-v4 limit rate 1/second drop",
    "ip saddr @postfix-v4 log drop",
    "ip saddr @postfix-v4 counter reject with tcp reset",
    "ip saddr @postfix-v4 counter reject with icmpx port-unreachable",
    "ip daddr @postfix-v4 drop",
    "ip saddr @postfix-v4 ip saddr @postfix-v4 drop",
    "ip saddr @postfix-net4 continue",
]


@pytest.mark.parametrize("rule", FOREIGN_RULES)
def test_a_rule_someone_else_put_in_our_chain_reads_alike_through_both_readers(scratch, rule):
    scratch.nft("flush", "ruleset")
    build(scratch, nft.build_structure(POSTFIX), "netlink")
    scratch.run(["nft", f"add rule inet f2bext postfix-input {rule}"])
    listed, dumped = both_readers(scratch)
    assert_same(listed, dumped, POSTFIX)
    assert [f.code for f in nft.check_jail(POSTFIX, dumped)] == ["rule-altered"]


ALTERED_TABLES = {
    "no table": "",
    "chain policy drop": "add table inet f2bext\nadd chain inet f2bext postfix-input "
                         "{ type filter hook input priority -10; policy drop; }",
    "chain at priority 0": "add table inet f2bext\nadd chain inet f2bext postfix-input "
                           "{ type filter hook input priority 0; policy accept; }",
    "regular chain": "add table inet f2bext\nadd chain inet f2bext postfix-input",
    "extra chain": "add table inet f2bext\nadd chain inet f2bext postfix-output { type filter hook output priority 0; }",
    "set of the wrong type": "add table inet f2bext\nadd set inet f2bext postfix-v4 { type ipv6_addr; }",
    "set with intervals": "add table inet f2bext\nadd set inet f2bext postfix-v4 { type ipv4_addr; flags interval; }",
    "set with a timeout": "add table inet f2bext\nadd set inet f2bext postfix-v4 { type ipv4_addr; flags timeout; }",
    "another table": "add table inet other\nadd chain inet other postfix-input "
                     "{ type filter hook input priority -10; policy accept; }",
}


@pytest.mark.parametrize("ruleset", list(ALTERED_TABLES.values()), ids=list(ALTERED_TABLES))
def test_a_table_someone_else_made_reads_alike_through_both_readers(scratch, ruleset):
    scratch.nft("flush", "ruleset")
    if ruleset:
        scratch.run(["nft", "-f", "-"], input=ruleset + "\n")
    listed, dumped = both_readers(scratch)
    assert_same(listed, dumped, POSTFIX)
    assert nft.check_jail(POSTFIX, dumped)


@fuzz(60)
@given(nets=st.lists(st.builds(ipaddress.ip_network, st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(lambda t: (ipaddress.IPv6Address(t[0]), t[1])),
), strict=st.just(False)), max_size=40))
@example(nets=[ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])
@example(nets=[ipaddress.ip_network(n) for n in ("192.0.3.0/24", "192.0.4.0/24", "2001:db8:1::/48", "2001:db8:2::/48")])
@example(nets=[ipaddress.ip_network(n) for n in ("255.255.255.0/24", "0.0.0.0/8", "255.255.255.255/32", "ffff::/16",
                                            "::/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")])
@pytest.mark.parametrize("by", ["libnftables", "netlink"])
def test_a_sets_elements_read_alike_from_the_dump_and_from_libnftables(scratch, by, nets):
    scratch.nft("flush", "ruleset")
    singles = [n for n in nets if n.prefixlen == n.max_prefixlen]
    build(scratch, nft.build_structure(POSTFIX) + nft.build_elements("add", "postfix", singles)
          + nft.build_network_sets("postfix", nets, (4, 6)), by)
    with scratch.entered():
        kernel = nft.Nft()
        for kind in nft.SET_KINDS:
            name = nft.set_name("postfix", kind)
            listed = listed_elements(json.loads(scratch.nft("-j", "list", "set", "inet", "f2bext", name)))
            assert sorted(kernel.elements(name)) == sorted(listed), name
        held = set(kernel.elements("postfix-v4") + kernel.elements("postfix-v6") + kernel.elements("postfix-net4")
                   + kernel.elements("postfix-net6"))
    assert held == set(singles) | set(nft.collapsed_networks(nets))


def same_range(exprs):
    """A port range as one `range` expression, as libnftables 1.1 makes it: 1.0 made `cmp gte`, `cmp lte`."""
    out, i = [], 0
    while i < len(exprs):
        low, high = exprs[i], exprs[i + 1] if i + 1 < len(exprs) else None
        if low.name == "cmp" and high is not None and high.name == "cmp" and (low.u32(2), high.u32(2)) == (5, 3):
            out.append(nftdump.Expr("range", {1: low.attrs[1], 2: bytes(4), 3: low.attrs[3], 4: high.attrs[3]}))
            i += 2
            continue
        out.append(low)
        i += 1
    return tuple(out)


@fuzz(40)
@given(spec=valid_specs())
def test_our_encoder_makes_the_rules_libnftables_makes_expression_for_expression(scratch, spec):
    made = {}
    for by in ("libnftables", "netlink"):
        scratch.nft("flush", "ruleset")
        build(scratch, nft.build_structure(spec), by)
        with scratch.entered():
            dump = nftdump.read(nft.FAMILY, nft.TABLE)
        made[by] = ([(r.chain, same_range(r.exprs), r.comment) for r in dump.rules],
                    sorted((s.name, s.flags, s.key_type, s.key_len) for s in dump.sets),
                    [c._replace(handle=0) for c in dump.chains])
    assert made["netlink"] == made["libnftables"]


PROBE = """
import ipaddress, sys
from f2bext.backends.nft import NftBackend
from f2bext.spec import JailSpec
spec = JailSpec.from_params("postfix", {"port": "25,465,587"})
backend = NftBackend(owner=True)
backend.start(spec, [ipaddress.ip_network("203.0.113.0/28"), ipaddress.ip_network("198.51.100.7")])
assert backend.ban(spec, [ipaddress.ip_network("2001:db8::7")], lambda: []) == []
assert backend.verify([spec]) == []
backend.nft.apply([{"flush": {"chain": {"family": "inet", "table": "f2bext", "name": "postfix-input"}}}], "break")
assert backend.verify([spec]), "the broken chain is found"
backend.repair(spec, [ipaddress.ip_network("198.51.100.7")])
assert backend.verify([spec]) == [] and backend.banned(spec) == [ipaddress.ip_network("198.51.100.7")]
backend.stop(spec)
print("libnftables loaded" if "nftables" in sys.modules else "libnftables never loaded")
"""


def test_a_jail_starts_bans_checks_repairs_and_stops_without_loading_libnftables(scratch, workdir):
    scratch.nft("flush", "ruleset")
    done = scratch.run([lab.PYTHON, "-c", PROBE], env=lab.lab_env(workdir))
    assert done.stdout.split("\n")[-2:] == ["libnftables never loaded", ""], done.stdout + done.stderr
    assert "f2bext" not in scratch.nft("list", "tables")
