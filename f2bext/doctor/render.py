"""The doctor's words: the plugin line with perfdata, the findings per jail, --json, and the
node_exporter textfile metrics."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict

from ..severity import Severity, worst
from .model import Diagnosis, Snapshot
from .shares import describe

OK, WARNING, CRITICAL, UNKNOWN = Severity.OK, Severity.WARNING, Severity.CRITICAL, Severity.UNKNOWN


def overall(findings: list[Diagnosis]) -> Severity:
    """The worst finding's severity: CRITICAL over UNKNOWN over WARNING."""
    return worst(d.severity for d in findings)


def perfdata(snap: Snapshot, findings: list[Diagnosis]) -> dict[str, int]:
    return {
        "jails": len(snap.jails),
        "banned": sum(len(j.banned) for j in snap.jails),
        "leaking": sum(1 for d in findings if d.code in ("not-enforced", "shadowed", "jump-missing", "hook-missing",
                                                          "ipv6-uncovered", "dnat-bypass", "interface-tied")),
        "sessions": sum(1 for d in findings if d.code == "sessions-alive"),
        "notices_1h": sum(j.notices_hour for j in snap.jails),
        "critical": sum(1 for d in findings if d.severity == CRITICAL),
        "warning": sum(1 for d in findings if d.severity == WARNING),
    }


def summary_line(snap: Snapshot, findings: list[Diagnosis]) -> str:
    code = overall(findings)
    perf = " ".join(f"{k}={v}" for k, v in perfdata(snap, findings).items())
    if code == OK:
        what = f"{len(snap.jails)} jails, {perfdata(snap, findings)['banned']} bans, every ban holds"
        what += f"; {ownership(snap)}" if ownership(snap) else ""
    else:
        top = [d for d in findings if d.severity == code]
        what = "; ".join(f"{d.jail}: {d.message}" for d in top[:3]) + (f" (+{len(top) - 3} more)" if len(top) > 3 else "")
    return f"F2BEXT DOCTOR {code.name} - {what} | {perf}"


def ownership(snap: Snapshot) -> str:
    """Whether table inet f2bext is safe from other processes, when a jail bans there; else ""."""
    if not any(a.kind == "f2bext-nftables" for j in snap.jails for a in j.actions):
        return ""
    if snap.kernel.nft_owner:
        return (f"table inet f2bext belongs to {snap.kernel.nft_owner}: no other process can flush or delete it "
                "(stop fail2ban to remove it)")
    return ("table inet f2bext has no owner: a flush of the ruleset wipes it until f2bext puts it back "
            "(owner = no, .conf jails only, or a table made before fail2ban started)")


def render(snap: Snapshot, findings: list[Diagnosis]) -> str:
    lines = [summary_line(snap, findings)] + [describe(s) for s in snap.shares]
    if not findings:
        return "\n".join(lines)
    lines += [ownership(snap)] if ownership(snap) else []
    jails = sorted({d.jail for d in findings}, key=lambda j: -max(d.severity.rank for d in findings if d.jail == j))
    for jail in jails:
        lines.append(f"\n[{jail}]")
        for d in (d for d in findings if d.jail == jail):
            lines.append(f"  {d.severity.name:8} {d.message}")
            if d.evidence:
                lines.append(f"           evidence: {d.evidence}")
            if d.fix:
                lines.append(f"           fix: {d.fix}")
    return "\n".join(lines)


def to_json(snap: Snapshot, findings: list[Diagnosis]) -> str:
    return json.dumps({"status": overall(findings).name, "summary": summary_line(snap, findings),
                       "perfdata": perfdata(snap, findings), "nft_table_owner": snap.kernel.nft_owner,
                       "shares": [s.status for s in snap.shares],
                       "findings": [dict(asdict(d), severity=d.severity.name) for d in findings]}, indent=2)


def render_unknown(why: str, as_json: bool) -> str:
    """The one line (or, for --json, the document) when nothing could be checked."""
    line = f"F2BEXT DOCTOR {UNKNOWN.name} - {why}"
    if not as_json:
        return line
    return json.dumps({"status": UNKNOWN.name, "summary": line, "perfdata": {}, "findings": []}, indent=2)


def write_prom(path: str, snap: Snapshot, findings: list[Diagnosis]) -> None:
    """node_exporter textfile metrics, written atomically (temporary file, then rename)."""
    lines = ["# HELP f2bext_doctor_status 0 ok, 1 warning, 2 critical, 3 unknown", "# TYPE f2bext_doctor_status gauge",
             f"f2bext_doctor_status {int(overall(findings))}",
             "# HELP f2bext_jail_banned addresses fail2ban holds banned", "# TYPE f2bext_jail_banned gauge"]
    lines += [f'f2bext_jail_banned{{jail="{j.name}"}} {len(j.banned)}' for j in snap.jails]
    lines += ["# HELP f2bext_jail_findings findings by severity", "# TYPE f2bext_jail_findings gauge"]
    for j in snap.jails:
        for sev in (WARNING, CRITICAL, UNKNOWN):
            n = sum(1 for d in findings if d.jail == j.name and d.severity == sev)
            lines.append(f'f2bext_jail_findings{{jail="{j.name}",severity="{sev.name.lower()}"}} {n}')
    lines += ["# HELP f2bext_already_banned_notices notices in fail2ban's log", "# TYPE f2bext_already_banned_notices gauge"]
    for j in snap.jails:
        lines.append(f'f2bext_already_banned_notices{{jail="{j.name}",window="1h"}} {j.notices_hour}')
        lines.append(f'f2bext_already_banned_notices{{jail="{j.name}",window="1d"}} {j.notices_day}')
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".f2bext-doctor-")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
