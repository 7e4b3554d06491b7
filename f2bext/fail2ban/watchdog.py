"""The watchdog: one thread per fail2ban process that puts a jail back when someone flushes the
ruleset or a restore of saved sets brings back lifted bans. nf_tables announces every change of
anyone's (nft, iptables-nft, a firewall manager's reload): the watchdog looks at once; its poll each
second is the safety net, and all there is for iptables-legacy and ipsets."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator, Optional, Protocol

from fail2ban.helpers import getLogger

from ..backends import Backend
from ..errors import InputError, KernelError
from ..kernel.nfevents import RulesetEvents
from ..spec import JailSpec

log = getLogger("fail2ban.f2bext")

WATCH_INTERVAL = 1.0  # seconds between full rounds: the safety net under the events
QUIET = 0.02  # after an event, the rest of its burst is read before looking: one look per burst
FLOOR = 0.2  # seconds at least between looks an event asks for: a storm of changes never starves fail2ban


class Watched(Protocol):
    """What the watchdog uses of a jail's action (EnforcingAction)."""

    backend: Backend
    spec: JailSpec

    def recheck(self) -> None: ...

    def heal(self, why: str) -> bool: ...

    def resync(self) -> None: ...


class Watchdog:
    """One thread per fail2ban process: a cheap structural check of all our jails at each ruleset
    change another process makes, and every second.

    It lives as long as the process and idles while no jail is watched, so a jail stopping and
    another starting can never race a thread that is on its way out."""

    def __init__(self) -> None:
        self._actions: list[Watched] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._events: Optional[RulesetEvents] = None
        self._hushed = 0  # quiet() blocks under way
        self._hush_lock = threading.Lock()

    def watch(self, action: Watched) -> None:
        with self._lock:
            self._actions.append(action)
            if self._thread is None:
                self._events = _subscribe()
                self._thread = threading.Thread(target=self._run, name="f2b/f2bext-watchdog", daemon=True)
                self._thread.start()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """This process's own bulk load, unheard (RulesetEvents.pause): a change another process makes
        meanwhile is found by the round after it, as under iptables-legacy."""
        self._hush(+1)
        try:
            yield
        finally:
            self._hush(-1)

    def _hush(self, step: int) -> None:
        with self._hush_lock:
            self._hushed += step
            if self._events is None or self._hushed != (1 if step > 0 else 0):
                return  # another load is under way: the first leaves the group, the last joins it again
            try:
                self._events.pause() if step > 0 else self._events.resume()
            except OSError:
                pass  # the subscription broke: the thread finds out at its next read

    def forget(self, action: Watched) -> None:
        with self._lock:
            if action in self._actions:
                self._actions.remove(action)

    def _run(self) -> None:
        events = self._events
        next_round = time.monotonic() + WATCH_INTERVAL
        last_look = 0.0
        while True:
            left = next_round - time.monotonic()
            if events is not None and left > 0 and events.wait(left):
                time.sleep(max(QUIET, last_look + FLOOR - time.monotonic()))
                try:
                    changed = events.drain()
                except OSError as e:  # the subscription broke: the poll goes on alone
                    log.warning("f2bext watchdog: ruleset events lost (%s); checking every %.0f s only",
                                e, WATCH_INTERVAL)
                    with self._hush_lock:
                        events.close()
                        self._events = events = None
                    changed = True
                if changed:  # not only this process's own bans
                    self._look("ruleset change", full=False)
                    last_look = time.monotonic()
                continue
            if events is None and left > 0:
                time.sleep(left)
            self._look("watchdog", full=True)
            next_round = time.monotonic() + WATCH_INTERVAL

    def _look(self, why: str, full: bool) -> None:
        """Check every jail and heal the broken ones; a `full` round also lifts bans that became
        lockouts and compares the kernel's count of bans with fail2ban's."""
        with self._lock:
            actions = list(self._actions)
        for backend in {a.backend for a in actions}:
            mine = [a for a in actions if a.backend is backend]
            try:
                findings = backend.verify([a.spec for a in mine])
                for action in mine:
                    if full:
                        try:
                            action.recheck()
                        except KernelError as e:  # the structural check and repair still run
                            log.error("f2bext watchdog: %s", e)
                    if any(f.jail == action.spec.jail for f in findings):
                        action.heal(why)
                    elif full:
                        action.resync()
            except (KernelError, InputError) as e:
                log.error("f2bext watchdog: %s", e)
            except Exception:  # the watchdog is what keeps bans holding: it must not end here
                log.exception("f2bext watchdog: unexpected failure; trying again at the next round")


def _subscribe() -> Optional[RulesetEvents]:
    """nf_tables' notifications, or None where the kernel offers none (the poll alone then)."""
    try:
        return RulesetEvents()
    except OSError as e:
        log.warning("f2bext watchdog: no nf_tables events (%s); checking every %.0f s", e, WATCH_INTERVAL)
        return None
