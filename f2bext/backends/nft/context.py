"""The one class that changes and reads our table (`Nft`): the builders' commands as one nf_tables
transaction over netlink, set elements, the table read back, and the table's ownership; libnftables
only for the doctor's listing of every table."""

from __future__ import annotations

import errno
import json
import re
import threading
import time
from typing import Any, Callable, Optional, Sequence, TypeVar

from ...addr import Network
from ...errors import KernelError
from ...kernel import netlink, nftbatch, nftdump, nftelem, nftgen
from ..base import Op
from . import wire
from .build import FAMILY, TABLE, Command, Observed, adds_table
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
PERSIST_FROM = (1, 0, 9)  # libnftables that lists a table with one flag safely
OWNER, PERSIST = nftgen.TABLE_F_OWNER, nftgen.TABLE_F_PERSIST


class Nft:
    """Our table's changes and reads over nf_tables netlink: the builders' commands in one transaction
    (wire.py), set elements (nftelem), the table read back (nftdump), all on one socket of ours; and
    the ruleset generation, which moves with every transaction of anyone's. libnftables is loaded only
    for the doctor's listing of every table, and for its version where a kernel refuses `persist`.

    With `owner`, our table is created `flags owner, persist` (`owner` where the kernel has no persist):
    it belongs to our socket, so no other process can flush or delete it, and every change goes through
    this one object."""

    def __init__(self, owner: bool = False) -> None:
        self._ctx: Any = None
        self._elements = nftelem.Elements()  # the socket every change is sent on
        self._batches: Optional[nftbatch.Batches] = None
        self._lock = threading.Lock()
        self._generation = nftgen.Generation()
        self.owner = owner
        self.table_flags = ""  # how our socket holds the table once it made it: "owner, persist", "owner"
        self.unowned = ""  # why the table is not ours alone although `owner` asked for it
        self._version: tuple[int, ...] = ()

    def _context(self) -> Any:
        """The libnftables context, made at its first use (5 ms, 3 MiB): the doctor's listing."""
        if self._ctx is None:
            import nftables  # Debian's python3-nftables; imported here so the builders need nothing
            self._ctx = nftables.Nftables()
            self._ctx.set_json_output(True)
        return self._ctx

    def _socket(self) -> nftbatch.Batches:
        self._elements.own()
        if self._batches is None:
            assert self._elements.sock is not None
            self._batches = nftbatch.Batches(self._elements.sock)
        return self._batches

    def generation(self) -> int:
        return self._generation.read()

    def apply(self, cmds: list[Command], what: str) -> None:
        if not cmds:
            return
        with self._lock:
            self._hold_table(what)
            if self.owner and self.table_flags and any(adds_table(c) for c in cmds):
                self._add_owned_table(what)  # deleted and made again (the last jail stopped, a new one starts)
                cmds = [c for c in cmds if not adds_table(c)]  # an add without the owner's flags is refused
            try:
                self._socket().send(wire.encode(cmds))
            except OSError as e:
                raise refusal(what, str(e)) from None

    def send_elements(self, op: Op, name: str, nets: Sequence[Network], what: str) -> Optional[int]:
        """Add or delete single addresses in set `name` over netlink, in one transaction: the generation
        it made, None when it changed nothing."""
        keys = [n.network_address.packed for n in nets]
        with self._lock:
            self._hold_table(what)
            self._elements.own()
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

    def load_elements(self, name: str, keys: Sequence[bytes], what: str) -> None:
        """Add many single addresses (packed, one size) to set `name` over netlink, in transactions of
        nftelem.BULK_KEYS: 100,000 in about a tenth of libnftables' time, without its ~450 bytes per
        element of a batch."""
        with self._lock:
            self._hold_table(what)
            self._elements.own()
            try:
                self._elements.load(FAMILY, TABLE, name, keys)
            except OSError as e:
                raise refusal(what, str(e)) from None

    def _hold_table(self, what: str) -> None:
        """Before the first change or read, make the owned table, or adopt the one that outlived its
        last owner (`persist`). The caller holds the lock."""
        if self.owner and not self.unowned and not self.table_flags:
            self._add_owned_table(what)

    def _add_owned_table(self, what: str) -> None:
        """Create our table owned by our socket, or adopt it as an orphan `persist` left. A kernel
        before 6.9 has no persist: there the table is owned alone where libnftables (the doctor's
        listing, in other processes) lists a one-flag table safely, else it stays unowned."""
        if self.unowned:
            return
        wanted = [OWNER | PERSIST, OWNER] if not self.table_flags else \
            [OWNER | PERSIST if "persist" in self.table_flags else OWNER]
        for flags in wanted:
            try:
                self._socket().send([nftbatch.table(nftbatch.NEWTABLE, FAMILY, TABLE, flags)])
            except OSError as e:
                if self._made_unowned():
                    return
                if e.errno == errno.EOPNOTSUPP and flags & PERSIST:
                    if self.version() < PERSIST_FROM:
                        self.unowned = ("this kernel cannot keep an owned table (persist: Linux 6.9), and "
                                        "libnftables before 1.0.9 cannot list one owned alone: it stays unowned")
                        return
                    continue
                raise refusal(f"create table {FAMILY} {TABLE}", str(e)) from None
            self.table_flags = "owner, persist" if flags & PERSIST else "owner"
            return

    def _made_unowned(self) -> bool:
        """Whether the table exists without an owner, made before ownership (by an earlier f2bext, or a
        .conf jail): the kernel lets no one take a table over, so this process uses it as it is."""
        info = nftgen.read_table(FAMILY, TABLE)
        if info is None or info.owned or info.persist:
            return False
        self.table_flags = ""
        self.unowned = (f"table {FAMILY} {TABLE} existed without an owner when this process first changed it "
                        "(an earlier f2bext, or a .conf jail): a flush can still wipe it")
        return True

    def version(self) -> tuple[int, ...]:
        """libnftables' version, from a listing's metainfo (`list sets` prints no table); read once.
        Terse: with elements it took 0.32 s at 100,000 bans."""
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
        are banned or other tables hold."""
        return observed_from_dump(self._read(f"read table {FAMILY} {TABLE}", lambda: nftdump.read(FAMILY, TABLE)))

    def _read(self, what: str, read: Callable[[], T]) -> T:
        """A read over netlink, under the lock: this process's own bans would interrupt its dumps. An
        owned table is made first, as before any change."""
        with self._lock:
            self._hold_table(what)
            try:
                return read()
            except OSError as e:
                raise KernelError(f"cannot {what}", str(e)) from None

    def listing(self) -> dict[str, Any]:
        """Every table, set elements included, as `nft -j list ruleset` prints it (the doctor's read).
        An orphan has one flag, and libnftables 1.0.6 cannot list a table with one flag safely (its
        JSON frees that flag twice: nftables commit "json: fix use after free in table_flags_json()")."""
        with self._lock:
            if self.version() < PERSIST_FROM:
                info = nftgen.read_table(FAMILY, TABLE)
                if info is not None and bin(info.flags).count("1") == 1:
                    raise KernelError(f"cannot list the ruleset: table {FAMILY} {TABLE} has one flag (an orphan "
                                      "while fail2ban-server is down?), which libnftables before 1.0.9 cannot "
                                      "list safely")
            self._context().set_terse_output(False)
            rc, out, err = self._context().cmd("list ruleset")
        if rc != 0:
            raise KernelError("nftables refused to list the ruleset", err)
        try:
            return json.loads(out) if out.strip() else {}
        except ValueError as e:  # libnftables 1.0.6 printed freed memory for a table with one flag
            raise KernelError("nftables gave no readable answer to list ruleset", str(e)) from None

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
