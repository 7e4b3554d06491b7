"""End to end, on every backend: a real fail2ban-server in the lab, jail.local naming our action,
real traffic. The same tests run on nftables and on ipset with iptables-nft and iptables-legacy."""

import json
import os
import time

import pytest

from f2bext import lab


def fail_logins(hosts, workdir, server=lab.SERVER4, count=4):
    lab.tool(hosts.attacker, workdir, "fail-logins", server, "587", str(count), check=True)


def read(path):
    with open(path) as f:
        return f.read()


def test_held_session_is_cut_at_ban_and_every_port_refused(hosts, workdir, f2b, reach, fw, held_session):
    f2b.start()
    held = held_session(f2b.maillog)
    fail_logins(hosts, workdir)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the ban")
    held.assert_cut()
    f2b.wait(lambda: held.client() != "open", "the client to see its session end")
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still reachable"
    assert reach(hosts.bystander, lab.SERVER4, 25)


# kill = ...: (the server's socket destroyed, its conntrack entry deleted)
KILLS = {"conntrack,sockets": (True, True), "conntrack": (False, True), "sockets": (True, False),
         "none": (False, False)}


def jail_with(banaction, **params):
    """The lab's jail, its action given parameters in jail.local's own syntax."""
    jail = {k: v for k, v in lab.DEFAULT_JAIL.items() if k != "banaction"}
    params.setdefault("port", jail["port"])
    jail["action"] = f"{banaction}[" + ", ".join(f'{k}="{v}"' for k, v in params.items()) + "]"
    return jail


def cut_lines(f2b):
    """The jail's "cut" lines, from the words after the jail's name."""
    lines = read(os.path.join(f2b.workdir, "fail2ban.log")).splitlines()
    return [line.split("[postfix] f2bext ", 1)[1] for line in lines if "[postfix] f2bext cut " in line]


@pytest.mark.parametrize("kill", list(KILLS))
def test_each_kill_value_cuts_exactly_what_it_names_through_fail2bans_ban_path(hosts, f2b, held_session, reach,
                                                                               kill):
    f2b.jails["postfix"] = jail_with("f2bext-nftables.py", kill=kill)
    f2b.start()
    held = held_session(f2b.maillog)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    socket_cut, entry_cut = KILLS[kill]
    if socket_cut or entry_cut:
        f2b.wait(lambda: cut_lines(f2b), "the cut line")
        assert cut_lines(f2b) == [f"cut {lab.ATTACKER4}/32: {int(entry_cut)} conntrack entries, "
                                  f"{int(socket_cut)} sockets"]
    # Whatever was cut, the ban ends the session for the client: a reset, or silence.
    f2b.wait(lambda: held.client() != "open", "the client to see its session end")
    if socket_cut:
        f2b.wait(lambda: held.server_end() != "", "the server to see its socket end")
        assert held.server_end() == "Software caused connection abort"
        assert held.client() == "ended: Connection reset by peer"
    else:
        assert held.established() and held.server_end() == "", "the server's socket was cut"
        assert held.client() == "ended: no answer"
    assert held.tracked() != entry_cut
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    if kill == "none":
        assert cut_lines(f2b) == []


def test_a_session_that_cannot_be_cut_is_one_log_line_and_the_ban_stands(hosts, workdir, f2b, held_session, reach):
    # The kernel refuses fail2ban-server sock_diag sockets (a container's seccomp profile may): sockets
    # cannot be destroyed, conntrack entries still can.
    f2b.server_argv = [lab.PYTHON, os.path.join(os.path.dirname(__file__), "..", "files", "deny_sock_diag.py"),
                       "fail2ban-server"]
    f2b.start()
    held = held_session(f2b.maillog)
    held6 = held_session(f2b.maillog, server=lab.SERVER6, peer=lab.ATTACKER6)
    fail_logins(hosts, workdir)
    f2b.wait(lambda: cut_lines(f2b), "the cut line")
    f2b.client("set", "postfix", "banip", lab.ATTACKER6)
    f2b.wait(lambda: len(cut_lines(f2b)) == 2, "the IPv6 ban's cut line")
    warnings = [line for line in read(os.path.join(f2b.workdir, "fail2ban.log")).splitlines()
                if "WARNING" in line and "[postfix] f2bext" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("[postfix] f2bext: could not open a sock_diag netlink socket: Permission denied; "
                                "the ban stands")
    assert cut_lines(f2b)[0].startswith(f"cut {lab.ATTACKER4}/32: ") and cut_lines(f2b)[0].endswith(", 0 sockets")
    assert cut_lines(f2b)[1] == f"cut {lab.ATTACKER6}/128: 1 conntrack entries, 0 sockets"
    for session in (held, held6):  # what could not be cut lives on in the server...
        assert session.established() and session.server_end() == ""
    for port in lab.SMTP_PORTS:  # ...behind a ban that holds
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still reachable"
    assert not reach(hosts.attacker, lab.SERVER6, 25)
    assert reach(hosts.bystander, lab.SERVER4, 25)


def test_seed_firewall_put_on_top_after_start_does_not_let_a_new_ban_leak(hosts, workdir, f2b, fw, reach,
                                                                           held_session):
    f2b.start()
    lab.apply_seed_firewall(hosts.server, fw.variant, on_top=True)  # the admin's script, after fail2ban
    held = held_session(f2b.maillog)
    fail_logins(hosts, workdir)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the ban")
    held.assert_cut()
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still reachable"
    assert reach(hosts.bystander, lab.SERVER4, 587)


def repair_lines(f2b):
    """The jail's repair warnings: the watchdog's ("...; repairing") and the ban path's ("...; repaired")."""
    return [line for line in read(os.path.join(f2b.workdir, "fail2ban.log")).splitlines()
            if "WARNING" in line and "[postfix] f2bext: " in line]


def test_an_accept_for_another_port_triggers_no_repair(hosts, f2b, fw):
    f2b.unowned()  # so that the real break below can be made from outside
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    for family in (4, 6):
        hosts.server.run([lab.iptables(family, fw.variant), "-w", "-I", "INPUT", "1", "-p", "tcp", "--dport", "22",
                          "-j", "ACCEPT"])
    time.sleep(2.5)  # a window of two watchdog rounds in which nothing may happen
    f2b.client("set", "postfix", "banip", lab.ATTACKER6)  # the ban path verifies too
    assert fw.holds("postfix", lab.ATTACKER6) and fw.holds("postfix", lab.ATTACKER4)
    assert repair_lines(f2b) == []
    fw.unhook("postfix")  # a real break, to show the check above would have seen a repair
    f2b.wait(lambda: repair_lines(f2b), "the watchdog's repair")
    # nf_tables announces the change (nftables, iptables-nft); legacy iptables waits for the round.
    assert all(line.endswith(("(ruleset change); repairing", "(watchdog); repairing"))
               for line in repair_lines(f2b)), repair_lines(f2b)


def test_ipv6_attacker_is_banned_over_ipv6(hosts, workdir, f2b, reach, fw):
    f2b.start()
    fail_logins(hosts, workdir, server=lab.SERVER6)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER6), "the IPv6 ban")
    assert not reach(hosts.attacker, lab.SERVER6, 465)
    assert reach(hosts.attacker, lab.SERVER4, 465), "only the IPv6 address was banned"
    assert reach(hosts.bystander, lab.SERVER6, 465)


def test_cidr_ban_from_fail2ban_client(hosts, f2b, backend, reach):
    f2b.start()
    f2b.client("set", "postfix", "banip", "203.0.113.0/24")
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 25, source=lab.ATTACKER_NET_PEER4), "the CIDR ban")
    assert not reach(hosts.attacker, lab.SERVER4, 587, source=lab.ATTACKER4)
    assert reach(hosts.bystander, lab.SERVER4, 587)
    f2b.client("set", "postfix", "unbanip", "203.0.113.0/24")
    assert reach(hosts.attacker, lab.SERVER4, 587, source=lab.ATTACKER4)


def test_firewall_reload_heals_without_a_new_ban(hosts, f2b, fw, reach):
    fw.save_baseline()
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    fw.wipe()
    # How soon it heals is measured in bench/, not asserted here: a loaded machine must not fail this.
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 25), "the ban to come back", timeout=20)
    assert not reach(hosts.attacker, lab.SERVER6, 25)
    assert f2b.banned("postfix") == sorted([lab.ATTACKER4, lab.ATTACKER6])


def test_reload_keeps_bans_adds_no_duplicates_and_picks_up_new_ports(hosts, f2b, fw, reach):
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    rules = len(fw.rules("postfix"))
    f2b.client("reload")
    f2b.client("reload", "postfix")
    assert f2b.banned("postfix") == [lab.ATTACKER4]
    assert len(fw.rules("postfix")) == rules
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    f2b.jails["postfix"]["port"] = "smtp"
    f2b.write_config()
    f2b.client("reload")
    f2b.wait(lambda: reach(hosts.attacker, lab.SERVER4, 587), "the new port list to apply")
    assert not reach(hosts.attacker, lab.SERVER4, 25) and len(fw.rules("postfix")) == rules
    assert f2b.banned("postfix") == [lab.ATTACKER4]


def test_two_jails_banning_at_once_both_hold(hosts, workdir, f2b, fw, reach):
    f2b.jails["submission"] = dict(f2b.jails["postfix"], port="submission,2525")
    f2b.start()
    fail_logins(hosts, workdir)
    for jail in ("postfix", "submission"):
        f2b.wait(lambda: fw.holds(jail, lab.ATTACKER4), f"the ban in {jail}")
    f2b.client("stop", "submission")
    assert fw.rules("submission") == [] and not fw.holds("submission", lab.ATTACKER4)
    assert not reach(hosts.attacker, lab.SERVER4, 25)


def test_stop_leaves_nothing_of_ours(hosts, f2b, fw):
    before = fw.snapshot()
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.stop()
    assert fw.snapshot() == before


def test_conf_twin_bans_through_the_command(hosts, workdir, f2b, fw, reach):
    f2b.jails["postfix"]["banaction"] = f2b.banaction[:-len(".py")]
    fw.save_baseline()
    f2b.start()
    fail_logins(hosts, workdir)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the ban")
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 465), "enforcement")
    assert reach(hosts.bystander, lab.SERVER4, 465)
    # The drainer checks and repairs the jail while it runs; what is tested here is the next ban's
    # rebuild, so the reload comes once the drainer has ended.
    f2b.wait(lambda: not lab.twin_drainer_alive(workdir), "the drainer to end", timeout=30)
    fw.wipe()
    # The next ban finds the jail broken and rebuilds it with fail2ban's whole banned list.
    fail_logins(hosts, workdir, server=lab.SERVER6)
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER6, 465), "the IPv6 ban")
    assert not reach(hosts.attacker, lab.SERVER4, 465), "the earlier ban came back with the rebuild"


def asked_directly_bans_only_the_attacker(hosts, f2b, fw, reach, refuses: str) -> None:
    """`fail2ban-client set JAIL banip` skips fail2ban's ignore checks: the guard must hold without them,
    and say so (`refuses`: how the action's log line words it)."""
    f2b.jails["postfix"]["ignoreip"] = f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"
    # fail2ban 1.1's ignoreself knows the host's addresses; f2bext's own guard must hold without it.
    f2b.jails["postfix"]["ignoreself"] = "false"
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.BYSTANDER4, lab.SERVER6, "198.51.100.0/24", lab.ATTACKER4)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the attacker's ban")
    assert not fw.holds("postfix", lab.BYSTANDER4) and not fw.holds("postfix", lab.SERVER6)
    assert reach(hosts.bystander, lab.SERVER4, 25)
    log = read(os.path.join(f2b.workdir, "fail2ban.log"))
    assert f"{refuses} to ban {lab.BYSTANDER4}: it is in the jail's ignoreip" in log
    assert f"refusing to ban {lab.SERVER6}: it holds {lab.SERVER6}, an address of this host (eth0)" in log
    assert "refusing to ban 198.51.100.0/24" in log


def test_fail2ban_asked_directly_never_bans_ignoreip_or_the_hosts_own_addresses(hosts, f2b, fw, reach):
    asked_directly_bans_only_the_attacker(hosts, f2b, fw, reach, "refuses")


def test_action_loaded_as_fail2ban_1_1_1_loads_it_bans_and_holds(hosts, workdir, f2b, fw, reach):
    """fail2ban 1.1.1 and later exec the action file in a bare module: no __file__, not in sys.modules."""
    record = os.path.join(workdir, "loaded.jsonl")
    os.environ["F2BEXT_LOADER_RECORD"] = record  # the lab hands its environment to fail2ban-server
    try:
        f2b.server_argv = [lab.PYTHON, os.path.join(os.path.dirname(__file__), "..", "files",
                                                    "fail2ban_server_bare_loader.py")]
        f2b.start()
    finally:
        del os.environ["F2BEXT_LOADER_RECORD"]
    loads = [json.loads(line) for line in read(record).splitlines()]
    assert [os.path.basename(x["path"]) for x in loads] == [f2b.banaction]
    assert not loads[0]["has_file"] and not loads[0]["in_sys_modules"]
    fail_logins(hosts, workdir)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the ban")
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still reachable"
    assert reach(hosts.bystander, lab.SERVER4, 25)
    fw.wipe()  # the watchdog, started from the bare module, heals it
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 25), "the ban back after a wipe")


# ---- settings, on a real server ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["nftables"])  # refused before any backend is asked
@pytest.mark.parametrize("option, value, error", [
    ("port", "smtp,99999", "InputError('port 99999 is out of range 0-65535')"),
    ("protocol", "icmp", "InputError(\"unknown protocol 'icmp': use tcp, udp, sctp, a list of them, or all\")"),
    ("bogus", "1", "InputError(\"unknown option 'bogus'; known: "),
], ids=["port", "protocol", "unknown"])
def test_a_bad_setting_in_jail_local_is_one_error_line_and_the_ruleset_stays_as_it_was(hosts, f2b, fw, reach, option,
                                                                                      value, error):
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    before = fw.snapshot()
    f2b.jails["postfix"] = jail_with(f2b.banaction, **{option: value})
    f2b.write_config()
    assert f2b.client("reload", check=False).returncode != 0
    errors = [line for line in read(os.path.join(f2b.workdir, "fail2ban.log")).splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"has failed. Received {error}" in errors[0], errors
    assert fw.snapshot() == before
    assert f2b.banned("postfix") == [lab.ATTACKER4] and not reach(hosts.attacker, lab.SERVER4, 25)


def probe(hosts, workdir, protocol, ns=None, server=lab.SERVER4):
    """A probe's exit: 0 through, 1 refused, 2 no answer; TCP to 25, UDP to the echo port, SCTP to 5060."""
    port, flag = {"tcp": (25, []), "udp": (lab.UDP_ECHO_PORT, ["--udp"]), "sctp": (5060, ["--sctp"])}[protocol]
    return lab.tool(ns or hosts.attacker, workdir, "probe", server, str(port), *flag).returncode


@pytest.mark.parametrize("blocktype, answer", [("reject", 1), ("drop", 2)])
def test_blocktype_reject_refuses_and_drop_answers_nothing(hosts, workdir, f2b, backend, blocktype, answer):
    f2b.jails["postfix"] = jail_with(f2b.banaction, blocktype=blocktype)
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    assert probe(hosts, workdir, "tcp") == answer
    assert probe(hosts, workdir, "tcp", server=lab.SERVER6) == answer
    assert probe(hosts, workdir, "tcp", ns=hosts.bystander) == 0


# protocol setting -> (the jail's parameters, what the attacker's probes get once banned); port 25 is in
# each list, so only the protocol keeps the TCP probe out of the ban
PROTOCOLS = {
    "udp": ({"protocol": "udp", "port": f"25,{lab.UDP_ECHO_PORT}"}, {"tcp": 0, "udp": 1, "sctp": 0}),
    "sctp": ({"protocol": "sctp", "port": "25,5060"}, {"tcp": 0, "udp": 0, "sctp": 1}),
    "all": ({"type": "allports", "protocol": "all", "port": "0:65535"}, {"tcp": 1, "udp": 1, "sctp": 1}),
}


@pytest.mark.parametrize("setting", list(PROTOCOLS))
def test_udp_sctp_and_all_protocol_bans_refuse_exactly_their_traffic(hosts, workdir, f2b, backend, setting):
    params, banned = PROTOCOLS[setting]
    hosts.server.run(["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])  # an ICMP answer to every probe
    f2b.jails["postfix"] = jail_with(f2b.banaction, **params)
    f2b.start()
    assert {p: probe(hosts, workdir, p) for p in banned} == {"tcp": 0, "udp": 0, "sctp": 0}
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    assert {p: probe(hosts, workdir, p) for p in banned} == banned
    assert {p: probe(hosts, workdir, p, ns=hosts.bystander) for p in banned} == {"tcp": 0, "udp": 0, "sctp": 0}
