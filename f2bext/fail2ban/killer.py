"""The session-kill worker: cuts a ban's sessions off fail2ban's ban path."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Protocol

from ..addr import Network
from ..spec import JailSpec

if TYPE_CHECKING:
    from ..sessions import KillReport


class KillReporter(Protocol):
    """Who hears what a kill cut: the jail's action (EnforcingAction), which logs it."""

    def report_kill(self, net: Network, report: KillReport) -> None: ...


class SessionKiller:
    """Cuts sessions in one background thread, in ban order: an IPv6, CIDR or allports kill walks
    the conntrack table (about 0.3 s per 100,000 entries), and fail2ban's ban path must not wait."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[tuple[KillReporter, Network, JailSpec]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, action: KillReporter, net: Network, spec: JailSpec) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="f2b/f2bext-kill", daemon=True)
                self._thread.start()
        self._queue.put((action, net, spec))

    def _run(self) -> None:
        # Loaded by the first kill: a jail that only restores bans, or kills nothing, never needs it.
        from ..sessions import kill_sessions
        while True:
            action, net, spec = self._queue.get()
            action.report_kill(net, kill_sessions([net], spec.protocols, spec.ports, spec.kill))
