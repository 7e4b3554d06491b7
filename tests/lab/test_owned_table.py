"""f2bext-nftables.py's table owned by fail2ban-server (`flags owner, persist`; set over netlink where
libnftables cannot say it, Debian 12's 1.0.6): other processes' flushes, restores and deletes leave
every ban in place while a banned attacker probes; the command line asks the owner; a crash and a
restart keep exactly fail2ban's bans."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time

import pytest

from f2bext import lab

ATTACKERS = (lab.ATTACKER4, lab.ATTACKER6)


class Probe:
    """The banned attacker connecting to the server's port 25 about 200 times a second, until stopped."""

    def __init__(self, hosts, workdir, server=lab.SERVER4) -> None:
        self.stopfile = os.path.join(workdir, f"stop-probe-{server}")
        self.proc = hosts.attacker.popen([lab.PYTHON, "-m", "f2bext.lab.tools", "probe-until", server, "25",
                                          self.stopfile], env=lab.lab_env(workdir), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n"

    def stop(self) -> tuple[int, int]:
        """(tried, got through)."""
        open(self.stopfile, "w").close()
        out, _ = self.proc.communicate(timeout=30)
        tried, through = re.fullmatch(r"tried (\d+) through (\d+)\n", out).groups()
        return int(tried), int(through)


def table(hosts) -> str:
    return hosts.server.nft("list", "table", "inet", "f2bext")


def holds(hosts, address: str) -> bool:
    kind = "v6" if ":" in address else "v4"
    return address in hosts.server.nft("list", "set", "inet", "f2bext", f"postfix-{kind}", check=False)


def owned_and_persist(hosts) -> bool:
    """The table's flags as the kernel holds them (nft 1.0.6 prints `owner` only, not `persist`)."""
    code = "from f2bext.kernel import nftgen; print(nftgen.read_table('inet', 'f2bext').flags)"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lab.__file__)))
    return int(hosts.server.run([lab.PYTHON, "-c", code], env=env).stdout) == 2 | 4


def logged(workdir, text: str) -> bool:
    return text in open(os.path.join(workdir, "fail2ban.log")).read()


@pytest.fixture
def banned(hosts, workdir, f2b):
    f2b.start()
    f2b.client("set", "postfix", "banip", *ATTACKERS)
    assert owned_and_persist(hosts)
    assert not logged(workdir, "stays unowned")
    return f2b


def test_other_processes_flush_restore_and_delete_and_no_probe_gets_through(hosts, workdir, banned, tmp_path):
    old = tmp_path / "old-ruleset.nft"  # a ruleset file from before f2bext, as admins reload them
    old.write_text("flush ruleset\ntable inet filter {\n  chain input { type filter hook input priority 0; "
                   "policy accept; ct state established,related accept; tcp dport 25 accept; }\n}\n")
    served = open(banned.maillog).read().count(f"connect from unknown[{lab.ATTACKER4}]")
    probe = Probe(hosts, workdir)
    for _ in range(10):
        hosts.server.nft("flush", "ruleset")
        hosts.server.run(["nft", "-f", str(old)])
        time.sleep(0.2)
    refused = [hosts.server.run(["nft", *cmd.split()], check=False)
               for cmd in ("delete table inet f2bext", "flush table inet f2bext", "flush set inet f2bext postfix-v4",
                           "delete chain inet f2bext postfix-input")]
    time.sleep(0.5)
    tried, through = probe.stop()

    assert through == 0 and tried >= 20, (tried, through)
    assert open(banned.maillog).read().count(f"connect from unknown[{lab.ATTACKER4}]") == served  # none reached it
    assert all(r.returncode != 0 and "Operation not permitted" in r.stderr for r in refused)
    assert all(holds(hosts, a) for a in ATTACKERS)
    assert banned.banned("postfix") == sorted(ATTACKERS)
    assert not logged(workdir, "repairing")


def test_a_ruleset_saved_while_fail2ban_ran_is_refused_whole_and_the_bans_hold(hosts, banned, tmp_path):
    saved = tmp_path / "saved.nft"  # `nft list ruleset > /etc/nftables.conf`, then a reload
    saved.write_text("flush ruleset\n" + hosts.server.nft("list", "ruleset"))
    banned.client("set", "postfix", "unbanip", lab.ATTACKER6)
    before = re.sub(r"packets \d+ bytes \d+", "", hosts.server.nft("list", "ruleset"))

    restore = hosts.server.run(["nft", "-f", str(saved)], check=False)

    assert restore.returncode != 0 and "Operation not permitted" in restore.stderr
    assert re.sub(r"packets \d+ bytes \d+", "", hosts.server.nft("list", "ruleset")) == before
    assert holds(hosts, lab.ATTACKER4) and not holds(hosts, lab.ATTACKER6)


def test_the_command_line_asks_the_owner_and_refuses_in_clear_words(hosts, workdir, banned):
    def run(*args):
        return lab.f2bext_cmd(hosts.server, workdir, *args)

    ban = run("ban", "--jail", "postfix", lab.ATTACKER_NET_PEER4)
    assert ban.returncode == 0 and "through fail2ban" in ban.stdout, ban.stderr
    assert lab.ATTACKER_NET_PEER4 in banned.banned("postfix") and holds(hosts, lab.ATTACKER_NET_PEER4)
    assert run("unban", "--jail", "postfix", lab.ATTACKER_NET_PEER4).returncode == 0
    assert lab.ATTACKER_NET_PEER4 not in banned.banned("postfix") and not holds(hosts, lab.ATTACKER_NET_PEER4)
    assert run("repair", "--jail", "postfix").returncode == 0
    own = run("ban", "--jail", "postfix", lab.SERVER4)  # the host's own address: refused before fail2ban is asked
    assert own.returncode == 2 and "an address of this host" in own.stderr
    assert lab.SERVER4 not in banned.banned("postfix")
    other = run("ban", "--jail", "nosuch", lab.ATTACKER_NET_PEER4)  # a jail the owner does not run
    assert other.returncode == 1 and "jail nosuch is not one of its" in other.stderr, other.stderr
    assert "Traceback" not in other.stderr and other.stderr.count("\n") == 1
    before = table(hosts)
    flush = run("flush", "--jail", "postfix")
    assert flush.returncode == 1 and "belongs to fail2ban-server (pid" in flush.stderr, flush.stderr
    assert "Traceback" not in flush.stderr and flush.stderr.count("\n") <= 2
    assert table(hosts) == before
    doctor = run("doctor")
    assert "table inet f2bext belongs to fail2ban-server (pid" in doctor.stdout, doctor.stdout


def test_a_conf_jail_beside_the_owner_is_refused_in_clear_words(hosts, workdir, f2b):
    f2b.jails["submission"] = dict(f2b.jails["postfix"], port="submission", banaction="f2bext-nftables")
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.client("set", "submission", "banip", lab.ATTACKER6, check=False)
    log = open(os.path.join(workdir, "fail2ban.log")).read()
    assert holds(hosts, lab.ATTACKER4)
    assert "belongs to fail2ban-server (pid" in log and "use f2bext-nftables.py for it too" in log


def test_owner_no_builds_the_table_as_before_and_the_watchdog_heals_a_flush(hosts, workdir, f2b):
    f2b.jails["postfix"]["action"] = f'{f2b.banaction}[port="{lab.DEFAULT_JAIL["port"]}", owner="no"]'
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    assert "flags owner" not in table(hosts)
    hosts.server.nft("flush", "ruleset")
    f2b.wait(lambda: holds(hosts, lab.ATTACKER4), "the watchdog to put the ban back")


def test_a_bad_owner_value_is_one_error_and_builds_nothing(hosts, workdir, f2b):
    f2b.jails["postfix"]["action"] = f'{f2b.banaction}[port="{lab.DEFAULT_JAIL["port"]}", owner="maybe"]'
    with pytest.raises(Exception):
        f2b.start()
    assert "owner must be yes or no" in open(os.path.join(workdir, "fail2ban.log")).read()
    assert "f2bext" not in hosts.server.nft("list", "ruleset")


def test_kill_9_then_start_keeps_exactly_fail2bans_bans(hosts, workdir, banned):
    probe = Probe(hosts, workdir)
    banned.server.send_signal(signal.SIGKILL)
    banned.server.wait()
    killed = time.monotonic()
    # While fail2ban is down, ATTACKER6's ban expires from its database: a restart must not keep it.
    with sqlite3.connect(os.path.join(workdir, "fail2ban.sqlite3")) as db:
        for rows in ("bans", "bips"):  # the history, and the current bans fail2ban restores from
            db.execute(f"DELETE FROM {rows} WHERE ip = ?", (lab.ATTACKER6,))
    time.sleep(1.0)
    assert holds(hosts, lab.ATTACKER4), "the table is `persist`: it outlives its owner, bans and all"
    down = lab.f2bext_cmd(hosts.server, workdir, "verify", "--jail", "postfix")  # the orphan, from outside
    assert "Traceback" not in down.stderr and down.returncode in (0, 1), down.stderr
    banned.launch()
    gap = banned.wait(lambda: holds(hosts, lab.ATTACKER4), "the ban after the restart")
    tried, through = probe.stop()

    print(f"{through} of {tried} probes got through in the {time.monotonic() - killed:.2f} s "
          f"from kill -9 to the restart's bans ({gap:.2f} s after fail2ban answered)")
    assert owned_and_persist(hosts) and "progname" in table(hosts), "adopted by the new fail2ban-server"
    assert banned.banned("postfix") == [lab.ATTACKER4]
    assert not logged(workdir, "Failed to start jail")  # the orphan adopted before its first listing
    f2b_wait_unheld = banned.wait(lambda: not holds(hosts, lab.ATTACKER6), "the expired ban to go")
    assert f2b_wait_unheld < 20
    assert through == 0, (tried, through)  # fail2ban's bans swapped in: added first, lapsed ones deleted last
