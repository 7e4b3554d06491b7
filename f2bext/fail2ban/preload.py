"""The bans start() loaded ahead of fail2ban's own restore, kept until fail2ban has worked through them."""

from __future__ import annotations

from typing import Iterable

from fail2ban.server.mytime import MyTime

# How long after its load start() gives fail2ban to work through the bans it preloaded: fail2ban builds
# all its tickets before the first ban, 60 to 200 µs each (1,000,000 took 68 s on a busy day), and the
# grace is renewed while it still works through them. Past it, what is left fail2ban did not restore.
GRACE, PER_BAN = 60.0, 0.001


class Preloaded:
    """Addresses (as text) start() loaded that fail2ban has yet to restore: a rebuild must keep them.
    ban() discards each as fail2ban restores it."""

    def __init__(self) -> None:
        self._texts: set[str] = set()
        self._deadline = 0.0
        self._left = 0  # how many were left when the deadline was last set

    def __contains__(self, ip: object) -> bool:
        return ip in self._texts

    def discard(self, ip: str) -> None:
        self._texts.discard(ip)

    def load(self, texts: Iterable[str]) -> None:
        self._texts = set(texts)
        self.grace(PER_BAN)

    def grace(self, per_ban: float) -> None:
        """Give fail2ban GRACE, and per_ban for each address still to restore, from now."""
        self._left = len(self._texts)
        self._deadline = MyTime.time() + GRACE + per_ban * self._left

    def pending(self) -> set[str]:
        """A copy of what is left, or nothing once fail2ban has stopped working through it."""
        self._expire()
        return set(self._texts)

    def __len__(self) -> int:
        """How many pending() holds, without the copy (the watchdog counts every second)."""
        self._expire()
        return len(self._texts)

    def _expire(self) -> None:
        if self._texts and MyTime.time() > self._deadline:
            if len(self._texts) < self._left:  # fail2ban is still at it
                self.grace(0.0)
            else:
                self._texts = set()
