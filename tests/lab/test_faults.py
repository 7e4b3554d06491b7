"""Faults, each provoked for real in the lab's namespaces: the kernel or a tool refuses, the ruleset
changes under us, another tool holds the xtables lock, fail2ban dies and comes back, fail2ban reloads,
the system's firewall service restores its saved rules. Each time, once the fault is gone, the kernel
holds exactly what fail2ban holds, no rule is duplicated, and fail2ban's log says what happened.
Then: no lockout (the host and ignoreip are never banned, whatever path a ban takes), and least
surprise (nothing of anyone else's is created, changed or removed)."""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import subprocess
import threading
import time

import pytest

from f2bext import lab
from f2bext.addr import to_text
from f2bext.backends import ipset as ipset_mod, nft
from f2bext.spec import JailSpec

JAIL = "postfix"
LOCAL_SETS = ("v4", "v6", "net4", "net6")
CIDR4, CIDR6 = "203.0.113.128/25", "2001:db8:77::/48"  # hold no address of the server


# ---- what the kernel and fail2ban hold ------------------------------------------------------------

def listed_elements(listing: dict) -> list:
    """The elements of a `nft -j list set` document, as libnftables says them."""
    nets: list = []
    for item in listing.get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                elem = elem["elem"]["val"]
            if isinstance(elem, dict) and "prefix" in elem:
                nets.append(ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}"))
            elif isinstance(elem, dict) and "range" in elem:
                nets += ipaddress.summarize_address_range(*(ipaddress.ip_address(a) for a in elem["range"]))
            else:
                nets.append(ipaddress.ip_network(str(elem)))
    return nets


def kernel_bans(fw, jail=JAIL) -> set[str]:
    """The jail's bans as the kernel holds them, read with the firewall's own tools."""
    out: set[str] = set()
    if fw.backend == "nftables":
        for kind in LOCAL_SETS:
            listing = fw.ns.run(["nft", "-j", "list", "set", "inet", "f2bext", f"{jail}-{kind}"], check=False).stdout
            if listing.strip():
                out |= {to_text(n) for n in listed_elements(json.loads(listing))}
        return out
    for name in (ipset_mod.ipset_name(jail, 4), ipset_mod.ipset_name(jail, 6)):
        listing = fw.ns.run(["ipset", "list", name], check=False).stdout
        if "Members:" in listing:
            out |= {to_text(ipaddress.ip_network(m)) for m in listing.split("Members:", 1)[1].split()}
    return out


def mirror_problem(f2b, fw, jail=JAIL, rules=None) -> str:
    """What keeps the kernel from holding exactly fail2ban's bans with exactly `rules` hook rules."""
    held, kernel = set(f2b.banned(jail)), kernel_bans(fw, jail)
    problems = []
    if held != kernel:
        problems.append(f"fail2ban holds {len(held)} bans in {jail}, the kernel {len(kernel)}: not enforced "
                        f"{sorted(held - kernel)[:6]}, enforced though fail2ban lifted or never held them "
                        f"{sorted(kernel - held)[:6]}")
    if rules is not None and hook_count(fw, jail) != rules:
        problems.append(f"{hook_count(fw, jail)} hook rules for {jail}, not {rules}")
    return "; ".join(problems)


def assert_kernel_mirrors(f2b, fw, jail=JAIL, timeout=20.0, what="the kernel to hold what fail2ban holds",
                          rules=None):
    """Within `timeout` seconds (a bound for a loaded machine; how soon is bench/'s to measure) the kernel
    holds exactly the jail's banned list (fail2ban's truth), with exactly `rules` hook rules when given
    (none missing, none duplicated)."""
    try:
        f2b.wait(lambda: not mirror_problem(f2b, fw, jail, rules), what, timeout=timeout, step=0.2)
    except TimeoutError:
        pytest.fail(f"after {timeout}s waiting for {what}: {mirror_problem(f2b, fw, jail, rules)}\n"
                    f"--- fail2ban.log ---\n{f2b.log_tail(25)}")


def log_text(f2b) -> str:
    with open(os.path.join(f2b.workdir, "fail2ban.log")) as f:
        return f.read()


def log_lines(f2b, *words) -> list[str]:
    return [line for line in log_text(f2b).splitlines() if all(w in line for w in words)]


def addresses(count, start=0) -> list[str]:
    """Distinct IPv4 and IPv6 addresses from the benchmarking and documentation ranges."""
    base4, base6 = int(ipaddress.IPv4Address("198.18.0.1")), int(ipaddress.IPv6Address("2001:db8:1::1"))
    return [str(ipaddress.IPv4Address(base4 + i)) if i % 2 else str(ipaddress.IPv6Address(base6 + i))
            for i in range(start, start + count)]


def ban(f2b, *ips, jail=JAIL, chunk=200):
    for i in range(0, len(ips), chunk):
        f2b.client("set", jail, "banip", *ips[i:i + chunk])


def db_bans(f2b, jail=JAIL) -> set[str]:
    with sqlite3.connect(os.path.join(f2b.workdir, "fail2ban.sqlite3"), timeout=10) as db:
        return {row[0] for row in db.execute("SELECT ip FROM bips WHERE jail = ?", (jail,))}


def kill_and_restart(f2b):
    """fail2ban-server killed -9 (nothing of ours runs at its end), then started on the same database."""
    f2b.server.kill()
    f2b.server.wait()
    f2b.smtp.kill()
    f2b.smtp.wait()
    f2b.start()


def hook_count(fw, jail=JAIL) -> int:
    return len(fw.rules(jail))


def tools_without(workdir, missing) -> str:
    """A directory with every program of /usr/sbin and /usr/bin but `missing`: a host without it."""
    tools = os.path.join(workdir, "tools")
    os.makedirs(tools, exist_ok=True)
    for folder in ("/usr/sbin", "/usr/bin"):
        for name in os.listdir(folder):
            if name != missing and not os.path.lexists(os.path.join(tools, name)):
                os.symlink(os.path.join(folder, name), os.path.join(tools, name))
    return tools


def lab_env_with(monkeypatch, **changes):
    """Run the lab's processes (fail2ban, the action's tools) with a changed environment."""
    plain = lab.lab_env

    def env(workdir, variant=""):
        out = plain(workdir, variant)
        out.update({k: v(out) if callable(v) else v for k, v in changes.items()})
        return out
    monkeypatch.setattr(lab, "lab_env", env)


# ---- the kernel or a tool refuses -----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["ipset-nft"])
def test_a_full_ipset_is_named_in_the_log_and_a_repair_brings_every_ban_back(hosts, workdir, f2b, fw):
    f2b.start()
    rules = hook_count(fw)
    first, more = ["198.18.0.1", "198.18.0.2", "198.18.0.3"], ["198.18.0.4", "198.18.0.5", "198.18.0.6"]
    ban(f2b, *first)
    # Another tool swaps in, under our rules, a set of the same type with room for 4 entries.
    ns, name = hosts.server, ipset_mod.ipset_name(JAIL, 4)
    ns.run(["ipset", "create", "admin-small", "hash:net", "family", "inet", "maxelem", "4"])
    for a in first:
        ns.run(["ipset", "add", "admin-small", a])
    ns.run(["ipset", "swap", "admin-small", name])
    ns.run(["ipset", "destroy", "admin-small"])
    ban(f2b, *more)  # the fifth does not fit
    assert [line for line in log_lines(f2b, name) if (" ERROR " in line or " WARNING " in line)
            and any(w in line for w in ("full", "maxelem", "at most"))], \
        f"no log line names {name} and its size limit:\n{f2b.log_tail(12)}"
    result = lab.f2bext_cmd(ns, workdir, "repair", "--jail", JAIL, variant=fw.variant)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_kernel_mirrors(f2b, fw, what="every ban back after `f2bext repair`", rules=rules)
    assert f"maxelem {ipset_mod.MAXELEM}" in ns.run(["ipset", "list", "-t", name]).stdout


@pytest.mark.parametrize("backend", ["ipset-nft"])
def test_ipset_missing_at_start_is_logged_and_every_ban_holds_once_it_is_installed(hosts, workdir, f2b, fw,
                                                                                  monkeypatch):
    tools = tools_without(workdir, "ipset")
    lab_env_with(monkeypatch, PATH=lambda env: os.path.join(workdir, "bin") + os.pathsep + tools)
    f2b.start()
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, CIDR4)
    assert log_lines(f2b, "ERROR", JAIL, "ipset is not installed"), f2b.log_tail(12)
    os.symlink("/usr/sbin/ipset", os.path.join(tools, "ipset"))  # the package gets installed
    spec = JailSpec.from_params(JAIL, {"port": lab.DEFAULT_JAIL["port"]})
    assert_kernel_mirrors(f2b, fw, what="the bans once ipset is there, with no new ban",
                          rules=sum(len(ipset_mod.rule_args(spec, f)) for f in (4, 6)))


@pytest.mark.parametrize("kind", ["nftables", "ipset"])
def test_a_rebuild_holding_300000_bans_is_taken_by_the_kernel_whole(hosts, kind):
    spec = JailSpec.from_params("big", {"port": "smtp"})
    held = [ipaddress.ip_network(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + i))
            for i in range(300_000)]
    with hosts.server.entered():
        backend = nft.NftBackend() if kind == "nftables" else ipset_mod.IpsetBackend(ipset_mod.Xtables("nft"))
        backend.start(spec, held[:10])
        backend.repair(spec, held)
        assert backend.verify([spec]) == []
        assert len(set(backend.banned(spec))) == len(held)
        backend.stop(spec)


# The attacker connecting to the server's port 25 in a loop until its stdin closes; then it prints
# how many times it tried and how many times it got in.
KNOCKER = r"""
import select, socket, sys
knocks = leaks = 0
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    knocks += 1
    try:
        socket.create_connection((sys.argv[1], 25), timeout=0.5).close()
        leaks += 1
    except OSError:
        pass
print(knocks, leaks, flush=True)
"""


@pytest.mark.parametrize("kind", ["nftables", "ipset"])
def test_a_repair_never_lets_a_held_ban_through_even_for_a_moment(hosts, smtp, kind):
    spec = JailSpec.from_params("hold", {"port": "smtp"})
    held = [ipaddress.ip_network(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + i))
            for i in range(30_000)] + [ipaddress.ip_network(lab.ATTACKER4)]  # the attacker loaded last
    with hosts.server.entered():
        backend = nft.NftBackend() if kind == "nftables" else ipset_mod.IpsetBackend(ipset_mod.Xtables("nft"))
        backend.start(spec, held)
    # Every knock gets its ICMP refusal at once (no rate limit), so the attacker can knock fast.
    hosts.server.run(["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=1000000"])
    attacker = hosts.attacker.popen([lab.PYTHON, "-c", KNOCKER, lab.SERVER4], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout.readline().strip() == "ready"
        repairs, end = 0, time.monotonic() + 2.5
        with hosts.server.entered():
            while time.monotonic() < end:
                backend.repair(spec, held)
                repairs += 1
    finally:
        knocks, leaks = map(int, attacker.communicate(input="stop\n", timeout=10)[0].split())
    assert leaks == 0, f"the banned attacker got in {leaks} times in {knocks} tries during {repairs} repairs"
    assert knocks > 50


# ---- the ruleset changes under us -----------------------------------------------------------------

def keep_changing(stop: threading.Event, commands, pause=0.05):
    """Another tool rewriting the firewall in a loop, until told to stop."""
    while not stop.is_set():
        for run in commands:
            run()
        time.sleep(pause)


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_our_objects_removed_in_a_loop_while_banning_thousands_loses_no_ban(hosts, f2b, fw):
    fw.save_baseline()
    f2b.unowned()  # owned, the kernel refuses every one of these changes (tests/lab/test_owned_table.py)
    f2b.start()
    rules = hook_count(fw)
    ns = hosts.server
    if fw.backend == "nftables":
        commands = [lambda: ns.run(["nft", "delete", "table", "inet", "f2bext"], check=False),
                    lambda: ns.run(["nft", "flush", "chain", "inet", "f2bext", f"{JAIL}-input"], check=False),
                    lambda: ns.run(["nft", "delete", "chain", "inet", "f2bext", f"{JAIL}-input"], check=False)]
        count = 2000
    else:
        commands = [fw.wipe]
        count = 400
    stop = threading.Event()
    changer = threading.Thread(target=keep_changing, args=(stop, commands))
    changer.start()
    try:
        ban(f2b, *addresses(count), CIDR4, CIDR6, chunk=100)
    finally:
        stop.set()
        changer.join()
    assert len(f2b.banned(JAIL)) == count + 2
    assert_kernel_mirrors(f2b, fw, what="every ban back once the other tool stopped", rules=rules)
    assert log_lines(f2b, "WARNING", f"[{JAIL}] f2bext", "repair"), f2b.log_tail(12)


@pytest.mark.parametrize("backend", ["ipset-legacy"])
def test_a_ban_while_another_tool_holds_the_xtables_lock_lands_once_the_lock_is_free(hosts, workdir, f2b, fw,
                                                                                    monkeypatch):
    # The lock the legacy tools share; kept per test (XTABLES_LOCKFILE) so other tests never wait on it.
    lock = os.path.join(workdir, "xtables.lock")
    lab_env_with(monkeypatch, XTABLES_LOCKFILE=lock)
    fw.save_baseline()
    f2b.start()
    rules = hook_count(fw)
    ban(f2b, lab.ATTACKER4)
    # The other tool takes the lock, reloads its own rules (ours are gone), and keeps the lock 3 s.
    holder = subprocess.Popen(hosts.server.argv(["flock", lock, "sh", "-c",
                              "iptables-legacy-restore < \"$1\" && ip6tables-legacy-restore < \"$2\" && "
                              "echo reloaded && sleep 3", "-", *save_baselines(fw, workdir)]),
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "reloaded"
    banning = threading.Thread(target=ban, args=(f2b, lab.ATTACKER6))
    banning.start()
    time.sleep(1.5)  # a window of a watchdog round: with the lock free, our rules would be back by now
    assert hook_count(fw) == 0, "the lock did not hold f2bext back: the fault was not provoked"
    holder.wait()
    banning.join()
    assert_kernel_mirrors(f2b, fw, what="both bans enforced after the lock is released", rules=rules)
    assert log_lines(f2b, "WARNING", f"[{JAIL}] f2bext", "repair"), f2b.log_tail(12)


def save_baselines(fw, workdir) -> list[str]:
    paths = []
    for family in (4, 6):
        path = os.path.join(workdir, f"baseline{family}")
        with open(path, "w") as f:
            f.write(fw.baseline[family])
        paths.append(path)
    return paths


# ---- fail2ban dies, restarts, reloads -------------------------------------------------------------

@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_fail2ban_killed_and_restarted_from_its_database_enforces_every_ban_once(hosts, f2b, fw):
    f2b.start()
    rules = hook_count(fw)
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, CIDR4, CIDR6, *addresses(50))
    f2b.client("set", JAIL, "unbanip", lab.ATTACKER6, CIDR6)
    f2b.wait(lambda: db_bans(f2b) == set(f2b.banned(JAIL)), "fail2ban's database to catch up")
    held = set(f2b.banned(JAIL))
    kill_and_restart(f2b)
    f2b.wait(lambda: set(f2b.banned(JAIL)) == held, "fail2ban to restore its bans")
    assert_kernel_mirrors(f2b, fw, rules=rules)
    assert len(log_lines(f2b, f"[{JAIL}] Restore Ban")) == len(held)
    assert len(log_lines(f2b, f"[{JAIL}] f2bext", "enforcing")) == 2


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_a_ban_that_expired_while_fail2ban_was_dead_is_lifted_at_its_restart(hosts, f2b, fw):
    f2b.jails[JAIL]["bantime"] = "6"
    f2b.start()
    ban(f2b, lab.ATTACKER4, CIDR6)
    f2b.wait(lambda: db_bans(f2b) == {lab.ATTACKER4, CIDR6}, "fail2ban's database to catch up")
    f2b.server.kill()
    f2b.server.wait()
    time.sleep(7)  # the bans run out while nobody is there to lift them
    kill_and_restart(f2b)
    assert f2b.banned(JAIL) == []
    assert_kernel_mirrors(f2b, fw, what="the expired bans lifted")


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_reload_unban_empties_the_sets_keeps_the_hooks_and_bans_again(hosts, workdir, f2b, fw):
    f2b.start()
    rules = hook_count(fw)
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, CIDR4, *addresses(20))
    f2b.client("reload", "--unban")
    assert f2b.banned(JAIL) == []
    assert_kernel_mirrors(f2b, fw, rules=rules)
    assert lab.f2bext_cmd(hosts.server, workdir, "verify", "--jail", JAIL, variant=fw.variant).returncode == 0
    assert log_lines(f2b, f"[{JAIL}] Flush ticket(s) with f2bext-")
    ban(f2b, lab.ATTACKER4)
    assert_kernel_mirrors(f2b, fw, rules=rules)


RESTORED, EXPIRED = 2400, 600  # bans in the database within the jail's maximum ban time, and past it
MAXTIME = 1800


def write_database(path, fresh, stale):
    """A fail2ban database as fail2ban writes it (bench/dbgen.py's way), with `fresh` bans made 10 minutes
    ago and `stale` ones 50 minutes ago, each for a day: the jail's maximum (30 minutes) ends the stale ones."""
    from fail2ban.server.banmanager import BanTicket
    from fail2ban.server.database import Fail2BanDb

    class Jail:
        name = JAIL

        class actions:
            getBanTime = staticmethod(lambda: 86400)
    db = Fail2BanDb(path)
    db.addJail(Jail)
    add, now = Fail2BanDb.addBan.__wrapped__, time.time()  # one transaction: addBan commits per call
    with db._lock, db._db:
        cur = db._db.cursor()
        for ips, age in ((fresh, 600), (stale, 3000)):
            for ip in ips:
                ticket = BanTicket(ip, now - age, [f"warning: unknown[{ip}]: SASL LOGIN authentication failed"])
                ticket.setBanTime(86400)
                ticket.setBanCount(1)
                add(db, cur, Jail, ticket)
        cur.close()
    db.close()


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_thousands_of_bans_restored_hold_through_a_repair_mid_restore_and_end_at_the_jails_maximum(
        hosts, workdir, f2b, fw):
    every = addresses(RESTORED + EXPIRED, start=1000)
    fresh, stale = set(every[:RESTORED]), set(every[RESTORED:])
    write_database(os.path.join(workdir, "fail2ban.sqlite3"), fresh, stale)
    f2b.jails[JAIL].update({"bantime": "86400", "bantime.increment": "true", "bantime.maxtime": str(MAXTIME),
                            # a second action, a shell command per ban, keeps fail2ban restoring for a while
                            "action": f'{f2b.banaction}[port="{lab.DEFAULT_JAIL["port"]}"]\n'
                                      f'        dummy[target="{workdir}/dummy.bans"]'})
    fw.save_baseline()
    f2b.start()
    rules = hook_count(fw)
    # While fail2ban works through its restored tickets, the ruleset is lost and rebuilt (by `f2bext repair`
    # or the watchdog, whichever comes first): the rebuild must keep the bans fail2ban has not reached
    # yet (it once kept only those it had: 38% were lost).
    fw.wipe()
    assert lab.f2bext_cmd(fw.ns, workdir, "repair", "--jail", JAIL, variant=fw.variant).returncode == 0
    assert len(f2b.banned(JAIL)) < RESTORED, "fail2ban had restored everything: the repair was not mid-restore"
    f2b.wait(lambda: hook_count(fw) == rules and kernel_bans(fw) >= fresh, "every restored ban after the repair",
             timeout=120)
    f2b.wait(lambda: set(f2b.banned(JAIL)) == fresh, "fail2ban to restore its current bans", timeout=120)
    assert_kernel_mirrors(f2b, fw, rules=rules)  # the stale bans, past the jail's maximum, were never loaded
    assert not kernel_bans(fw) & stale
    ends = f2b.client("get", JAIL, "banip", "--with-time").stdout.splitlines()
    assert len(ends) == RESTORED and all(f"+ {MAXTIME} = " in line for line in ends), ends[:3]
    assert not log_lines(f2b, "ERROR"), f2b.log_tail(12)


# ---- the system's firewall service restores its saved rules -----------------------------------------

ADMIN_NFT = """table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		tcp dport 22 accept
	}
}
"""


def nft_restore(ns, workdir, text):
    path = os.path.join(workdir, "nftables.conf")
    with open(path, "w") as f:
        f.write(text)
    ns.run(["nft", "-f", path])


@pytest.mark.parametrize("backend", ["nftables"])
def test_nft_restoring_a_ruleset_saved_before_f2bext_started_heals_every_ban(hosts, workdir, f2b, fw):
    f2b.unowned()  # owned, the flush skips the table: nothing to heal
    f2b.start()
    rules = hook_count(fw)
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, CIDR4, CIDR6, *addresses(30))
    nft_restore(hosts.server, workdir, "flush ruleset\n" + ADMIN_NFT)  # systemctl restart nftables
    assert_kernel_mirrors(f2b, fw, rules=rules)
    assert "tcp dport 22 accept" in hosts.server.nft("list", "table", "inet", "filter")
    assert log_lines(f2b, "WARNING", f"[{JAIL}] f2bext", "is gone", "repairing")


@pytest.mark.parametrize("backend", ["nftables"])
def test_nft_restoring_a_ruleset_saved_while_f2bext_ran_brings_back_exactly_what_fail2ban_holds(
        hosts, workdir, f2b, fw):
    f2b.unowned()  # owned, the restore is refused whole (tests/lab/test_owned_table.py)
    f2b.start()
    rules = hook_count(fw)
    ban(f2b, lab.ATTACKER4, CIDR4)
    nft_restore(hosts.server, workdir, "flush ruleset\n" + ADMIN_NFT)  # the admin's file, as it was
    assert_kernel_mirrors(f2b, fw, what="the watchdog's repair")
    saved = "flush ruleset\n" + hosts.server.nft("list", "ruleset")  # `nft list ruleset > /etc/nftables.conf`
    f2b.client("set", JAIL, "unbanip", lab.ATTACKER4)
    ban(f2b, lab.ATTACKER6, CIDR6, *addresses(10))
    nft_restore(hosts.server, workdir, saved)  # systemctl restart nftables, hours later
    assert_kernel_mirrors(f2b, fw, what="the bans made since the save, and not the lifted one",
                          rules=rules)


@pytest.mark.parametrize("backend", ["ipset-nft", "ipset-legacy"])
def test_iptables_restore_of_rules_saved_while_f2bext_ran_adds_no_duplicate_and_loses_no_ban(
        hosts, f2b, fw):
    f2b.start()
    rules = hook_count(fw)
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, CIDR4, *addresses(20))
    fw.save_baseline()  # `netfilter-persistent save`, our rules included
    ban(f2b, CIDR6)
    fw.wipe()  # `netfilter-persistent reload`
    fw.wipe()
    time.sleep(2.5)  # a window of two watchdog rounds, for a duplicate to show if a repair adds one
    assert_kernel_mirrors(f2b, fw, rules=rules)


@pytest.mark.parametrize("backend", ["ipset-nft"])
def test_ipset_restore_of_sets_saved_earlier_does_not_bring_back_a_lifted_ban(hosts, workdir, f2b, fw):
    f2b.start()
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, *addresses(10))
    saved = hosts.server.run(["ipset", "save"]).stdout  # the ipset-persistent plugin's file
    f2b.client("set", JAIL, "unbanip", lab.ATTACKER4, lab.ATTACKER6)
    hosts.server.run(["ipset", "restore", "-exist"], input=saved)  # `netfilter-persistent reload`
    assert_kernel_mirrors(f2b, fw, what="the lifted bans to stay lifted")


# ---- no lockout -----------------------------------------------------------------------------------

OWN_OR_IGNORED = [lab.BYSTANDER4, lab.SERVER4, lab.SERVER6, "198.51.100.0/24", "2001:db8::/64"]


def assert_none_enforced(fw, jail, refused):
    """No ban the kernel enforces covers any of the refused addresses or networks."""
    enforced = [ipaddress.ip_network(e) for e in kernel_bans(fw, jail)]
    covered = {a: [str(e) for e in enforced if e.version == ipaddress.ip_network(a).version
                   and e.overlaps(ipaddress.ip_network(a))] for a in refused}
    covered = {a: c for a, c in covered.items() if c}
    if covered:
        pytest.fail(f"the kernel enforces bans covering refused addresses: {covered}")


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_a_refused_direct_ban_stays_out_of_every_rebuild(hosts, f2b, fw, reach):
    f2b.jails[JAIL]["ignoreip"] = f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"
    fw.save_baseline()
    f2b.start()
    ban(f2b, *OWN_OR_IGNORED, lab.ATTACKER4)
    f2b.wait(lambda: lab.ATTACKER4 in kernel_bans(fw), "the attacker's ban")
    assert len(log_lines(f2b, f"[{JAIL}] f2bext refus")) == len(OWN_OR_IGNORED)
    fw.wipe()  # a firewall reload: the watchdog rebuilds the jail from fail2ban's banned list
    f2b.wait(lambda: fw.rules(JAIL) != [] and lab.ATTACKER4 in kernel_bans(fw), "the rebuild", timeout=20)
    assert_none_enforced(fw, JAIL, OWN_OR_IGNORED)
    assert reach(hosts.bystander, lab.SERVER4, 25)
    assert reach(hosts.server, lab.SERVER4, 25)


@pytest.mark.parametrize("backend", ["nftables"])
def test_the_repair_command_never_loads_a_refused_ban_from_fail2bans_list(hosts, workdir, f2b, fw, reach):
    f2b.jails[JAIL]["ignoreip"] = f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"
    f2b.unowned()  # so that the hook can be removed from outside
    f2b.start()
    ban(f2b, *OWN_OR_IGNORED, lab.ATTACKER4)
    f2b.wait(lambda: lab.ATTACKER4 in kernel_bans(fw), "the attacker's ban")
    fw.unhook(JAIL)
    result = lab.f2bext_cmd(hosts.server, workdir, "repair", "--jail", JAIL, variant=fw.variant)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_none_enforced(fw, JAIL, OWN_OR_IGNORED)
    assert lab.ATTACKER4 in kernel_bans(fw)
    assert reach(hosts.bystander, lab.SERVER4, 25)


@pytest.mark.parametrize("backend", ["nftables"])
def test_a_refused_direct_ban_is_not_loaded_when_fail2ban_restarts_from_its_database(hosts, f2b, fw, reach):
    f2b.jails[JAIL]["ignoreip"] = f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"
    f2b.start()
    ban(f2b, *OWN_OR_IGNORED, lab.ATTACKER4)
    f2b.wait(lambda: lab.ATTACKER4 in db_bans(f2b), "fail2ban's database to catch up")
    f2b.client("stop")  # a clean stop removes our objects; the start then loads from the database
    f2b.server.wait()
    kill_and_restart(f2b)
    f2b.wait(lambda: lab.ATTACKER4 in kernel_bans(fw), "the attacker's ban restored")
    assert_none_enforced(fw, JAIL, OWN_OR_IGNORED)
    assert reach(hosts.bystander, lab.SERVER4, 25)


@pytest.mark.parametrize("backend", ["nftables"])
def test_the_leak_jail_asked_directly_never_bans_loopback_the_host_or_ignoreip_on_any_port(
        hosts, workdir, f2b, fw, reach):
    logpath = os.path.join(workdir, "fail2ban.log")
    open(logpath, "a").close()
    f2b.jails = {JAIL: dict(lab.DEFAULT_JAIL),
                 "f2bext-leak": {"enabled": "true", "logpath": logpath,
                                 "ignoreip": f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"}}
    f2b.start()
    refused = ["127.0.0.2", "::1", *OWN_OR_IGNORED]
    ban(f2b, *refused, lab.ATTACKER4, jail="f2bext-leak")
    f2b.wait(lambda: lab.ATTACKER4 in kernel_bans(fw, "f2bext-leak"), "the leak jail's allports ban")
    assert len(log_lines(f2b, "f2bext-leak", "refus")) >= len(refused), f2b.log_tail(20)
    hosts.server.nft("flush", "ruleset")  # the watchdog rebuilds the leak jail from fail2ban's list
    f2b.wait(lambda: lab.ATTACKER4 in kernel_bans(fw, "f2bext-leak"), "the rebuild", timeout=20)
    assert_none_enforced(fw, "f2bext-leak", refused)
    assert not reach(hosts.attacker, lab.SERVER4, 465)
    assert reach(hosts.bystander, lab.SERVER4, 25)


# ---- least surprise: only our own objects --------------------------------------------------------

FOREIGN_NFT = """table inet filter {
	set admin-block {
		type ipv4_addr
		elements = { 192.0.2.1, 192.0.2.2 }
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @admin-block drop
		tcp dport 22 accept
	}
}
table ip f2bext {
	chain postfix-input {
		type filter hook input priority 10; policy accept;
		tcp dport 2222 counter
	}
}
table ip admin-nat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8025 redirect to :25
	}
}
"""


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft", "ipset-legacy"])
def test_foreign_tables_chains_rules_and_sets_are_untouched_by_every_cycle_and_nothing_of_ours_remains(
        hosts, workdir, f2b, fw):
    ns = hosts.server
    nft_restore(ns, workdir, FOREIGN_NFT)
    for command in (["ipset", "create", "admin-list", "hash:ip"], ["ipset", "add", "admin-list", "192.0.2.3"],
                    ["ipset", "create", "f2bext-sshd", "hash:net"], ["ipset", "add", "f2bext-sshd", "192.0.2.4"]):
        ns.run(command)
    for family in (4, 6):
        tool = lab.iptables(family, fw.variant)
        for rule in (["-N", "ADMIN"], ["-A", "ADMIN", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
                     ["-A", "INPUT", "-j", "ADMIN"], ["-A", "FORWARD", "-p", "tcp", "--dport", "25", "-j", "ACCEPT"]):
            ns.run([tool, "-w", *rule])
    before = fw.snapshot()  # the whole firewall: nft ruleset, ipsets, legacy iptables (counters aside)
    assert all(name in before for name in ("admin-block", "admin-nat", "admin-list", "f2bext-sshd", "ADMIN"))
    f2b.unowned()  # so that the hook can be removed from outside
    f2b.start()
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6, CIDR4)
    fw.unhook(JAIL)  # someone removes our hook: the watchdog repairs it
    f2b.wait(lambda: fw.rules(JAIL) != [] and not mirror_problem(f2b, fw), "the repair", timeout=20)
    f2b.client("reload")
    f2b.client("reload", "--unban")
    ban(f2b, lab.ATTACKER6)
    f2b.stop()
    backend = "nftables" if fw.backend == "nftables" else "ipset"
    for argv in (["ban", "--backend", backend, "--jail", "cli", lab.ATTACKER4], ["repair"],
                 ["flush", "--jail", "cli"], ["stop", "--jail", "cli"]):
        result = lab.f2bext_cmd(ns, workdir, *argv, variant=fw.variant)
        assert result.returncode == 0, result.stderr
    assert fw.snapshot() == before  # everyone else's objects as they were, and nothing of ours left
