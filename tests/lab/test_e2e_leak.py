"""The leak jail end to end: a real fail2ban-server in the lab whose postfix jail bans without effect
(the dummy action), so the attacker leaks; f2bext-leak reads fail2ban's log and stops it."""

import configparser
import os
import time

import pytest
from fail2ban.server.action import CommandAction

from f2bext import lab

OTHER_PORT = 2525  # a service no jail names: only an allports ban refuses it


def leak_jail(workdir):
    """f2bext-leak enabled on the lab's fail2ban log (which must exist when the jail is read)."""
    logpath = os.path.join(workdir, "fail2ban.log")
    open(logpath, "a").close()
    return {"enabled": "true", "logpath": logpath}


def ineffective_postfix(workdir):
    """The lab's postfix jail, banning through the dummy action: fail2ban believes, nothing holds."""
    return dict(lab.DEFAULT_JAIL, action=f'dummy[target="{workdir}/dummy.bans"]')


def fail_logins(ns, workdir, server=lab.SERVER4):
    """One jail's worth of failures (maxretry 3) on submission."""
    lab.tool(ns, workdir, "fail-logins", server, "587", lab.DEFAULT_JAIL["maxretry"], check=True)


def log_lines(workdir, text):
    with open(os.path.join(workdir, "fail2ban.log")) as f:
        return [line for line in f if text in line]


def leak_twice(ns, workdir, f2b, address, server=lab.SERVER4):
    """Get `address` banned in postfix, then reach postfix again until fail2ban has logged two "already
    banned" notices (it logs them at DEBUG for 3 s after the ban)."""
    fail_logins(ns, workdir, server)
    f2b.wait(lambda: address in f2b.banned("postfix"), "the postfix ban")
    notice = f"[postfix] {address} already banned"
    for count in (1, 2):
        def knock():
            if len(log_lines(workdir, notice)) < count:  # refused once the leak jail has banned
                lab.tool(ns, workdir, "fail-logins", server, "587", lab.DEFAULT_JAIL["maxretry"])
            return len(log_lines(workdir, notice)) >= count
        f2b.wait(knock, f"notice {count}: {notice}", timeout=30, step=0.5)


def settled(count, quiet=2.0, timeout=20.0):
    """`count()` once it has not moved for `quiet` seconds; a count still moving after `timeout` fails."""
    last, since, end = count(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet:
        assert time.monotonic() < end, f"still moving after {timeout} s: {last}"
        time.sleep(0.2)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


@pytest.fixture
def other_service(listen):
    """A listener on a port no jail names, beside the lab's SMTP listeners."""
    listen((OTHER_PORT,))
    return OTHER_PORT


def leak_ignorecommand(address: str) -> str:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(os.path.join(lab.PROJECT_ROOT, "jail.d", "f2bext-leak.conf"))
    return CommandAction.replaceTag(conf.get("f2bext-leak", "ignorecommand"), {"ip": address})


def test_leaking_address_is_banned_on_every_port_and_the_leak_stops(hosts, workdir, f2b, reach, other_service):
    f2b.jails = {"postfix": ineffective_postfix(workdir), "f2bext-leak": leak_jail(workdir)}
    f2b.start()
    leak_twice(hosts.attacker, workdir, f2b, lab.ATTACKER4)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("f2bext-leak"), "the leak jail's ban")
    for port in (*lab.SMTP_PORTS, other_service):
        f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, port), f"port {port} refused", timeout=5)
    assert reach(hosts.bystander, lab.SERVER4, 25) and reach(hosts.bystander, lab.SERVER4, other_service)
    assert lab.ATTACKER4 in hosts.server.nft("list", "set", "inet", "f2bext", "f2bext-leak-v4")
    # The leak has stopped: the attacker gets no session, so fail2ban has nothing more to notice, once
    # it has read the failures logged before the ban (its poll of the mail log comes after the ban).
    notices = settled(lambda: len(log_lines(workdir, f"[postfix] {lab.ATTACKER4} already banned")))
    assert lab.tool(hosts.attacker, workdir, "fail-logins", lab.SERVER4, "587", "3").returncode != 0
    time.sleep(2)
    assert len(log_lines(workdir, f"[postfix] {lab.ATTACKER4} already banned")) == notices
    # Postfix is no f2bext jail: the repair step had nothing to do, and said nothing about it.
    assert not [line for line in log_lines(workdir, "ERROR") if "f2bext" in line], f2b.log_tail()
    assert not log_lines(workdir, f"[f2bext-leak] {lab.ATTACKER4} already banned"), "the leak jail fed on itself"


def test_leak_jail_never_bans_the_hosts_own_address(hosts, workdir, f2b, reach):
    # fail2ban 1.1's ignoreself knows the host's addresses: the admin's postfix jail has it off here,
    # so that the host gets banned there and leaks; the leak jail must spare it all the same.
    f2b.jails = {"postfix": dict(ineffective_postfix(workdir), ignoreself="false"), "f2bext-leak": leak_jail(workdir)}
    f2b.start()
    # The server talking to its own postfix (a webmail, a monitoring check) with a wrong password.
    leak_twice(hosts.server, workdir, f2b, lab.SERVER4)
    # fail2ban 1.0 spares it through the jail's ignorecommand, 1.1 already through ignoreself.
    f2b.wait(lambda: len(log_lines(workdir, f"[f2bext-leak] Ignore {lab.SERVER4} by ")) >= 2,
             "the leak jail to ignore the host's own address")
    assert f2b.banned("f2bext-leak") == []
    assert reach(hosts.server, lab.SERVER4, 25) and reach(hosts.bystander, lab.SERVER4, 25)


def test_leak_jail_ignorecommand_matches_exactly_the_hosts_own_addresses(hosts):
    for address, own in ((lab.SERVER4, True), (lab.SERVER6, True), ("127.0.0.1", True),
                         (lab.ATTACKER4, False), (lab.ATTACKER6, False), (lab.BYSTANDER4, False),
                         ("198.51.100.2", False), ("2001:db8::2", False)):
        result = hosts.server.run(["sh", "-c", leak_ignorecommand(address)], check=False)
        assert result.returncode == (0 if own else 1), f"{address}: exit {result.returncode} {result.stderr}"


def test_repair_action_rebuilds_the_jail_an_address_leaked_from(hosts, workdir, f2b, reach, repair_command):
    f2b.jails["postfix"]["banaction"] = "f2bext-nftables"  # the .conf twin: no watchdog, and its drainer ends
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 587), "the ban")
    f2b.wait(lambda: not lab.twin_drainer_alive(workdir), "the drainer to end", timeout=30)
    hosts.server.nft("delete", "chain", "inet", "f2bext", "postfix-input")
    assert reach(hosts.attacker, lab.SERVER4, 587), "the ban should leak without its chain"
    result = hosts.server.run(repair_command({"jail": "postfix"}), check=False, env=lab.lab_env(workdir))
    assert result.returncode == 0, result.stderr
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still reachable after the repair"
    assert reach(hosts.bystander, lab.SERVER4, 587)
