"""The .conf twins' fast ban on a real fail2ban-server: the shell adds to f2bext's own set, and
`f2bext drain` does the rest after it; whatever the fast path cannot do goes the full `f2bext ban`."""

import json
import os

import pytest

from f2bext import lab, twins
from test_e2e import asked_directly_bans_only_the_attacker

pytestmark = pytest.mark.kernel


def twin(f2b):
    """Put the lab's jail on the .conf twin of its backend; the twin's files in the lab's state."""
    f2b.jails["postfix"]["banaction"] = f2b.banaction[:-len(".py")]
    return os.path.join(f2b.workdir, "run", "twins", "postfix")


def recorded(f2b):
    with open(os.path.join(f2b.workdir, "run", "jails", "postfix.json")) as f:
        return json.load(f)["bans"]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_twin_ban_takes_the_fast_path_and_the_drainer_records_it_and_cuts_the_session(hosts, f2b, fw, reach,
                                                                                     held_session, backend):
    files = twin(f2b)
    f2b.start()
    held = held_session(f2b.maillog)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the ban")
    assert os.path.exists(os.path.join(files, "drain.pid")), "the ban did not take the fast path"
    held.assert_cut()
    f2b.wait(lambda: lab.ATTACKER4 in recorded(f2b), "the state record")
    f2b.wait(lambda: not os.listdir(os.path.join(files, "spool")), "the spool to drain")
    assert not reach(hosts.attacker, lab.SERVER4, 465)
    assert reach(hosts.bystander, lab.SERVER4, 465)
    assert read(os.path.join(files, "drain.log")) == ""
    f2b.client("set", "postfix", "unbanip", lab.ATTACKER4)
    f2b.wait(lambda: reach(hosts.attacker, lab.SERVER4, 465), "the unban")
    assert lab.ATTACKER4 not in recorded(f2b)


def test_twin_ban_after_a_firewall_reload_falls_back_or_drains_and_repairs(hosts, workdir, f2b, fw, reach, backend):
    """nft flush ruleset takes the sets too: the add fails and the full `f2bext ban` rebuilds. An
    iptables reload keeps the ipsets: the add succeeds, and the drainer finds the rules gone."""
    twin(f2b)
    fw.save_baseline()
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 465), "enforcement")
    fw.wipe()
    f2b.client("set", "postfix", "banip", lab.ATTACKER6)
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER6, 465), "the IPv6 ban, enforced")
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, 465), "the earlier ban, back with the rebuild")
    assert reach(hosts.bystander, lab.SERVER4, 465)


def test_twin_never_bans_ignoreip_the_hosts_own_addresses_or_a_network_on_the_fast_path(hosts, f2b, fw, reach):
    twin(f2b)
    asked_directly_bans_only_the_attacker(hosts, f2b, fw, reach, "refusing")


def test_drainer_lifts_a_ban_the_guard_file_did_not_know_to_refuse(hosts, f2b, fw, reach):
    """An address the host got after the guard file was written: the fast path bans it, the drainer's
    full guard lifts it at once and says so."""
    files = twin(f2b)
    f2b.jails["postfix"]["ignoreip"] = f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"
    f2b.start()
    f2b.wait(lambda: os.path.exists(os.path.join(files, twins.GUARD)), "actionstart")  # its last step
    with open(os.path.join(files, twins.GUARD), "w") as f:
        f.write(twins.guard_script(["127.*"]))  # as if written before the jail's ignoreip named the bystander
    f2b.client("set", "postfix", "banip", lab.BYSTANDER4)
    f2b.wait(lambda: "lifted the ban of " + lab.BYSTANDER4 in read(os.path.join(files, "drain.log")), "the lift")
    assert not fw.holds("postfix", lab.BYSTANDER4)
    assert reach(hosts.bystander, lab.SERVER4, 25)
    assert lab.BYSTANDER4 not in recorded(f2b)
    assert lab.BYSTANDER4 in read(os.path.join(files, twins.GUARD)), "the drainer did not write the guard anew"
