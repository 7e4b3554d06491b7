"""The nftables builders and the ruleset reader, on listings captured from a real kernel."""

import ipaddress
import json
import os

import pytest

from f2bext.kernel import nftgen
from f2bext.backends import nft
from f2bext.backends.nft import read as nft_read
from f2bext.spec import JailSpec

FILES = os.path.join(os.path.dirname(__file__), "..", "files", "nft")
POSTFIX = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})
SSHD = JailSpec.from_params("sshd", {"port": "ssh", "hooks": "input,forward", "blocktype": "drop",
                                     "protocol": "tcp,udp"})


def observed(name):
    with open(os.path.join(FILES, f"{name}.json")) as f:
        return nft.parse_ruleset(json.load(f))


def codes(findings):
    return sorted(f.code for f in findings)


def test_healthy_ruleset_has_no_findings_for_either_jail():
    seen = observed("healthy")
    assert nft.check_jail(POSTFIX, seen) == [] and nft.check_jail(SSHD, seen) == []


def test_other_tables_are_ignored():
    seen = observed("healthy")
    assert "INPUT" not in seen.chains and set(seen.sets) >= {"postfix-v4", "sshd-net6"}


def test_flushed_ruleset_is_broken():
    assert codes(nft.check_jail(POSTFIX, observed("flushed"))) == ["table-missing"]


def test_an_accept_slipped_into_our_chain_is_caught():
    findings = nft.check_jail(POSTFIX, observed("accept-in-our-chain"))
    assert codes(findings) == ["rule-altered"] and "accept" in findings[0].evidence


def test_a_rule_tied_to_one_interface_is_caught():
    assert codes(nft.check_jail(POSTFIX, observed("rule-tied-to-interface"))) == ["rule-altered"]


def test_a_base_chain_moved_after_the_filter_priority_is_caught():
    seen = observed("chain-wrong-priority")
    assert "hook-altered" in codes(nft.check_jail(SSHD, seen)) and nft.check_jail(POSTFIX, seen) == []


def test_a_jail_whose_ports_changed_no_longer_matches():
    wider = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission,2525"})
    assert codes(nft.check_jail(wider, observed("healthy"))) == ["rule-altered"]


def test_a_jail_that_dropped_a_hook_reports_the_extra_chain():
    narrower = JailSpec.from_params("sshd", {"port": "ssh", "blocktype": "drop", "protocol": "tcp,udp"})
    assert codes(nft.check_jail(narrower, observed("healthy"))) == ["hook-extra"]


@pytest.mark.parametrize("spec", [
    POSTFIX, SSHD,
    JailSpec.from_params("a", {"type": "allports"}),
    JailSpec.from_params("b", {"type": "allports", "protocol": "all"}),
    JailSpec.from_params("c", {"port": "1000:2000", "protocol": "sctp"}),
])
def test_built_rules_read_back_as_the_spec_they_came_from(spec):
    for kind in nft.SET_KINDS:
        rule = {"expr": nft.build_rule_exprs(spec, kind)}
        assert nft.rule_signature(rule) == nft.Signature(nft.set_name(spec.jail, kind), tuple(sorted(spec.protocols)),
                                                         spec.ports, spec.blocktype)


def test_elements_go_to_the_right_set_in_chunks():
    nets = [ipaddress.ip_network(f"10.0.{i // 256}.{i % 256}") for i in range(2500)]
    nets += [ipaddress.ip_network("2001:db8::7/128"), ipaddress.ip_network("198.51.100.0/24")]
    cmds = nft.build_elements("add", "j", nets)
    sizes = [(c["add"]["element"]["name"], len(c["add"]["element"]["elem"])) for c in cmds]
    assert sizes == [("j-v4", 1000), ("j-v4", 1000), ("j-v4", 500), ("j-v6", 1), ("j-net4", 1)]


def test_network_sets_hold_the_collapsed_union():
    held = [ipaddress.ip_network(n) for n in ("198.51.100.0/25", "198.51.100.128/25", "203.0.113.0/24",
                                             "203.0.113.64/26", "203.0.113.9/32")]
    cmds = nft.build_network_sets("j", held, {4})
    assert cmds[0] == {"flush": {"set": {"family": "inet", "table": "f2bext", "name": "j-net4"}}}
    assert cmds[1]["add"]["element"]["elem"] == [{"prefix": {"addr": "198.51.100.0", "len": 24}},
                                                 {"prefix": {"addr": "203.0.113.0", "len": 24}}]


def test_rebuild_deletes_only_the_jails_own_objects_before_building():
    cmds = nft.build_rebuild(POSTFIX, observed("healthy"), [ipaddress.ip_network("203.0.113.7/32")])
    deleted = [next(iter(c["delete"].values()))["name"] for c in cmds if "delete" in c]
    assert deleted and all(nft.jail_of(n) == "postfix" for n in deleted)
    assert {"add": {"element": {"family": "inet", "table": "f2bext", "name": "postfix-v4",
                                "elem": ["203.0.113.7"]}}} in cmds


def test_object_names_map_back_to_their_jail():
    for jail in ("a", "a-net4", "postfix-sasl"):
        for kind in list(nft.SET_KINDS) + ["input", "forward"]:
            assert nft.jail_of(f"{jail}-{kind}") == jail


def test_generation_is_read_from_the_kernels_reply():
    import struct
    payload = struct.pack("=BBH", 0, 0, 0)
    payload += struct.pack("=HH", 8, 1) + struct.pack(">L", 1234) + struct.pack("=HH", 8, 2) + struct.pack(">L", 99)
    assert nftgen.parse_generation(payload) == 1234


DOCKER_JAIL = JailSpec.from_params("postfix", {"port": "587,8025", "hooks": "input,forward"})


def test_forward_chain_also_matches_the_port_the_client_asked_for_before_dnat():
    rules = [c["add"]["rule"] for c in nft.build_structure(DOCKER_JAIL) if "rule" in c.get("add", {})]
    forward = [r["expr"][2]["match"]["left"] for r in rules if r["chain"] == "postfix-forward"]
    origdport = {"ct": {"key": "proto-dst", "dir": "original"}}
    assert forward.count(origdport) == len(nft.SET_KINDS) == len(forward) - len(nft.SET_KINDS)
    assert all(r["expr"][2]["match"]["left"] != origdport for r in rules if r["chain"] == "postfix-input")


def test_original_port_values_listed_untyped_by_libnftables_1_0_6_read_back_as_ports():
    """1.0.6 lists `ct original proto-dst 587` as "0x24b [invalid type]"; later ones as 587."""
    built = {"expr": nft.build_rule_exprs(DOCKER_JAIL, "v4", nft.ORIGDPORT)}
    listed = json.loads(json.dumps(built).replace("587", '"0x24b [invalid type]"')
                        .replace("8025", '"0x1f59 [invalid type]"'))
    assert nft.rule_signature(listed) == nft.rule_signature(built) == nft.Signature(
        "postfix-v4", ("tcp",), ((587, 587), (8025, 8025)), "reject", nft.ORIGDPORT)
    ranged = {"expr": [{"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}},
                                  "right": {"range": ["0x1f40 [invalid type]", "0x1fa4 [invalid type]"]}}}]}
    assert nft_read._ports_of(ranged["expr"][0]["match"]["right"]) == ((8000, 8100),)
    assert nft_read._ports_of("0x24b [some other type]") is None and nft_read._ports_of("587") is None


def test_forward_chain_missing_its_original_port_rules_is_altered():
    seen = observed("healthy")
    chain = "sshd-forward"
    seen.rules[chain] = [r for r in seen.rules[chain] if '"ct"' not in json.dumps(r["expr"])]
    assert codes(nft.check_jail(SSHD, seen)) == ["rule-altered"]
