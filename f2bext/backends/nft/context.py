"""The one class that talks to libnftables (`Nft`): JSON commands in one transaction, terse listings,
set elements over netlink on the socket that owns the table, and the table's ownership."""

from __future__ import annotations

import errno
import json
import re
import threading
import time
from typing import Any, Callable, Optional, Sequence, TypeVar

from ...addr import Network
from ...errors import KernelError
from ...kernel import netlink, nftdump, nftelem, nftgen
from ..base import Op
from .build import FAMILY, OWNER_FLAGS, TABLE, Command, Observed, adds_table
from .read import networks_of, observed_from_dump


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


T = TypeVar("T")
PERSIST_FROM = (1, 0, 9)  # libnftables that says `persist`, and lists a one-flag table safely
NOT_SENT = -1  # send_elements had no socket: libnftables' JSON does it


class Nft:
    """The one place that talks to libnftables: JSON commands in one transaction, terse listings;
    and the ruleset generation, read over netlink, which moves with every transaction of anyone's.

    With `owner`, our table is created `flags owner` (and `persist` where nftables can say it): it
    belongs to this context's netlink socket, so no other process can flush or delete it, and every
    change goes through this one object."""

    def __init__(self, owner: bool = False) -> None:
        self._ctx: Any = None
        self._sock_fd: Optional[int] = None
        self._elements = nftelem.Elements()  # where send_elements sends
        self._lock = threading.Lock()
        self._generation = nftgen.Generation()
        self.owner = owner
        self.table_flags = ""  # how this context holds the table once it made it: "owner, persist", "owner"
        self.unowned = ""  # why the table is not ours alone although `owner` asked for it
        self._version: tuple[int, ...] = ()
        if owner:
            self._context()  # now, before any other thread opens a netfilter socket: see _context

    def _context(self) -> Any:
        """The libnftables context, made at its first use: a process that only checks the table and
        sends set elements never loads the library (5 ms, 3 MiB)."""
        if self._ctx is None:
            import nftables  # Debian's python3-nftables; imported here so the builders need nothing
            before = nftelem.netfilter_sockets() if self.owner else set()
            ctx = nftables.Nftables()
            # The context's own netlink socket, opened by nft_ctx_new: where libnftables cannot say
            # `persist`, the owned table is added on it, so that its owner is still this context.
            mine = nftelem.netfilter_sockets() - before if self.owner else set()
            self._sock_fd = mine.pop() if len(mine) == 1 else None
            ctx.set_json_output(True)
            self._ctx = ctx
        return self._ctx

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
            rc, _out, err = self._context().json_cmd({"nftables": cmds}) if cmds else (0, "", "")
        if rc != 0:
            raise refusal(what, err)

    def send_elements(self, op: Op, name: str, nets: Sequence[Network], what: str) -> Optional[int]:
        """Add or delete single addresses in set `name` over netlink, in one transaction: the generation
        it made, None when it changed nothing, NOT_SENT when there is no socket to send it on."""
        keys = [n.network_address.packed for n in nets]
        with self._lock:
            if not self._element_socket(what):
                return NOT_SENT
            try:
                if nftelem.messages(keys) == 1:
                    return self._elements.change(op, FAMILY, TABLE, name, keys)
                # Too many for the kernel to echo: the generation read on either side tells what it made.
                before = self.generation()
                self._elements.change(op, FAMILY, TABLE, name, keys)
                after = self.generation()
                return after if after != before else None
            except OSError as e:
                raise refusal(what, str(e)) from None

    def load_elements(self, name: str, keys: Sequence[bytes], what: str) -> bool:
        """Add many single addresses (packed, one size) to set `name` over netlink, in transactions of
        nftelem.BULK_KEYS: 100,000 in about a tenth of libnftables' time, without its ~450 bytes per
        element of a batch. False when there is no socket to send them on (libnftables' JSON does it)."""
        with self._lock:
            if not self._element_socket(what):
                return False
            try:
                self._elements.load(FAMILY, TABLE, name, keys)
            except OSError as e:
                raise refusal(what, str(e)) from None
        return True

    def _element_socket(self, what: str) -> bool:
        """Whether set elements can go over netlink, on the socket they must go on. The caller holds the lock."""
        if self.owner:  # make the owned table first; without an owner, libnftables lists nothing here
            self._hold_table(what)
        if not (self.owner and self.table_flags):
            self._elements.own()
        elif not self._elements.adopted:
            # Only the owner may change an owned table: this context's socket, found by the port
            # that owns the table (libnftables 1.0.9 may open it only at its first command).
            info = nftgen.read_table(FAMILY, TABLE)
            self._elements.adopt(info.owner if info else None)
        return self._elements.sock is not None

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
            rc, _out, err = self._context().cmd(f"add table {FAMILY} {TABLE} {{ flags {flags}; }}")
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
        """libnftables' version, from a listing's metainfo (`list sets` prints no table); read once, at
        the start of every f2bext process. Terse: with elements it took 0.32 s at 100,000 bans."""
        if not self._version:
            self._context().set_terse_output(True)
            rc, out, _err = self._context().cmd("list sets")
            for item in json.loads(out).get("nftables", []) if rc == 0 and out.strip() else []:
                if "metainfo" in item:
                    words = str(item["metainfo"].get("version", ""))
                    self._version = tuple(int(p) for p in re.findall(r"\d+", words)[:3])
            self._version = self._version or (0,)
        return self._version

    def ruleset(self) -> Observed:
        """Our table without set elements, read over netlink (nftdump): cheap however many addresses
        are banned or other tables hold, and no library to load."""
        return observed_from_dump(self._read(f"read table {FAMILY} {TABLE}", lambda: nftdump.read(FAMILY, TABLE)))

    def _read(self, what: str, read: Callable[[], T]) -> T:
        """A read over netlink, under the lock: this process's own bans would interrupt its dumps. An
        owned table is made first, as before any listing."""
        with self._lock:
            if self.owner:
                self._hold_table(what)
            try:
                return read()
            except OSError as e:
                raise KernelError(f"cannot {what}", str(e)) from None

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
        found, elements = self._read(f"list set {name}", lambda: nftdump.read_set(FAMILY, TABLE, name))
        if found is None:
            raise KernelError(f"cannot list set {name}", "No such file or directory")
        return networks_of(found, elements)

    def _list(self, command: str, terse: bool) -> dict[str, Any]:
        with self._lock:
            self._hold_table(command)
            self._context().set_terse_output(terse)
            rc, out, err = self._context().cmd(command)
        if rc != 0:
            raise KernelError(f"nftables refused to {command}", err)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError as e:  # libnftables 1.0.6 printed freed memory for a table with one flag
            raise KernelError(f"nftables gave no readable answer to {command}", str(e)) from None
