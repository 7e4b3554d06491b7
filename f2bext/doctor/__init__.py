"""`f2bext doctor`: why does a banned address still get through?

Reads fail2ban's state (control socket, log) and the kernel (nftables, iptables/ip6tables on both
backends, ipsets, conntrack, sockets), for jails using f2bext's actions or fail2ban's stock ones, and
correlates them into findings: each with a severity, a plain sentence, the evidence and the fix.
`reading.collect` reads (through the backends' readers and audit's parsers), `findings.diagnose`
correlates (pure: what the tests feed fixtures to), `render` speaks; `model` is what passes between.
"""

from .reading import action_kind, collect, read_notices
from .findings import diagnose
from .model import ActionInfo, Diagnosis, Flow, JailInfo, KernelInfo, Snapshot
from .render import CRITICAL, OK, UNKNOWN, WARNING, overall, render, render_unknown, to_json, write_prom

__all__ = ["action_kind", "collect", "read_notices", "diagnose", "ActionInfo", "Diagnosis", "Flow", "JailInfo",
           "KernelInfo", "Snapshot", "OK", "WARNING", "CRITICAL", "UNKNOWN", "overall", "render", "render_unknown",
           "to_json", "write_prom"]
