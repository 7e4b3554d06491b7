"""Every place f2bext leans on fail2ban beyond the interface it gives Python actions, in one module.

Checked against fail2ban 1.0.2 (Debian 12, Ubuntu 24.04) and 1.1.0 (Debian 13), whose sources agree
on all of it; tests/test_fail2ban_internals.py fails loudly when the installed fail2ban does not.
An ActionBase subclass's own `self._jail` and `self._logSys` are that interface (ActionBase.__init__
sets them; fail2ban's action.d/smtp.py reads them), and the test holds them too."""

from __future__ import annotations

from typing import Any

from fail2ban.server.mytime import MyTime

# fail2ban's bips table (one row per banned address and jail), as Fail2BanDb._getCurrentBans reads it.
CURRENT_BANS = "SELECT ip, timeofban, bantime FROM bips WHERE jail=? AND (timeofban + bantime > ? OR bantime <= -1)"


def jail_of(action: Any) -> Any:
    """The jail an action (an ActionBase) belongs to, where ActionBase.__init__ keeps it."""
    return action._jail


def restorable_bans(jail: Any) -> list[str]:
    """The bans fail2ban is about to restore from its database, chosen as Jail.restoreCurrentBans
    chooses them.

    Reads (ip, timeofban, bantime) rows only, under the database's own lock and on its connection:
    fail2ban's getCurrentBans builds a ticket with its matches per row, and a second copy of 100,000
    tickets beside fail2ban's own nearly doubled fail2ban-server's peak memory."""
    db = getattr(jail, "database", None)
    if db is None:
        return []
    forbantime = None if jail.getBanTimeExtra("increment") else jail.actions.getBanTime()
    cap = jail.getMaxBanTime()  # restoreCurrentBans has getCurrentBans cap ban times at the jail's maximum
    now = MyTime.time()
    query, args = CURRENT_BANS, [jail.name, now]
    if forbantime not in (None, -1):
        query += " AND timeofban > ?"
        args.append(now - forbantime)
    with db._lock:
        rows = db._db.execute(query, args).fetchall()
    out = []
    for ip, timeofban, bantime in rows:
        if cap and cap > 0 and (bantime == -1 or bantime > cap):
            bantime = cap
        left = bantime if bantime is not None else forbantime
        if left != -1 and now - timeofban > 0:
            left -= now - timeofban
        if (left == -1 or left > 0) and not jail.filter.inIgnoreIPList(ip, log_ignore=False):
            out.append(str(ip))
    return out


def current_bans(jail: Any) -> list[tuple[str, float, int]]:
    """(address, time of ban, ban time; -1: for ever) of each ban the jail holds now, from the tickets
    of its ban manager (Actions.banManager, which Actions.getBanList reads too)."""
    manager = jail.actions.banManager
    default = manager.getBanTime()
    return [(str(t.getID()), float(t.getTime()), int(t.getBanTime(default))) for t in manager]
