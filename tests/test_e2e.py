"""End to end: a real fail2ban-server in the lab, jail.local naming our action, real traffic."""

import os
import time

from f2bext import lab


def fail_logins(hosts, workdir, server=lab.SERVER4, count=4):
    lab.tool(hosts.attacker, workdir, "fail-logins", server, "587", str(count), check=True)


def hold_session(hosts, workdir, port=25, server=lab.SERVER4):
    status = os.path.join(workdir, f"hold-{server}-{port}")
    hosts.attacker.popen([lab.PYTHON, "-m", "f2bext.labtools", "hold", server, str(port), status],
                         env=lab.lab_env(workdir))
    lab.Fail2banLab.wait(lambda: os.path.exists(status), "held session")
    return status


def read(path):
    with open(path) as f:
        return f.read()


def chain_rules(hosts, chain="postfix-input"):
    return [line for line in hosts.server.nft("list", "chain", "inet", "f2bext", chain).splitlines()
            if "f2bext" in line and "comment" in line]


def test_held_session_is_cut_at_ban_and_every_port_refused(hosts, workdir, f2b, reach):
    f2b.start()
    held = hold_session(hosts, workdir)
    assert read(held) == "open"
    fail_logins(hosts, workdir)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("postfix"), "the ban")
    f2b.wait(lambda: read(held) != "open", "the held session to end", timeout=5)
    assert read(held).startswith("ended")
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still reachable"
    assert reach(hosts.bystander, lab.SERVER4, 25)
    assert "SASL LOGIN authentication failed" in read(f2b.maillog)


def test_ipv6_attacker_is_banned_over_ipv6(hosts, workdir, f2b, reach):
    f2b.start()
    fail_logins(hosts, workdir, server=lab.SERVER6)
    f2b.wait(lambda: lab.ATTACKER6 in f2b.banned("postfix"), "the IPv6 ban")
    assert not reach(hosts.attacker, lab.SERVER6, 465)
    assert reach(hosts.attacker, lab.SERVER4, 465), "only the IPv6 address was banned"
    assert reach(hosts.bystander, lab.SERVER6, 465)


def test_cidr_ban_from_fail2ban_client(hosts, f2b, reach):
    f2b.start()
    f2b.client("set", "postfix", "banip", "203.0.113.0/24")
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 25, source=lab.ATTACKER_NET_PEER4), "the CIDR ban")
    assert not reach(hosts.attacker, lab.SERVER4, 587, source=lab.ATTACKER4)
    assert reach(hosts.bystander, lab.SERVER4, 587)
    f2b.client("set", "postfix", "unbanip", "203.0.113.0/24")
    assert reach(hosts.attacker, lab.SERVER4, 587, source=lab.ATTACKER4)


def test_ruleset_flush_heals_within_two_seconds_without_a_new_ban(hosts, workdir, f2b, reach):
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    hosts.server.nft("flush", "ruleset")
    flushed = time.time()
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 25), "the ban to come back", timeout=5, step=0.05)
    assert time.time() - flushed < 2.5  # 2 s target plus one probe's round trip
    assert not reach(hosts.attacker, lab.SERVER6, 25)
    assert f2b.banned("postfix") == sorted([lab.ATTACKER4, lab.ATTACKER6])


def test_reload_keeps_bans_adds_no_duplicates_and_picks_up_new_ports(hosts, workdir, f2b, reach):
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.client("reload")
    f2b.client("reload", "postfix")
    assert f2b.banned("postfix") == [lab.ATTACKER4]
    assert len(chain_rules(hosts)) == 4
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    f2b.jails["postfix"]["port"] = "smtp"
    f2b.write_config()
    f2b.client("reload")
    f2b.wait(lambda: reach(hosts.attacker, lab.SERVER4, 587), "the new port list to apply")
    assert not reach(hosts.attacker, lab.SERVER4, 25) and len(chain_rules(hosts)) == 4
    assert f2b.banned("postfix") == [lab.ATTACKER4]


def test_two_jails_banning_at_once_both_hold(hosts, workdir, f2b, reach):
    f2b.jails["submission"] = dict(lab.DEFAULT_JAIL, port="submission,2525")
    f2b.start()
    fail_logins(hosts, workdir)
    for jail in ("postfix", "submission"):
        f2b.wait(lambda: lab.ATTACKER4 in f2b.banned(jail), f"the ban in {jail}")
    assert "203.0.113.7" in hosts.server.nft("list", "set", "inet", "f2bext", "submission-v4")
    assert "203.0.113.7" in hosts.server.nft("list", "set", "inet", "f2bext", "postfix-v4")
    f2b.client("stop", "submission")
    assert "submission" not in hosts.server.nft("list", "table", "inet", "f2bext")
    assert not reach(hosts.attacker, lab.SERVER4, 25)


def test_stop_leaves_nothing_of_ours(hosts, f2b):
    before = hosts.server.nft("list", "ruleset")
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.stop()
    assert hosts.server.nft("list", "ruleset") == before


def test_conf_twin_bans_through_the_command(hosts, workdir, f2b, reach):
    f2b.jails["postfix"]["banaction"] = "f2bext-nftables"
    f2b.start()
    fail_logins(hosts, workdir)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("postfix"), "the ban")
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 465), "enforcement")
    assert reach(hosts.bystander, lab.SERVER4, 465)
    hosts.server.nft("flush", "ruleset")
    # The next ban finds the jail gone and rebuilds it with fail2ban's whole banned list.
    fail_logins(hosts, workdir, server=lab.SERVER6)
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER6, 465), "the IPv6 ban")
    assert not reach(hosts.attacker, lab.SERVER4, 465), "the earlier ban came back with the rebuild"
