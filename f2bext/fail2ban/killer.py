"""The session-kill worker: cuts a ban's sessions off fail2ban's ban path."""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Protocol

from ..addr import Network
from ..spec import JailSpec

if TYPE_CHECKING:
    from ..sessions import KillReport


class KillReporter(Protocol):
    """Who hears what a kill cut: the jail's action (EnforcingAction), which logs it."""

    def report_kill(self, nets: list[Network], report: KillReport) -> None: ...


class SessionKiller:
    """Cuts sessions in one background thread, in ban order: an IPv6, CIDR or allports kill walks
    the conntrack table (about 0.3 s per 100,000 entries), and fail2ban's ban path must not wait.
    Bans that queued up meanwhile for the same jail and scope are cut together, in one pass: a burst
    of bans costs the interpreter fail2ban's ban path shares one kill, not one per ban."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[Kill]" = queue.SimpleQueue()
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
            for (action, spec), nets in _batches(_gather(self._queue)):
                action.report_kill(nets, kill_sessions(nets, spec.protocols, spec.ports, spec.kill))


Kill = tuple[KillReporter, Network, JailSpec]


# A kill waits until no ban has come for QUIET seconds (GATHER at most): a burst of bans from
# fail2ban's actions thread then runs without this thread taking the interpreter from it at each of
# its system calls, and is cut in one pass. (nftables at 1,000 banned, a ban took 0.10 ms p50 and
# 11 ms p99 with the previous ban's kill running beside it, 0.07 and 0.18 ms with none.) The set
# drops a banned session's packets meanwhile.
QUIET = 0.02
GATHER = 0.25


def _gather(q: "queue.SimpleQueue[Kill]") -> list[Kill]:
    """The next kills: waits for one, then for the burst it starts to end."""
    items = [q.get()]
    deadline = time.monotonic() + GATHER
    while time.monotonic() < deadline:
        time.sleep(QUIET)
        more = _drain(q)
        if not more:
            break
        items += more
    return items


def _drain(q: "queue.SimpleQueue[Kill]") -> list[Kill]:
    """Whatever is queued now, without waiting."""
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def _batches(items: list[Kill]) -> list[tuple[tuple[KillReporter, JailSpec], list[Network]]]:
    """The queued bans grouped by jail and scope, in the order each group was first asked for."""
    groups: dict[tuple[int, JailSpec], tuple[KillReporter, JailSpec, list[Network]]] = {}
    for action, net, spec in items:
        groups.setdefault((id(action), spec), (action, spec, []))[2].append(net)
    return [((action, spec), nets) for action, spec, nets in groups.values()]
