"""iptables + ipset reader, pure: `ipset list -t` headers, and the check of a jail's sets and of its
rules in iptables-save as the kernel walks them (missing, altered, shadowed)."""

from __future__ import annotations

from collections import Counter

from ... import audit
from ...spec import JailSpec
from ...severity import Severity
from ..base import BROKEN, Finding
from .build import CHAINS, _is_ours, ipset_names, rule_args


def _shape(rule: audit.Rule) -> tuple:
    return (rule.proto, rule.dports, rule.orig_dports, tuple(rule.match_sets), rule.target, rule.reject_with,
            rule.in_iface, rule.source, rule.states, tuple(rule.unknown), rule.comment)


def expected_shapes(spec: JailSpec, family: int, hook: str) -> Counter:
    return Counter(_shape(audit.parse_rule(CHAINS[hook], args, 0, "")) for args in rule_args(spec, family, hook))


def parse_sets(text: str) -> dict[str, tuple[str, str, int, int]]:
    """`ipset list -t` output -> {set name: (type, family, maxelem, number of entries)}."""
    sets: dict[str, tuple[str, str, int, int]] = {}
    name, kind, words = "", "", []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Name":
            name, kind, words = value, "", []
        elif key == "Type":
            kind = value
        elif key == "Header":
            words = value.split()
        elif key == "Number of entries" and name:
            def word_after(w: str) -> str:
                return words[words.index(w) + 1] if w in words else ""
            sets[name] = (kind, word_after("family"), int(word_after("maxelem") or 0), int(value))
    return sets


def parse_set_headers(text: str) -> dict[str, tuple[str, str]]:
    """{set name: (type, family)}."""
    return {name: (kind, family) for name, (kind, family, _, _) in parse_sets(text).items()}


def check_jail(spec: JailSpec, family: int, table: audit.Table, sets: dict[str, tuple[str, str]]) -> list[Finding]:
    """What keeps the jail's bans from holding in one family: missing or wrong sets, missing, altered
    or shadowed rules (each shadow quoted with its position)."""
    return check_sets(spec, family, sets) + check_rules(spec, family, table)


def check_sets(spec: JailSpec, family: int, sets: dict[str, tuple[str, str]]) -> list[Finding]:
    want = ("hash:net", "inet" if family == 4 else "inet6")
    findings = []
    for name in ipset_names(spec.jail, family):
        if name not in sets:
            findings.append(Finding(spec.jail, BROKEN, "set-missing", f"ipset {name} is missing"))
        elif sets[name] != want:
            findings.append(Finding(spec.jail, BROKEN, "set-altered",
                                    f"ipset {name} is {' '.join(sets[name])}, not {' '.join(want)}"))
    return findings


def check_rules(spec: JailSpec, family: int, table: audit.Table) -> list[Finding]:
    tool = "iptables" if family == 4 else "ip6tables"
    findings = []

    def add(severity: Severity, code: str, message: str, evidence: str = "") -> None:
        findings.append(Finding(spec.jail, severity, code, message, evidence))

    ours = _is_ours(spec.jail, family)
    for hook in spec.hooks:
        chain = CHAINS[hook]
        mine = [r for r in table.chains.get(chain, []) if ours(r)]
        if not mine:
            add(BROKEN, "jump-missing", f"{tool} {chain} has no rule for jail {spec.jail}")
            continue
        if Counter(_shape(r) for r in mine) != expected_shapes(spec, family, hook):
            add(BROKEN, "rule-altered", f"{tool} {chain} rules of jail {spec.jail} differ from what it asks for",
                "\n".join(r.text for r in mine))
        # In FORWARD the port a rule sees may be DNAT's (Docker's `-p 8025:25` accepts --dport 25):
        # an accept there lets banned traffic through whatever port it names.
        seen_as = spec._replace(ports=()) if hook == "forward" else spec
        for shadow in audit.shadows(chain, seen_as, table, ours):
            add(shadow.severity, shadow.code, shadow.says(tool, chain, "f2bext's", mine[0].position), shadow.rule)
    for chain, rules in table.chains.items():
        if chain not in {CHAINS[h] for h in spec.hooks} and any(ours(r) for r in rules):
            add(BROKEN, "hook-extra", f"{tool} {chain} holds rules of jail {spec.jail} it does not ask for")
    return findings
