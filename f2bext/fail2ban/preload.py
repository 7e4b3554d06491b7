"""The bans start() loaded ahead of fail2ban's own restore, kept until fail2ban has worked through them."""

from __future__ import annotations

from typing import Iterable, Mapping

from fail2ban.server.mytime import MyTime

from ..addr import parse_single, single_text
from .internals import single_key

# How long after its load start() gives fail2ban to work through the bans it preloaded: fail2ban builds
# all its tickets before the first ban, 60 to 200 µs each (1,000,000 took 68 s on a busy day), and the
# grace is renewed while it still works through them. Past it, what is left fail2ban did not restore.
GRACE, PER_BAN = 60.0, 0.001


class Preloaded:
    """Addresses start() loaded that fail2ban has yet to restore: a rebuild must keep them. Single
    addresses are kept as integers by IP version (addr.sort_singles), anything else as text. ban()
    takes each off as fail2ban restores it."""

    def __init__(self) -> None:
        self._singles: dict[int, set[int]] = {4: set(), 6: set()}
        self._texts: set[str] = set()
        self._deadline = 0.0
        self._left = 0  # how many were left when the deadline was last set

    def __contains__(self, ip: object) -> bool:
        found = parse_single(ip)
        return (found is not None and self.holds(*found)) or ip in self._texts

    def holds(self, version: int, value: int) -> bool:
        """Whether a single address (parse_single's answer) is in the preload."""
        return value in self._singles[version]

    def take(self, ip: object) -> bool:
        """Take an address off the preload (fail2ban's IPAddr, read with no text made, or text): whether
        it was there. Once per restored ban: 1,000,000 at a start; and for each ban refused."""
        found = None if isinstance(ip, str) else single_key(ip)
        if found is None:  # text, or an IPAddr not of fail2ban's plain kind (a raw one, a network)
            found = parse_single(str(ip))
        if found is not None and found[1] in self._singles[found[0]]:
            self._singles[found[0]].remove(found[1])
            return True
        if self._texts and (text := str(ip)) in self._texts:  # a network, or one the guard sent the long way
            self._texts.remove(text)
            return True
        return False

    def load(self, singles: Mapping[int, Iterable[int]], texts: Iterable[str] = ()) -> None:
        self._singles = {v: set(singles.get(v, ())) for v in (4, 6)}
        self._texts = set(texts)
        self.grace(PER_BAN)

    def grace(self, per_ban: float) -> None:
        """Give fail2ban GRACE, and per_ban for each address still to restore, from now."""
        self._left = self._count()
        self._deadline = MyTime.time() + GRACE + per_ban * self._left

    def pending(self) -> tuple[dict[int, set[int]], set[str]]:
        """A copy of what is left (single addresses by IP version, the rest as text), or nothing once
        fail2ban has stopped working through it."""
        self._expire()
        return {v: set(found) for v, found in self._singles.items()}, set(self._texts)

    def pending_texts(self) -> set[str]:
        """pending(), all as text."""
        singles, texts = self.pending()
        return texts.union(single_text(v, value) for v, found in singles.items() for value in found)

    def __len__(self) -> int:
        """How many pending() holds, without the copy (the watchdog counts every second)."""
        self._expire()
        return self._count()

    def _count(self) -> int:
        return len(self._singles[4]) + len(self._singles[6]) + len(self._texts)

    def _expire(self) -> None:
        left = self._count()
        if left and MyTime.time() > self._deadline:
            if left < self._left:
                self.grace(0.0)  # fail2ban is still at it
            else:
                self._singles = {4: set(), 6: set()}
                self._texts = set()
