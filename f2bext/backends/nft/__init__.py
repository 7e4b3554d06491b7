"""nftables backend: the one class that talks to libnftables (`Nft`) and the Backend on it
(`NftBackend`); the pure builders are in build.py, the ruleset reader in read.py, both named here too.

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

import errno
import json
import re
import threading
import time
from typing import Any, Iterable, Optional, Sequence

from ...kernel import netlink, nftelem, nftgen
from ...addr import Network, is_single
from ...errors import KernelError
from ...spec import JailSpec
from ..base import BROKEN, Finding, Held, Op, SharedBans, Singles, refused
from .build import (CHUNK, DPORT, FAMILY, LOAD_BATCH, LOCAL_KINDS, ORIGDPORT, OWNER_FLAGS, PRIORITY, REMOTE_KINDS,
                    RULE_COMMENT, SET_KINDS, TABLE, Command, Observed, _obj, adds_table, build_elements, build_load,
                    build_network_sets, build_rebuild, build_remote, build_rule_exprs, build_structure,
                    build_teardown, chain_name, collapsed_networks, is_table_empty_after, jail_of, port_keys,
                    set_kind, set_name)
from .read import Signature, check_jail, expected_signatures, parse_elements, parse_ruleset, rule_signature


def describe_owner(info: Optional[nftgen.TableInfo]) -> str:
    """Who owns our table, in words: "fail2ban-server (pid 812)"; "" when no process does."""
    if info is None or info.owner is None:
        return ""
    found = netlink.port_process(netlink.NETLINK_NETFILTER, info.owner)
    return f"{found[1]} (pid {found[0]})" if found else f"netlink port {info.owner}"


def refusal(what: str, err: str) -> KernelError:
    """nftables' refusal; when the table belongs to another process, say whose and what to do instead."""
    if "Operation not permitted" in err:
        owner = describe_owner(nftgen.read_table(FAMILY, TABLE))
        if owner:
            return KernelError(f"cannot {what}: table {FAMILY} {TABLE} belongs to {owner}, and no other process "
                               "may change it; change its jails through fail2ban (fail2ban-client set JAIL banip "
                               "ADDRESS), or set owner = no on its f2bext-nftables.py jails")
    return KernelError(f"nftables refused to {what}", err)


PERSIST_FROM = (1, 0, 9)  # libnftables that says `persist`, and lists a one-flag table safely
NOT_SENT = -1  # send_elements had no socket: libnftables' JSON does it


class Nft:
    """The one place that talks to libnftables: JSON commands in one transaction, terse listings;
    and the ruleset generation, read over netlink, which moves with every transaction of anyone's.

    With `owner`, our table is created `flags owner` (and `persist` where nftables can say it): it
    belongs to this context's netlink socket, so no other process can flush or delete it, and every
    change goes through this one object."""

    def __init__(self, owner: bool = False) -> None:
        import nftables  # Debian's python3-nftables; imported here so the builders need nothing
        before = nftelem.netfilter_sockets() if owner else set()
        self._ctx = nftables.Nftables()
        # The context's own netlink socket, opened by nft_ctx_new: where libnftables cannot say
        # `persist`, the owned table is added on it, so that its owner is still this context.
        mine = nftelem.netfilter_sockets() - before if owner else set()
        self._sock_fd = mine.pop() if len(mine) == 1 else None
        self._elements = nftelem.Elements()  # where send_elements sends
        self._ctx.set_json_output(True)
        self._lock = threading.Lock()
        self._generation = nftgen.Generation()
        self.owner = owner
        self.table_flags = ""  # how this context holds the table once it made it: "owner, persist", "owner"
        self.unowned = ""  # why the table is not ours alone although `owner` asked for it
        self._version: tuple[int, ...] = ()

    def generation(self) -> int:
        return self._generation.read()

    def apply(self, cmds: list[Command], what: str) -> None:
        if not cmds:
            return
        with self._lock:
            self._hold_table(what)
            if self.owner and self.table_flags and any(adds_table(c) for c in cmds):
                self._add_owned_table(what)  # deleted and made again (the last jail stopped, a new one starts)
                cmds = [c for c in cmds if not adds_table(c)]  # the JSON `add table` would be refused now
            rc, _out, err = self._ctx.json_cmd({"nftables": cmds}) if cmds else (0, "", "")
        if rc != 0:
            raise refusal(what, err)

    def send_elements(self, op: Op, name: str, nets: Sequence[Network], what: str) -> Optional[int]:
        """Add or delete single addresses in set `name` over netlink, in one transaction: the generation
        it made, None when it changed nothing, NOT_SENT when there is no socket to send it on."""
        keys = [n.network_address.packed for n in nets]
        with self._lock:
            if self.owner:  # make the owned table first; without an owner, libnftables lists nothing here
                self._hold_table(what)
            if not (self.owner and self.table_flags):
                self._elements.own()
            elif not self._elements.adopted:
                # Only the owner may change an owned table: this context's socket, found by the port
                # that owns the table (libnftables 1.0.9 may open it only at its first command).
                info = nftgen.read_table(FAMILY, TABLE)
                self._elements.adopt(info.owner if info else None)
            if self._elements.sock is None:
                return NOT_SENT
            try:
                return self._elements.change(op, FAMILY, TABLE, name, keys)
            except OSError as e:
                raise refusal(what, str(e)) from None

    def _hold_table(self, what: str) -> None:
        """Before this context's first listing or change, make the owned table, or adopt the one that
        outlived its last owner (`persist`). An orphan has one flag, and libnftables 1.0.6 cannot list
        a table with one flag safely (below); adopted, it has two. Another process only refuses to
        list such a table, rather than corrupt its memory. The caller holds the lock."""
        if self.owner and not self.unowned and not self.table_flags:
            self._add_owned_table(what)
        elif not self.owner and self.version() < PERSIST_FROM:
            info = nftgen.read_table(FAMILY, TABLE)
            if info is not None and bin(info.flags).count("1") == 1:
                raise KernelError(f"cannot {what}: table {FAMILY} {TABLE} has one flag (an orphan while "
                                  "fail2ban-server is down?), which libnftables before 1.0.9 cannot list safely")

    def _add_owned_table(self, what: str) -> None:
        """Create our table owned by this context, or adopt it as an orphan `persist` left. libnftables'
        JSON drops table flags, and adding the table without them would be refused once it is owned."""
        if self.unowned:
            return
        version = self.version()
        if version < PERSIST_FROM:
            # Before 1.0.9 libnftables cannot say `persist`, and its JSON listing of a table with one
            # flag frees that flag twice (nftables commit "json: fix use after free in
            # table_flags_json()"): `owner` alone would corrupt this process at every listing. Both
            # flags are set over netlink instead, on the context's own socket.
            self._add_table_on_socket(version)
            return
        errors = []
        for flags in (self.table_flags,) if self.table_flags else OWNER_FLAGS:
            rc, _out, err = self._ctx.cmd(f"add table {FAMILY} {TABLE} {{ flags {flags}; }}")
            if rc == 0:
                self.table_flags = flags
                return
            errors.append(err)
        if not self._made_unowned():
            raise refusal(what, errors[-1])

    def _made_unowned(self) -> bool:
        """Whether the table exists without an owner, made before ownership (by an earlier f2bext, or a
        .conf jail): the kernel lets no one take a table over, so this process uses it as it is."""
        info = nftgen.read_table(FAMILY, TABLE)
        if info is None or info.owned or info.persist:
            return False
        self.unowned = (f"table {FAMILY} {TABLE} existed without an owner when this process first changed it "
                        "(an earlier f2bext, or a .conf jail): a flush can still wipe it")
        return True

    def _add_table_on_socket(self, version: tuple[int, ...]) -> None:
        if self._sock_fd is None:
            self.unowned = (f"libnftables {'.'.join(map(str, version))} cannot own the table safely, and its "
                            "netlink socket was not found: the table stays unowned")
            return
        try:
            nftgen.add_table_on(self._sock_fd, FAMILY, TABLE, nftgen.TABLE_F_OWNER | nftgen.TABLE_F_PERSIST)
        except OSError as e:
            if self._made_unowned():
                return
            if e.errno == errno.EOPNOTSUPP:  # a kernel before 6.9: no persist, and owner alone is unsafe
                self.unowned = "this kernel cannot keep an owned table (persist: Linux 6.9): it stays unowned"
                return
            raise refusal(f"create table {FAMILY} {TABLE}", str(e)) from None
        self.table_flags = "owner, persist"

    def version(self) -> tuple[int, ...]:
        """libnftables' version, from a listing's metainfo (`list sets` prints no table); read once."""
        if not self._version:
            rc, out, _err = self._ctx.cmd("list sets")
            for item in json.loads(out).get("nftables", []) if rc == 0 and out.strip() else []:
                if "metainfo" in item:
                    words = str(item["metainfo"].get("version", ""))
                    self._version = tuple(int(p) for p in re.findall(r"\d+", words)[:3])
            self._version = self._version or (0,)
        return self._version

    def ruleset(self) -> Observed:
        """Our table without set elements: cheap however many addresses are banned."""
        return parse_ruleset(self._list("list ruleset", terse=True))

    def listing(self) -> dict[str, Any]:
        """Every table, set elements included, as `nft -j list ruleset` prints it (the doctor's read)."""
        return self._list("list ruleset", terse=False)

    def elements(self, name: str) -> list[Network]:
        """The set's elements. A dump taken while the kernel still resizes a large hash set (right
        after a big load) can repeat some elements and skip others: such a listing is read again."""
        for attempt in range(10):
            nets = self._elements_once(name)
            if len(set(nets)) == len(nets):
                return nets
            time.sleep(0.1 * (attempt + 1))
        raise KernelError(f"the kernel gave no consistent listing of set {name}")

    def _elements_once(self, name: str) -> list[Network]:
        if name[0].isalpha():
            return parse_elements(self._list(f"list set {FAMILY} {TABLE} {name}", terse=False))
        # nft's command language cannot name a set that starts with a digit (jail "0day"), even quoted;
        # a JSON command can, but libnftables 1.0.6 cuts its output short past ~250,000 elements.
        with self._lock:
            self._hold_table(f"list set {name}")
            self._ctx.set_terse_output(False)
            rc, out, err = self._ctx.json_cmd({"nftables": [{"list": _obj("set", name=name)}]})
        if rc != 0:
            raise KernelError(f"nftables refused to list set {name}", err)
        return parse_elements(out or {})

    def _list(self, command: str, terse: bool) -> dict[str, Any]:
        with self._lock:
            self._hold_table(command)
            self._ctx.set_terse_output(terse)
            rc, out, err = self._ctx.cmd(command)
        if rc != 0:
            raise KernelError(f"nftables refused to {command}", err)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError as e:  # libnftables 1.0.6 printed freed memory for a table with one flag
            raise KernelError(f"nftables gave no readable answer to {command}", str(e)) from None


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
        for batch in build_load(spec.jail, held, present, singles):
            self.nft.apply(batch, f"load bans of jail {spec.jail}")
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

    def mend(self, spec: JailSpec, held: Held) -> None:
        """The rebuild every loss needs here: nf_tables takes a jail's sets with its table."""
        self._rebuild(spec, self.nft.ruleset(), held())

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


__all__ = ["CHUNK", "DPORT", "FAMILY", "LOAD_BATCH", "LOCAL_KINDS", "ORIGDPORT", "PRIORITY", "REMOTE_KINDS",
           "RULE_COMMENT", "SET_KINDS", "TABLE", "Command", "Observed", "build_elements", "build_load",
           "build_network_sets", "build_rebuild", "build_remote", "build_rule_exprs", "build_structure",
           "build_teardown", "chain_name", "collapsed_networks", "is_table_empty_after", "jail_of", "port_keys",
           "set_kind", "set_name", "Signature", "check_jail", "expected_signatures", "parse_elements",
           "parse_ruleset", "rule_signature", "Nft", "NftBackend"]
