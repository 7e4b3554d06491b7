"""The iptables + ipset backend's kernel layer on a real kernel, in namespaces: ipset over netlink,
the rules fingerprint, and the checks it spares."""

import ipaddress
import subprocess

import pytest

from f2bext import lab
from f2bext.backends import ipset
from f2bext.errors import KernelError
from f2bext.spec import JailSpec

POSTFIX = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})
VARIANTS = ["nft", "legacy"]


def net(text):
    return ipaddress.ip_network(text)


def nothing():
    return []


def ipset_cli(ns, *args):
    return ns.run(["ipset", *args]).stdout


def test_netlink_set_headers_read_what_ipset_lists(hosts):
    with hosts.server.entered():
        xt = ipset.Xtables()
        xt.restore_sets(ipset.build_set_restore("postfix", [net("192.0.2.0/24"), net("2001:db8::7/128")], flush=False))
        hosts.server.run(["ipset", "create", "someone-else", "hash:ip", "maxelem", "100"])
        types, limits = xt.sets()
    listed = ipset.parse_sets(ipset_cli(hosts.server, "list", "-t"))
    assert types == {name: (kind, family) for name, (kind, family, _, _) in listed.items()}
    assert limits == {name: (maxelem, entries) for name, (_, _, maxelem, entries) in listed.items()}
    assert limits["f2bext-postfix"] == (ipset.MAXELEM, 1) and limits["someone-else"] == (100, 0)


def test_netlink_adds_and_deletes_are_idempotent_and_what_ipset_sees(hosts):
    nets = [net("203.0.113.7/32"), net("198.51.100.0/24"), net("2001:db8::7/128"), net("2001:db8:1::/48")]
    with hosts.server.entered():
        xt = ipset.Xtables()
        xt.restore_sets(ipset.build_set_restore("postfix", [], flush=False))
        for n in nets + nets:
            xt.change("add", ipset.ipset_name("postfix", n.version), n)
        for _ in range(2):
            xt.change("delete", "f2bext-postfix", net("203.0.113.7/32"))
            xt.change("delete", "f2bext6-postfix", net("2001:db8:ffff::1/128"))  # never added
    assert ipset_cli(hosts.server, "list", "f2bext-postfix").split("Members:")[1].split() == ["198.51.100.0/24"]
    assert sorted(ipset_cli(hosts.server, "list", "f2bext6-postfix").split("Members:")[1].split()) == \
        ["2001:db8:1::/48", "2001:db8::7"]


def test_netlink_refusals_say_what_the_kernel_refused(hosts):
    hosts.server.run(["ipset", "create", "tiny", "hash:net", "maxelem", "1"])
    with hosts.server.entered():
        xt = ipset.Xtables()
        xt.change("add", "tiny", net("203.0.113.1/32"))
        with pytest.raises(KernelError, match="no such set"):
            xt.change("add", "nosuch", net("203.0.113.2/32"))
        with pytest.raises(KernelError, match="full"):
            xt.change("add", "tiny", net("203.0.113.2/32"))
        with pytest.raises(KernelError, match="refused to add 2001:db8::2 in tiny"):
            xt.change("add", "tiny", net("2001:db8::2/128"))
    assert ipset_cli(hosts.server, "list", "tiny").split("Members:")[1].split() == ["203.0.113.1"]


def test_legacy_fingerprint_follows_rules_not_traffic(hosts, smtp, reach):
    def rule(*args, family=4):
        hosts.server.run([lab.iptables(family, "legacy"), *args])
    rule("-A", "INPUT", "-p", "tcp", "--dport", "25", "-j", "ACCEPT")
    rule("-A", "INPUT", "-p", "tcp", "--dport", "25", "-j", "ACCEPT", family=6)
    with hosts.server.entered():
        xt = ipset.Xtables("legacy")
        before = xt.rules_fingerprint()
    assert reach(hosts.attacker, lab.SERVER4, 25) and reach(hosts.attacker, lab.SERVER6, 25)
    counted = hosts.server.run([lab.iptables(4, "legacy"), "-L", "INPUT", "-nvx"]).stdout
    assert int(counted.splitlines()[2].split()[0]) > 0  # the traffic moved the counters
    with hosts.server.entered():
        assert xt.rules_fingerprint() == before
        rule("-R", "INPUT", "1", "-p", "tcp", "--dport", "25", "-j", "DROP")
        after_v4 = xt.rules_fingerprint()
        assert after_v4 != before
        rule("-I", "INPUT", "-s", "2001:db8::1", "-j", "ACCEPT", family=6)
        assert xt.rules_fingerprint() != after_v4


@pytest.mark.parametrize("variant", VARIANTS)
def test_bans_fork_nothing_until_someone_else_changes_the_rules(hosts, smtp, reach, monkeypatch, variant):
    with hosts.server.entered():
        backend = ipset.IpsetBackend(ipset.Xtables(variant))
        backend.start(POSTFIX, [])
        assert backend.verify([POSTFIX]) == []  # the rules checked out at this fingerprint
        forks = []
        real_run = subprocess.run
        monkeypatch.setattr(subprocess, "run", lambda argv, *a, **k: forks.append(argv) or real_run(argv, *a, **k))
        assert backend.ban(POSTFIX, [net("203.0.113.50")], nothing) == []
        assert backend.verify([POSTFIX]) == [] and forks == []
        hosts.server.run([lab.iptables(4, variant), "-I", "INPUT", "-p", "tcp", "--dport", "25", "-j", "ACCEPT"])
        reasons = backend.ban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("203.0.113.50")])
        assert reasons and "before f2bext's rule" in reasons[0].message
        assert forks  # the change was seen, read and repaired
        assert backend.verify([POSTFIX]) == []
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    assert reach(hosts.bystander, lab.SERVER4, 25)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_swapped_in_set_is_seen_without_a_rule_change(hosts, variant):
    with hosts.server.entered():
        backend = ipset.IpsetBackend(ipset.Xtables(variant))
        backend.start(POSTFIX, [net("203.0.113.50")])
        assert backend.verify([POSTFIX]) == []
        # Swapped for an empty, smaller look-alike: the rules still name it, so they do not change.
        backend.xt.restore_sets("create f2bext-imposter hash:net family inet maxelem 10\n"
                                "swap f2bext-imposter f2bext-postfix\n")
        findings = backend.verify([POSTFIX])
        assert [f.code for f in findings] == ["set-altered"]
        backend.repair(POSTFIX, [net("203.0.113.50")])
        assert backend.verify([POSTFIX]) == []
        assert backend.banned(POSTFIX) == [net("203.0.113.50")]


def test_a_ban_the_set_cannot_take_rebuilds_the_jail_with_it(hosts, smtp, reach):
    with hosts.server.entered():
        backend = ipset.IpsetBackend(ipset.Xtables())
        backend.start(POSTFIX, [net("203.0.113.50")])
        assert backend.verify([POSTFIX]) == []
        # A full look-alike swapped in (no rule changes): the add itself is refused.
        backend.xt.restore_sets("create f2bext-tiny hash:net family inet maxelem 1\nadd f2bext-tiny 192.0.2.1\n"
                                "swap f2bext-tiny f2bext-postfix\n")
        reasons = backend.ban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("203.0.113.50")])
        assert reasons and "full" in reasons[0].message
        assert backend.verify([POSTFIX]) == []
        assert set(backend.banned(POSTFIX)) == {net(lab.ATTACKER4), net("203.0.113.50")}
    assert not reach(hosts.attacker, lab.SERVER4, 25)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_rules_matching_the_original_port_read_back_as_built(hosts, variant):
    spec = JailSpec.from_params("postfix", {"port": "587,8025,9000:9010", "chain": "DOCKER-USER"})
    with hosts.server.entered():
        backend = ipset.IpsetBackend(ipset.Xtables(variant))
        backend.start(spec, [net(lab.ATTACKER4)])
        assert backend.verify([spec]) == []
    saved = hosts.server.run([lab.iptables(6, variant, "-save")]).stdout
    assert "-A FORWARD -p tcp -m conntrack --ctorigdstport 9000:9010 -m set --match-set f2bext6-postfix src" in saved


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_repair_after_lost_rules_puts_back_the_rules_and_leaves_the_sets(hosts, smtp, reach, monkeypatch, variant):
    held = [net(lab.ATTACKER4), net("2001:db8::50")]
    with hosts.server.entered():
        backend = ipset.IpsetBackend(ipset.Xtables(variant))
        backend.start(POSTFIX, held)
        for family in (4, 6):  # what `nft flush ruleset` does on an iptables-nft host: the ipsets stay
            hosts.server.run([lab.iptables(family, variant), "-F", "INPUT"])
        assert [f.code for f in backend.verify([POSTFIX])] == ["jump-missing", "jump-missing"]
        sent = []
        for method in ("restore_sets", "restore_rules"):
            real = getattr(backend.xt, method)
            monkeypatch.setattr(backend.xt, method, lambda *a, real=real, m=method: sent.append(m) or real(*a))
        backend.repair(POSTFIX, held)
        assert sent == ["restore_rules", "restore_rules"]  # one iptables-restore per family, no ipset restore
        assert backend.verify([POSTFIX]) == []
        assert set(backend.banned(POSTFIX)) == set(held)
        # The other way round: entries lost, rules kept. One ipset transaction, the rules untouched.
        backend.xt.restore_sets("flush f2bext-postfix\n")
        sent.clear()
        backend.repair(POSTFIX, held)
        assert sent == ["restore_sets"]
        assert set(backend.banned(POSTFIX)) == set(held)
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    assert reach(hosts.bystander, lab.SERVER4, 25)


def test_a_bulk_load_over_netlink_adds_every_address_takes_present_ones_and_names_a_missing_set(hosts):
    v4 = [int(ipaddress.ip_address(f"100.64.{i >> 8}.{i & 255}")) for i in range(1, 5001)]  # several messages
    v6 = [int(ipaddress.ip_address(f"2001:db8::{i:x}")) for i in range(1, 2501)]
    with hosts.server.entered():
        xt = ipset.Xtables()
        xt.restore_sets(ipset.build_set_restore("postfix", [], flush=False))
        xt.add_many("f2bext-postfix", 4, v4)
        xt.add_many("f2bext6-postfix", 6, v6)
        xt.add_many("f2bext-postfix", 4, v4[:10])  # present already: not an error
        limits = xt.sets()[1]
        with pytest.raises(KernelError, match="no such set"):
            xt.add_many("f2bext-nosuchjail", 4, v4[:3])
        members = {str(n.network_address) for n in xt.members("f2bext6-postfix")}
    assert limits["f2bext-postfix"][1] == len(v4) and limits["f2bext6-postfix"][1] == len(v6)
    assert members == {str(ipaddress.ip_address(a)) for a in v6}
