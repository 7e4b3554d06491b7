"""The fleet's warnings about what peers wrote, bounded whatever they write: entries skipped or
refused (a burst a minute, then one summary), and another server under our origin or our instance id
(once an hour)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

from .events import BanEvent

NOTICE_BURST, NOTICE_PERIOD = 10, 60.0  # lines about peers' entries: this many a minute, then one summary
TWIN_PERIOD = 3600.0  # seconds between warnings that another server publishes under our origin

log = logging.getLogger("fail2ban.f2bext.share")


class Notices:
    """Warnings about what peers wrote, bounded whatever they write: per kind, the first NOTICE_BURST
    lines of each minute, then one summary line for the rest of it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, list[Any]] = {}  # kind -> [start, lines said, lines held back, latest]

    def say(self, kind: str, message: str, *args: Any) -> None:
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= NOTICE_PERIOD:
            self._close(kind)
            window = self._windows[kind] = [now, 0, 0, ""]
        if window[1] < NOTICE_BURST:
            window[1] += 1
            log.warning(message, *args)
        else:
            window[2] += 1
            window[3] = message % args

    def tick(self) -> None:
        """Summarize the minutes that ended (the follower calls this about every second)."""
        now = self._clock()
        for kind in [k for k, w in self._windows.items() if now - w[0] >= NOTICE_PERIOD]:
            self._close(kind)

    def _close(self, kind: str) -> None:
        window = self._windows.pop(kind, None)
        if window and window[2]:
            log.warning("f2bext share: %d more of these in the last minute (%s), the latest: %s",
                        window[2], kind, window[3])


class Doubles:
    """Warnings that another server shares this one's origin or instance id."""

    def __init__(self) -> None:
        self._twin_said = self._clone_said = -math.inf

    def twin(self, event: BanEvent, url: str, origin: str) -> None:
        """Another live server publishes under our origin: sharing works (instance ids tell the two
        apart), but logs and `f2bext doctor` cannot; an hour between warnings, whatever a peer sends."""
        now = time.monotonic()
        if now - self._twin_said >= TWIN_PERIOD:
            self._twin_said = now
            log.warning("f2bext share: another server (instance %s) publishes to %s as %r, this server's "
                        "origin; give each server its own share_origin", event.instance, url, origin)

    def clone(self, event: BanEvent, id_path: str) -> None:
        now = time.monotonic()
        if now - self._clone_said >= TWIN_PERIOD:
            self._clone_said = now
            log.warning("f2bext share: %s's %s of %s in jail %s carries this server's instance id, and this "
                        "server did not send it: if this repeats, another server has a copy of %s (a cloned "
                        "image?); delete it there and restart that fail2ban", event.origin, event.op,
                        event.address, event.jail, id_path)
