"""nftables backend: the Backend on nftables (`NftBackend`); the one class that changes and reads our
table (`Nft`, over nf_tables netlink) is in context.py, the pure builders in build.py, their commands
as netlink messages in wire.py, the ruleset reader in read.py, all named here too.

Layout, all in table `inet f2bext`, per jail J:
  sets J-v4, J-v6      single addresses (hash sets: adding to a 100k interval set costs ~0.5 s in
                       libnftables 1.0.6, a hash set ~0.25 ms)
  sets J-net4, J-net6  CIDR bans (small interval sets, kept as the collapsed union of the jail's networks)
  sets J-rv4, J-rv6, J-rnet4, J-rnet6  the same for bans other servers shared (fleet sharing), apart so
                       that the local fail2ban's unbans, flushes and rebuilds never disturb them
  chain J-input / J-forward  a base chain per hook at priority -10, one rule per set; in J-forward a
                       second rule per set matches the port the client asked for (`ct original
                       proto-dst`): Docker's DNAT (prerouting, -100) has rewritten `th dport` by then.
An accept in another base chain ends only that chain, so a drop here holds whatever else accepts.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from ...addr import Network, is_single
from ...errors import KernelError
from ...spec import JailSpec
from ..base import BROKEN, Bans, Finding, Held, Op, SharedBans, Singles, refused
from .build import (CHUNK, DPORT, FAMILY, LOCAL_KINDS, ORIGDPORT, PRIORITY, REMOTE_KINDS,
                    RULE_COMMENT, SET_KINDS, TABLE, Command, Load, Observed, _obj, build_elements,
                    build_network_sets, build_rebuild, build_remote, build_rule_exprs,
                    build_structure, build_teardown, chain_name, collapsed_networks, is_table_empty_after, jail_of,
                    pack_keys, plan_load, port_keys, set_kind, set_name)
from .read import (Signature, check_jail, expected_signatures, networks_of, observed_from_dump, parse_ruleset,
                   rule_exprs, rule_signature)
from .context import Nft, describe_owner, refusal

NOT_SENT = -1  # _send sends only single addresses of one set: the rest goes as the builders' commands


class NftBackend:
    """The Backend interface on nftables."""

    name = "nftables"

    def __init__(self, nft: Optional[Nft] = None, owner: bool = False) -> None:
        self.nft = nft or Nft(owner)
        self._remote = SharedBans()
        self._handles: dict[str, Optional[int]] = {}  # our table's handle when each jail was last built
        # The ruleset generation at which each jail last checked out: no listing is needed while it
        # stands, or moves only by our own add. A host's ruleset can be large (Docker, firewalld):
        # listing it at every ban cost 20 ms with 1,000 unrelated rules.
        self._good: dict[str, int] = {}

    def _replaced(self, spec: JailSpec, seen: Observed) -> list[Finding]:
        """A table that looks right but is not the one we built: a ruleset saved earlier and restored,
        whose sets hold bans lifted since and miss bans made since."""
        known = self._handles.get(spec.jail)
        if known is None or not seen.table or seen.handle == known:
            return []
        return [Finding(spec.jail, BROKEN, "table-replaced", f"table {FAMILY} {TABLE} was replaced (a ruleset "
                        "restore?): its sets no longer hold what fail2ban holds")]

    def _built(self, spec: JailSpec) -> None:
        self._handles[spec.jail] = self.nft.ruleset().handle

    def _check(self, spec: JailSpec, seen: Observed) -> list[Finding]:
        return check_jail(spec, seen) + self._replaced(spec, seen)

    def start(self, spec: JailSpec, held: Iterable[Network], singles: Optional[Singles] = None) -> None:
        seen = self.nft.ruleset()
        present = None
        if check_jail(spec, seen):
            self._rebuild(spec, seen, ())
        elif self.nft.owner:
            # Whole already: a table that outlived its owner (`persist`), adopted. Its bans held while
            # fail2ban was down; swap in fail2ban's without a gap.
            present = self.banned(spec)
        what = f"load bans of jail {spec.jail}"
        load = plan_load(spec.jail, held, present, singles)
        self.nft.apply(load.first, what)
        for kind, found in load.singles.items():
            self.nft.load_elements(set_name(spec.jail, kind), pack_keys(kind, found), what)
        for batch in load.last:
            self.nft.apply(batch, what)
        self._built(spec)

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> list[Finding]:
        def everything() -> list[Network]:
            return list(held()) + list(nets)
        what, networks, before = f"ban in jail {spec.jail}", [n for n in nets if not is_single(n)], None
        try:
            made = self._send(spec, "add", nets, what)
            if made == NOT_SENT:
                cmds = build_elements("add", spec.jail, [n for n in nets if is_single(n)])
                if networks:
                    cmds += build_network_sets(spec.jail, everything(), {n.version for n in networks})
                before = self.nft.generation()
                self.nft.apply(cmds, what)
                made = self.nft.generation()
        except KernelError as e:
            self.repair(spec, everything())
            return [refused(spec.jail, e)]
        good = self._good.get(spec.jail)
        if before is not None:  # our add was the only change since the jail checked out, or none was made
            fine = good == before and made - before in (0, 1)
        elif made is None:  # over netlink, the address was in the set already: nothing was committed
            made = self.nft.generation()
            fine = made == good
        else:  # over netlink, the transaction echoed the generation it made
            fine = good is not None and made == good + 1
        if fine:
            self._good[spec.jail] = made
            return []
        seen = self.nft.ruleset()
        findings = self._check(spec, seen)
        if findings:
            self._rebuild(spec, seen, everything())
        else:
            self._good[spec.jail] = made
        return findings

    def _send(self, spec: JailSpec, op: Op, nets: Sequence[Network], what: str) -> Optional[int]:
        """Single addresses of one set over netlink (Nft.send_elements); NOT_SENT for anything else."""
        kinds = {set_kind(n) for n in nets}
        if len(kinds) != 1 or not is_single(nets[0]):
            return NOT_SENT
        return self.nft.send_elements(op, set_name(spec.jail, kinds.pop()), nets, what)

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        singles = [n for n in nets if is_single(n)]
        networks = [n for n in nets if not is_single(n)]
        try:
            self._delete(spec, singles)
        except KernelError:
            # One absent element fails the whole batch; unless the jail itself is broken,
            # delete one by one and take "not there" as done.
            if self._heal(spec, held):
                return
            for net in singles:
                try:
                    self._delete(spec, [net])
                except KernelError:
                    pass
        if networks:
            self.nft.apply(build_network_sets(spec.jail, held(), {n.version for n in networks}),
                           f"unban networks in jail {spec.jail}")

    def _delete(self, spec: JailSpec, singles: Sequence[Network]) -> None:
        what = f"unban in jail {spec.jail}"
        made = self._send(spec, "delete", singles, what)
        if made == NOT_SENT:
            self.nft.apply(build_elements("delete", spec.jail, singles), what)
        elif made is not None and self._good.get(spec.jail) == made - 1:
            self._good[spec.jail] = made  # our delete was the only change: the next ban need not look

    def _heal(self, spec: JailSpec, held: Held) -> bool:
        """Rebuild the jail if its structure is broken; True when it was."""
        seen = self.nft.ruleset()
        if not self._check(spec, seen):
            return False
        self._rebuild(spec, seen, held())
        return True

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        generation = self.nft.generation()  # read first: a change after it shows at the next look
        stale = [spec for spec in specs if self._good.get(spec.jail) != generation]
        if not stale:
            return []
        seen = self.nft.ruleset()
        findings = []
        for spec in stale:
            found = self._check(spec, seen)
            if found:
                self._good.pop(spec.jail, None)
                findings += found
            else:
                self._good[spec.jail] = generation
        return findings

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        self._rebuild(spec, self.nft.ruleset(), held)

    def mend(self, spec: JailSpec, held: Callable[[], Bans]) -> None:
        """The rebuild every loss needs here (a flush takes a jail's sets with its chains): in one
        transaction while any set of the jail still enforces; with none left, as start() loads."""
        seen = self.nft.ruleset()
        if any(set_name(spec.jail, kind) in seen.sets for kind in LOCAL_KINDS):
            self._rebuild(spec, seen, held().all())
            return
        bans = held()
        self.start(spec, bans.nets, bans.singles)

    def _rebuild(self, spec: JailSpec, seen: Observed, held: Iterable[Network]) -> None:
        held = list(held)
        # Shared bans this process knows of; otherwise (the command line) whatever the kernel still holds.
        remote = self._remote.get(spec.jail)
        if remote is None:
            remote = [n for k in REMOTE_KINDS if set_name(spec.jail, k) in seen.sets
                      for n in self.nft.elements(set_name(spec.jail, k))]
        try:
            self.nft.apply(build_rebuild(spec, seen, held, remote), f"rebuild jail {spec.jail}")
        except KernelError:
            # The ruleset moved between our look and our commit: look again, once.
            self.nft.apply(build_rebuild(spec, self.nft.ruleset(), held, remote), f"rebuild jail {spec.jail}")
        self._built(spec)

    def set_remote(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        self._remote.replace(spec.jail, nets)
        try:
            self.nft.apply(build_remote(spec.jail, nets), f"load shared bans of jail {spec.jail}")
        except KernelError:
            self.repair(spec, held())

    def change_remote(self, spec: JailSpec, op: Op, nets: Sequence[Network], held: Held) -> None:
        """Add or delete shared bans one event at a time (absent ones are not an error)."""
        current = self._remote.change(spec.jail, op, nets)
        networks = [n for n in nets if not is_single(n)]
        for net in (n for n in nets if is_single(n)):
            try:
                self.nft.apply(build_elements(op, spec.jail, [net], remote=True), f"{op} a shared ban")
            except KernelError:
                # A failed add, or a failed delete in a broken jail: the rebuild holds `current`.
                if op == "add":
                    self.repair(spec, held())
                    return
                if self._heal(spec, held):
                    return
        if networks:
            self.nft.apply(build_network_sets(spec.jail, current, {n.version for n in networks}, remote=True),
                           f"{op} shared network bans of jail {spec.jail}")

    def flush(self, spec: JailSpec) -> None:
        seen = self.nft.ruleset()
        names = [set_name(spec.jail, k) for k in LOCAL_KINDS if set_name(spec.jail, k) in seen.sets]
        self.nft.apply([{"flush": _obj("set", name=n)} for n in names], f"flush jail {spec.jail}")

    def stop(self, spec: JailSpec) -> None:
        seen = self.nft.ruleset()
        if not seen.table:
            return
        cmds = build_teardown(spec.jail, seen)
        if is_table_empty_after(spec.jail, seen):
            cmds = [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
        self.nft.apply(cmds, f"remove jail {spec.jail}")

    def entries(self, spec: JailSpec) -> None:
        """None: nf_tables keeps no count of a set's elements, only a listing would tell."""
        return None

    def banned(self, spec: JailSpec, remote: bool = False) -> list[Network]:
        seen = self.nft.ruleset()
        out: list[Network] = []
        for kind in REMOTE_KINDS if remote else LOCAL_KINDS:
            if set_name(spec.jail, kind) in seen.sets:
                out += self.nft.elements(set_name(spec.jail, kind))
        return out


__all__ = ["CHUNK", "DPORT", "FAMILY", "LOCAL_KINDS", "ORIGDPORT", "PRIORITY", "REMOTE_KINDS",
           "RULE_COMMENT", "SET_KINDS", "TABLE", "Command", "Load", "Observed", "build_elements",
           "pack_keys", "plan_load",
           "build_network_sets", "build_rebuild", "build_remote", "build_rule_exprs", "build_structure",
           "build_teardown", "chain_name", "collapsed_networks", "is_table_empty_after", "jail_of", "port_keys",
           "set_kind", "set_name", "Signature", "check_jail", "expected_signatures", "networks_of", "observed_from_dump",
           "parse_ruleset", "rule_exprs", "rule_signature", "NOT_SENT", "Nft", "NftBackend", "describe_owner", "refusal"]
