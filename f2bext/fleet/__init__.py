"""The fleet wing: a ban on one server enforced on every server, through Redis.

  events.py     what servers write to each other (a ban event, origin, instance id) and its checks
  connect.py    the share URL (redis://, rediss://, unix://, redis+sentinel://) and the client it makes
  share.py      Fleet: one Redis URL's publisher and follower threads inside fail2ban-server
  health.py     which master each server follows (f2bext:servers), for the others and the doctor
  notices.py    the bounded warnings about what peers wrote
  diskqueue.py  the publisher's queue on disk, kept across outages, crashes and reboots

The hook-up to fail2ban's jails (which jails share through which Fleet) is f2bext.fail2ban.fleets."""

from __future__ import annotations

from .diskqueue import QUEUE_LIMIT, DiskQueue
from .connect import check_url
from .events import FLEET_JAIL, SCOPES, BanEvent, check_origin, parse_max_prefix, redact, too_wide
from .share import CURRENT, STREAM, STREAM_MAXLEN, Fleet

__all__ = ["BanEvent", "CURRENT", "DiskQueue", "FLEET_JAIL", "Fleet", "QUEUE_LIMIT", "SCOPES", "STREAM",
           "STREAM_MAXLEN", "check_origin", "check_url", "parse_max_prefix", "redact", "too_wide"]
