"""The bench's fail2ban databases hold exactly the rows fail2ban's own Fail2BanDb.addBan writes."""

import os
import sys

from fail2ban.server.banmanager import BanTicket
from fail2ban.server.database import Fail2BanDb

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import dbgen  # noqa: E402


def table(path, name):
    db = Fail2BanDb(path)
    try:
        return db._db.execute(f"SELECT * FROM {name} ORDER BY ip").fetchall()
    finally:
        db.close()


def test_rows_are_those_addban_writes(tmp_path):
    made = str(tmp_path / "made.sqlite3")
    now = 1_800_000_000.0
    dbgen.build(made, 25, now=now)
    byhand = str(tmp_path / "addban.sqlite3")
    db = Fail2BanDb(byhand)
    db.addJail(dbgen._Jail())
    for jail, ip, when, bantime, count, data in dbgen.rows(25, now=now):
        ticket = BanTicket(ip, when, data["matches"])
        ticket.setBanTime(bantime)
        ticket.setBanCount(count)
        ticket.setData("failures", data["failures"])
        db.addBan(dbgen._Jail(), ticket)
    db.close()
    for name in ("bans", "bips"):
        assert table(made, name) == table(byhand, name)
    assert len(table(made, "bips")) == 25
