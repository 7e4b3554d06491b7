"""The doctor's view of fleet sharing: which master each share URL follows, as the running fail2ban
tells it (`get JAIL action ACT share_status`, no Redis round trip), and findings when servers
disagree on the master or sharing is stalled. What peers wrote was checked by fail2ban (health.py)."""

from __future__ import annotations

import json
from typing import Any, Optional

from ..severity import Severity
from .model import Diagnosis, JailInfo, Share

STALL = 30.0  # seconds without an answer from Redis, or with events waiting unsent: sharing is stalled
LIVE = 30.0  # a peer's entry this fresh is a server that shares now (they write one every 5 s)


def read_shares(sock: Optional[str], jails: list[JailInfo]) -> list[Share]:
    """Each share URL's status, once, with the jails sharing through it; [] when none shares."""
    from ..f2bsocket import Fail2banSocket
    by_url: dict[str, tuple[list[str], dict[str, Any]]] = {}
    with Fail2banSocket(sock) as f2b:
        for jail in jails:
            for action in jail.actions:
                if not action.kind.startswith("f2bext"):
                    continue
                try:
                    status = json.loads(f2b.send(["get", jail.name, "action", action.name, "share_status"]) or "{}")
                except (OSError, ValueError):
                    continue
                if isinstance(status, dict) and status.get("url"):
                    by_url.setdefault(status["url"], ([], status))[0].append(jail.name)
    return [Share(tuple(names), status) for names, status in by_url.values()]


def servers(n: int) -> str:
    return f"{n} other server follows" if n == 1 else f"{n} other servers follow"


def describe(share: Share) -> str:
    """One line: the URL, the master it follows, and whether the other servers follow the same one."""
    s = share.status
    if not s.get("master_id"):
        return f"share {s['url']}: no master reached yet"
    live = [p for p in s.get("peers", []) if p.get("age", LIVE) < LIVE]
    others = [p for p in live if p.get("master_id") != s["master_id"]]
    agree = f"{servers(len(live) - len(others))} it too" + (f", {servers(len(others))} another" if others else "")
    via = " (named by the Sentinels)" if s.get("sentinel") else ""
    return (f"share {s['url']}: follows the master at {s.get('master')}{via}, run id {s['master_id'][:8]}; {agree}; "
            f"{s.get('failovers', 0)} master changes since fail2ban started")


def share_findings(shares: list[Share]) -> list[Diagnosis]:
    """share-stalled: no answer from Redis, or events waiting to be sent, for STALL seconds or more;
    share-split: servers follow different masters."""
    out = []
    for share in shares:
        s, jail = share.status, ",".join(share.jails)
        now = float(s.get("now", 0))
        if not s.get("contact") or now - float(s["contact"]) >= STALL:
            since = f"for {now - float(s['contact']):.0f} s" if s.get("contact") else "since fail2ban started"
            out.append(Diagnosis(jail, Severity.WARNING, "share-stalled",
                                 f"sharing through {s['url']} is stalled: no answer from Redis {since}",
                                 fix="check that Redis (or its Sentinels) answers from this host: redis-cli PING"))
        elif s.get("queued") and s.get("pending_since") and now - float(s["pending_since"]) >= STALL:
            out.append(Diagnosis(jail, Severity.WARNING, "share-stalled",
                                 f"{s['queued']} bans and unbans wait to be published to {s['url']} for "
                                 f"{now - float(s['pending_since']):.0f} s", fix="see fail2ban's log: f2bext share"))
        others = [p for p in s.get("peers", []) if p.get("age", LIVE) < LIVE and p.get("master_id") != s.get("master_id")]
        if s.get("master_id") and others:
            seen = "; ".join(f"{p['origin']} follows {p['address']} (run id {p['master_id'][:8]})" for p in others[:8])
            out.append(Diagnosis(jail, Severity.WARNING, "share-split",
                                 f"servers disagree on the master of {s['url']}: this one follows {s.get('master')}, "
                                 f"{servers(len(others))} another", seen,
                                 "check that the Sentinels agree: redis-cli -p 26379 SENTINEL get-master-addr-by-name NAME"))
    return out
