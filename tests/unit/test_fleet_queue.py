"""No shared ban lost and no peer that floods us, in one process: the disk queue, the publisher's memory, instance ids, and bounded notices."""

import json
import logging
import os
import time

import pytest

from f2bext import lab, state
from f2bext.addr import to_text
from f2bext.errors import InputError
from f2bext.fleet import BanEvent, DiskQueue, Fleet, events, notices, share
from fleet_events import BANNED, event


# -- the disk queue on its own -------------------------------------------------------------------

def test_queued_events_stay_on_disk_until_acknowledged(tmp_path):
    path = str(tmp_path / "q")
    queue = DiskQueue(path)
    queue.append([event(a).fields() for a in BANNED[:3]])
    start, count, items = queue.head(10)
    assert (count, [i["address"] for i in items]) == (3, BANNED[:3])
    assert len(DiskQueue(path)) == 3, "read is not take: a restart finds them all"
    queue.ack(start, 2)
    again = DiskQueue(path)
    assert [i["address"] for i in again.head(10)[2]] == BANNED[2:3]
    again.ack(*again.head(10)[:2])
    assert len(again) == 0 and os.path.getsize(path) == 0


def test_a_torn_or_foreign_queue_line_costs_that_line_only(tmp_path):
    path = str(tmp_path / "q")
    good = [json.dumps(event(a).fields()) for a in BANNED[:2]]
    with open(path, "w") as f:
        f.write("\n".join([good[0], '{"op": "ban", "jail": "pos', "[1, 2]", "42", '{"op": 1}', good[1],
                           '{"op": "ban", "addr']))  # the last one torn mid-write, no newline
    queue = DiskQueue(path)
    queue.append([event(BANNED[2]).fields()])
    start, count, items = queue.head(100)
    assert count == 8 and [i["address"] for i in items] == BANNED[:3]
    queue.ack(start, count)
    assert len(queue) == 0


def test_the_queue_limit_drops_the_oldest_and_keeps_acknowledgements_right(tmp_path):
    queue = DiskQueue(str(tmp_path / "q"), limit=5)
    queue.append([event(a).fields() for a in BANNED[:4]])
    start, count, _ = queue.head(4)  # in flight while more arrive and the limit cuts the head
    assert queue.append([event(a).fields() for a in BANNED[4:7]]) == 2
    queue.ack(start, count)
    assert [i["address"] for i in queue.head(10)[2]] == BANNED[4:7]


# -- the publisher's memory and the notices, in one process -----------------------------------------

def quiet_fleet(folder, origin="a", applied=None):
    """A Fleet whose Redis is absent (no socket there), its threads not started; what it applies
    goes to `applied` as (jail, op, addresses)."""
    return Fleet(f"unix://{folder}/no-redis.sock", origin, folder,
                 apply=lambda jail, op, nets: (applied if applied is not None else []).append(
                     (jail, op, [to_text(n) for n in nets])),
                 jails=lambda: {"postfix"}, allowed=lambda jail, net: "refused" if to_text(net).startswith("192.0.2.")
                 else None)


def test_the_publisher_outlives_an_unwritable_queue_and_bounds_its_memory(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    fleet = quiet_fleet(str(blocker / "lib"))  # every write under it fails: ENOTDIR
    thread = fleet._threads[0]
    with caplog.at_level(logging.INFO, logger="fail2ban.f2bext.share"):
        fleet.start()
        for n in range(share.QUEUE_LIMIT + 3_000):
            fleet.publish(event(f"100.64.{n // 256}.{n % 256}"))
        lab.Fail2banLab.wait(lambda: fleet._outbox.empty() and fleet._unsaved, "the publisher to take them all")
        assert thread.is_alive()
        fleet.stop(wait=10)
    assert not thread.is_alive()
    assert len(fleet._unsaved) == share.QUEUE_LIMIT and fleet._outbox.qsize() == 0
    said = caplog.text
    assert "cannot queue events in" in said and "dropped" in said
    assert said.count("cannot queue events in") == 1


def test_peer_spam_costs_a_bounded_memory_and_log(tmp_path, caplog):
    fleet = quiet_fleet(str(tmp_path))
    clock = [1000.0]
    fleet._notices = notices.Notices(clock=lambda: clock[0])
    common = {"op": "ban", "jail": "postfix", "bantime": "600", "expires": str(time.time() + 600), "origin": "evil"}
    with caplog.at_level(logging.WARNING, logger="fail2ban.f2bext.share"):
        for n in range(20_000):
            fleet._receive(f"{n}-0".encode(), dict(common, address=f"bad-{n}"))
            fleet._receive(f"{n}-1".encode(), dict(common, address=f"192.0.2.{n % 256}"))
        assert len(caplog.records) == 2 * notices.NOTICE_BURST
        clock[0] += notices.NOTICE_PERIOD
        fleet._notices.tick()
    assert len(fleet._said) == 0 and len(fleet._notices._windows) == 0
    summaries = [r.getMessage() for r in caplog.records[2 * notices.NOTICE_BURST:]]
    assert len(summaries) == 2
    assert any("19990 more of these in the last minute (entries skipped)" in s for s in summaries)
    assert any("19990 more of these in the last minute (bans refused)" in s for s in summaries)


def test_the_instance_id_is_made_once_and_kept(tmp_path):
    folder = str(tmp_path / "lib")
    first = events.instance_id(folder)
    assert events.INSTANCE.fullmatch(first) and events.instance_id(folder) == first
    assert oct(os.stat(os.path.join(folder, "instance-id")).st_mode & 0o777) == "0o600"
    with open(os.path.join(folder, "instance-id"), "w") as f:
        f.write("not an id\n")
    assert events.instance_id(folder) not in (first, "not an id")


def test_own_events_are_known_by_instance_and_older_ones_still_apply(tmp_path, caplog):
    applied = []
    fleet = quiet_fleet(str(tmp_path), origin="mail", applied=applied)
    mine = event("203.0.113.50", origin="mail", instance=fleet.instance)
    twin = event("203.0.113.51", origin="mail", instance="f" * 32)
    older = event("203.0.113.52", origin="mail")  # from a version before instance ids
    clone = event("203.0.113.53", origin="mail", instance=fleet.instance)  # our id, not sent by us
    fleet._remember([mine])
    with caplog.at_level(logging.WARNING, logger="fail2ban.f2bext.share"):
        for n, e in enumerate((mine, twin, older, clone, twin, clone)):
            fields = {k: v for k, v in e.fields().items() if v or k != "instance"}
            fleet._receive(f"{n}-0".encode(), fields)
    assert [nets for _jail, _op, nets in applied] == [[a] for a in ("203.0.113.51", "203.0.113.52", "203.0.113.53",
                                                                    "203.0.113.51", "203.0.113.53")]
    assert caplog.text.count("publishes to") == 1 and caplog.text.count("did not send it") == 1
    with pytest.raises(InputError):
        BanEvent.parse(dict(twin.fields(), instance="x" * 33), time.time())


def test_the_queue_survives_a_reboot_by_default():
    env = dict(os.environ)
    os.environ.pop("F2BEXT_STATE_DIR", None)
    try:
        assert state.lib_dir() == "/var/lib/f2bext"
    finally:
        os.environ.clear()
        os.environ.update(env)
