"""The fail2ban wing: what runs inside fail2ban-server.

  action.py     EnforcingAction, the ActionBase subclass action.d/f2bext-*.py hand to fail2ban
  watchdog.py   the thread that repairs a flushed or restored ruleset within a second or two
  killer.py     the thread that cuts a ban's sessions off fail2ban's ban path
  fleets.py     the `share` options, and which jails share their bans through which Fleet
  internals.py  the one module that touches fail2ban's private internals

Inside this package `fail2ban` is still fail2ban's own package (imports are absolute)."""

from __future__ import annotations

from .action import EnforcingAction, shared_backend

__all__ = ["EnforcingAction", "shared_backend"]
