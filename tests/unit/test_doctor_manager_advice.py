"""The doctor names the firewall manager it finds and advises on it, on rulesets captured from firewalld and ufw."""

import json
import os

from f2bext import doctor, lab, managers

FILES = os.path.join(os.path.dirname(__file__), "..", "files", "managers")
UFW_ESTABLISHED = "-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"


def captured(name, firewalld_version=""):
    """A KernelInfo from the lab's capture `name` (firewalld-nftables, firewalld-iptables, ufw)."""
    def text(suffix):
        path = os.path.join(FILES, f"{name}.{suffix}")
        return open(path).read() if os.path.exists(path) else ""
    nft = text("nft.json")
    return doctor.KernelInfo(nft=json.loads(nft) if nft else {},
                             iptables={4: text("iptables-save"), 6: text("ip6tables-save")}, interfaces=["lo", "eth0"],
                             firewalld_version=firewalld_version)


def findings(kernel, action, kind, banned=(lab.ATTACKER4,)):
    jail = doctor.JailInfo("postfix", tuple(banned), (doctor.ActionInfo(action, kind, {"port": "25,465,587"}),))
    return {d.code: d for d in doctor.diagnose(doctor.Snapshot([jail], kernel))}


def test_firewalld_is_found_with_its_backend_and_zone():
    for backend in ("nftables", "iptables"):
        k = captured(f"firewalld-{backend}")
        [m] = managers.detect(k.nft, k.iptables, firewalld_version="1.3.3")
        assert (m.name, m.backend, m.zones, m.version) == ("firewalld", backend, ("public",), "1.3.3")
        assert m.evidence == ("table inet firewalld" if backend == "nftables" else "iptables chain INPUT_direct")
        assert m.direct == (backend == "iptables")  # its iptables backend keeps empty *_direct chains
    k = doctor.KernelInfo(iptables={4: open(os.path.join(FILES, "firewalld2-iptables.iptables-save")).read()})
    [m] = managers.detect(k.nft, k.iptables)  # firewalld 2.3.1: INPUT_POLICIES where 1.3 had INPUT_ZONES
    assert (m.backend, m.zones) == ("iptables", ("public",))


def test_ufw_is_found_and_its_manage_builtins_read():
    k = captured("ufw")
    assert [m.name for m in managers.detect(k.nft, k.iptables)] == ["ufw"]
    assert managers.detect(k.nft, k.iptables, {"MANAGE_BUILTINS": "yes"})[0].manage_builtins is True
    assert managers.detect(k.nft, k.iptables, {"MANAGE_BUILTINS": "no"})[0].manage_builtins is False


def test_a_host_without_a_manager_gets_no_manager_finding():
    k = doctor.KernelInfo(nft=json.load(open(os.path.join(os.path.dirname(__file__), "..", "files", "nft", "healthy.json"))))
    assert managers.detect(k.nft, k.iptables) == []


def test_the_ipset_action_under_firewalld_is_told_of_the_flush_and_the_nftables_action():
    for backend, version in (("nftables", "1.3.3"), ("nftables", ""), ("iptables", "1.3.3"), ("iptables", "2.3.1")):
        found = findings(captured(f"firewalld-{backend}", version), "f2bext-ipset", "f2bext-ipset")
        d = found["firewalld-flush"]
        assert d.severity == doctor.WARNING and "iptables -F -X -Z" in d.message and "zone public" in d.message
        assert d.fix.startswith("banaction = f2bext-nftables.py")


def test_firewalld_2_on_nftables_flushes_iptables_only_while_it_holds_direct_rules():
    k = captured("firewalld-nftables", "2.3.1")
    assert "firewalld-flush" not in findings(k, "f2bext-ipset", "f2bext-ipset")
    direct = k.iptables[4].replace(":OUTPUT ACCEPT [0:0]\n", ":OUTPUT ACCEPT [0:0]\n:INPUT_direct - [0:0]\n")
    assert "firewalld-flush" in findings(doctor.KernelInfo(**{**k.__dict__, "iptables": {4: direct, 6: k.iptables[6]}}),
                                         "f2bext-ipset", "f2bext-ipset")
    # firewallcmd-ipset adds direct rules (2.x puts them in INPUT itself): the ipset jail beside it is told
    jails = [doctor.JailInfo("postfix", (lab.ATTACKER4,), (doctor.ActionInfo("f2bext-ipset", "f2bext-ipset"),)),
             doctor.JailInfo("sshd", (), (doctor.ActionInfo("firewallcmd-ipset", "firewallcmd-ipset"),))]
    codes = {(d.jail, d.code) for d in doctor.diagnose(doctor.Snapshot(jails, k))}
    assert ("postfix", "firewalld-flush") in codes


def test_the_nftables_action_under_firewalld_gets_no_manager_finding():
    for backend in ("nftables", "iptables"):
        assert "firewalld-flush" not in findings(captured(f"firewalld-{backend}"), "f2bext-nftables", "f2bext-nftables")


def test_stock_actions_under_firewalld_are_told_their_bans_go_at_the_next_reload():
    for action, kind in (("iptables-multiport", "iptables"), ("firewallcmd-ipset", "firewallcmd-ipset")):
        d = findings(captured("firewalld-nftables"), action, kind)["firewalld-flush"]
        assert "never" in d.message and d.fix.startswith("banaction = f2bext-nftables.py")


def test_the_stock_ufw_action_is_told_of_the_established_accept_ahead_of_its_bans():
    assert doctor.action_kind("ufw", "ufw prepend reject from <ip> to any") == "ufw"
    found = findings(captured("ufw"), "ufw", "ufw", banned=(lab.ATTACKER4, lab.ATTACKER6))
    d = found["ufw-established"]
    assert d.severity == doctor.CRITICAL and "2545" in d.message and d.evidence == UFW_ESTABLISHED
    assert "kill-mode=ss" in d.fix and "not-enforced" not in found  # its bans are read from ufw-user-input


def test_under_ufw_only_manage_builtins_yes_endangers_iptables_bans():
    k = captured("ufw")
    for kind in ("f2bext-ipset", "iptables"):
        assert "ufw-flush" not in findings(doctor.KernelInfo(**{**k.__dict__, "ufw_defaults": {"MANAGE_BUILTINS": "no"}}),
                                           kind, kind)
        d = findings(doctor.KernelInfo(**{**k.__dict__, "ufw_defaults": {"MANAGE_BUILTINS": "yes"}}), kind, kind)["ufw-flush"]
        assert d.severity == doctor.WARNING and "f2bext-nftables.py" in d.fix
    assert "ufw-flush" not in findings(doctor.KernelInfo(**{**k.__dict__, "ufw_defaults": {"MANAGE_BUILTINS": "yes"}}),
                                       "f2bext-nftables", "f2bext-nftables")
