"""fail2ban databases holding N current bans of one jail, in fail2ban's own schema and rows.

Addresses never carry traffic: they are set elements only. Nine in ten are IPv4 from 100.64.0.0/10
(shared address space: 4 million addresses, enough for any N here), one in ten IPv6 from 2001:db8::/32.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from typing import Iterator, Optional

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


def rows(n: int, seed: int = 6, now: Optional[float] = None) -> Iterator[tuple]:
    """(jail, ip, timeofban, bantime, bancount, data) of n bans, banned within the last hour for a day,
    as Fail2BanDb.addBan writes a BanTicket's (tests/unit/test_bench_dbgen.py holds them to it)."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    for ip in addresses(n):
        when = now - rng.uniform(60, 3600)
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(when))
        matches = [f"{stamp} mail postfix/smtpd[{rng.randint(1000, 99999)}]: warning: unknown[{ip}]: "
                   f"SASL LOGIN authentication failed: UGFzc3dvcmQ6" for _ in range(3)]
        yield JAIL, ip, int(round(when)), BANTIME, 1, {"matches": matches, "failures": 3}


def build(path: str, n: int, seed: int = 6, now: Optional[float] = None) -> None:
    """A database at `path` with n bans of jail postfix: fail2ban's own schema (Fail2BanDb), and its
    addBan's two INSERTs, made for all rows at once (addBan builds a ticket and commits once per
    call, which took 4.5 minutes for 1,000,000 and is not what fail2ban does at start)."""
    if os.path.exists(path):
        os.unlink(path)
    logging.getLogger("fail2ban.database").setLevel(logging.ERROR)  # "New database created" is expected
    db = Fail2BanDb(path)
    db.addJail(_Jail())
    now = time.time() if now is None else now  # both passes make the same rows: a million are not held at once
    with db._lock, db._db:
        db._db.executemany("INSERT INTO bans(jail, ip, timeofban, bantime, bancount, data) VALUES(?, ?, ?, ?, ?, ?)",
                           rows(n, seed, now))
        db._db.executemany("INSERT OR REPLACE INTO bips(ip, jail, timeofban, bantime, bancount, data) "
                           "VALUES(?, ?, ?, ?, ?, ?)", ((ip, j, t, b, c, d) for j, ip, t, b, c, d in rows(n, seed, now)))
    db.close()


if __name__ == "__main__":
    import sys
    start = time.time()
    build(sys.argv[1], int(sys.argv[2]))
    print(f"{sys.argv[2]} bans in {time.time() - start:.1f}s")
