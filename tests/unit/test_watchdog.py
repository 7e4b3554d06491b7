"""The watchdog's own bookkeeping, pure (its looks and heals run against the kernel in tests/lab)."""

import pytest

from f2bext.fail2ban.watchdog import Watchdog


def test_nested_quiet_loads_leave_the_group_once_and_join_it_again_after_the_last():
    class Events:
        said: list = []

        def pause(self):
            self.said.append("pause")

        def resume(self):
            self.said.append("resume")

    dog, events = Watchdog(), Events()
    dog._events = events
    with dog.quiet():
        with dog.quiet():
            assert events.said == ["pause"]
        assert events.said == ["pause"]
    assert events.said == ["pause", "resume"]
    with pytest.raises(RuntimeError):
        with dog.quiet():
            raise RuntimeError("a load that failed")
    assert events.said == ["pause", "resume", "pause", "resume"]
