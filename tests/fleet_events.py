"""The ban events the fleet tests publish, for tests/unit/test_fleet_queue.py and tests/lab/test_fleet_loss.py."""

import time

from f2bext.fleet import BanEvent

BANNED = [f"203.0.113.{n}" for n in range(100, 120)]


def event(address, op="ban", origin="a", instance=""):
    return BanEvent(op, "postfix", address, 600, time.time() + 600, origin, "test", instance)
