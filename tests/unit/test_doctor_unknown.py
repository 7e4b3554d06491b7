"""What the doctor could not read is UNKNOWN, never "not enforced": pure findings on kernel snapshots
with a failed read, the reading itself with a tool missing or failing, and the doctor on a live lab
without the `ipset` tool. Sessions the kernel would not list: tests/lab/test_sessions.py."""

import json

from f2bext import doctor, lab
from f2bext.doctor import reading
from f2bext.doctor.model import CONNTRACK, IPSETS, NFTABLES, rules_read, set_read
from f2bext.severity import Severity, worst

BANNED = (lab.ATTACKER4,)
IPTABLES_SAVE = ("*filter\n:INPUT ACCEPT [0:0]\n:f2b-postfix - [0:0]\n"
                 "-A INPUT -p tcp -m tcp --dport 25 -j ACCEPT\n"
                 "-A INPUT -p tcp -m multiport --dports 25,465,587 -m set --match-set f2b-postfix src -j REJECT\n"
                 "COMMIT\n")


def findings(kernel, kind, action="act", banned=BANNED):
    jail = doctor.JailInfo("postfix", tuple(banned), (doctor.ActionInfo(action, kind, {"port": "25,465,587"}),))
    return doctor.diagnose(doctor.Snapshot([jail], kernel))


def test_an_unread_ruleset_is_unknown_and_not_read_as_bans_lost():
    kernel = doctor.KernelInfo(unread={NFTABLES: "nftables refused to list ruleset: Operation not permitted"})
    for kind in ("f2bext-nftables", "nftables"):
        [d] = findings(kernel, kind)
        assert (d.code, d.severity) == ("unreadable", Severity.UNKNOWN)
        assert "nftables ruleset" in d.message and "Operation not permitted" in d.evidence
        assert doctor.overall([d]) == doctor.UNKNOWN == 3


def test_the_same_empty_kernel_read_fine_is_bans_lost():
    codes = {d.code for d in findings(doctor.KernelInfo(), "f2bext-nftables")}
    assert "not-enforced" in codes and "unreadable" not in codes


def test_an_unread_set_names_the_set_and_what_was_read_still_speaks():
    kernel = doctor.KernelInfo(iptables={4: IPTABLES_SAVE, 6: ""},
                               ipsets={"f2b-postfix": (("hash:ip", "inet"), [])},
                               unread={set_read("f2b-postfix"): "cannot list ipset f2b-postfix: ipset is not installed"})
    found = {d.code: d for d in findings(kernel, "iptables-ipset")}
    assert "not-enforced" not in found and "stale" not in found
    assert "ipset f2b-postfix" in found["unreadable"].message
    assert found["shadowed"].severity == Severity.CRITICAL  # the rules were read: the leak is known
    assert doctor.overall(list(found.values())) == doctor.CRITICAL  # a known leak outranks an unread set


def test_unread_ipsets_or_rules_leave_no_set_or_jump_missing():
    kernel = doctor.KernelInfo(unread={IPSETS: "cannot list ipsets: Protocol not supported",
                                       rules_read(4): "iptables-nft-save refused to list rules",
                                       rules_read(6): "ip6tables-nft-save refused to list rules"})
    [d] = findings(kernel, "f2bext-ipset")
    assert d.code == "unreadable" and all(w in d.message for w in ("ipsets", "iptables rules", "ip6tables rules"))


def test_unread_sessions_are_unknown_only_for_a_jail_with_bans():
    kernel = doctor.KernelInfo(unread={CONNTRACK: "cannot list conntrack: conntrack is not installed"})
    assert findings(kernel, "ufw", banned=()) == []
    kernel.iptables = {4: f"*filter\n:ufw-user-input - [0:0]\n-A ufw-user-input -s {lab.ATTACKER4} -j DROP\nCOMMIT\n"}
    [d] = findings(kernel, "ufw")
    assert (d.code, d.severity) == ("unreadable", Severity.UNKNOWN) and "conntrack" in d.message


def test_the_words_say_unknown_in_every_output(tmp_path):
    snap = doctor.Snapshot([doctor.JailInfo("postfix", BANNED, (doctor.ActionInfo("act", "nftables"),))],
                           doctor.KernelInfo(unread={NFTABLES: "nftables refused to list ruleset"}))
    found = doctor.diagnose(snap)
    assert doctor.render(snap, found).startswith("F2BEXT DOCTOR UNKNOWN - postfix: act: could not read the "
                                                 "nftables ruleset")
    report = json.loads(doctor.to_json(snap, found))
    assert report["status"] == "UNKNOWN" and report["findings"][0]["severity"] == "UNKNOWN"
    prom = tmp_path / "doctor.prom"
    doctor.write_prom(str(prom), snap, found)
    assert "f2bext_doctor_status 3" in prom.read_text()
    assert 'f2bext_jail_findings{jail="postfix",severity="unknown"} 1' in prom.read_text()


def test_severities_rank_critical_over_unknown_over_warning():
    assert worst([]) == Severity.OK
    assert worst([Severity.WARNING, Severity.UNKNOWN]) == Severity.UNKNOWN
    assert worst([Severity.UNKNOWN, Severity.CRITICAL, Severity.WARNING]) == Severity.CRITICAL


def tools_dir(tmp_path, **scripts):
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + text + "\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_iptables_not_installed_at_all_or_failing_is_unread(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    info = doctor.KernelInfo()
    assert reading.read_iptables(info, 4) == ""
    assert info.unread == {rules_read(4): "neither iptables-nft-save nor iptables-legacy-save is installed"}
    monkeypatch.setenv("PATH", tools_dir(tmp_path, **{"ip6tables-legacy-save": "echo 'Permission denied' >&2; exit 4"}))
    info = doctor.KernelInfo()
    reading.read_iptables(info, 6)
    assert info.unread == {rules_read(6): "ip6tables-legacy-save refused to list rules: Permission denied"}
