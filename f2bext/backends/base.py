"""The interface every backend implements, and the finding it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from ..addr import Network
from ..spec import JailSpec

# Everything the jail holds banned, asked for only when a change needs it (a rebuild, a CIDR set).
Held = Callable[[], Iterable[Network]]

WARNING = "warning"
BROKEN = "broken"


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a jail's enforcement: how bad, what, and the kernel's own words for it."""

    jail: str
    severity: str  # WARNING or BROKEN
    code: str
    message: str
    evidence: str = ""


class Backend(Protocol):
    name: str

    def start(self, spec: JailSpec, held: Iterable[Network]) -> None:
        """Create the jail's objects (or rebuild them) holding every address in `held`."""

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        """Add addresses, then check the jail and rebuild it with `held()` if anything is off."""

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        """Remove addresses (absent ones are not an error); `held()` excludes them."""

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        """Cheap structural check of the given jails' enforcement."""

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        """Rebuild the jail atomically with exactly `held` banned."""

    def flush(self, spec: JailSpec) -> None:
        """Remove every address of the jail, keeping its structure."""

    def stop(self, spec: JailSpec) -> None:
        """Remove the jail's objects, and ours entirely once no jail is left."""

    def banned(self, spec: JailSpec) -> list[Network]:
        """The addresses the kernel holds for the jail (reads every element: not for hot paths)."""
