"""Every place f2bext leans on fail2ban beyond the interface it gives Python actions, in one module.

Checked against fail2ban 1.0.2 (Debian 12, Ubuntu 24.04) and 1.1.0 (Debian 13), whose sources agree
on all of it; tests/test_fail2ban_internals.py fails loudly when the installed fail2ban does not.
An ActionBase subclass's own `self._jail` and `self._logSys` are that interface (ActionBase.__init__
sets them; fail2ban's action.d/smtp.py reads them), and the test holds them too."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Callable, ContextManager, Optional

from fail2ban.server.ipdns import DNSUtils
from fail2ban.server.mytime import MyTime

from ..addr import Spans, is_plain, sort_singles

# The rows of fail2ban's bips table (one per address and jail) that Jail.restoreCurrentBans restores,
# chosen by SQLite rather than by Python row by row, as Fail2BanDb.getCurrentBans corrects them: a ban
# time of -2 (a database upgraded from before ban times) is the jail's, a longer one or -1 is capped at
# the jail's maximum (:cap, when above 0); then a ban counts while it lasts (-1: for ever), from a time
# of ban that may lie ahead of :now.
RESTORABLE = ("SELECT ip FROM (SELECT ip, timeofban, CASE WHEN bantime = -2 THEN :jailbantime "
              "WHEN :cap > 0 AND (bantime = -1 OR bantime > :cap) THEN :cap ELSE bantime END AS corrected "
              "FROM bips WHERE jail = :jail AND (timeofban + bantime > :now OR bantime <= -1){since}) "
              "WHERE corrected = -1 OR (corrected > 0 AND timeofban + corrected > :now)")

Single = Optional[tuple[int, int]]  # addr.parse_single's answer
Ignored = Callable[[str, Single], bool]  # ignore_check's answer: whether fail2ban ignores the address


def jail_of(action: Any) -> Any:
    """The jail an action (an ActionBase) belongs to, where ActionBase.__init__ keeps it."""
    return action._jail


def restorable(jail: Any, clear: Callable[[int, int], bool]) -> tuple[dict[int, list[int]], list[str]]:
    """The bans fail2ban is about to restore from its database, chosen as Jail.restoreCurrentBans
    chooses them (its ignore check included), sorted as addr.sort_singles sorts them for the load:
    single addresses `clear` allows, by IP version, and the rest.

    Reads the address column alone, under the database's own lock and on its connection: fail2ban's
    getCurrentBans builds a ticket with its matches per row, and a second copy of 100,000 tickets
    beside fail2ban's own nearly doubled fail2ban-server's peak memory."""
    db = getattr(jail, "database", None)
    if db is None:
        return {4: [], 6: []}, []
    forbantime = None if jail.getBanTimeExtra("increment") else jail.actions.getBanTime()
    cap = jail.getMaxBanTime()  # restoreCurrentBans has getCurrentBans cap ban times at the jail's maximum
    now = MyTime.time()
    args = {"jail": jail.name, "now": now, "cap": cap if cap and cap > 0 else 0,
            "jailbantime": jail.actions.getBanTime()}
    since = ""
    ignored = ignore_check(jail)
    with db._lock:
        if forbantime not in (None, -1):
            args["since"] = now - forbantime
            since = " AND timeofban > :since" if _mostly_older(db._db, args["since"]) else " AND +timeofban > :since"
        rows = db._db.execute(RESTORABLE.format(since=since), args)
        return sort_singles((str(ip) for (ip,) in rows), clear, skip=ignored)


def _mostly_older(connection: Any, since: float) -> bool:
    """Whether most rows of bips (every jail's) were banned before `since`, so that fail2ban's index on
    the time of ban narrows the read. SQLite takes that index whenever it can; where most rows are
    recent, reading every row in order costs a third of it (0.13 s against 0.40 s at 100,000). The
    two counts read the index alone: 5 ms at 100,000."""
    (total,), = connection.execute("SELECT count(*) FROM bips")
    (recent,), = connection.execute("SELECT count(*) FROM bips WHERE timeofban > ?", (since,))
    return recent * 3 < total


def ignore_check(jail: Any) -> Ignored:
    """fail2ban's own ignore check of a ban (Filter.inIgnoreIPList: ignoreself, ignoreip,
    ignorecommand), by integers where that tells the same: 30 µs a row, 3 s at 100,000 restored, and
    20 µs of each ban's 50, otherwise. A host name in ignoreip or an ignorecommand leaves every
    address to fail2ban's check. Good while ignore_inputs(jail) stays as it was."""
    flt = jail.filter
    entries = list(flt.getIgnoreIP())
    if flt.ignoreCommand or not all(e.isValid for e in entries):
        return lambda ip, found: flt.inIgnoreIPList(ip, log_ignore=False)
    bits = {4: 32, 6: 128}
    version = {socket.AF_INET: 4, socket.AF_INET6: 6}
    spans = []
    for e in entries:
        # Filter.inIgnoreIPList's IPAddr.isInNet: the address under the entry's mask is the entry's
        # (an entry whose address has bits below its mask matches nothing).
        v = version[e.family]
        host = (1 << (bits[v] - e.plen)) - 1
        if not e.addr & host:
            spans.append((v, e.addr, e.addr | host))
    if flt.ignoreSelf:
        spans += [(version[a.family], a.addr, a.addr) for a in DNSUtils.getSelfIPs() if a.isValid]
    kept = Spans(spans)

    def ignored(ip: str, found: Single) -> bool:
        if found is None:  # a network, or text parse_single leaves to the slow path
            return flt.inIgnoreIPList(ip, log_ignore=False)
        return kept.covers(*found)
    return ignored


def ignore_inputs(jail: Any) -> tuple[object, ...]:
    """What ignore_check's answer rests on, to compare: ignoreip, ignorecommand, ignoreself, and this
    host's own addresses as fail2ban last resolved them. Read from fail2ban's cache without
    DNSUtils.getSelfIPs, which renews its cache entry at each call: asked at every ban, it would
    never resolve them again."""
    flt = jail.filter
    return (tuple(flt.getIgnoreIP()), flt.ignoreCommand, flt.ignoreSelf,
            DNSUtils.CACHE_nameToIp.get(DNSUtils._getSelfIPs_key) if flt.ignoreSelf else None)


def restore_waits(jail: Any) -> ContextManager[Any]:
    """Held, fail2ban's own restore waits: Jail.start starts the actions thread (our start()) and
    then runs restoreCurrentBans, whose getCurrentBans takes the database's lock first. Held by
    start(), fail2ban builds its 100,000 tickets after the load, not against it for the GIL."""
    db = getattr(jail, "database", None)
    return db._lock if db is not None else contextlib.nullcontext()


def ban_count(jail: Any) -> int:
    """How many tickets the jail's ban manager holds (what Actions.getBanList would list), without the
    list: at 1,000,000 bans the list and its texts cost a second of the GIL."""
    return jail.actions.banManager.size()


def banned_texts(jail: Any) -> set[str]:
    """The text of every address the jail's ban manager holds, as str() writes it. Its keys are
    IPAddr objects, whose str() works the text out twice: .ntoa once is 0.06 s at 100,000, not 0.1,
    in a heal that has every ban to put back."""
    return {t if isinstance(t := getattr(ip, "ntoa", ip), str) else str(t) for ip in jail.actions.banManager.getBanList()}


def single_key(ip: Any) -> Optional[tuple[int, int]]:
    """(IP version, integer) of a fail2ban IPAddr that is one address addr.is_plain takes, read off
    the object with no text made; None for anything else (a network, a host name, text)."""
    family, plen = getattr(ip, "_family", None), getattr(ip, "_plen", None)
    if family == socket.AF_INET and plen == 32 and is_plain(4, ip._addr):
        return 4, ip._addr
    if family == socket.AF_INET6 and plen == 128 and is_plain(6, ip._addr):
        return 6, ip._addr
    return None


def banned_singles(jail: Any) -> tuple[dict[int, list[int]], list[str]]:
    """The addresses the jail's ban manager holds, in two: single addresses single_key reads, as
    integers by IP version (a heal reads 100,000 with no text made); and the text of the rest
    (networks, host names), as str() writes it."""
    singles: dict[int, list[int]] = {4: [], 6: []}
    rest = []
    for ip in jail.actions.banManager.getBanList():  # unordered: the keys, as they are
        found = single_key(ip)
        if found is not None:
            singles[found[0]].append(found[1])
        else:
            rest.append(t if isinstance(t := getattr(ip, "ntoa", ip), str) else str(t))
    return singles, rest


def current_bans(jail: Any) -> list[tuple[str, float, int]]:
    """(address, time of ban, ban time; -1: for ever) of each ban the jail holds now, from the tickets
    of its ban manager (Actions.banManager, which Actions.getBanList reads too)."""
    manager = jail.actions.banManager
    default = manager.getBanTime()
    return [(str(t.getID()), float(t.getTime()), int(t.getBanTime(default))) for t in manager]
