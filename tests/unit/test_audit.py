"""Reading iptables rulesets as the kernel walks them, and the other tools' listings (pure; their text as fixtures)."""

import ipaddress
import os

from f2bext import audit
from f2bext.backends import ipset
from f2bext.severity import Severity
from f2bext.spec import JailSpec

POSTFIX = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})
OURS_LOCAL = ('-A INPUT -p tcp -m multiport --dports 25,465,587 -m set --match-set f2bext-postfix src '
              '-m comment --comment "f2bext:postfix" -j REJECT --reject-with icmp-port-unreachable')
OURS = OURS_LOCAL + "\n" + OURS_LOCAL.replace("f2bext-postfix src", "f2bxr-postfix src")  # local and shared sets
SETS = {"f2bext-postfix": ("hash:net", "inet"), "f2bext6-postfix": ("hash:net", "inet6"),
        "f2bxr-postfix": ("hash:net", "inet"), "f2bxr6-postfix": ("hash:net", "inet6")}


def save(*rules, policy="ACCEPT", extra_chains=()):
    lines = ["*filter", f":INPUT {policy} [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in extra_chains] + "\n".join(rules).splitlines() + ["COMMIT"]
    return audit.parse_save("\n".join(lines))


def codes(*rules, **kw):
    return sorted(f.code for f in ipset.check_jail(POSTFIX, 4, save(*rules, **kw), SETS))


def test_our_rule_at_the_head_is_healthy():
    assert codes(OURS, "-A INPUT -p tcp -m multiport --dports 25,465,587 -j ACCEPT") == []


def test_the_seeds_accepts_above_our_rule_shadow_it():
    found = ipset.check_jail(POSTFIX, 4, save(
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A INPUT -p tcp -m multiport --dports 25,465,587 -j ACCEPT", OURS), SETS)
    assert [(f.code, f.severity) for f in found] == [("shadowed-held-sessions", Severity.CRITICAL), ("shadowed", Severity.CRITICAL)]
    assert found[1].evidence == "-A INPUT -p tcp -m multiport --dports 25,465,587 -j ACCEPT"
    assert "rule 2" in found[1].message and "f2bext's rule 3" in found[1].message


def test_rules_for_other_ports_loopback_or_other_protocols_do_not_shadow():
    assert codes("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT", "-A INPUT -i lo -j ACCEPT",
                 "-A INPUT -p udp -m udp --dport 25 -j ACCEPT", "-A INPUT -p tcp -m multiport --dports 1000:2000 -j ACCEPT",
                 "-A INPUT -j LOG", "-A INPUT -p tcp --dport 25 -j DROP", OURS) == []


def test_a_port_range_covering_ours_shadows():
    assert codes("-A INPUT -p tcp -m multiport --dports 20:30 -j ACCEPT", OURS) == ["shadowed"]


def test_a_source_limited_accept_is_a_warning_only():
    found = ipset.check_jail(POSTFIX, 4, save("-A INPUT -s 192.0.2.0/24 -j ACCEPT",
                                              "-A INPUT -m set --match-set trusted src -j ACCEPT", OURS), SETS)
    assert {(f.code, f.severity) for f in found} == {("shadowed-source-limited", Severity.WARNING)}


def test_a_jump_into_a_user_chain_that_accepts_shadows():
    assert codes("-A INPUT -p tcp -j SERVICES", "-A SERVICES -p tcp --dport 587 -j ACCEPT", OURS,
                 extra_chains=["SERVICES"]) == ["shadowed"]
    assert codes("-A INPUT -p tcp -j SERVICES", "-A SERVICES -p tcp --dport 80 -j ACCEPT", OURS,
                 extra_chains=["SERVICES"]) == []


def test_return_from_input_shadows_only_under_an_accept_policy():
    assert codes("-A INPUT -p tcp -j RETURN", OURS) == ["shadowed"]
    assert codes("-A INPUT -p tcp -j RETURN", OURS, policy="DROP") == []


def test_missing_jump_altered_rule_and_wrong_set_are_broken():
    assert codes() == ["jump-missing"]
    assert codes(OURS.replace("-A INPUT -p tcp", "-A INPUT -i eth0 -p tcp", 1)) == ["rule-altered"]
    assert codes(OURS_LOCAL) == ["rule-altered"], "the shared set's rule is missing"
    assert sorted(f.code for f in ipset.check_jail(POSTFIX, 4, save(OURS), {})) == ["set-missing", "set-missing"]
    wrong = dict(SETS, **{"f2bext-postfix": ("hash:ip", "inet6")})
    assert [f.code for f in ipset.check_jail(POSTFIX, 4, save(OURS), wrong)] == ["set-altered"]


def test_built_rules_are_what_the_check_expects():
    for spec in (POSTFIX, JailSpec.from_params("a", {"type": "allports", "protocol": "all", "hooks": "input,forward"}),
                 JailSpec.from_params("d", {"port": "587,8025,9000:9010", "protocol": "tcp,udp", "chain": "DOCKER-USER"}),
                 JailSpec.from_params("m", {"port": ",".join(str(p) for p in range(1000, 1040, 2)),
                                            "protocol": "tcp,udp", "blocktype": "drop"})):
        for family in (4, 6):
            lines = [f"-A {ipset.CHAINS[h]} " + " ".join(args) for h in spec.hooks for args in ipset.rule_args(spec, family, h)]
            sets = {name: ("hash:net", "inet" if f == 4 else "inet6") for f in (4, 6) for name in ipset.ipset_names(spec.jail, f)}
            assert ipset.check_jail(spec, family, save(*lines), sets) == []


def test_many_ports_are_split_within_multiports_limit():
    spec = JailSpec.from_params("m", {"port": ",".join(str(p) for p in range(1000, 1040, 2))})
    chunks = [args[args.index("--dports") + 1] for args in ipset.rule_args(spec, 4)]
    assert len(chunks) == 4 and all(len(c.split(",")) <= 15 for c in chunks)  # two per set


def test_restore_moves_our_rules_to_the_head_in_one_transaction():
    table = save("-A INPUT -p tcp -m multiport --dports 25,465,587 -j ACCEPT", OURS)
    text = ipset.build_rules_restore(POSTFIX, 4, table)
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert lines[1].startswith("-D INPUT -p tcp -m multiport --dports 25,465,587 -m set")
    assert lines[3].startswith("-I INPUT 1 -p tcp -m multiport --dports 25,465,587 -m set --match-set f2bxr-postfix")
    assert lines[4].startswith("-I INPUT 1 -p tcp -m multiport --dports 25,465,587 -m set --match-set f2bext-postfix")


def test_set_restore_creates_flushes_and_fills_both_families():
    text = ipset.build_set_restore("postfix", [ipaddress.ip_network("203.0.113.7/32"),
                                               ipaddress.ip_network("2001:db8::/64")], flush=True)
    assert "create f2bext6-postfix hash:net family inet6" in text and "flush f2bext-postfix" in text
    assert "create f2bxr6-postfix hash:net family inet6" in text and "flush f2bxr-postfix" not in text
    assert "add f2bext-postfix 203.0.113.7 -exist" in text and "add f2bext6-postfix 2001:db8::/64 -exist" in text


def test_set_headers_parse():
    text = ("Name: f2bext-postfix\nType: hash:net\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 1048576\n"
            "Size in memory: 1\nReferences: 1\nNumber of entries: 0\n")
    assert ipset.parse_set_headers(text) == {"f2bext-postfix": ("hash:net", "inet")}


DOCKER_JAIL = JailSpec.from_params("postfix", {"port": "587,8025", "hooks": "input,forward"})


def test_forward_rules_also_match_the_port_the_client_asked_for_before_dnat():
    forward = [" ".join(args) for args in ipset.rule_args(DOCKER_JAIL, 4, "forward")]
    assert [r for r in forward if "--ctorigdstport" in r] == [
        f"-p tcp -m conntrack --ctorigdstport {port} -m set --match-set {name} src -m comment --comment "
        "f2bext:postfix -j REJECT --reject-with icmp-port-unreachable"
        for name in ipset.ipset_names("postfix", 4) for port in (587, 8025)]
    assert not any("--ctorigdstport" in " ".join(args) for args in ipset.rule_args(DOCKER_JAIL, 4, "input"))


def test_forward_rules_without_the_original_port_match_are_altered():
    lines = [f"-A {ipset.CHAINS[h]} " + " ".join(args) for h in DOCKER_JAIL.hooks
             for args in ipset.rule_args(DOCKER_JAIL, 4, h) if h == "input" or "--ctorigdstport" not in args]
    sets = {name: ("hash:net", "inet") for name in ipset.ipset_names("postfix", 4)}
    assert [f.code for f in ipset.check_jail(DOCKER_JAIL, 4, save(*lines), sets)] == ["rule-altered"]


def test_a_forward_accept_for_the_container_port_shadows_a_ban_on_the_published_port():
    """Docker accepts `--dport 25` to the container after DNAT'ing 8025: in FORWARD the port an accept
    names says nothing of the port the client asked for."""
    ours = ["-A FORWARD " + " ".join(args) for args in ipset.rule_args(DOCKER_JAIL, 4, "forward")]
    table = save("-A FORWARD -o docker0 -j DOCKER", *ours,
                 "-A DOCKER -d 192.0.2.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 25 -j ACCEPT")
    spec = JailSpec.from_params("postfix", {"port": "587,8025", "hooks": "forward"})
    assert [f.code for f in ipset.check_rules(spec, 4, table)] == ["shadowed"]
    assert ipset.check_rules(spec, 4, save(*ours, "-A FORWARD -o docker0 -j DOCKER")) == []


TOOLS = os.path.join(os.path.dirname(__file__), "..", "files", "tools")


def tool_output(name):
    with open(os.path.join(TOOLS, name)) as f:
        return f.read()


def test_ipset_members_are_the_first_word_of_each_line_timeouts_aside():
    assert audit.parse_members(tool_output("ipset-list.txt")) == ["192.0.2.66", "198.51.100.0"]
    assert audit.parse_members(tool_output("ipset-list-empty.txt")) == []
    assert audit.parse_members("") == []


def test_a_shadow_says_its_rule_and_is_critical_unless_source_limited():
    held = audit.Shadow("-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT", 1, audit.HELD)
    assert (held.code, held.severity) == ("shadowed-held-sessions", Severity.CRITICAL)
    assert held.says("iptables", "INPUT", "fail2ban's", 3) == \
        "iptables INPUT rule 1 accepts held sessions of banned addresses before fail2ban's rule 3"
    source = audit.Shadow("-A INPUT -s 192.0.2.0/24 -j ACCEPT", 2, audit.SOURCE)
    assert (source.code, source.severity) == ("shadowed-source-limited", Severity.WARNING)
    assert audit.Shadow("-A INPUT -j ACCEPT", 1, audit.FULL).code == "shadowed"
