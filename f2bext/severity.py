"""How bad a finding is: one scale for `verify`, the backends' checks and the doctor, valued as the
exit codes of the monitoring-plugins convention the doctor follows."""

from __future__ import annotations

from enum import IntEnum


class Severity(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2  # `verify` says "broken"
    UNKNOWN = 3  # could not be read: neither fine nor broken

    @property
    def rank(self) -> int:
        """Worse is higher: a leak seen outranks a read that failed, as in monitoring plugins."""
        return (0, 1, 3, 2)[self]


def worst(severities) -> Severity:
    return max(severities, key=lambda s: s.rank, default=Severity.OK)
