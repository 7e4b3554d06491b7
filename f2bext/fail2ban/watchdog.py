"""The watchdog: one thread per fail2ban process that puts a jail back within a second or two when
someone flushes the ruleset or a restore of saved sets brings back lifted bans."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from fail2ban.helpers import getLogger

from ..backends import Backend
from ..errors import InputError, KernelError
from ..spec import JailSpec

log = getLogger("fail2ban.f2bext")

WATCH_INTERVAL = 1.0  # seconds; keeps the self-heal delay under two seconds


class Watched(Protocol):
    """What the watchdog uses of a jail's action (EnforcingAction)."""

    backend: Backend
    spec: JailSpec

    def recheck(self) -> None: ...

    def heal(self, why: str) -> bool: ...

    def resync(self) -> None: ...


class Watchdog:
    """One thread per fail2ban process: every second, a cheap structural check of all our jails.

    It lives as long as the process and idles while no jail is watched, so a jail stopping and
    another starting can never race a thread that is on its way out."""

    def __init__(self) -> None:
        self._actions: list[Watched] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, action: Watched) -> None:
        with self._lock:
            self._actions.append(action)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="f2b/f2bext-watchdog", daemon=True)
                self._thread.start()

    def forget(self, action: Watched) -> None:
        with self._lock:
            if action in self._actions:
                self._actions.remove(action)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                actions = list(self._actions)
            for backend in {a.backend for a in actions}:
                mine = [a for a in actions if a.backend is backend]
                try:
                    broken = {f.jail for f in backend.verify([a.spec for a in mine])}
                    for action in mine:
                        try:
                            action.recheck()
                        except KernelError as e:  # the structural check and repair still run
                            log.error("f2bext watchdog: %s", e)
                        if action.spec.jail in broken:
                            action.heal("watchdog")
                        else:
                            action.resync()
                except (KernelError, InputError) as e:
                    log.error("f2bext watchdog: %s", e)
                except Exception:  # the watchdog is what keeps bans holding: it must not end here
                    log.exception("f2bext watchdog: unexpected failure; trying again at the next round")
