"""The nftables backend on a real kernel, in namespaces, with real traffic."""

import ipaddress
import threading

from f2bext import lab
from f2bext.backends.nft import NftBackend
from f2bext.spec import JailSpec

POSTFIX = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})


def net(text):
    return ipaddress.ip_network(text)


def nothing():
    return []


def test_banned_address_is_refused_on_every_listed_port_and_only_there(hosts, smtp, reach):
    lab.apply_seed_firewall(hosts.server)
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [])
        backend.ban(POSTFIX, [net(lab.ATTACKER4), net(lab.ATTACKER6)], nothing)
        assert backend.verify([POSTFIX]) == []
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port)
        assert not reach(hosts.attacker, lab.SERVER6, port)
        assert reach(hosts.bystander, lab.SERVER4, port)
        assert reach(hosts.bystander, lab.SERVER6, port)
    assert reach(hosts.attacker, lab.SERVER4, 2525), "a port the jail does not name stays open"


def test_cidr_ban_covers_every_address_inside(hosts, smtp, reach):
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [])
        backend.ban(POSTFIX, [net("203.0.113.0/24")], nothing)
    assert not reach(hosts.attacker, lab.SERVER4, 25, source=lab.ATTACKER4)
    assert not reach(hosts.attacker, lab.SERVER4, 25, source=lab.ATTACKER_NET_PEER4)
    assert reach(hosts.bystander, lab.SERVER4, 25)


def test_unban_lifts_only_that_address_and_tolerates_absent_ones(hosts, smtp, reach):
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [net(lab.ATTACKER4), net("2001:db8::99")])
        backend.unban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("2001:db8::99")])
        backend.unban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("2001:db8::99")])
        assert backend.banned(POSTFIX) == [net("2001:db8::99")]
    assert reach(hosts.attacker, lab.SERVER4, 25)


def test_a_ban_after_a_ruleset_flush_rebuilds_every_held_ban(hosts, smtp, reach):
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [net(lab.ATTACKER6), net("203.0.113.0/24")])
        hosts.server.nft("flush", "ruleset")
        assert [f.code for f in backend.verify([POSTFIX])] == ["table-missing"]
        backend.ban(POSTFIX, [net("198.51.100.99")], lambda: [net(lab.ATTACKER6), net("203.0.113.0/24")])
        assert backend.verify([POSTFIX]) == []
        assert sorted(map(str, backend.banned(POSTFIX))) == ["198.51.100.99/32", "2001:db8::7/128", "203.0.113.0/24"]
    assert not reach(hosts.attacker, lab.SERVER6, 587)


def test_an_accept_slipped_into_our_chain_is_found_and_repaired(hosts, smtp, reach):
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [net(lab.ATTACKER4)])
        hosts.server.nft("insert", "rule", "inet", "f2bext", "postfix-input", "tcp", "dport", "25", "accept")
        assert reach(hosts.attacker, lab.SERVER4, 25)
        assert [f.code for f in backend.verify([POSTFIX])] == ["rule-altered"]
        backend.repair(POSTFIX, [net(lab.ATTACKER4)])
        assert backend.verify([POSTFIX]) == []
    assert not reach(hosts.attacker, lab.SERVER4, 25)


def test_stop_removes_everything_of_ours_and_nothing_else(hosts):
    lab.apply_seed_firewall(hosts.server)
    before = hosts.server.nft("list", "ruleset")
    other = JailSpec.from_params("sshd", {"port": "ssh", "hooks": "input,forward"})
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [net(lab.ATTACKER4)])
        backend.start(other, [net(lab.ATTACKER6)])
        backend.stop(POSTFIX)
        assert backend.verify([other]) == [] and "postfix" not in hosts.server.nft("list", "table", "inet", "f2bext")
        backend.stop(other)
        backend.stop(other)
    assert hosts.server.nft("list", "ruleset") == before


def test_jails_banning_at_once_lose_nothing(hosts):
    specs = [JailSpec.from_params(f"jail{i}", {"port": str(25 + i)}) for i in range(3)]
    expected = {s.jail: {net(f"10.{i}.{n // 250}.{n % 250 + 1}") for n in range(300)} for i, s in enumerate(specs)}
    errors = []
    with hosts.server.entered():
        backend = NftBackend()
        for spec in specs:
            backend.start(spec, [])

        def bans(spec):
            try:
                for address in sorted(expected[spec.jail]):
                    backend.ban(spec, [address], nothing)
            except Exception as e:  # reported below: a thread's exception would otherwise vanish
                errors.append(e)
        threads = [threading.Thread(target=bans, args=(s,)) for s in specs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for spec in specs:
            assert set(backend.banned(spec)) == expected[spec.jail]


def test_a_ban_right_after_someone_elses_change_still_checks_and_repairs(hosts, smtp, reach):
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(POSTFIX, [])
        assert backend.verify([POSTFIX]) == []  # the jail checked out at this generation
        backend.ban(POSTFIX, [net("203.0.113.50")], nothing)  # only our own change since: no listing needed
        hosts.server.nft("insert", "rule", "inet", "f2bext", "postfix-input", "tcp", "dport", "25", "accept")
        reasons = backend.ban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("203.0.113.50")])
        assert reasons and "differ" in reasons[0].message
        assert backend.verify([POSTFIX]) == []
    assert not reach(hosts.attacker, lab.SERVER4, 25)


def test_the_generation_moves_with_every_transaction_of_anyone(hosts):
    with hosts.server.entered():
        backend = NftBackend()
        first = backend.nft.generation()
        hosts.server.nft("add", "table", "inet", "someone_else")
        assert backend.nft.generation() == first + 1


def test_a_forward_jail_matching_the_original_port_reads_back_as_built(hosts):
    """libnftables 1.0.6 lists `ct original proto-dst` values untyped: the check must still see its own rules."""
    spec = JailSpec.from_params("postfix", {"port": "587,8025,9000:9010", "protocol": "tcp,udp",
                                            "hooks": "input,forward"})
    with hosts.server.entered():
        backend = NftBackend()
        backend.start(spec, [net(lab.ATTACKER4), net("2001:db8:7::/48")])
        assert backend.verify([spec]) == [] and backend.ban(spec, [net(lab.ATTACKER6)], nothing) == []
    assert "ct original proto-dst" in hosts.server.nft("list", "chain", "inet", "f2bext", "postfix-forward")
