"""The interface every backend implements, and the finding it reports."""

from __future__ import annotations

from typing import Callable, Iterable, Literal, Mapping, NamedTuple, Optional, Protocol, Sequence

from ..addr import Network, single_network
from ..severity import Severity
from ..spec import JailSpec

# Everything the jail holds banned, asked for only when a change needs it (a rebuild, a CIDR set).
Held = Callable[[], Iterable[Network]]
# A restore's bulk: single addresses as text by IP version, checked already (addr.parse_single).
Singles = Mapping[int, Sequence[int]]  # single addresses, checked already, as integers by IP version
Op = Literal["add", "delete"]  # a change of bans, as nft names it; the ipset layer says the same


class Bans(NamedTuple):
    """Everything a jail holds banned, sorted for a bulk load (addr.sort_singles): single addresses as
    integers by IP version, checked already, and the rest as networks."""

    singles: Singles
    nets: list[Network]

    def all(self) -> list[Network]:
        """Every ban as a network, for the paths that take them so (an object each: 0.5 s at 100,000)."""
        return [single_network(v, a) for v, found in self.singles.items() for a in found] + self.nets


WARNING = Severity.WARNING
BROKEN = Severity.CRITICAL  # `verify` prints it "broken"


class Finding(NamedTuple):
    """One thing wrong with a jail's enforcement: how bad, what, and the kernel's own words for it."""

    jail: str
    severity: Severity  # WARNING or BROKEN
    code: str
    message: str
    evidence: str = ""


def refused(jail: str, why: Exception) -> Finding:
    """The kernel refused a change of the jail's bans (a set of the wrong type, a full one)."""
    return Finding(jail, BROKEN, "refused", str(why))


class SharedBans:
    """The bans other servers shared that this process put in each jail's remote sets, so that a
    rebuild puts them back."""

    def __init__(self) -> None:
        self._by_jail: dict[str, set[Network]] = {}

    def replace(self, jail: str, nets: Iterable[Network]) -> None:
        self._by_jail[jail] = set(nets)

    def change(self, jail: str, op: Op, nets: Iterable[Network]) -> set[Network]:
        current = self._by_jail.setdefault(jail, set())
        if op == "add":
            current.update(nets)
        else:
            current.difference_update(nets)
        return current

    def get(self, jail: str) -> Optional[set[Network]]:
        """None when this process never loaded the jail's shared bans (the command line)."""
        return self._by_jail.get(jail)


class Backend(Protocol):
    name: str

    def start(self, spec: JailSpec, held: Iterable[Network], singles: Optional[Singles] = None) -> None:
        """Create the jail's objects (or rebuild them) holding every address in `held` and `singles`."""

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> list[Finding]:
        """Add addresses, then check the jail and rebuild it with `held()` if anything is off;
        returns what was off (empty when nothing was)."""

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        """Remove addresses (absent ones are not an error); `held()` excludes them."""

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        """Cheap structural check of the given jails' enforcement."""

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        """Rebuild the jail atomically with exactly `held` banned."""

    def mend(self, spec: JailSpec, held: Callable[[], Bans]) -> None:
        """Put back what the jail lost, and only that: `held()` is asked only if bans must be loaded
        again (a reload that took the rules and kept the sets costs no parse of the bans). Where the
        jail's sets went too, nothing enforces meanwhile, and they are loaded as start() loads them."""

    def flush(self, spec: JailSpec) -> None:
        """Remove every address of the jail, keeping its structure."""

    def stop(self, spec: JailSpec) -> None:
        """Remove the jail's objects, and ours entirely once no jail is left."""

    def set_remote(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        """Replace the jail's shared bans (from other servers) with exactly `nets`, in one go."""

    def change_remote(self, spec: JailSpec, op: Op, nets: Sequence[Network], held: Held) -> None:
        """Add ("add") or remove ("delete") shared bans; absent ones are not an error."""

    def entries(self, spec: JailSpec) -> Optional[int]:
        """How many bans the jail's local sets hold, where the kernel keeps the count (cheap to ask);
        None where only a listing of every element would tell."""

    def banned(self, spec: JailSpec, remote: bool = False) -> list[Network]:
        """The addresses the kernel holds for the jail, its own or the shared ones (reads every
        element: not for hot paths)."""
