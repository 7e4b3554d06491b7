"""iptables + ipset backend: the one class that runs iptables/ipset (`Xtables`) and the Backend on it
(`IpsetBackend`); the pure builders are in build.py, the reader and checks in read.py, both named here too.

Per jail J: ipsets `f2bext-J` (inet) and `f2bext6-J` (inet6), both hash:net so that CIDR bans work,
and `f2bxr-J`/`f2bxr6-J` for the bans other servers shared (fleet sharing; apart, so that local unbans
and flushes never disturb them; short names keep within ipset's 31 characters),
and in each chain the jail hooks (INPUT, FORWARD) rules at the head of the chain:
  -p PROTO -m multiport --dports PORTS -m set --match-set f2bext-J src -m comment --comment f2bext:J -j REJECT
In FORWARD also, per port range, the port the client asked for, before Docker's DNAT rewrote it:
  -p PROTO -m conntrack --ctorigdstport PORT[:PORT] -m set --match-set f2bext-J src ... -j REJECT
An ACCEPT ahead of these would win, so every check reads the chain as iptables walks it (audit.py),
and a repair moves our rules back to the head in one iptables-restore transaction.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from typing import Callable, Iterable, Optional, Sequence

from ... import audit
from ...addr import Network, to_text
from ...errors import KernelError
from ...kernel import nftgen, xtables
from ...kernel.ipset import Ipset, ipset_error
from ...spec import JailSpec
from ..base import BROKEN, Bans, Finding, Held, Op, SharedBans, Singles, refused
from .build import (CHAINS, FAMILIES, MAXELEM, MULTIPORT_MAX, SetHeader, build_rules_removal, build_rules_restore,
                    build_set_restore, build_set_swap, comment, ipset_name, ipset_names, rule_args, standing, swap_name)
from .read import check_jail, check_rules, check_sets, expected_shapes, parse_set_headers, parse_sets


class Xtables:
    """The one place that runs iptables, ip6tables and ipset (argument lists, never a shell), and
    that reads ipsets and the rules' fingerprint from the kernel directly."""

    def __init__(self, variant: Optional[str] = None) -> None:
        variant = os.environ.get("F2BEXT_IPTABLES", "") if variant is None else variant
        if variant not in ("", "nft", "legacy"):
            raise KernelError(f"F2BEXT_IPTABLES must be nft or legacy, not {variant[:20]!r}")
        self.suffix = f"-{variant}" if variant else ""
        self.variant = variant or self._installed_variant()
        self._ipset = Ipset()
        self._generation = nftgen.Generation() if self.variant == "nft" else None

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

    def save(self, family: int) -> str:
        """Every table's rules, as `iptables-save` prints them (the doctor's read)."""
        return self._run([self._tool(family, "-save")], "list rules")

    def restore_rules(self, family: int, text: str) -> None:
        if text:
            self._run([self._tool(family, "-restore"), "-w", "--noflush"], "change rules", text)

    def set_headers(self) -> dict[str, tuple[str, str]]:
        return self.sets()[0]

    def headers(self) -> dict[str, SetHeader]:
        """Every set's type, family, maxelem and number of entries: `ipset list -t`, over netlink."""
        try:
            return self._ipset.headers()
        except OSError as e:
            raise KernelError("cannot list ipsets", ipset_error(e)) from None

    def sets(self) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int, int]]]:
        """Every set's (type, family) and (maxelem, entries)."""
        found = self.headers()
        return ({n: (kind, family) for n, (kind, family, _, _) in found.items()},
                {n: (maxelem, entries) for n, (_, _, maxelem, entries) in found.items()})

    def restore_sets(self, text: str) -> None:
        self._run(["ipset", "restore", "-exist"], "load ipsets", text)

    def destroy_set(self, name: str) -> None:
        self._run(["ipset", "destroy", name], f"remove ipset {name}")

    def members(self, name: str) -> list[Network]:
        out = self._run(["ipset", "list", name], f"list ipset {name}")
        return [ipaddress.ip_network(m) for m in audit.parse_members(out)]

    def change(self, op: Op, name: str, net: Network) -> None:
        """One element in-process over netlink (no fork per ban); absent or present is not an error."""
        try:
            self._ipset.change(op, name, net)
        except OSError as e:
            raise KernelError(f"ipset refused to {op} {to_text(net)} in {name}", ipset_error(e)) from None

    def add_many(self, name: str, version: int, addresses: Iterable[int]) -> None:
        """Single addresses (integers), checked already, added in-process over netlink in a few
        messages: `ipset restore` of 100,000 lines costs a fork and seconds of parsing."""
        size = 4 if version == 4 else 16
        try:
            self._ipset.add_many(name, version, (a.to_bytes(size, "big") for a in addresses))
        except OSError as e:
            raise KernelError(f"ipset refused to load bans into {name}", ipset_error(e)) from None

    def rules_fingerprint(self) -> object:
        """Changes whenever any iptables rule does (ipsets aside): the nf_tables generation for
        iptables-nft, the filter tables' rules themselves for iptables-legacy."""
        if self._generation is not None:
            return self._generation.read()
        return tuple(xtables.legacy_fingerprint(family) for family in FAMILIES)

    def _installed_variant(self) -> str:
        """What plain `iptables` runs, as `iptables -V` says; legacy when unsure, whose fingerprint
        reads the rules themselves (the nf_tables generation would miss legacy changes)."""
        try:
            said = self._run(["iptables", "-V"], "tell its version")
        except KernelError:
            return "legacy"
        return "nft" if "nf_tables" in said else "legacy"


class IpsetBackend:
    """The Backend interface on iptables (nft or legacy) and ipset."""

    name = "ipset"

    def __init__(self, xt: Optional[Xtables] = None) -> None:
        self.xt = xt or Xtables()
        self._remote = SharedBans()
        # The rules fingerprint at which each jail's rules last checked out: while it stands, no
        # iptables-save (two forks, 6 to 10 ms) is needed to know they still do. ipsets are read
        # over netlink at every check; they are not part of the fingerprint.
        self._good: dict[str, object] = {}

    def start(self, spec: JailSpec, held: Iterable[Network], singles: Optional[Singles] = None) -> None:
        self._load(spec, held, singles)
        self._place_rules(spec, only_if_broken=True)

    def _load(self, spec: JailSpec, held: Iterable[Network], singles: Optional[Singles]) -> None:
        """The jail's sets created if absent and filled: `held` through ipset restore, `singles` in
        bulk over netlink."""
        self.xt.restore_sets(build_set_restore(spec.jail, held, flush=False))
        for version, found in (singles or {}).items():
            self.xt.add_many(ipset_name(spec.jail, version), version, found)

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> list[Finding]:
        try:
            for net in nets:
                self.xt.change("add", ipset_name(spec.jail, net.version), net)
        except KernelError as e:
            self.repair(spec, list(held()) + list(nets))
            return [refused(spec.jail, e)]
        # The add itself shows the set is there and takes the address. The sets' headers (type,
        # maxelem) are left to the watchdog's verify each second: the kernel counts a set's elements
        # to answer for its header, 0.5 ms at 100,000.
        if self._good.get(spec.jail) == self.xt.rules_fingerprint():
            return []
        broken = [f for f in self.verify([spec]) if f.severity == BROKEN]
        if broken:
            self.repair(spec, list(held()) + list(nets))
        return broken

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        try:
            for net in nets:
                self.xt.change("delete", ipset_name(spec.jail, net.version), net)
        except KernelError:
            self.repair(spec, held())

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        fingerprint = self.xt.rules_fingerprint()  # read first: a change after it shows at the next look
        sets, limits = self.xt.sets()
        findings = []
        for spec in specs:
            for family in FAMILIES:
                findings += check_sets(spec, family, sets)
                name = ipset_name(spec.jail, family)
                if name in limits and limits[name][0] < MAXELEM:
                    findings.append(Finding(spec.jail, BROKEN, "set-altered", f"ipset {name} holds at most "
                                            f"{limits[name][0]} entries, not {MAXELEM}"))
        stale = [spec for spec in specs if self._good.get(spec.jail) != fingerprint]
        if stale:
            tables = {family: self.xt.table(family) for family in FAMILIES}
            # Rules read while they changed (a repair in another thread) must not stand for the
            # fingerprint read before: a legacy fingerprint comes back when the same rules do.
            steady = self.xt.rules_fingerprint() == fingerprint
            for spec in stale:
                found = [f for family in FAMILIES for f in check_rules(spec, family, tables[family])]
                if found:
                    self._good.pop(spec.jail, None)
                    findings += found
                elif steady:
                    self._good[spec.jail] = fingerprint
        return findings

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        """Put back what the jail lacks, and only that: sets gone, wrong or holding another number of
        bans than `held` (one ipset transaction), rules missing, altered or shadowed (one
        iptables-restore per family). A firewall reload that kept the sets costs no refill."""
        held = list(held)
        sets = self.xt.set_headers()
        for family in FAMILIES:
            for name in ipset_names(spec.jail, family):
                if name in sets and sets[name] != ("hash:net", "inet" if family == 4 else "inet6"):
                    # A set of the wrong type cannot be changed in place: unhook it, then replace it.
                    self.xt.restore_rules(family, build_rules_removal(spec.jail, family, self.xt.table(family)))
                    self.xt.destroy_set(name)
        # Shared sets survive iptables reloads; refill them only with what this process knows.
        text = build_set_swap(spec.jail, held, self.xt.headers(), self._remote.get(spec.jail))
        if text:
            self.xt.restore_sets(text)
        self._place_rules(spec, only_if_broken=False)

    def mend(self, spec: JailSpec, held: Callable[[], Bans]) -> None:
        """A jail whose sets all stand, as we make them, gets its rules back alone: a flush of the
        ruleset or an iptables-restore takes rules, not ipsets. Where its local sets are all gone
        (destroyed, a reboot's empty kernel), nothing enforces meanwhile: they are made and loaded as
        start() does, the shared ones refilled with what this process knows. Otherwise repair()."""
        found = self.xt.headers()
        if all(standing(found, name, family) for family in FAMILIES for name in ipset_names(spec.jail, family)):
            self._place_rules(spec, only_if_broken=False)
            return
        if any(ipset_name(spec.jail, family) in found for family in FAMILIES):
            self.repair(spec, held().all())
            return
        bans = held()
        self._load(spec, bans.nets, bans.singles)
        remote = self._remote.get(spec.jail)
        if remote:
            self.xt.restore_sets(build_set_restore(spec.jail, (), flush=False, remote=remote))
        self._place_rules(spec, only_if_broken=False)

    def set_remote(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        self._remote.replace(spec.jail, nets)
        self.xt.restore_sets(build_set_restore(spec.jail, (), flush=False, remote=nets))
        if any(f.severity == BROKEN for f in self.verify([spec])):
            self.repair(spec, held())

    def change_remote(self, spec: JailSpec, op: Op, nets: Sequence[Network], held: Held) -> None:
        self._remote.change(spec.jail, op, nets)
        try:
            for net in nets:
                self.xt.change(op, ipset_name(spec.jail, net.version, remote=True), net)
        except KernelError:
            self.repair(spec, held())

    def _place_rules(self, spec: JailSpec, only_if_broken: bool) -> None:
        """Put the jail's rules at the head of its chains, in each family where they are broken or
        (not `only_if_broken`) have anything to say against them, a shadow included."""
        for family in FAMILIES:
            table = self.xt.table(family)
            if only_if_broken and not [f for f in check_jail(spec, family, table, self.xt.set_headers())
                                       if f.severity == BROKEN]:
                continue
            if not only_if_broken and not check_rules(spec, family, table):
                continue
            try:
                self.xt.restore_rules(family, build_rules_restore(spec, family, table))
            except KernelError:
                # The chain changed between our read and our write: read again, once.
                self.xt.restore_rules(family, build_rules_restore(spec, family, self.xt.table(family)))

    def flush(self, spec: JailSpec) -> None:
        sets = self.xt.set_headers()
        text = "".join(f"flush {ipset_name(spec.jail, f)}\n" for f in FAMILIES if ipset_name(spec.jail, f) in sets)
        if text:
            self.xt.restore_sets(text)

    def stop(self, spec: JailSpec) -> None:
        for family in FAMILIES:
            self.xt.restore_rules(family, build_rules_removal(spec.jail, family, self.xt.table(family)))
        sets = self.xt.set_headers()
        for family in FAMILIES:
            for name in ipset_names(spec.jail, family):
                if name in sets:
                    self.xt.destroy_set(name)

    def entries(self, spec: JailSpec) -> int:
        """How many bans the jail's local sets hold (the sets' headers: 0.5 ms at 100,000)."""
        limits = self.xt.sets()[1]
        return sum(limits.get(ipset_name(spec.jail, f), (0, 0))[1] for f in FAMILIES)

    def banned(self, spec: JailSpec, remote: bool = False) -> list[Network]:
        sets = self.xt.set_headers()
        names = [ipset_name(spec.jail, f, remote) for f in FAMILIES]
        return [n for name in names if name in sets for n in self.xt.members(name)]


__all__ = ["CHAINS", "FAMILIES", "MAXELEM", "MULTIPORT_MAX", "SetHeader", "build_rules_removal", "build_rules_restore",
           "build_set_restore", "build_set_swap", "comment", "ipset_name", "ipset_names", "rule_args", "swap_name",
           "check_jail", "check_rules", "check_sets", "expected_shapes", "parse_set_headers", "parse_sets",
           "Xtables", "IpsetBackend"]
