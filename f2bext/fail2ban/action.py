"""The ActionBase subclass that action.d/f2bext-*.py hand to fail2ban: a jail's bans in kernel sets,
verified at every ban, repaired, shared and sessions cut; and the process's one watchdog, session
killer and fleet hook-up it hands its jails to."""

from __future__ import annotations

import json
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Iterable, Optional

from fail2ban.helpers import getLogger
from fail2ban.server.action import ActionBase
from fail2ban.server.mytime import MyTime

from .. import guard, state
from ..addr import Network, parse_single, parse_target, single_text, to_text
from ..backends import Backend, get_backend
from ..backends.base import Bans
from ..errors import InputError
from ..spec import JailSpec
from .internals import (Ignored, ban_count, banned_singles, banned_texts, ignore_check, ignore_inputs, restorable,
                        restore_waits)
from .killer import SessionKiller
from .preload import PER_BAN, Preloaded
from .watchdog import Watchdog

if TYPE_CHECKING:
    from ..fleet import Fleet
    from ..sessions import KillReport
    from .fleets import Fleets

log = getLogger("fail2ban.f2bext")

SHARE_OPTIONS = ("share", "share_scope", "share_origin", "share_max_prefix")

_backends: dict[str, Backend] = {}
_said: set[str] = set()  # process-wide warnings already logged
_backends_lock = threading.Lock()


def shared_backend(name: str, owner: bool = False) -> Backend:
    """One backend object per process, so every jail's transactions go through one kernel handle: the
    one that owns the table. The first jail decides whether it is owned; a change needs a restart."""
    with _backends_lock:
        if name not in _backends:
            _backends[name] = get_backend(name, owner)
        backend = _backends[name]
    if getattr(getattr(backend, "nft", None), "owner", owner) != owner:
        log.warning("f2bext: owner = %s takes effect when fail2ban restarts: this fail2ban-server's table "
                    "is %s", "yes" if owner else "no", "owned" if not owner else "not owned")
    return backend


def parse_owner(params: dict[str, Any], backend_name: str) -> bool:
    """Take the `owner` option (yes/no; default yes, for nftables) out of an action's parameters."""
    if backend_name != "nftables":
        if "owner" in params:
            raise InputError("owner is an option of f2bext-nftables.py only")
        return False
    text = str(params.pop("owner", "yes")).strip().lower()
    if text not in ("yes", "no", "true", "false"):
        raise InputError(f"owner must be yes or no, not {text[:20]!r}")
    return text in ("yes", "true")


class EnforcingAction(ActionBase):
    """A jail's bans in kernel sets, verified at every ban, repaired, and sessions cut."""

    backend_name = ""

    # jail and actname are positional-only: the stock actions' `name=` option may arrive in params.
    def __init__(self, jail: Any, actname: str, /, **params: Any) -> None:
        super().__init__(jail, actname)
        self._logSys = log
        # Every change to the jail's kernel objects, here and by `f2bext repair` or a .conf twin in
        # another process: a rebuild's list of bans is never outdated by a ban made meanwhile.
        self._lock = state.JailLock(jail.name)
        self._problems_said: set[str] = set()
        self._preloaded = Preloaded()
        self._refused: set[str] = set()  # bans fail2ban holds that f2bext refused (ignoreip, this host)
        self._kept: object = None  # what the last recheck() guarded: host, protected, ignoreip
        self._guard_cache: Optional[tuple[object, guard.Guard]] = None
        self._ignore_cache: Optional[tuple[object, Ignored]] = None
        self._miscounts = 0  # consecutive watchdog rounds whose kernel count differed from fail2ban's
        self._share = _share_options(params)
        owner = parse_owner(params, self.backend_name)
        self.spec = JailSpec.from_params(jail.name, params)
        self.backend = shared_backend(self.backend_name, owner)
        self._fleet: Optional[Fleet] = None

    # fail2ban reads banEpoch from every action of a jail once any action repaired itself.
    banEpoch = 0

    @property
    def table_owner(self) -> str:
        """`fail2ban-client get JAIL action ACT table_owner`: this process, when it owns the jail's table
        (the command line then asks it for changes); "" when the table is not owned."""
        nft = getattr(self.backend, "nft", None)
        if nft is None or not nft.table_flags:
            return ""
        return f"fail2ban-server (pid {os.getpid()}), flags {nft.table_flags}"

    @property
    def share(self) -> str:
        """What `fail2ban-client get JAIL action ACT share` shows: the Redis URL, password redacted."""
        return fleets().redact(self._share["share"]) if self._share else ""

    @property
    def share_status(self) -> str:
        """`fail2ban-client get JAIL action ACT share_status`: whom sharing follows and how it goes
        (JSON, for `f2bext doctor`; "" when the jail does not share)."""
        return json.dumps(self._fleet.status()) if self._fleet else ""

    def _parsed(self, texts: Iterable[str], check: guard.Guard) -> list[Network]:
        """Restored bans the bulk load does not take as they are (addr.sort_singles) less any f2bext
        must refuse (`check`, the jail's guard), parsed and checked as a ban is, in the same words.
        The database may hold a ban refused since."""
        nets = []
        for ip in texts:
            try:
                net = parse_target(ip)
                check.refuse([net])
            except InputError as e:
                log.warning("[%s] f2bext does not restore a ban: %s", self._jail.name, e)
                self._refused.add(ip)
                self._preloaded.take(ip)
                continue
            nets.append(net)
        return nets

    def keeps(self) -> list[guard.Keep]:
        """The jail's ignoreip, as the guard holds it (host names are left to fail2ban's own check)."""
        out = []
        for entry in self._jail.filter.getIgnoreIP():
            if entry.isValid:
                out += guard.parse_list(str(entry), guard.IGNOREIP)
        return out

    def guard(self) -> guard.Guard:
        """The guard for the jail, built again only when what it guards changed (the ban path is hot)."""
        guarded = self._guarded()
        cached = self._guard_cache
        if cached is None or cached[0] != guarded:
            cached = self._guard_cache = (guarded, guard.Guard(self.keeps()))
        return cached[1]

    def ignored(self, text: str) -> bool:
        """fail2ban's ignore check of a ban, as internals.ignore_check makes it, made again only when
        what it rests on changed."""
        inputs = ignore_inputs(self._jail)
        cached = self._ignore_cache
        if cached is None or cached[0] != inputs:
            # ignore_check reads this host's addresses through fail2ban, which resolves them again
            # once they expired: the inputs as they are after it.
            check = ignore_check(self._jail)
            cached = self._ignore_cache = (ignore_inputs(self._jail), check)
        return cached[1](text, parse_single(text))

    def held_text(self) -> set[str]:
        """Every address the kernel should hold for the jail, as text: fail2ban's banned list, and the
        bans start() loaded that fail2ban has not worked through yet (a rebuild must keep them)."""
        pending = self._preloaded.pending_texts()  # before the banned list: an address moves from one to the other
        return (pending | banned_texts(self._jail)) - self._refused

    def held(self) -> list[Network]:
        """held_text(), parsed, less what became a lockout since it was banned (recheck() says so)."""
        return self.held_bans().all()

    def held_bans(self) -> Bans:
        """held(), sorted for a bulk load: the single addresses the guard clears stay integers, read off
        fail2ban's own (a heal of 100,000 bans spent half a second making an object of each, and
        a quarter making and reading their text)."""
        check = self.guard()
        singles, rest = self._sorted_held(check, *self._preloaded.pending())
        nets = []
        for ip in rest:
            try:
                nets.append(parse_target(ip))
            except InputError as e:
                log.warning("[%s] f2bext skips %s", self._jail.name, e)
        return Bans(singles, check.allowed(nets))

    def _sorted_held(self, check: guard.Guard, singles: dict[int, set[int]], texts: set[str]
                     ) -> tuple[dict[int, list[int]], list[str]]:
        """fail2ban's banned list with `singles` and `texts` (the preload's, changed here), less what
        f2bext refused, sorted as addr.sort_singles sorts: what `check` clears, and the rest as text."""
        banned, banned_rest = banned_singles(self._jail)
        texts.update(banned_rest)
        for version, found in banned.items():
            singles[version].update(found)
        for ip in self._refused:
            texts.discard(ip)
            found = parse_single(ip)
            if found is not None:
                singles[found[0]].discard(found[1])
        cleared: dict[int, list[int]] = {}
        for version, found in singles.items():
            cleared[version], kept = check.split(version, found)
            texts.update(single_text(version, value) for value in kept)
        return cleared, list(texts)

    def start(self) -> None:
        with restore_waits(self._jail):  # fail2ban's restore waits for the load, not against it
            watchdog.watch(self)  # also when the start fails: the watchdog builds the jail once it can
            with self._lock:
                self._save_state()
                self._preloaded = Preloaded()
                check = self.guard()
                singles, others = restorable(self._jail, check.clear)
                # A jail started again: fail2ban's list too (the preload is empty yet), less the restore's.
                again, others_again = self._sorted_held(check, {4: set(), 6: set()}, set())
                self._preloaded.load(singles, others)
                for version, found in again.items():
                    singles[version] += [value for value in found if not self._preloaded.holds(version, value)]
                nets = self._parsed([*others, *(t for t in others_again if t not in self._preloaded)], check)
                with watchdog.quiet():  # a notification of each element costs the kernel more than the load
                    self.backend.start(self.spec, nets, singles)
                self._preloaded.grace(PER_BAN)  # from the load's end: fail2ban's own restore begins now
                self._kept = self._guarded()  # every ban was just checked: the watchdog need not again
        if self._share:
            self._fleet = fleets().join(self, self._share)
            self._save_state()
        log.info("[%s] f2bext %s enforcing %s", self._jail.name, self.backend.name, self._describe())
        unowned = getattr(getattr(self.backend, "nft", None), "unowned", "")
        if unowned and unowned not in _said:
            _said.add(unowned)
            log.warning("f2bext: %s", unowned)

    def _save_state(self) -> None:
        """What the command line needs to check and rebuild the jail: its spec, and what it must not ban."""
        state.save(self.backend.name, self.spec, keeps=self.keeps() + list(guard.protected()))

    def stop(self) -> None:
        watchdog.forget(self)
        if self._fleet:
            fleets().leave(self)
            self._fleet = None
        with self._lock:
            self.backend.stop(self.spec)
            state.forget(self.spec.jail)

    def flush(self) -> bool:
        with self._lock:
            self.backend.flush(self.spec)
        return True

    def ban(self, aInfo: Any) -> None:
        found, restored = aInfo["ip"], aInfo["restored"]  # each a lookup through fail2ban's CallingMap
        if restored and self._preloaded.take(found):
            return  # start() loaded it with the others, in one transaction
        ip = str(found)
        try:
            net = parse_target(ip)
            self._refuse_lockout(net)
        except InputError:
            self._refused.add(ip)
            raise
        with self._lock:
            for why in self.backend.ban(self.spec, [net], self.held):
                log.warning("[%s] f2bext: %s (found at the ban of %s); repaired", self._jail.name, why.message, ip)
        if not restored:  # a restart restores bans, not sessions worth cutting
            self._kill(net)
            self._publish("ban", net, aInfo)

    def _refusal(self, net: Network) -> Optional[str]:
        """Why the jail must not ban a network: it overlaps what must stay reachable (guard.py) or the
        jail's ignoreip; None when it may."""
        why = self.guard().refusal(net)
        if why is None and self.ignored(to_text(net)):
            why = f"it is in {guard.IGNOREIP}"  # a host name, ignoreself, or the jail's ignorecommand
        return why

    def _refuse_lockout(self, net: Network) -> None:
        """What must stay reachable is never banned, even when asked directly:
        `fail2ban-client set JAIL banip` skips fail2ban's own ignore checks."""
        why = self._refusal(net)
        if why:
            log.warning("[%s] f2bext refuses to ban %s: %s", self._jail.name, to_text(net), why)
            raise InputError(f"refusing to ban {to_text(net)}: {why}")

    def _guarded(self) -> object:
        """What the guard holds for the jail now; recheck() runs when it changes."""
        # fail2ban's IPAddr entries compare by what they hold (a host name by its text): no text is made.
        return guard.host_keeps(), guard.protected(), tuple(self._jail.filter.getIgnoreIP())

    def recheck(self) -> None:
        """Lift from the kernel the bans that became lockouts since they were made (a failover address
        moved onto this host, a new gateway, an ignoreip added): one line each; fail2ban keeps its
        ticket, and held() keeps them out of every rebuild."""
        kept = self._guarded()
        if kept == self._kept:
            return
        with self._lock:
            check = self.guard()
            lifted = []
            for ip in self.held_text():
                try:
                    net = parse_target(ip)
                except InputError:
                    continue
                why = check.refusal(net)
                if why:
                    log.warning("[%s] f2bext lifts its ban of %s: %s (fail2ban keeps its ticket)",
                                self._jail.name, ip, why)
                    self._refused.add(ip)
                    lifted.append(net)
            if lifted:
                self.backend.unban(self.spec, lifted, self.held)
            self._kept = kept
        if self._fleet:
            fleets().recheck(self._fleet)

    def reban(self, aInfo: Any) -> None:
        self.ban(aInfo)

    def unban(self, aInfo: Any) -> None:
        self._refused.discard(str(aInfo["ip"]))
        net = parse_target(str(aInfo["ip"]))
        with self._lock:
            self.backend.unban(self.spec, [net], self.held)
        self._publish("unban", net, aInfo)

    def _publish(self, op: str, net: Network, aInfo: Any) -> None:
        if self._fleet is None or to_text(net) in fleets().unbanning:
            return
        bantime = int(aInfo["bantime"])
        expires = math.inf if bantime < 0 else float(aInfo["time"]) + bantime
        if op == "unban" and expires <= MyTime.time() + 1:
            return  # it expired: every server holds the same expiry, and may hold bans of its own
        bantime = bantime if op == "ban" else 0
        fleets().publish(self._fleet, op, self.spec.jail, net, bantime, expires,
                         f"{aInfo['failures']} failures" if op == "ban" else "unban")

    def fleet_unban(self, ip: str) -> str:
        """Lift a ban everywhere: `fail2ban-client set JAIL action ACT fleet_unban '{"ip": "ADDR"}'`."""
        net = parse_target(ip)
        if self._fleet is None:
            raise InputError(f"jail {self.spec.jail} does not share its bans")
        self._fleet.remote.get(self.spec.jail, {}).pop(to_text(net), None)
        fleets().publish(self._fleet, "unban", self.spec.jail, net, 0, 0.0, "fleet_unban")
        fleets().apply(self._fleet, self.spec.jail, "delete", [net])
        return f"unbanned {to_text(net)} on every server sharing jail {self.spec.jail}"

    def clearAllParams(self) -> None:
        """fail2ban calls this before reload(); our parameters are replaced whole by reload()."""

    def reload(self, **params: Any) -> None:
        """New parameters from `fail2ban-client reload`: keep every ban, rebuild if the spec changed."""
        share = _share_options(params)
        shared_backend(self.backend_name, parse_owner(params, self.backend_name))  # warns of a change
        spec = JailSpec.from_params(self._jail.name, params)
        if share != self._share:
            if self._fleet:
                fleets().leave(self)
            self._share = share
            self._fleet = fleets().join(self, share) if share else None
        with self._lock:
            if spec != self.spec:
                self.spec = spec
                self.backend.repair(spec, self.held())
                log.info("[%s] f2bext now enforcing %s", self._jail.name, self._describe())
            self._save_state()

    def consistencyCheck(self, beforeRepair: Any = None) -> bool:
        """Called by fail2ban when a banned address shows up again: verify, and repair if broken."""
        self.heal("fail2ban saw an already banned address")
        return True

    def heal(self, why: str) -> bool:
        """Repair the jail if the kernel no longer enforces it; True when a repair was made. fail2ban's
        bans are parsed only if some were lost. The check is made again under the jail's lock: what
        the watchdog saw before it may be gone (start() was still building the jail)."""
        with self._lock:
            findings = self.backend.verify([self.spec])
            if not findings:
                return False
            for f in findings:
                log.warning("[%s] f2bext: %s (%s); repairing", self._jail.name, f.message, why)
            with watchdog.quiet():  # a heal of every ban is a bulk load too
                self.backend.mend(self.spec, self.held_bans)
        return True

    def resync(self) -> None:
        """Repair a jail whose sets hold another number of bans than fail2ban does, two rounds in a row:
        a restore of saved sets brings back lifted bans that no structural check can see."""
        if len(self._preloaded):
            # fail2ban is still restoring: each restored ban is in its list, then logged (a write that
            # lets this thread run), then taken off the preload by ban(), so the counts differ by one
            # most rounds, and each difference cost the texts of every ban (a second at 1,000,000).
            self._miscounts = 0
            return
        with self._lock:
            found = self.backend.entries(self.spec)
            if found is None:  # the kernel keeps no count (nftables)
                return
            # The count alone first: built each second, the texts of 1,000,000 bans held the jail's
            # lock and the GIL for a second and slowed fail2ban's own restore to a crawl. When the
            # counts differ (an address between fail2ban's list and the preload, a miscount), the
            # texts decide.
            expected = ban_count(self._jail) + len(self._preloaded) - len(self._refused)
            if found != expected:
                expected = len(self.held_text())
            self._miscounts = self._miscounts + 1 if found != expected else 0
            if self._miscounts >= 2:
                log.warning("[%s] f2bext: the kernel holds %d bans, fail2ban %d (saved sets restored?); "
                            "repairing", self._jail.name, found, expected)
                self.backend.repair(self.spec, self.held())
                self._miscounts = 0

    def _kill(self, net: Network) -> None:
        if self.spec.kill:
            killer.submit(self, net, self.spec)

    def report_kill(self, nets: list[Network], report: KillReport) -> None:
        if report.conntrack or report.sockets:
            log.info("[%s] f2bext cut %s: %d conntrack entries, %d sockets", self._jail.name,
                     ", ".join(map(str, nets)), report.conntrack, report.sockets)
        for problem in report.problems:
            if problem not in self._problems_said:
                self._problems_said.add(problem)
                log.warning("[%s] f2bext: %s; the ban stands", self._jail.name, problem)

    def _describe(self) -> str:
        p = self.spec.to_params()
        return (f"{p['type']} port={p['port']} protocol={p['protocol']} blocktype={p['blocktype']} "
                f"hooks={p['hooks']} kill={p['kill']}")


def _share_options(params: dict[str, Any]) -> dict[str, str]:
    """Take the sharing options out of an action's parameters, validated; {} when there are none."""
    opts = {key: str(params.pop(key)) for key in SHARE_OPTIONS if key in params}
    return fleets().options(opts) if opts else {}


def fleets() -> Fleets:
    """The process's fleet hook-up, made for the first jail with share options: a jail that shares
    nothing never imports the fleet (its Redis client, disk queue and threads)."""
    global _fleets
    with _fleets_lock:
        if _fleets is None:
            from .fleets import Fleets  # the one door to f2bext.fleet from fail2ban-server
            _fleets = Fleets(killer)
        return _fleets


# One of each per fail2ban-server process, shared by every jail's action.
watchdog = Watchdog()
killer = SessionKiller()
_fleets: Optional[Fleets] = None
_fleets_lock = threading.Lock()
