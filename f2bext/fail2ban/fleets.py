"""The fleet hook-up: a jail's `share = redis://...` options, and which jails of this fail2ban share
their bans through which Fleet (f2bext.fleet), whose peers' bans land in the jails' remote sets."""

from __future__ import annotations

import math
import socket
import threading
from typing import Optional, Protocol

from fail2ban.helpers import getLogger

from .. import guard, state
from ..addr import Network, parse_target, to_text
from ..backends import Backend
from ..errors import InputError
from ..fleet import FLEET_JAIL, SCOPES, BanEvent, Fleet, check_origin, check_url, parse_max_prefix, redact
from ..spec import JailSpec
from .internals import current_bans, jail_of
from .killer import KillReporter, SessionKiller

log = getLogger("fail2ban.f2bext")

DEFAULT_MAX_PREFIX = "16,32"  # a peer shares no IPv4 network wider than /16, no IPv6 one wider than /32


def share_options(opts: dict[str, str]) -> dict[str, str]:
    """An action's sharing options (share and its companions), validated, with their defaults."""
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


class Member(KillReporter, Protocol):
    """What the hook-up uses of a sharing jail's action (EnforcingAction, an ActionBase)."""

    spec: JailSpec
    backend: Backend
    _lock: state.JailLock  # every change to the jail's kernel objects takes it, the peers' bans' too
    _refused: set[str]  # bans fail2ban holds that f2bext refused: never published

    def guard(self) -> guard.Guard: ...

    def held(self) -> list[Network]: ...

    def _refusal(self, net: Network) -> Optional[str]: ...


class Fleets:
    """The Fleet of each Redis URL in this process, and the jails sharing through it."""

    options = staticmethod(share_options)
    redact = staticmethod(redact)

    def __init__(self, killer: SessionKiller) -> None:
        self._killer = killer  # a peer's ban cuts sessions here too
        self._lock = threading.Lock()
        self._fleets: dict[str, Fleet] = {}
        self._members: dict[str, dict[str, Member]] = {}
        self._fleet_jails: set[str] = set()  # URLs whose share_scope = all jail exists in the kernel
        self.unbanning: set[str] = set()  # addresses a peer's unban is lifting here: not published again

    def join(self, action: Member, opts: dict[str, str]) -> Fleet:
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
                              max_prefix=parse_max_prefix(opts["share_max_prefix"]),
                              own=lambda: self.own(members, opts["share_origin"]),
                              reached=lambda host: self._protect(url, host))
                self._fleets[url] = fleet
                self._protect(url)
                fleet.start()
                log.info("f2bext share: jail %s shares its bans through %s", action.spec.jail, fleet.url)
        return fleet

    def leave(self, action: Member) -> None:
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

    def publish(self, fleet: Fleet, op: str, jail: str, net: Network, bantime: int, expires: float,
                why: str) -> None:
        """Tell the fleet of a ban or unban made here."""
        fleet.publish(BanEvent(op, jail, to_text(net), bantime, expires, fleet.origin, why))

    def _protect(self, url: str, master: str = "") -> None:
        """A ban of the Redis server, a Sentinel or the master they name would cut this server off the
        fleet for good: kept reachable while the URL is shared through."""
        fleet = self._fleets.get(url)
        if fleet:
            hosts = fleet.hosts + ([master] if master else [])
            guard.protect(url, [k for host in dict.fromkeys(hosts)
                                for k in guard.resolve(host, f"the Redis server of share {fleet.url}")])

    @staticmethod
    def own(members: dict[str, Member], origin: str) -> list[BanEvent]:
        """The bans the local fail2ban holds now in the jails sharing through one URL, as published."""
        out = []
        for jail, action in list(members.items()):
            for address, start, bantime in current_bans(jail_of(action)):
                if address in action._refused:
                    continue
                try:
                    address = to_text(parse_target(address))
                except InputError:
                    continue
                out.append(BanEvent("ban", jail, address, bantime, math.inf if bantime < 0 else start + bantime,
                                    origin, "published again"))
        return out

    def _refusal(self, members: dict[str, Member], jail: str, net: Network) -> Optional[str]:
        """Why a peer's ban must not be applied here: it overlaps what must stay reachable (guard.py),
        the ignoreip of the jail (of every jail, for the fleet jail) included."""
        for action in ([members[jail]] if jail in members else list(members.values())):
            why = action._refusal(net)
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
                self._killer.submit(action, net, spec)
        if op == "delete" and jail in members:
            # An unban anywhere lifts the ban here too, the local fail2ban's own included.
            for net in nets:
                ip = to_text(net)
                actions = jail_of(action).actions
                if ip in actions.getBanList():
                    self.unbanning.add(ip)
                    try:
                        actions.removeBannedIP(ip, db=True, ifexists=True)
                    finally:
                        self.unbanning.discard(ip)


def fleet_spec() -> JailSpec:
    """share_scope = all: bans for jails this server does not run hold on every port and protocol."""
    return JailSpec.from_params(FLEET_JAIL, {"type": "allports", "protocol": "all"})
