"""fail2ban databases holding N current bans of one jail, written with fail2ban's own Fail2BanDb code.

Addresses never carry traffic: they are set elements only. Nine in ten are IPv4 from 100.64.0.0/10
(shared address space: 4 million addresses, enough for any N here), one in ten IPv6 from 2001:db8::/32.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from typing import Iterator

from fail2ban.server.banmanager import BanTicket
from fail2ban.server.database import Fail2BanDb

JAIL = "postfix"
BANTIME = 86400  # the jail's bantime (1d): every ban below is current
V4_BASE = int(ipaddress.IPv4Address("100.64.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8::1000"))


def addresses(n: int) -> Iterator[str]:
    """N distinct addresses, every tenth of them IPv6."""
    v4 = v6 = 0
    for i in range(n):
        if i % 10 == 9:
            yield str(ipaddress.IPv6Address(V6_BASE + v6))
            v6 += 1
        else:
            yield str(ipaddress.IPv4Address(V4_BASE + 1 + v4))
            v4 += 1


class _Actions:
    @staticmethod
    def getBanTime() -> int:
        return BANTIME


class _Jail:
    """What Fail2BanDb.addJail and addBan read of a jail: its name and its actions' bantime."""

    name = JAIL
    actions = _Actions()


def build(path: str, n: int, seed: int = 6) -> None:
    """A database at `path` with n bans of jail postfix, banned within the last hour for a day.

    Rows go through Fail2BanDb.addBan's own code in one transaction (addBan commits once per call
    otherwise, which is the slow part, not what fail2ban does at start)."""
    if os.path.exists(path):
        os.unlink(path)
    rng = random.Random(seed)
    logging.getLogger("fail2ban.database").setLevel(logging.ERROR)  # "New database created" is expected
    db = Fail2BanDb(path)
    jail = _Jail()
    db.addJail(jail)
    now = time.time()
    add = Fail2BanDb.addBan.__wrapped__  # the undecorated method: the caller holds the transaction
    with db._lock, db._db:
        cur = db._db.cursor()
        for ip in addresses(n):
            when = now - rng.uniform(60, 3600)
            stamp = time.strftime("%b %d %H:%M:%S", time.localtime(when))
            matches = [f"{stamp} mail postfix/smtpd[{rng.randint(1000, 99999)}]: warning: unknown[{ip}]: "
                       f"SASL LOGIN authentication failed: UGFzc3dvcmQ6" for _ in range(3)]
            ticket = BanTicket(ip, when, matches)
            ticket.setBanTime(BANTIME)
            ticket.setBanCount(1)
            ticket.setData("failures", 3)
            add(db, cur, jail, ticket)
        cur.close()
    db.close()


if __name__ == "__main__":
    import sys
    start = time.time()
    build(sys.argv[1], int(sys.argv[2]))
    print(f"{sys.argv[2]} bans in {time.time() - start:.1f}s")
