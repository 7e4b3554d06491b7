"""No lost ban: a rebuild never holds fewer bans than fail2ban does, whoever runs it and whatever it
could not read. Real fail2ban-server, real kernel, in the lab's namespaces. The jail lock, which needs
none, is tests/unit/test_jail_lock.py."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from f2bext import lab
from test_concurrency import fail
from test_faults import CIDR4, CIDR6, JAIL, addresses, assert_kernel_mirrors, ban, hook_count, kernel_bans, log_lines


def conf_twin(f2b):
    """The jail on the .conf twin of the test's backend: every ban a `f2bext ban` process."""
    f2b.jails[JAIL]["banaction"] = f2b.banaction.removesuffix(".py")


def reload_firewall(fw):
    """A firewall reload that forgets our objects: nft flush ruleset; for ipset, the baseline's rules
    restored and the jail's sets destroyed (as netfilter-persistent's ipset plugin flushes them)."""
    fw.wipe()
    if fw.backend != "nftables":
        for name in (f"f2bext-{JAIL}", f"f2bext6-{JAIL}"):
            fw.ns.run(["ipset", "destroy", name])


def test_conf_twin_banip_after_a_firewall_reload_brings_back_every_ban(hosts, f2b, fw, backend):
    fw.save_baseline()
    conf_twin(f2b)
    f2b.start()
    ban(f2b, *addresses(7))
    assert_kernel_mirrors(f2b, fw, timeout=10, what="the first seven bans")
    rules = hook_count(fw)
    reload_firewall(fw)
    # From fail2ban's socket thread: the `f2bext ban` it runs cannot ask it for the banned list.
    ban(f2b, lab.ATTACKER4)
    assert len(f2b.banned(JAIL)) == 8
    assert_kernel_mirrors(f2b, fw, timeout=10, what="all eight bans after the next banip", rules=rules)


def test_the_watchdog_brings_back_every_ban_after_a_reload_that_took_the_sets_too(hosts, f2b, fw, backend):
    """A jail left with no set of its own is loaded as a restore is (the single addresses in bulk, as
    text): every ban comes back, the networks too, and never one the guard refuses."""
    f2b.jails[JAIL]["ignoreip"] = f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"
    f2b.unowned()  # owned, nft flush ruleset leaves the table and its sets whole
    fw.save_baseline()
    f2b.start()
    ban(f2b, *addresses(600), CIDR4, CIDR6, lab.BYSTANDER4)  # banip skips fail2ban's ignore check
    held = set(f2b.banned(JAIL)) - {lab.BYSTANDER4}
    assert len(held) == 602
    f2b.wait(lambda: kernel_bans(fw) == held, "the bans")
    rules, errors = hook_count(fw), len(log_lines(f2b, "ERROR"))  # the refused ban's
    # Stopped meanwhile: an ipset cannot be destroyed while a rule uses it, and the watchdog puts the
    # rules back within milliseconds of the wipe.
    os.kill(f2b.server.pid, signal.SIGSTOP)
    try:
        reload_firewall(fw)
        assert kernel_bans(fw) == set()
    finally:
        os.kill(f2b.server.pid, signal.SIGCONT)
    f2b.wait(lambda: kernel_bans(fw) == held and hook_count(fw) == rules, "every ban back", timeout=20)
    assert log_lines(f2b, "WARNING", f"[{JAIL}] f2bext", "repairing"), f2b.log_tail(12)
    assert len(log_lines(f2b, "ERROR")) == errors, f2b.log_tail(12)


def test_command_line_ban_after_a_firewall_reload_keeps_its_record_when_fail2ban_cannot_answer(
        hosts, workdir, fw, backend):
    def f2bext(*args):
        return lab.f2bext_cmd(hosts.server, workdir, *args, variant=fw.variant)
    lab.apply_seed_firewall(hosts.server, fw.variant)
    fw.save_baseline()
    first = addresses(7)
    assert f2bext("ban", "--backend", "nftables" if backend == "nftables" else "ipset", "--jail", JAIL,
                  *first).returncode == 0
    # A fail2ban that takes the connection and never answers: busy running this very ban.
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(lab.lab_env(workdir)["F2BEXT_FAIL2BAN_SOCKET"])
    mute.listen(8)
    try:
        reload_firewall(fw)
        result = f2bext("ban", "--jail", JAIL, lab.ATTACKER4)
    finally:
        mute.close()
    assert result.returncode == 0, result.stderr
    assert kernel_bans(fw) == set(first) | {lab.ATTACKER4}
    said = result.stderr.splitlines()
    assert len(said) == 1 and "cannot read the banned list of jail postfix from fail2ban" in said[0] \
        and "keeps the 7 bans" in said[0], result.stderr


def write_failures(logpath, stop, written, per_round=20):
    """Failed logins from new addresses, a few every 50 ms, until told to stop (the jail bans at the first)."""
    while not stop.is_set():
        batch = addresses(per_round, start=len(written))
        fail(logpath, batch)
        written.extend(batch)
        time.sleep(0.05)  # the stream's pace, not a wait for anything


@pytest.mark.parametrize("backend", ["nftables", "ipset-nft"])
def test_repair_run_again_and_again_while_fail2ban_bans_a_stream_loses_no_ban(hosts, workdir, f2b, fw):
    f2b.jails[JAIL].update(maxretry="1")
    f2b.unowned()  # so that the hook can be removed from outside
    f2b.start()
    rules = hook_count(fw)
    stop, written = threading.Event(), []
    writer = threading.Thread(target=write_failures, args=(f2b.maillog, stop, written))
    writer.start()
    try:
        f2b.wait(lambda: len(f2b.banned(JAIL)) >= 20, "the first bans of the stream")
        for _ in range(30):
            fw.unhook(JAIL)  # something for the repair to rebuild (unless the watchdog is quicker)
            result = lab.f2bext_cmd(hosts.server, workdir, "repair", "--jail", JAIL, variant=fw.variant)
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop.set()
        writer.join()
    f2b.wait(lambda: len(f2b.banned(JAIL)) == len(written), "fail2ban to ban every address of the stream",
             timeout=60, step=0.5)
    assert_kernel_mirrors(f2b, fw, timeout=10, what="every ban of the stream in the kernel", rules=rules)


CORRUPT_STATES = {
    "truncated": '{"backend": "nftables", "jail": "post',
    "not an object": "[1, 2, 3]",
    "bad parameters": '{"backend": "nftables", "jail": "postfix", "params": {"port": "$(reboot)"}}',
}


@pytest.mark.parametrize("backend", ["nftables"])
@pytest.mark.parametrize("content", list(CORRUPT_STATES.values()), ids=list(CORRUPT_STATES))
def test_a_corrupt_state_file_counts_as_absent_and_the_next_ban_writes_it_anew(hosts, workdir, f2b, fw, content):
    conf_twin(f2b)
    f2b.start()
    ban(f2b, *addresses(3))
    assert_kernel_mirrors(f2b, fw, timeout=10, what="the first bans")
    path = os.path.join(workdir, "run", "jails", f"{JAIL}.json")
    with open(path, "w") as f:
        f.write(content)
    for args in (["verify"], ["verify", "--json"], ["repair"]):
        result = lab.f2bext_cmd(hosts.server, workdir, *args, variant=fw.variant)
        assert "Traceback" not in result.stderr and result.returncode == 0, result.stdout + result.stderr
        assert [line for line in result.stderr.splitlines() if path in line and "unreadable" in line] \
            == result.stderr.splitlines(), result.stderr
    ban(f2b, lab.ATTACKER4, lab.ATTACKER6)  # the .conf twin bans on
    assert_kernel_mirrors(f2b, fw, timeout=10, what="the bans made after the state broke")

    def verified() -> bool:  # the twin's drainer writes the record within its second
        result = lab.f2bext_cmd(hosts.server, workdir, "verify", "--jail", JAIL, variant=fw.variant)
        return (result.returncode, result.stderr) == (0, "")
    f2b.wait(verified, "the state written anew", timeout=15)
