"""The watchdog wakes at nf_tables' change notifications: a firewall reload is healed within a fraction
of its one-second round, by a look the event asked for; another process's storm of ruleset changes
neither stalls fail2ban's bans nor costs it a look per change; this process's own changes wake no look."""

from __future__ import annotations

import statistics
import subprocess
import time

import pytest

from f2bext import lab
from f2bext.kernel.nfevents import RulesetEvents

from test_faults import JAIL, addresses, assert_kernel_mirrors, ban, log_lines

EVENT_BOUND = 0.5  # seconds from the reload to every ban back: half the poll's round, on a loaded machine
WIPES = 5
STORM = """
import nftables, sys, time
nft = nftables.Nftables()
nft.cmd("add table inet storm; add chain inet storm c")
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:  # about a thousand transactions a second, a core's share left to the rest of the lab
    nft.cmd("add rule inet storm c counter")
    nft.cmd("flush chain inet storm c")
    time.sleep(0.001)
"""


def healed(f2b, fw, address: str) -> bool:
    return bool(fw.rules(JAIL)) and fw.holds(JAIL, address)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ)


def cpu_share(pid: int, seconds: float = 3) -> float:
    """The share of a core a process uses over `seconds`."""
    cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - start)


def storm(hosts):
    """Another process changing the ruleset about a thousand times a second."""
    proc = hosts.server.popen([lab.PYTHON, "-c", STORM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_a_firewall_reload_is_healed_at_its_event_well_within_the_watchdogs_round(hosts, f2b, fw):
    fw.save_baseline()
    f2b.unowned()  # owned, nft flush ruleset leaves the table whole: nothing to heal
    f2b.start()
    ips = addresses(50)
    ban(f2b, *ips)
    assert_kernel_mirrors(f2b, fw)
    took = []
    for _ in range(WIPES):
        time.sleep(1.2)  # the watchdog's round in between, so a round's timing cannot explain the result
        fw.wipe()
        start = time.monotonic()
        f2b.wait(lambda: healed(f2b, fw, ips[-1]), "every ban back after the reload", timeout=10, step=0.01)
        took.append(time.monotonic() - start)
    by_event = log_lines(f2b, "WARNING", f"[{JAIL}] f2bext", "(ruleset change); repairing")
    print(f"MEASURED {fw.backend}: reload to every ban back {[round(t, 3) for t in took]} s")
    assert statistics.median(took) < EVENT_BOUND, took
    assert len({line.split(",")[0] for line in by_event}) >= WIPES - 1, f2b.log_tail(30)
    assert_kernel_mirrors(f2b, fw)


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_a_storm_of_unrelated_ruleset_changes_costs_no_look_per_change_and_stalls_no_ban_or_heal(hosts, f2b, fw):
    f2b.unowned()
    f2b.start()
    ips = addresses(200)
    calm = timed_bans(f2b, fw, ips[:100])
    # The session killer works through those bans after they are enforced: wait for it to be done.
    f2b.wait(lambda: cpu_share(f2b.server.pid, 1) < 0.05, "fail2ban-server idle", timeout=30, step=0)
    proc = storm(hosts)
    try:
        idle = cpu_share(f2b.server.pid)
        stormy = timed_bans(f2b, fw, ips[100:])
        print(f"MEASURED storm ({fw.backend}): fail2ban-server idle in the storm at {idle:.0%} of a core; "
              f"100 bans enforced in {calm:.2f} s calm, {stormy:.2f} s in the storm")
        hosts.server.nft("flush", "ruleset")  # and a reload in the middle of the storm is still healed
        start = time.monotonic()
        f2b.wait(lambda: healed(f2b, fw, ips[-1]), "every ban back in the storm", timeout=10, step=0.01)
        heal = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    print(f"MEASURED storm ({fw.backend}): reload healed in {heal:.3f} s")
    assert idle < 0.15, f"fail2ban-server used {idle:.0%} of a core, banning nothing, while another " \
        "process changed the ruleset"
    # Every ban enforced within timed_bans' bound. The ban path's own slowdown in a storm (each ban
    # sees the generation moved by another process, and looks) is the same with the event looks off.
    assert heal < 2 * EVENT_BOUND, heal


def timed_bans(f2b, fw, ips) -> float:
    """Seconds from asking fail2ban for the bans to the kernel holding every one."""
    start = time.monotonic()
    ban(f2b, *ips, chunk=len(ips))
    assert_kernel_mirrors(f2b, fw, timeout=30, what="every ban enforced")
    return time.monotonic() - start


def test_only_another_processes_change_counts_and_an_overflow_counts_as_one(hosts):
    import nftables
    with hosts.server.entered():
        events, own = RulesetEvents(), nftables.Nftables()
    try:
        assert not events.wait(0.05)
        assert own.cmd("add table inet ours")[0] == 0
        assert events.wait(1) and events.drain() is False  # this process's own transaction
        hosts.server.nft("add", "table", "inet", "theirs")
        assert events.wait(1) and events.drain() is True
        lines = "".join(f"add element inet ours s {{ 10.0.{i // 256}.{i % 256} }}\n" for i in range(20000))
        assert own.cmd("add set inet ours s { type ipv4_addr; }\n" + lines)[0] == 0
        # Our own, but more than the queue holds: what it lost might have been anyone's.
        assert events.wait(1) and events.drain() is True
        assert not events.wait(0.05)
    finally:
        events.close()


def test_a_paused_subscription_hears_nothing_and_hears_again_once_resumed(hosts):
    """What start() does around its load (Watchdog.quiet): the kernel then builds no notification per element."""
    with hosts.server.entered():
        events = RulesetEvents()
    try:
        events.pause()
        hosts.server.nft("add", "table", "inet", "unheard")
        assert not events.wait(0.2)
        events.resume()
        hosts.server.nft("add", "table", "inet", "heard")
        assert events.wait(1) and events.drain() is True
    finally:
        events.close()
