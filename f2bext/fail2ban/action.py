"""The fail2ban side: the ActionBase subclass that action.d/f2bext-*.py hand to fail2ban, and the
watchdog that puts a jail back within a second or two when someone flushes the ruleset."""

from __future__ import annotations

import math
import queue
import socket
import threading
import time
from typing import Any, Iterable, Iterator, Optional

from fail2ban.helpers import getLogger
from fail2ban.server.action import ActionBase
from fail2ban.server.mytime import MyTime

from . import guard, state
from .addr import Network, parse_target, to_text
from .backends import Backend, get_backend
from .errors import InputError, KernelError
from .sessions import KillReport, kill_sessions
from .share import FLEET_JAIL, SCOPES, BanEvent, Fleet, check_origin, check_url, parse_max_prefix, redact
from .spec import JailSpec

log = getLogger("fail2ban.f2bext")

WATCH_INTERVAL = 1.0  # seconds; keeps the self-heal delay under two seconds
PRELOAD_GRACE = 60.0  # seconds after start in which fail2ban works through the bans start() preloaded

_backends: dict[str, Backend] = {}
_backends_lock = threading.Lock()


def shared_backend(name: str) -> Backend:
    """One backend object per process, so every jail's transactions go through one kernel handle."""
    with _backends_lock:
        if name not in _backends:
            _backends[name] = get_backend(name)
        return _backends[name]


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
        self._preloaded: set[str] = set()
        self._preload_deadline = 0.0
        self._refused: set[str] = set()  # bans fail2ban holds that f2bext refused (ignoreip, this host)
        self._kept: object = None  # what the last recheck() guarded: host, protected, ignoreip
        self._guard_cache: Optional[tuple[object, guard.Guard]] = None
        self._miscounts = 0  # consecutive watchdog rounds whose kernel count differed from fail2ban's
        self._share = share_options(params)
        self.spec = JailSpec.from_params(jail.name, params)
        self.backend = shared_backend(self.backend_name)
        self._fleet: Optional[Fleet] = None

    # fail2ban reads banEpoch from every action of a jail once any action repaired itself.
    banEpoch = 0

    @property
    def share(self) -> str:
        """What `fail2ban-client get JAIL action ACT share` shows: the Redis URL, password redacted."""
        return redact(self._share["share"]) if self._share else ""

    def _parsed(self, ips: Iterable[str]) -> Iterator[Network]:
        """Restored bans, minus any f2bext must refuse (the database may hold one banned before)."""
        check = self.guard()
        for ip in ips:
            try:
                net = parse_target(ip)
                check.refuse([net])
            except InputError as e:
                log.warning("[%s] f2bext does not restore a ban: %s", self._jail.name, e)
                self._refused.add(ip)
                self._preloaded.discard(ip)
                continue
            yield net

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

    def held_text(self) -> set[str]:
        """Every address the kernel should hold for the jail, as text: fail2ban's banned list, and the
        bans start() loaded that fail2ban has not worked through yet (a rebuild must keep them)."""
        if self._preloaded and MyTime.time() > self._preload_deadline:
            self._preloaded = set()  # fail2ban restored long since: whatever is left it did not restore
        pending = set(self._preloaded)  # before the banned list: an address moves from one to the other
        return (pending | {str(ip) for ip in self._jail.actions.getBanList()}) - self._refused

    def held(self) -> list[Network]:
        """held_text(), parsed, less what became a lockout since it was banned (recheck() says so)."""
        nets = []
        for ip in self.held_text():
            try:
                nets.append(parse_target(str(ip)))
            except InputError as e:
                log.warning("[%s] f2bext skips %s", self._jail.name, e)
        return self.guard().allowed(nets)

    def restorable(self) -> list[str]:
        """The bans fail2ban is about to restore from its database, chosen as Jail.restoreCurrentBans
        chooses them, so start() can load them all in one transaction.

        Reads (ip, timeofban, bantime) rows only: fail2ban's getCurrentBans builds a ticket with its
        matches per row, and a second copy of 100,000 tickets beside fail2ban's own nearly doubled
        fail2ban-server's peak memory."""
        jail, db = self._jail, getattr(self._jail, "database", None)
        if db is None:
            return []
        increment = jail._banExtra.get("increment")
        forbantime = None if increment else jail.actions.getBanTime()
        cap = jail.getMaxBanTime()  # restoreCurrentBans has getCurrentBans cap ban times at the jail's maximum
        now = MyTime.time()
        query = "SELECT ip, timeofban, bantime FROM bips WHERE jail=? AND (timeofban + bantime > ? OR bantime <= -1)"
        args: list[Any] = [jail.name, now]
        if forbantime not in (None, -1):
            query += " AND timeofban > ?"
            args.append(now - forbantime)
        out = []
        with db._lock:
            rows = db._db.execute(query, args).fetchall()
        for ip, timeofban, bantime in rows:
            if cap and cap > 0 and (bantime == -1 or bantime > cap):
                bantime = cap
            left = bantime if bantime is not None else forbantime
            if left != -1 and now - timeofban > 0:
                left -= now - timeofban
            if (left == -1 or left > 0) and not jail.filter.inIgnoreIPList(ip, log_ignore=False):
                out.append(str(ip))
        return out

    def start(self) -> None:
        watchdog.watch(self)  # also when the start fails: the watchdog builds the jail once it can
        with self._lock:
            self._save_state()
            self._preloaded = set()
            restoring = set(self.restorable())
            everything = self.held_text() | restoring
            self._preloaded, self._preload_deadline = restoring, MyTime.time() + PRELOAD_GRACE
            # A generator: 100,000 parsed addresses held at once would cost fail2ban-server 50 MB.
            self.backend.start(self.spec, self._parsed(everything))
            self._kept = self._guarded()  # every ban was just checked: the watchdog need not again
        if self._share:
            self._fleet = fleets.join(self, self._share)
            self._save_state()
        log.info("[%s] f2bext %s enforcing %s", self._jail.name, self.backend.name, self._describe())

    def _save_state(self) -> None:
        """What the command line needs to check and rebuild the jail: its spec, and what it must not ban."""
        state.save(self.backend.name, self.spec, keeps=self.keeps() + list(guard.protected()))

    def stop(self) -> None:
        watchdog.forget(self)
        if self._fleet:
            fleets.leave(self)
            self._fleet = None
        with self._lock:
            self.backend.stop(self.spec)
            state.forget(self.spec.jail)

    def flush(self) -> bool:
        with self._lock:
            self.backend.flush(self.spec)
        return True

    def ban(self, aInfo: Any) -> None:
        ip = str(aInfo["ip"])
        if aInfo["restored"] and ip in self._preloaded:
            self._preloaded.discard(ip)  # start() loaded it with the others, in one transaction
            return
        try:
            net = parse_target(ip)
            self._refuse_lockout(net)
        except InputError:
            self._refused.add(ip)
            raise
        with self._lock:
            for why in self.backend.ban(self.spec, [net], self.held):
                log.warning("[%s] f2bext: %s (found at the ban of %s); repaired", self._jail.name, why, ip)
        if not aInfo["restored"]:  # a restart restores bans, not sessions worth cutting
            self._kill(net)
            self._publish("ban", net, aInfo)

    def _refuse_lockout(self, net: Network) -> None:
        """What must stay reachable is never banned (guard.py), even when asked directly:
        `fail2ban-client set JAIL banip` skips fail2ban's own ignore checks."""
        why = self.guard().refusal(net)
        if why is None and self._jail.filter.inIgnoreIPList(to_text(net), log_ignore=False):
            why = f"it is in {guard.IGNOREIP}"  # a host name, or the jail's ignorecommand
        if why:
            log.warning("[%s] f2bext refuses to ban %s: %s", self._jail.name, to_text(net), why)
            raise InputError(f"refusing to ban {to_text(net)}: {why}")

    def _guarded(self) -> object:
        """What the guard holds for the jail now; recheck() runs when it changes."""
        return guard.host_keeps(), guard.protected(), [str(e) for e in self._jail.filter.getIgnoreIP()]

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
            fleets.recheck(self._fleet)

    def reban(self, aInfo: Any) -> None:
        self.ban(aInfo)

    def unban(self, aInfo: Any) -> None:
        self._refused.discard(str(aInfo["ip"]))
        net = parse_target(str(aInfo["ip"]))
        with self._lock:
            self.backend.unban(self.spec, [net], self.held)
        self._publish("unban", net, aInfo)

    def _publish(self, op: str, net: Network, aInfo: Any) -> None:
        if self._fleet is None or to_text(net) in fleets.unbanning:
            return
        bantime = int(aInfo["bantime"])
        expires = math.inf if bantime < 0 else float(aInfo["time"]) + bantime
        if op == "unban" and expires <= MyTime.time() + 1:
            return  # it expired: every server holds the same expiry, and may hold bans of its own
        bantime = bantime if op == "ban" else 0
        self._fleet.publish(BanEvent(op, self.spec.jail, to_text(net), bantime, expires, self._fleet.origin,
                                     f"{aInfo['failures']} failures" if op == "ban" else "unban"))

    def fleet_unban(self, ip: str) -> str:
        """Lift a ban everywhere: `fail2ban-client set JAIL action ACT fleet_unban '{"ip": "ADDR"}'`."""
        net = parse_target(ip)
        if self._fleet is None:
            raise InputError(f"jail {self.spec.jail} does not share its bans")
        self._fleet.remote.get(self.spec.jail, {}).pop(to_text(net), None)
        self._fleet.publish(BanEvent("unban", self.spec.jail, to_text(net), 0, 0.0, self._fleet.origin, "fleet_unban"))
        fleets.apply(self._fleet, self.spec.jail, "delete", [net])
        return f"unbanned {to_text(net)} on every server sharing jail {self.spec.jail}"

    def clearAllParams(self) -> None:
        """fail2ban calls this before reload(); our parameters are replaced whole by reload()."""

    def reload(self, **params: Any) -> None:
        """New parameters from `fail2ban-client reload`: keep every ban, rebuild if the spec changed."""
        share = share_options(params)
        spec = JailSpec.from_params(self._jail.name, params)
        if share != self._share:
            if self._fleet:
                fleets.leave(self)
            self._share = share
            self._fleet = fleets.join(self, share) if share else None
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
        """Repair the jail if the kernel no longer enforces it; True when a repair was made."""
        with self._lock:
            findings = self.backend.verify([self.spec])
            if not findings:
                return False
            for f in findings:
                log.warning("[%s] f2bext: %s (%s); repairing", self._jail.name, f.message, why)
            self.backend.repair(self.spec, self.held())
        return True

    def resync(self) -> None:
        """Repair a jail whose sets hold another number of bans than fail2ban does, two rounds in a row:
        a restore of saved sets brings back lifted bans that no structural check can see."""
        count = getattr(self.backend, "entries", None)  # only where the kernel keeps a count (ipset)
        if count is None:
            return
        with self._lock:
            expected = len(self.held_text())
            found = count(self.spec)
            self._miscounts = self._miscounts + 1 if found != expected else 0
            if self._miscounts >= 2:
                log.warning("[%s] f2bext: the kernel holds %d bans, fail2ban %d (saved sets restored?); "
                            "repairing", self._jail.name, found, expected)
                self.backend.repair(self.spec, self.held())
                self._miscounts = 0

    def _kill(self, net: Network) -> None:
        if self.spec.kill:
            killer.submit(self, net, self.spec)

    def report_kill(self, net: Network, report: KillReport) -> None:
        if report.conntrack or report.sockets:
            log.info("[%s] f2bext cut %s: %d conntrack entries, %d sockets", self._jail.name,
                     net, report.conntrack, report.sockets)
        for problem in report.problems:
            if problem not in self._problems_said:
                self._problems_said.add(problem)
                log.warning("[%s] f2bext: %s; the ban stands", self._jail.name, problem)

    def _describe(self) -> str:
        p = self.spec.to_params()
        return (f"{p['type']} port={p['port']} protocol={p['protocol']} blocktype={p['blocktype']} "
                f"hooks={p['hooks']} kill={p['kill']}")


class Watchdog:
    """One thread per fail2ban process: every second, a cheap structural check of all our jails.

    It lives as long as the process and idles while no jail is watched, so a jail stopping and
    another starting can never race a thread that is on its way out."""

    def __init__(self) -> None:
        self._actions: list[EnforcingAction] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, action: EnforcingAction) -> None:
        with self._lock:
            self._actions.append(action)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="f2b/f2bext-watchdog", daemon=True)
                self._thread.start()

    def forget(self, action: EnforcingAction) -> None:
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


class SessionKiller:
    """Cuts sessions in one background thread, in ban order: an IPv6, CIDR or allports kill walks
    the conntrack table (about 0.3 s per 100,000 entries), and fail2ban's ban path must not wait."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[tuple[EnforcingAction, Network, JailSpec]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, action: EnforcingAction, net: Network, spec: JailSpec) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="f2b/f2bext-kill", daemon=True)
                self._thread.start()
        self._queue.put((action, net, spec))

    def _run(self) -> None:
        while True:
            action, net, spec = self._queue.get()
            action.report_kill(net, kill_sessions([net], spec.protocols, spec.ports, spec.kill))


DEFAULT_MAX_PREFIX = "16,32"  # a peer shares no IPv4 network wider than /16, no IPv6 one wider than /32


def share_options(params: dict[str, Any]) -> dict[str, str]:
    """Take the sharing options out of an action's parameters, validated."""
    opts = {k: str(params.pop(k)) for k in ("share", "share_scope", "share_origin", "share_max_prefix") if k in params}
    if not opts.get("share"):
        if opts:
            raise InputError("share_scope, share_origin and share_max_prefix need share = redis://...")
        return {}
    check_url(opts["share"])
    parse_max_prefix(opts.setdefault("share_max_prefix", DEFAULT_MAX_PREFIX))
    if opts.setdefault("share_scope", "jail") not in SCOPES:
        raise InputError(f"share_scope must be jail or all, not {opts['share_scope'][:20]!r}")
    check_origin(opts.setdefault("share_origin", socket.gethostname()))
    return opts


class Fleets:
    """The Fleet of each Redis URL in this process, and the jails sharing through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fleets: dict[str, Fleet] = {}
        self._members: dict[str, dict[str, EnforcingAction]] = {}
        self._fleet_jails: set[str] = set()  # URLs whose share_scope = all jail exists in the kernel
        self.unbanning: set[str] = set()  # addresses a peer's unban is lifting here: not published again

    def join(self, action: EnforcingAction, opts: dict[str, str]) -> Fleet:
        url = opts["share"]
        with self._lock:
            members = self._members.setdefault(url, {})
            members[action.spec.jail] = action
            fleet = self._fleets.get(url)
            if fleet is None:
                fleet = Fleet(url, opts["share_origin"], state.lib_dir(),
                              apply=lambda jail, op, nets: self.apply(self._fleets[url], jail, op, nets),
                              jails=lambda: set(members), scope_all=opts["share_scope"] == "all",
                              allowed=lambda jail, net: self._refusal(members, jail, net),
                              max_prefix=parse_max_prefix(opts["share_max_prefix"]))
                self._fleets[url] = fleet
                # A ban of the Redis server would cut this server off the fleet for good.
                guard.protect(url, guard.resolve(fleet.host, f"the Redis server of share {fleet.url}")
                              if fleet.host else [])
                fleet.start()
                log.info("f2bext share: jail %s shares its bans through %s", action.spec.jail, fleet.url)
        return fleet

    def leave(self, action: EnforcingAction) -> None:
        with self._lock:
            for url, members in list(self._members.items()):
                if members.get(action.spec.jail) is action:
                    del members[action.spec.jail]
                if not members:
                    fleet = self._fleets.pop(url, None)
                    del self._members[url]
                    guard.unprotect(url)
                    if fleet:
                        fleet.stop()
                    if url in self._fleet_jails:
                        self._fleet_jails.discard(url)
                        action.backend.stop(fleet_spec())

    def _refusal(self, members: dict[str, EnforcingAction], jail: str, net: Network) -> Optional[str]:
        """Why a peer's ban must not be applied here: it overlaps what must stay reachable (guard.py),
        the ignoreip of the jail (of every jail, for the fleet jail) included."""
        for action in ([members[jail]] if jail in members else list(members.values())):
            why = action.guard().refusal(net)
            if why is None and action._jail.filter.inIgnoreIPList(to_text(net), log_ignore=False):
                why = f"it is in {guard.IGNOREIP}"
            if why:
                return f"{why} (jail {action.spec.jail})"
        return None if members else guard.Guard().refusal(net)

    def recheck(self, fleet: Fleet) -> None:
        """Lift the shared bans that became lockouts since they were applied, the fleet jail's included."""
        with self._lock:
            url = next((u for u, f in self._fleets.items() if f is fleet), None)
            members = dict(self._members.get(url, {})) if url else {}
        for jail, bans in list(fleet.remote.items()):
            if jail in members:
                action, spec, held = members[jail], members[jail].spec, members[jail].held
            elif jail == FLEET_JAIL and members:
                action, spec, held = next(iter(members.values())), fleet_spec(), (lambda: [])
            else:
                continue
            lifted = []
            for address in list(bans):
                why = self._refusal(members, jail, parse_target(address))
                if why:
                    log.warning("[%s] f2bext lifts a shared ban of %s: %s", jail, address, why)
                    bans.pop(address, None)
                    lifted.append(parse_target(address))
            if lifted:
                with action._lock:
                    action.backend.change_remote(spec, "delete", lifted, held)

    def apply(self, fleet: Fleet, jail: str, op: str, nets: list[Network]) -> None:
        """Put the others' bans into the jail's remote sets ("replace" loads them all in one go)."""
        url = next((u for u, f in self._fleets.items() if f is fleet), None)
        members = self._members.get(url, {}) if url else {}
        if jail in members:
            action = members[jail]
            spec, held = action.spec, action.held
        elif jail == FLEET_JAIL and members:
            action = next(iter(members.values()))
            spec, held = fleet_spec(), (lambda: [])
            if url not in self._fleet_jails:
                action.backend.start(spec, [])
                self._fleet_jails.add(url)
        else:
            return
        with action._lock:
            if op == "replace":
                action.backend.set_remote(spec, nets, held)
            else:
                action.backend.change_remote(spec, "add" if op == "add" else "delete", nets, held)
        if op == "add" and spec.kill:
            for net in nets:
                killer.submit(action, net, spec)
        if op == "delete" and jail in members:
            # An unban anywhere lifts the ban here too, the local fail2ban's own included.
            for net in nets:
                ip = to_text(net)
                if ip in action._jail.actions.getBanList():
                    self.unbanning.add(ip)
                    try:
                        action._jail.actions.removeBannedIP(ip, db=True, ifexists=True)
                    finally:
                        self.unbanning.discard(ip)


def fleet_spec() -> JailSpec:
    """share_scope = all: bans for jails this server does not run hold on every port and protocol."""
    return JailSpec.from_params(FLEET_JAIL, {"type": "allports", "protocol": "all"})


watchdog = Watchdog()
fleets = Fleets()
killer = SessionKiller()

