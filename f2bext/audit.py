"""Read what the firewall tools print, one parser per format: an iptables ruleset (`iptables-save`)
the way the kernel walks it, saying which rule would let a jail's banned traffic through before the
jail's own rule, and in what words; and an ipset's members (`ipset list`). Pure: tested on fixtures.
Conntrack entries, sockets and interfaces are read over netlink (f2bext/kernel/), not from tools' text."""

from __future__ import annotations

import shlex
from typing import NamedTuple, Optional

from .severity import Severity
from .spec import JailSpec, PortRange

BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")
# Match modules whose meaning we read; any other module could match anything, as far as we know.
_UNDERSTOOD = {"tcp", "udp", "sctp", "multiport", "conntrack", "state", "comment", "set"}
_HELD_ONLY = {"ESTABLISHED", "RELATED"}

FULL, HELD, SOURCE = "full", "held-sessions", "source-limited"  # how a rule lets banned traffic through
SHADOW_WORDS = {FULL: "accepts the banned traffic", HELD: "accepts held sessions of banned addresses",
                SOURCE: "accepts banned traffic from some sources"}


class Rule:
    """One `-A CHAIN ...` line, reduced to what decides whether it can match banned traffic."""

    # Not a dataclass: `dataclasses` would cost the fail2ban-server of f2bext-ipset.py 1 MiB.
    def __init__(self, chain: str, text: str, position: int) -> None:
        self.chain = chain
        self.text = text
        self.position = position  # 1-based, as `iptables -L --line-numbers` counts
        self.target = ""
        self.proto: Optional[str] = None
        self.proto_negated = False
        self.source: Optional[str] = None  # a non-negated -s restriction
        self.in_iface: Optional[str] = None
        self.in_iface_negated = False
        self.dports: Optional[tuple[PortRange, ...]] = None
        self.dports_negated = False
        self.orig_dports: Optional[tuple[PortRange, ...]] = None  # -m conntrack --ctorigdstport: before any DNAT
        self.orig_dports_negated = False
        self.states: Optional[frozenset[str]] = None
        self.states_negated = False
        self.match_sets: list[tuple[str, str]] = []  # (set, "src"/"dst"), non-negated
        self.comment = ""
        self.unknown: list[str] = []  # modules or options we do not read
        self.reject_with = ""
        self.to_destination = ""  # a DNAT's --to-destination


class Table:
    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.chains: dict[str, list[Rule]] = {}


def _ports(text: str) -> tuple[PortRange, ...]:
    out = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        out.append((int(low), int(high or low)))
    return tuple(sorted(out))


def parse_rule(chain: str, tokens: list[str], position: int, text: str) -> Rule:
    rule = Rule(chain, text, position)
    i, negate = 0, False
    while i < len(tokens):
        tok = tokens[i]
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "!":
            negate, i = True, i + 1
            continue
        step = 2
        if tok in ("-p", "--protocol"):
            rule.proto, rule.proto_negated = arg.lower(), negate
        elif tok in ("-s", "--source"):
            if negate:
                rule.unknown.append("! -s")
            elif arg not in ("0.0.0.0/0", "::/0"):
                rule.source = arg
        elif tok in ("-i", "--in-interface"):
            rule.in_iface, rule.in_iface_negated = arg, negate
        elif tok in ("-d", "--destination", "-o", "--out-interface"):
            pass  # traffic to one of the host's addresses may well be banned traffic
        elif tok in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            rule.dports, rule.dports_negated = _ports(arg), negate
        elif tok == "--ctorigdstport":
            rule.orig_dports, rule.orig_dports_negated = _ports(arg), negate
        elif tok in ("--ctstate", "--state"):
            rule.states, rule.states_negated = frozenset(arg.upper().split(",")), negate
        elif tok == "--match-set":
            if negate:
                rule.unknown.append("! --match-set")
            else:
                rule.match_sets.append((arg, tokens[i + 2] if i + 2 < len(tokens) else ""))
            step = 3
        elif tok == "--comment":
            rule.comment = arg
        elif tok in ("-m", "--match"):
            if arg not in _UNDERSTOOD:
                rule.unknown.append(f"-m {arg}")
        elif tok in ("-j", "--jump", "-g", "--goto"):
            rule.target = arg
        elif tok == "--reject-with":
            rule.reject_with = arg
        elif tok == "--to-destination":
            rule.to_destination = arg
        elif tok.startswith("-"):
            if tok in ("--sport", "--sports", "--source-port", "--source-ports", "--tcp-flags", "--syn"):
                rule.unknown.append(tok)  # narrows the match, but we do not reason about it
            step = 1 if tok == "--syn" else 2
        else:
            step = 1
        negate = False
        i += step
    return rule


def parse_save(text: str, table: str = "filter") -> Table:
    """The named table of an `iptables-save` dump."""
    result, current = Table(), None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            current = line[1:] == table
        elif not current or not line or line.startswith("#"):
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            result.policies[name] = policy
            result.chains.setdefault(name, [])
        elif line.startswith("-A "):
            tokens = shlex.split(line)
            chain = tokens[1]
            rules = result.chains.setdefault(chain, [])
            rules.append(parse_rule(chain, tokens[2:], len(rules) + 1, line))
    return result


def _overlaps(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def reach(rule: Rule, spec: JailSpec) -> Optional[str]:
    """How much of the jail's banned traffic this rule's matches could catch: FULL, HELD, SOURCE, or None."""
    if rule.proto and not rule.proto_negated and rule.proto not in ("all", "0") \
            and spec.protocols and rule.proto not in spec.protocols:
        return None
    if rule.proto and rule.proto_negated and spec.protocols and set(spec.protocols) <= {rule.proto}:
        return None
    for ports, negated in ((rule.dports, rule.dports_negated), (rule.orig_dports, rule.orig_dports_negated)):
        if ports is not None and spec.ports and not negated and not _overlaps(ports, spec.ports):
            return None
    if rule.in_iface == "lo" and not rule.in_iface_negated:
        return None
    if rule.source or rule.match_sets:
        return SOURCE
    if rule.states is not None and not rule.states_negated and rule.states <= _HELD_ONLY:
        return HELD
    return FULL


def _worst(a: Optional[str], b: Optional[str]) -> Optional[str]:
    order = [None, SOURCE, HELD, FULL]
    return a if order.index(a) >= order.index(b) else b


def lets_through(rule: Rule, spec: JailSpec, table: Table, depth: int = 0) -> Optional[str]:
    """Whether the rule, as iptables walks it, would accept the jail's banned traffic."""
    scope = reach(rule, spec)
    if scope is None:
        return None
    if rule.target == "ACCEPT":
        return scope
    if rule.target == "RETURN" and rule.chain in BUILTIN_CHAINS:
        return scope if table.policies.get(rule.chain) == "ACCEPT" else None
    if rule.target in table.chains and depth < 8:
        inner = None
        for sub in table.chains[rule.target]:
            found = lets_through(sub, spec, table, depth + 1)
            if found:
                # A user chain only accepts what the jump into it lets in.
                inner = _worst(inner, found if scope == FULL else _narrower(found, scope))
        return inner
    return None


def _narrower(a: str, b: str) -> str:
    order = [SOURCE, HELD, FULL]
    return a if order.index(a) <= order.index(b) else b


class Shadow(NamedTuple):
    """An earlier rule that lets banned traffic through before ours."""

    rule: str
    position: int
    scope: str

    @property
    def code(self) -> str:
        return "shadowed" if self.scope == FULL else f"shadowed-{self.scope}"

    @property
    def severity(self) -> Severity:
        """Some sources only: a warning; every banned address, or its held sessions: critical."""
        return Severity.WARNING if self.scope == SOURCE else Severity.CRITICAL

    def says(self, tool: str, chain: str, whose: str, first: int) -> str:
        """The one sentence for it, as `verify` and the doctor print it."""
        return f"{tool} {chain} rule {self.position} {SHADOW_WORDS[self.scope]} before {whose} rule {first}"


def shadows(chain: str, spec: JailSpec, table: Table, is_ours) -> list[Shadow]:
    """Every rule ahead of the jail's first rule in `chain` that lets its banned traffic through."""
    found = []
    for rule in table.chains.get(chain, []):
        if is_ours(rule):
            break
        scope = lets_through(rule, spec, table)
        if scope:
            found.append(Shadow(rule.text, rule.position, scope))
    return found


# ---- the other tools' listings ------------------------------------------------------------------

def parse_members(text: str) -> list[str]:
    """The members of `ipset list NAME`, each the first word of its line (a stock set with a timeout
    prints `192.0.2.1 timeout 599`)."""
    if "Members:" not in text:
        return []
    body = text.split("Members:", 1)[1]
    if " " not in body:  # no per-member options (f2bext's sets): one split, 5x faster at 100,000
        return body.split()
    return [line.split()[0] for line in body.splitlines() if line.strip()]
