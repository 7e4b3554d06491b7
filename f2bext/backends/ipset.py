"""iptables + ipset backend: pure builders (spec -> restore text), the check that reads iptables-save
as the kernel walks it, and the one class that runs iptables/ipset.

Per jail J: ipsets `f2bext-J` (inet) and `f2bext6-J` (inet6), both hash:net so that CIDR bans work,
and `f2bxr-J`/`f2bxr6-J` for the bans other servers shared (fleet sharing; apart, so that local unbans
and flushes never disturb them; short names keep within ipset's 31 characters),
and in each chain the jail hooks (INPUT, FORWARD) rules at the head of the chain:
  -p PROTO -m multiport --dports PORTS -m set --match-set f2bext-J src -m comment --comment f2bext:J -j REJECT
An ACCEPT ahead of these would win, so every check reads the chain as iptables walks it (audit.py),
and a repair moves our rules back to the head in one iptables-restore transaction.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import socket
import subprocess
import threading
from collections import Counter
from typing import Iterable, Optional, Sequence

from .. import audit
from ..addr import Network, to_text
from ..errors import KernelError
from ..spec import JailSpec, PortRange, format_ports
from .base import BROKEN, WARNING, Finding, Held, SharedBans

FAMILIES = (4, 6)
CHAINS = {"input": "INPUT", "forward": "FORWARD"}
MAXELEM = 1048576  # fail2ban hosts with long bantimes collect hundreds of thousands of bans
MULTIPORT_MAX = 15  # ports per multiport match (a range counts twice)


def set_name(jail: str, family: int, remote: bool = False) -> str:
    if remote:
        return f"f2bxr-{jail}" if family == 4 else f"f2bxr6-{jail}"
    return f"f2bext-{jail}" if family == 4 else f"f2bext6-{jail}"


def set_names(jail: str, family: int) -> tuple[str, str]:
    """The jail's local and shared set of one family."""
    return set_name(jail, family), set_name(jail, family, remote=True)


def comment(jail: str) -> str:
    return f"f2bext:{jail}"


# ---- builders ---------------------------------------------------------------------------------

def _port_chunks(ports: tuple[PortRange, ...]) -> list[tuple[PortRange, ...]]:
    chunks: list[list[PortRange]] = [[]]
    used = 0
    for lo, hi in ports:
        cost = 1 if lo == hi else 2
        if used + cost > MULTIPORT_MAX:
            chunks.append([])
            used = 0
        chunks[-1].append((lo, hi))
        used += cost
    return [tuple(c) for c in chunks]


def rule_args(spec: JailSpec, family: int) -> list[list[str]]:
    """The jail's rules for one family, as iptables arguments after the chain name."""
    if spec.blocktype == "drop":
        target = ["-j", "DROP"]
    else:
        target = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"]
    rules = []
    for name in set_names(spec.jail, family):
        match = ["-m", "set", "--match-set", name, "src", "-m", "comment", "--comment", comment(spec.jail)]
        for proto in spec.protocols or (None,):
            head = ["-p", proto] if proto else []
            if spec.ports:
                for chunk in _port_chunks(spec.ports):
                    rules.append(head + ["-m", "multiport", "--dports", format_ports(chunk)] + match + target)
            else:
                rules.append(head + match + target)
    return rules


def _is_ours(jail: str, family: int):
    def check(rule: audit.Rule) -> bool:
        return rule.comment == comment(jail) or any(s in set_names(jail, family) for s, _ in rule.match_sets)
    return check


def _shape(rule: audit.Rule) -> tuple:
    return (rule.proto, rule.dports, tuple(rule.match_sets), rule.target, rule.reject_with, rule.in_iface,
            rule.source, rule.states, tuple(rule.unknown), rule.comment)


def expected_shapes(spec: JailSpec, family: int, chain: str) -> Counter:
    return Counter(_shape(audit.parse_rule(chain, args, 0, "")) for args in rule_args(spec, family))


def build_rules_restore(spec: JailSpec, family: int, table: audit.Table) -> str:
    """iptables-restore --noflush input: drop the jail's rules wherever they are, put them at the head
    of each chain it hooks. One transaction."""
    lines = ["*filter"]
    ours = _is_ours(spec.jail, family)
    for chain, rules in table.chains.items():
        for rule in rules:
            if ours(rule):
                lines.append("-D" + rule.text[2:])
    for hook in spec.hooks:
        for args in reversed(rule_args(spec, family)):
            lines.append(shlex.join(["-I", CHAINS[hook], "1", *args]))
    return "\n".join(lines + ["COMMIT", ""])


def build_rules_removal(jail: str, family: int, table: audit.Table) -> str:
    ours = _is_ours(jail, family)
    deletes = ["-D" + r.text[2:] for rules in table.chains.values() for r in rules if ours(r)]
    return "\n".join(["*filter", *deletes, "COMMIT", ""]) if deletes else ""


def build_set_restore(jail: str, nets: Iterable[Network], flush: bool,
                      remote: Optional[Iterable[Network]] = None) -> str:
    """ipset restore input: the jail's sets created if absent; the local ones optionally emptied, then
    filled; the shared ones replaced only when `remote` is given."""
    lines = []
    for family in FAMILIES:
        for name in set_names(jail, family):
            lines.append(f"create {name} hash:net family {'inet' if family == 4 else 'inet6'} "
                         f"hashsize 1024 maxelem {MAXELEM} -exist")
        if flush:
            lines.append(f"flush {set_name(jail, family)}")
        if remote is not None:
            lines.append(f"flush {set_name(jail, family, remote=True)}")
    for net in nets:
        lines.append(f"add {set_name(jail, net.version)} {to_text(net)} -exist")
    for net in remote or ():
        lines.append(f"add {set_name(jail, net.version, remote=True)} {to_text(net)} -exist")
    return "\n".join(lines) + "\n"


# ---- checks -----------------------------------------------------------------------------------

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


def parse_set_limits(text: str) -> dict[str, tuple[int, int]]:
    """{set name: (maxelem, number of entries)}."""
    return {name: (maxelem, entries) for name, (_, _, maxelem, entries) in parse_sets(text).items()}


def check_jail(spec: JailSpec, family: int, table: audit.Table, sets: dict[str, tuple[str, str]]) -> list[Finding]:
    """What keeps the jail's bans from holding in one family: missing or wrong sets, missing, altered
    or shadowed rules (each shadow quoted with its position)."""
    tool = "iptables" if family == 4 else "ip6tables"
    want = ("hash:net", "inet" if family == 4 else "inet6")
    findings = []

    def add(severity: str, code: str, message: str, evidence: str = "") -> None:
        findings.append(Finding(spec.jail, severity, code, message, evidence))

    for name in set_names(spec.jail, family):
        if name not in sets:
            add(BROKEN, "set-missing", f"ipset {name} is missing")
        elif sets[name] != want:
            add(BROKEN, "set-altered", f"ipset {name} is {' '.join(sets[name])}, not {' '.join(want)}")
    ours = _is_ours(spec.jail, family)
    for hook in spec.hooks:
        chain = CHAINS[hook]
        mine = [r for r in table.chains.get(chain, []) if ours(r)]
        if not mine:
            add(BROKEN, "jump-missing", f"{tool} {chain} has no rule for jail {spec.jail}")
            continue
        if Counter(_shape(r) for r in mine) != expected_shapes(spec, family, chain):
            add(BROKEN, "rule-altered", f"{tool} {chain} rules of jail {spec.jail} differ from what it asks for",
                "\n".join(r.text for r in mine))
        for shadow in audit.shadows(chain, spec, table, ours):
            first = mine[0].position
            what = {audit.FULL: "accepts the banned traffic", audit.HELD: "accepts the held sessions of banned "
                    "addresses", audit.SOURCE: "accepts banned traffic from some sources"}[shadow.scope]
            add(WARNING if shadow.scope == audit.SOURCE else BROKEN,
                "shadowed" if shadow.scope == audit.FULL else f"shadowed-{shadow.scope}",
                f"{tool} {chain} rule {shadow.position} {what} before f2bext's rule {first}", shadow.rule)
    for chain, rules in table.chains.items():
        if chain not in {CHAINS[h] for h in spec.hooks} and any(ours(r) for r in rules):
            add(BROKEN, "hook-extra", f"{tool} {chain} holds rules of jail {spec.jail} it does not ask for")
    return findings


# ---- the kernel -------------------------------------------------------------------------------

class Xtables:
    """The one place that runs iptables, ip6tables and ipset (argument lists, never a shell)."""

    def __init__(self, variant: Optional[str] = None) -> None:
        variant = os.environ.get("F2BEXT_IPTABLES", "") if variant is None else variant
        if variant not in ("", "nft", "legacy"):
            raise KernelError(f"F2BEXT_IPTABLES must be nft or legacy, not {variant[:20]!r}")
        self.suffix = f"-{variant}" if variant else ""
        self._lock = threading.Lock()
        self._ipset = None

    def _run(self, argv: list[str], what: str, stdin: str = "") -> str:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise KernelError(f"cannot {what}: {argv[0]} is not installed") from None
        if done.returncode != 0:
            raise KernelError(f"{argv[0]} refused to {what}", done.stderr)
        return done.stdout

    def _tool(self, family: int, kind: str = "") -> str:
        return ("iptables" if family == 4 else "ip6tables") + self.suffix + kind

    def table(self, family: int) -> audit.Table:
        return audit.parse_save(self._run([self._tool(family, "-save"), "-t", "filter"], "list rules"))

    def restore_rules(self, family: int, text: str) -> None:
        if text:
            self._run([self._tool(family, "-restore"), "-w", "--noflush"], "change rules", text)

    def set_headers(self) -> dict[str, tuple[str, str]]:
        return self.sets()[0]

    def sets(self) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int, int]]]:
        """Every set's (type, family) and (maxelem, entries), from one `ipset list -t`."""
        text = self._run(["ipset", "list", "-t"], "list ipsets")
        return parse_set_headers(text), parse_set_limits(text)

    def restore_sets(self, text: str) -> None:
        self._run(["ipset", "restore", "-exist"], "load ipsets", text)

    def destroy_set(self, name: str) -> None:
        self._run(["ipset", "destroy", name], f"remove ipset {name}")

    def members(self, name: str) -> list[Network]:
        out = self._run(["ipset", "list", name], f"list ipset {name}")
        members = out.split("Members:", 1)[1].split() if "Members:" in out else []
        return [ipaddress.ip_network(m) for m in members]

    def change(self, op: str, name: str, net: Network) -> None:
        """One element in-process over netlink (no fork per ban); absent or present is not an error."""
        from pyroute2.ipset import IPSet, IPSetError  # Debian's python3-pyroute2, kernel-side only
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        with self._lock:
            if self._ipset is None:
                self._ipset = IPSet()
            try:
                if op == "add":
                    self._ipset.add(name, to_text(net), family=family, etype="net", exclusive=False)
                else:
                    self._ipset.delete(name, to_text(net), family=family, etype="net")
            except IPSetError as e:
                if op == "add" or "not added" not in str(e):
                    raise KernelError(f"ipset refused to {op} {to_text(net)} in {name}", str(e)) from None


class IpsetBackend:
    """The Backend interface on iptables (nft or legacy) and ipset."""

    name = "ipset"

    def __init__(self, xt: Optional[Xtables] = None) -> None:
        self.xt = xt or Xtables()
        self._remote = SharedBans()

    def start(self, spec: JailSpec, held: Iterable[Network]) -> None:
        self.xt.restore_sets(build_set_restore(spec.jail, held, flush=False))
        self._place_rules(spec, only_if_broken=True)

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> list[str]:
        try:
            for net in nets:
                self.xt.change("add", set_name(spec.jail, net.version), net)
        except KernelError as e:
            self.repair(spec, list(held()) + list(nets))
            return [str(e)]
        broken = [f.message for f in self.verify([spec]) if f.severity == BROKEN]
        if broken:
            self.repair(spec, list(held()) + list(nets))
        return broken

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        try:
            for net in nets:
                self.xt.change("del", set_name(spec.jail, net.version), net)
        except KernelError:
            self.repair(spec, held())

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        sets, limits = self.xt.sets()
        findings = []
        for spec in specs:
            for family in FAMILIES:
                name = set_name(spec.jail, family)
                if name in limits and limits[name][0] < MAXELEM:
                    findings.append(Finding(spec.jail, BROKEN, "set-altered", f"ipset {name} holds at most "
                                            f"{limits[name][0]} entries, not {MAXELEM}"))
        for family in FAMILIES:
            table = self.xt.table(family)
            for spec in specs:
                findings += check_jail(spec, family, table, sets)
        return findings

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        held = list(held)
        sets = self.xt.set_headers()
        for family in FAMILIES:
            for name in set_names(spec.jail, family):
                if name in sets and sets[name] != ("hash:net", "inet" if family == 4 else "inet6"):
                    # A set of the wrong type cannot be changed in place: unhook it, then replace it.
                    self.xt.restore_rules(family, build_rules_removal(spec.jail, family, self.xt.table(family)))
                    self.xt.destroy_set(name)
        # Shared sets survive iptables reloads; refill them only with what this process knows.
        # Each existing local set is filled apart and swapped in: the bans hold throughout, and a set
        # someone made too small (maxelem) is replaced.
        present, remote = self.xt.set_headers(), self._remote.get(spec.jail)
        lines = []
        for family in FAMILIES:
            kind = f"hash:net family {'inet' if family == 4 else 'inet6'} hashsize 1024 maxelem {MAXELEM}"
            shared = set_name(spec.jail, family, remote=True)
            lines += [f"create {shared} {kind} -exist"] + ([f"flush {shared}"] if remote is not None else [])
            lines += [f"add {shared} {to_text(n)} -exist" for n in remote or () if n.version == family]
            name, tmp = set_name(spec.jail, family), f"f2bxt{'' if family == 4 else '6'}-{spec.jail}"
            if name not in present:
                lines.append(f"create {name} {kind}")
            lines += [f"create {tmp} {kind} -exist", f"flush {tmp}"]
            lines += [f"add {tmp} {to_text(n)} -exist" for n in held if n.version == family]
            lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
        self.xt.restore_sets("\n".join(lines) + "\n")
        self._place_rules(spec, only_if_broken=False)

    def set_remote(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        self._remote.replace(spec.jail, nets)
        self.xt.restore_sets(build_set_restore(spec.jail, (), flush=False, remote=nets))
        if any(f.severity == BROKEN for f in self.verify([spec])):
            self.repair(spec, held())

    def change_remote(self, spec: JailSpec, op: str, nets: Sequence[Network], held: Held) -> None:
        self._remote.change(spec.jail, op, nets)
        try:
            for net in nets:
                self.xt.change("add" if op == "add" else "del", set_name(spec.jail, net.version, remote=True), net)
        except KernelError:
            self.repair(spec, held())

    def _place_rules(self, spec: JailSpec, only_if_broken: bool) -> None:
        for family in FAMILIES:
            table = self.xt.table(family)
            if only_if_broken and not [f for f in check_jail(spec, family, table, self.xt.set_headers())
                                       if f.severity == BROKEN]:
                continue
            try:
                self.xt.restore_rules(family, build_rules_restore(spec, family, table))
            except KernelError:
                # The chain changed between our read and our write: read again, once.
                self.xt.restore_rules(family, build_rules_restore(spec, family, self.xt.table(family)))

    def flush(self, spec: JailSpec) -> None:
        sets = self.xt.set_headers()
        text = "".join(f"flush {set_name(spec.jail, f)}\n" for f in FAMILIES if set_name(spec.jail, f) in sets)
        if text:
            self.xt.restore_sets(text)

    def stop(self, spec: JailSpec) -> None:
        for family in FAMILIES:
            self.xt.restore_rules(family, build_rules_removal(spec.jail, family, self.xt.table(family)))
        sets = self.xt.set_headers()
        for family in FAMILIES:
            for name in set_names(spec.jail, family):
                if name in sets:
                    self.xt.destroy_set(name)

    def entries(self, spec: JailSpec) -> int:
        """How many bans the jail's local sets hold (a count the kernel keeps: cheap)."""
        limits = self.xt.sets()[1]
        return sum(limits.get(set_name(spec.jail, f), (0, 0))[1] for f in FAMILIES)

    def banned(self, spec: JailSpec, remote: bool = False) -> list[Network]:
        sets = self.xt.set_headers()
        names = [set_name(spec.jail, f, remote) for f in FAMILIES]
        return [n for name in names if name in sets for n in self.xt.members(name)]
