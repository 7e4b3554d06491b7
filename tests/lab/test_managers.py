"""The firewall managers admins run, for real, in the lab's server namespace: firewalld (both of its
backends) on a private D-Bus bus, and ufw (also with MANAGE_BUILTINS=yes), each rewriting the ruleset
the way it does on a real host, with a real fail2ban-server banning through our actions.

A banned attacker must reach none of the jail's ports after every reload and restart, within the
bound the watchdog gives (WATCH_INTERVAL, one second, plus its repair); the bystander stays served,
and a held session stays cut. How long the attacker got through meanwhile is measured (leakwatch, every
20 ms) and printed as MEASURED lines; for f2bext-nftables.py, whose table fail2ban-server owns, it
is asserted to be nothing. The stock actions' fate is recorded the same way, as a comparison.
"""

import json
import subprocess
import time

import pytest

from f2bext import lab
from f2bext.lab import managers as lm

HEAL_BOUND = 10.0  # seconds: generous against the watchdog's ~2 s, on a loaded 2-core machine
ACTIONS = ["nftables", "ipset-nft"]  # f2bext-nftables.py, and f2bext-ipset.py on iptables-nft
ACTION_IDS = [lab.BACKENDS[b][0] for b in ACTIONS]


def firewalld_backends():
    """Every backend the installed firewalld offers (1.3 and 2.3: nftables and iptables)."""
    from firewall import config  # python3-firewall, firewalld's own package
    return list(config.FIREWALL_BACKEND_VALUES)


def only_in_server(hosts, workdir):
    inside = lm.netns_id(hosts.server)
    found = lm.daemons_of(workdir)
    assert found and all(netns == inside for _, _, netns in found), found


def measured(what, **facts):
    print("MEASURED " + json.dumps(dict(what=what, **facts), sort_keys=True))


def fail_logins(hosts, workdir):
    lab.tool(hosts.attacker, workdir, "fail-logins", lab.SERVER4, "587", "4", check=True)


def read(path):
    with open(path) as f:
        return f.read()


def reaches_nothing(hosts, reach, source=""):
    """None of the jail's ports over IPv4, nor 465 over IPv6 (ICMPv6 errors are rate-limited to one a
    second: each further IPv6 probe costs a second)."""
    return not any(reach(hosts.attacker, lab.SERVER4, port, source) for port in lab.SMTP_PORTS) \
        and not reach(hosts.attacker, lab.SERVER6, 465)


def banned_everywhere(hosts, reach, what):
    """The attacker reaches none of the jail's ports (IPv4 and IPv6), the bystander all of them,
    within the bound; returns the seconds until it held."""
    took = lab.Fail2banLab.wait(lambda: reaches_nothing(hosts, reach), f"the ban to hold after {what}",
                                timeout=HEAL_BOUND, step=0.2)
    lab.Fail2banLab.wait(lambda: all(reach(hosts.bystander, lab.SERVER4, p) for p in lab.SMTP_PORTS),
                         f"the bystander served after {what}", timeout=HEAL_BOUND)
    assert reach(hosts.bystander, lab.SERVER6, 465)
    return took


class Leakwatch:
    """Connections from the attacker, every 20 ms, to port 25 while an operation runs."""

    def __init__(self, hosts, workdir, seconds):
        self.proc = hosts.attacker.popen([lab.PYTHON, "-m", "f2bext.lab.managers", "leakwatch", lab.SERVER4, "25",
                                          str(seconds)], env=lab.lab_env(workdir), stdout=subprocess.PIPE, text=True)

    def through(self):
        out, _ = self.proc.communicate(timeout=60)
        return json.loads(out)


def operate(hosts, workdir, reach, manager, action, name, op):
    """Run one manager operation under the leakwatch, then check the ban holds within the bound."""
    watch = Leakwatch(hosts, workdir, 5)
    op()
    through = watch.through()
    banned_everywhere(hosts, reach, name)
    measured(f"{manager} {name}", action=action, connections_through=len(through),
             leak_window_s=round(through[-1] - through[0] + 0.02, 2) if through else 0.0)
    if action == "f2bext-nftables.py":  # its table is fail2ban-server's: no manager's reload takes it
        assert through == [], f"{manager} {name}: {len(through)} connections of the banned attacker got through"


def ban_attacker(hosts, workdir, f2b, reach):
    held = lab.hold(hosts.attacker, workdir, lab.SERVER4, 25)
    fail_logins(hosts, workdir)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("postfix"), "the ban")
    f2b.client("set", "postfix", "banip", lab.ATTACKER6)
    f2b.wait(lambda: read(held) != "open", "the held session to end", timeout=5)
    banned_everywhere(hosts, reach, "the ban")
    return held


@pytest.fixture
def jail(hosts, workdir, backend):
    """fail2ban with our action in the server namespace, behind the manager only (no seed rules)."""
    server = lab.Fail2banLab(hosts, workdir, backend=backend)
    yield server
    server.stop()


@pytest.mark.parametrize("backend", ACTIONS, ids=ACTION_IDS)
@pytest.mark.parametrize("fwd_backend", firewalld_backends(), ids=lambda b: f"FirewallBackend={b}")
def test_a_ban_holds_through_firewalld_reloads_and_restart(host_kept_out, hosts, workdir, jail, reach, backend,
                                                           fwd_backend):
    fwd = lm.Firewalld(hosts.server, workdir, fwd_backend)
    fwd.start()
    try:
        jail.start()
        only_in_server(hosts, workdir)
        held = ban_attacker(hosts, workdir, jail, reach)
        for name, op in (("--reload", fwd.reload), ("--complete-reload", fwd.complete_reload),
                         ("restart", fwd.restart)):
            operate(hosts, workdir, reach, f"firewalld({fwd_backend})", jail.banaction, name, op)
            assert read(held).startswith("ended")
        assert jail.banned("postfix") == sorted([lab.ATTACKER4, lab.ATTACKER6])
        only_in_server(hosts, workdir)
    finally:
        fwd.stop()


@pytest.mark.parametrize("backend", ACTIONS, ids=ACTION_IDS)
@pytest.mark.parametrize("manage_builtins", [False, True], ids=["MANAGE_BUILTINS=no", "MANAGE_BUILTINS=yes"])
def test_a_ban_holds_through_ufw_reload_and_disable_enable(host_kept_out, hosts, workdir, jail, reach, backend,
                                                          manage_builtins):
    ufw = lm.Ufw(hosts.server, workdir, manage_builtins)
    ufw.start()
    jail.start()
    held = ban_attacker(hosts, workdir, jail, reach)
    manager = "ufw(MANAGE_BUILTINS=%s)" % ("yes" if manage_builtins else "no")
    for name, op in (("reload", ufw.reload), ("disable; --force enable", ufw.cycle)):
        operate(hosts, workdir, reach, manager, jail.banaction, name, op)
        assert read(held).startswith("ended")
    assert jail.banned("postfix") == sorted([lab.ATTACKER4, lab.ATTACKER6])



def stock_after(hosts, reach, sources, op=None):
    """Per stock action, whether its banned source reaches port 25, 3 s after the operation (a stock
    action has no watchdog: what it lost stays lost; 3 s is more than ours take)."""
    if op:
        op()
        time.sleep(3)
    return {action: reach(hosts.attacker, lab.SERVER4, 25, source) for action, source in sources.items()}


def stock_lab(hosts, workdir, stock):
    """fail2ban with one jail per stock action, each banning its own attacker address."""
    return lab.Fail2banLab(hosts, workdir, jails={a.split("-")[0]: dict(lab.DEFAULT_JAIL, banaction=a) for a in stock})


def ban_each(hosts, reach, f2b, stock):
    """Ban each stock action's address and wait (bounded) for every ban to hold: fail2ban may run
    the action after `banip` returns. A ban that never holds is what the record then says."""
    for action, source in stock.items():
        f2b.client("set", action.split("-")[0], "banip", source)
    try:
        lab.Fail2banLab.wait(lambda: not any(stock_after(hosts, reach, stock).values()), "the stock bans", timeout=10)
    except TimeoutError:
        pass


def still_believed(f2b, stock):
    for action, source in stock.items():
        assert f2b.banned(action.split("-")[0]) == [source]


@pytest.mark.parametrize("fwd_backend", firewalld_backends(), ids=lambda b: f"FirewallBackend={b}")
def test_stock_actions_through_firewalld_are_recorded(host_kept_out, hosts, workdir, reach, monkeypatch, fwd_backend):
    """iptables-multiport and firewallcmd-ipset on each firewalld backend: recorded as MEASURED, not
    asserted, but that fail2ban goes on believing the addresses banned."""
    fwd = lm.Firewalld(hosts.server, workdir, fwd_backend)
    fwd.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fwd.env["DBUS_SYSTEM_BUS_ADDRESS"])  # firewall-cmd, from fail2ban
    stock = {"iptables-multiport": lab.ATTACKER4, "firewallcmd-ipset": lab.ATTACKER_NET_PEER4}
    f2b = stock_lab(hosts, workdir, stock)
    try:
        f2b.start()
        ban_each(hosts, reach, f2b, stock)
        record = {"ban": stock_after(hosts, reach, stock)}
        for name, op in (("--reload", fwd.reload), ("--complete-reload", fwd.complete_reload),
                         ("restart", fwd.restart)):
            record[name] = stock_after(hosts, reach, stock, op)
        measured(f"stock actions under firewalld({fwd_backend}): does the banned attacker reach port 25", **record)
        still_believed(f2b, stock)
    finally:
        f2b.stop()
        fwd.stop()


@pytest.mark.parametrize("manage_builtins", [False, True], ids=["MANAGE_BUILTINS=no", "MANAGE_BUILTINS=yes"])
def test_stock_actions_through_ufw_are_recorded(host_kept_out, hosts, workdir, reach, monkeypatch, manage_builtins):
    """iptables-multiport and fail2ban's ufw action (fail2ban-server inside ufw's private mounts, so its
    `ufw prepend deny` writes the lab's user.rules), and a session held from before the ufw ban (fail2ban
    issue 2545): recorded as MEASURED."""
    ufw = lm.Ufw(hosts.server, workdir, manage_builtins)
    ufw.start()
    monkeypatch.setenv("TESTSTATE", "1")
    stock = {"ufw": lab.ATTACKER4, "iptables-multiport": lab.ATTACKER_NET_PEER4}
    f2b = stock_lab(hosts, workdir, stock)
    f2b.server_argv = lm.in_mounts(ufw.binds, ["fail2ban-server"])
    try:
        f2b.start()
        held = lab.hold(hosts.attacker, workdir, lab.SERVER4, 25)
        ban_each(hosts, reach, f2b, stock)
        lab.Fail2banLab.wait(lambda: "203.0.113.7" in ufw.run("status").stdout, "the ufw action's rule")
        record = {"ban": stock_after(hosts, reach, stock), "held session after the ufw ban": read(held)}
        for name, op in (("reload", ufw.reload), ("disable; --force enable", ufw.cycle)):
            record[name] = stock_after(hosts, reach, stock, op)
        record["held session at the end"] = read(held)
        setting = "yes" if manage_builtins else "no"
        measured(f"stock actions under ufw(MANAGE_BUILTINS={setting}): does the banned attacker reach port 25", **record)
        still_believed(f2b, stock)
    finally:
        f2b.stop()
