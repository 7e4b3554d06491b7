"""The benchmark's tables (Markdown, also printed) and its chart, from the results run.py gathered."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Optional

STOCK = ["nftables-multiport", "iptables-multiport", "iptables-ipset-proto6"]
OURS_PY = ["f2bext-nftables.py", "f2bext-ipset.py"]
OURS_CONF = ["f2bext-nftables", "f2bext-ipset"]
OURS = OURS_PY + OURS_CONF
BASELINE = "bench-noop.py"  # fail2ban itself: an action that does nothing
SIZES = (1_000, 10_000, 100_000)
TWENTY_K = 20_000
MILLION = 1_000_000  # the Python actions and the baseline only, once
UNCAPPED_STOCK = STOCK[0]  # runs uncapped once at CHECKED_N: the check of the extrapolation
CHECKED_N = 3_000  # above what a fast machine's stock action restores within the 10 s cap (2,000 in 8.8 s)
LABEL = {"f2bext-nftables": "f2bext-nftables.conf", "f2bext-ipset": "f2bext-ipset.conf",
         BASELINE: "baseline: no-op action"}


def label(action: str) -> str:
    return LABEL.get(action, action) + (" (stock)" if action in STOCK else "")


# ---- restore estimates ------------------------------------------------------------------------

def _samples(results: dict, action: str) -> dict[int, list[dict]]:
    """The runs of each N, every sample of it."""
    out: dict[int, list[dict]] = {}
    for r in results["restore"]:
        if r["action"] == action and r["series"] and not r.get("check"):
            out.setdefault(r["n"], []).append(r)
    return out


def _median_run(runs: list[dict]) -> dict:
    """The sample whose time is the median (the middle one by enforcement, capped ones last)."""
    ordered = sorted(runs, key=lambda r: (r["enforced_s"] is None, r["enforced_s"] or 0, -r["series"][-1][1]))
    return ordered[(len(ordered) - 1) // 2]


def _runs(results: dict, action: str) -> dict[int, dict]:
    """One run per N, the median sample: for the chart and the memory table."""
    return {n: _median_run(runs) for n, runs in _samples(results, action).items()}


def extrapolate(run: dict, n: int) -> Optional[float]:
    """Seconds to n enforced bans, going on at the rate of the run's last stretch (the last 40%,
    at least 10 s). Stock rates fall as the ruleset grows, so this flatters them."""
    series = [(t, c) for t, c in run["series"]]
    if run.get("enforced_s") is not None:
        series = [(t, c) for t, c in series if t <= run["enforced_s"]]
    t1, c1 = series[-1]
    window = max(10.0, 0.4 * t1)
    t0, c0 = next((t, c) for t, c in series if t >= t1 - window)
    if t1 <= t0 or c1 <= c0:
        return None
    return t1 + (n - c1) / ((c1 - c0) / (t1 - t0))


@dataclass(frozen=True)
class Estimate:
    """Seconds until N bans were enforced over a case's samples: median and spread."""
    median: Optional[float]
    low: Optional[float] = None
    high: Optional[float] = None
    samples: int = 0
    basis: Optional[int] = None  # extrapolated from the capped runs at this N; None when measured

    @property
    def extrapolated(self) -> bool:
        return self.basis is not None


def _estimate(values: list[Optional[float]], basis: Optional[int]) -> Estimate:
    known = sorted(v for v in values if v is not None)
    if not known:
        return Estimate(None)
    return Estimate(statistics.median(known), known[0], known[-1], len(known), basis)


def restore_time(results: dict, action: str, n: int, basis: Optional[int] = None) -> Estimate:
    """Seconds until n bans were enforced: measured where every sample at n finished, else each
    sample extrapolated from the run at n (capped) or from the nearest smaller N (`basis` forces one)."""
    runs = _samples(results, action)
    if basis is None:
        if n in runs and all(r["enforced_s"] is not None for r in runs[n]):
            return _estimate([r["enforced_s"] for r in runs[n]], None)
        basis = n if n in runs else next((m for m in sorted(runs, reverse=True) if m < n), None)
    if basis is None or basis not in runs:
        return Estimate(None)
    return _estimate([r["enforced_s"] if basis == n and r["enforced_s"] is not None else extrapolate(r, n)
                      for r in runs[basis]], basis)


def lost_after(run: dict) -> int:
    """Bans the kernel dropped again after it first held all N (a repair that forgot some)."""
    if not run or run.get("enforced_s") is None:
        return 0
    # A count below zero is no count (the baseline enforces nothing; fail2ban's own progress stands in).
    return run["n"] - min((c for t, c in run["series"] if t >= run["enforced_s"] and c >= 0), default=run["n"])


def most_lost(results: dict, action: str, n: int) -> int:
    return max((lost_after(r) for r in _samples(results, action).get(n, [])), default=0)


def duration(seconds: Optional[float], extrapolated: bool = False) -> str:
    if seconds is None:
        return "n/a"
    mark = "~" if extrapolated else ""
    star = " *" if extrapolated else ""
    if seconds < 100:
        return f"{mark}{seconds:.2f} s{star}" if seconds < 10 else f"{mark}{seconds:.1f} s{star}"
    if seconds < 3600:
        return f"{mark}{seconds / 60:.1f} min{star}" if seconds < 600 else f"{mark}{seconds / 60:.0f} min{star}"
    return f"{mark}{seconds / 3600:.1f} h{star}"


def spread(e: Estimate) -> str:
    """`median (low–high, k runs)`, extrapolated ones marked."""
    text = duration(e.median, e.extrapolated)
    if e.samples > 1:
        text += f" ({duration(e.low)} – {duration(e.high)})"
    return text


def ratio(a: Optional[float], b: Optional[float]) -> str:
    if not a or not b:
        return "n/a"
    r = a / b
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


# ---- tables -----------------------------------------------------------------------------------

def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows), ""]


RESTORE_SIZES = (1_000, 10_000, TWENTY_K, 100_000, MILLION)


def vmhwm_mib(results: dict, action: str, n: int) -> Optional[float]:
    """Median peak memory over the samples at n."""
    values = [r["vmhwm_kib"] / 1024 for r in _samples(results, action).get(n, []) if r.get("vmhwm_kib")]
    return statistics.median(values) if values else None


def _capped(results: dict, action: str, n: int) -> bool:
    return any(r["enforced_s"] is None for r in _samples(results, action).get(n, []))


def restore_tables(results: dict) -> list[str]:
    out = ["### 1. Restore at start: fail2ban-server start until every ban is in the kernel", "",
           f"Median of {results.get('samples', 1)} runs per case, (fastest–slowest) beside it.", ""]
    rows, notes = [], []
    for action in OURS + STOCK + [BASELINE]:
        cells = [label(action)]
        for n in RESTORE_SIZES:
            e = restore_time(results, action, n)
            if e.median is None or (n not in _samples(results, action) and (action not in STOCK or n == MILLION)):
                cells.append("")
                continue
            lost = most_lost(results, action, n)
            cells.append(spread(e) + (f", then {lost:,} lost †" if lost else ""))
            if e.extrapolated:
                notes.append(_basis_note(results, action, n, e.basis))
        for n in (100_000, MILLION):
            run = _runs(results, action).get(n, {})
            cells.append(duration(run.get("fail2ban_s")) if run.get("fail2ban_s") is not None else "-")
        rows.append(cells)
    out += _table(["action", *(f"N = {n:,}" for n in RESTORE_SIZES), "fail2ban done, N = 100,000",
                   "fail2ban done, N = 1,000,000"], rows)
    out += ["\\* extrapolated: the run was capped and the rest is assumed to go on at the rate of its last",
            "stretch (its last 40%, at least 10 s), from the runs named below. Stock rates fall as the ruleset",
            "grows, so these flatter the stock actions. *fail2ban done*: fail2ban has logged `Restore Ban` for",
            "every address (its own bookkeeping). *baseline*: fail2ban-server with a Python action that does",
            "nothing (bench/bench-noop.py): fail2ban's own cost of restoring N tickets, nothing enforced.",
            "† after all N were enforced, the kernel lost that many again before the run ended (fail2ban.log",
            "in bench/out/work/ says why).", "", "Extrapolated cells, and what each rests on:", ""]
    out += [f"- {note}" for note in notes] + [""]
    out += extrapolation_check(results) + load_done_table(results)

    out += ["Speed-up of restore at start (stock time ÷ f2bext time, medians):", ""]
    rows = []
    for action in OURS:
        for n in RESTORE_SIZES:
            ours = restore_time(results, action, n).median
            if ours is None or n not in _samples(results, action):
                continue
            rows.append([label(action), f"{n:,}"] + [ratio(restore_time(results, s, n).median, ours) for s in STOCK])
    out += _table(["action", "N", *(f"vs {s}" for s in STOCK)], rows)
    out += ["### 5. Peak memory of fail2ban-server (VmHWM, MiB, median) at the end of each restore run", ""]
    rows = []
    for action in OURS + STOCK + [BASELINE]:
        cells = [label(action)]
        for n in SIZES + (MILLION,):
            mib = vmhwm_mib(results, action, n)
            cells.append("n/a" if mib is None else f"{mib:.0f}" + (" (capped)" if _capped(results, action, n) else ""))
        rows.append(cells)
    for action in OURS_PY:
        for stock in STOCK + [BASELINE]:
            rows.append([f"{label(action)} ÷ {label(stock)}"]
                        + [ratio(vmhwm_mib(results, action, n), vmhwm_mib(results, stock, n))
                           for n in SIZES + (MILLION,)])
    out += _table(["action", "N = 1,000", "N = 10,000", "N = 100,000", "N = 1,000,000"], rows)
    out += ["A capped run stops early, but by then fail2ban has read every ticket from its database",
            "(restoreCurrentBans queues them all at once), so the capped figures are close to what a finished",
            "run would show; the baseline, which does finish, is the fairer yardstick at N = 100,000.", ""]
    return out


def load_done_table(results: dict) -> list[str]:
    """When each Python action logged that its start() had loaded every ban (the kernel acknowledged
    each transaction by then): at 1,000,000 the bench's own read-back of the sets takes seconds."""
    rows = []
    for action in OURS_PY:
        cells = [label(action)]
        for n in SIZES + (MILLION,):
            said = sorted(r["action_said_s"] for r in _samples(results, action).get(n, []) if r.get("action_said_s"))
            cells.append(duration(statistics.median(said)) if said else "")
        rows.append(cells)
    if not any(any(c for c in row[1:]) for row in rows):
        return []
    return ["The same starts as the action's log tells them: seconds from fail2ban-server's start until the",
            "action logged `enforcing`, its load of every ban done (median):", "",
            *_table(["action", *(f"N = {n:,}" for n in SIZES + (MILLION,))], rows)]


def _basis_note(results: dict, action: str, n: int, basis: int) -> str:
    runs = _samples(results, action)[basis]
    reached = statistics.median(r["series"][-1][1] for r in runs)
    seconds = statistics.median(r["series"][-1][0] for r in runs)
    return (f"{label(action)}, N = {n:,}: from the {len(runs)} runs at N = {basis:,}, capped at "
            f"{runs[0]['cap']:.0f} s, which had {reached:,.0f} of {basis:,} enforced after {seconds:.0f} s (medians)")


def extrapolation_check(results: dict) -> list[str]:
    """The uncapped stock run against what its capped runs at the same N predicted."""
    checked = [r for r in results["restore"] if r.get("check") and r.get("enforced_s") is not None
               and r["action"] == UNCAPPED_STOCK and r["n"] == CHECKED_N]
    predicted = restore_time(results, UNCAPPED_STOCK, CHECKED_N)
    if not checked or predicted.median is None or predicted.basis not in (None, CHECKED_N):
        return []  # a run recorded with another CHECKED_N, or its capped runs at this N missing
    measured = checked[0]["enforced_s"]
    if not predicted.extrapolated:  # a fast machine: the capped run finished within its cap
        return [f"Check of the extrapolation: none to check; {label(UNCAPPED_STOCK)} at N = {CHECKED_N:,} "
                f"finished within its cap ({duration(predicted.median)}), and uncapped in {duration(measured)}.", ""]
    return [f"Check of the extrapolation: {label(UNCAPPED_STOCK)} ran uncapped at N = {CHECKED_N:,} and took "
            f"{duration(measured)}; extrapolated from its capped runs at that N it would have taken "
            f"{duration(predicted.median, True)}, so the extrapolation is "
            f"{abs(1 - predicted.median / measured) * 100:.0f}% "
            f"{'short of' if predicted.median < measured else 'above'} the measured time.", ""]


def _action_time(results: dict, action: str, preload: int, other_rules: int = 0) -> dict:
    return next((a for a in results["action_time"] if a["action"] == action and a["preload"] == preload
                 and a.get("other_rules", 0) == other_rules and "ban" in a), {})


def action_tables(results: dict) -> list[str]:
    out = ["### 2. Per-ban action time (ms): the action's ban(), in-process on fail2ban's own objects", ""]
    rows = []
    for action in OURS + STOCK:
        empty, full = _action_time(results, action, 0), _action_time(results, action, 100_000)
        cells = [label(action)]
        for a in (empty, full):
            cells += [f"{a['ban']['p50_ms']:.3f}", f"{a['ban']['p99_ms']:.3f}"] if a else ["n/a", "n/a"]
        cells.append(f"{full.get('preloaded', 0):,}")
        rows.append(cells)
    out += _table(["action", "p50, 0 banned", "p99, 0 banned", "p50, 100,000 banned", "p99, 100,000 banned",
                   "actually preloaded"], rows)
    rows = []
    for action in OURS:
        ours = _action_time(results, action, 100_000).get("ban", {}).get("p50_ms")
        rows.append([label(action)] + [ratio(_action_time(results, s, 100_000).get("ban", {}).get("p50_ms"), ours)
                                       for s in STOCK])
    out += ["Speed-up per ban at 100,000 banned (stock p50 ÷ f2bext p50):", ""]
    out += _table(["action", *(f"vs {s}" for s in STOCK)], rows)
    rows = []
    for a in results["action_time"]:
        if a.get("other_rules") and "ban" in a:
            rows.append([label(a["action"]), f"{a['other_rules']:,}", f"{a['ban']['p50_ms']:.3f}",
                         f"{a['ban']['p99_ms']:.3f}", f"{a['verify']['p50_ms']:.3f}"])
    if rows:
        out += ["The same with 100,000 banned on a host whose firewall holds other rules (here iptables-nft",
                "rules in a chain of their own, as Docker or firewalld leave them); the tables above are taken in",
                "a namespace holding nothing but the jail:", ""]
        out += _table(["action", "other rules", "ban p50 ms", "ban p99 ms", "verify p50 ms"], rows)

    out += ["### 3. Verify and repair with 100,000 bans", ""]
    rows = []
    for action in OURS + STOCK:
        a = _action_time(results, action, 100_000)
        if not a or "verify" not in a:
            continue
        v = a["verify"]
        if "repair" in a:
            rows.append([label(action), "backend.verify()", f"{v['p50_ms']:.3f}", f"{v['p99_ms']:.3f}",
                         f"{a['repair']['p50_ms']:.0f} (held(): {a['held']['p50_ms']:.0f})"])
        else:
            rows.append([label(action), "actioncheck", f"{v['p50_ms']:.3f}", f"{v['p99_ms']:.3f}",
                         "actionrepair: `f2bext repair`" if action in OURS_CONF
                         else "none: stop, start, re-ban every ticket"])
    out += _table(["action", "check", "p50 ms", "p99 ms", "repair ms"], rows)
    out += heal_table(results)
    return out


def heal_table(results: dict) -> list[str]:
    rows = []
    for action in OURS_PY:
        heal = _action_time(results, action, 100_000).get("self_heal")
        for case in (heal or {}).values():
            times = sorted(r["all_bans_s"] for r in case["samples"])
            rows.append([label(action), case["what"], f"{case['lost']:,.0f}", f"{case['structure_s']:.2f}",
                         f"{case['all_bans_s']:.2f} ({times[0]:.2f}–{times[-1]:.2f})", f"{case['bans']:,}"])
    if not rows:
        return []
    out = ["Self-heal with 100,000 bans: the watchdog (woken by nf_tables' change events, a round a second as the",
           "safety net) against a reload that takes the jail's objects away; f2bext-nftables.py with `owner = no`,",
           "since an owned table loses nothing. Seconds from the reload, median of the runs (fastest–slowest):", ""]
    out += _table(["action", "what the reload does", "bans lost", "rules back s", "every ban back s",
                   "bans at the end"], rows)
    return out


def tables(results: dict) -> str:
    m = results["machine"]
    lines = [f"Commit {results.get('commit', '?')}{' (with uncommitted changes)' if results.get('dirty') else ''}. "
             f"Measured {results['started']} on Debian {m['debian']}, kernel {m['kernel']}, {m['cores']} cores "
             f"({m['cpu']}), {m['memory_gib']} GiB; fail2ban {m['fail2ban']}, {m['nft']}, {m['iptables']}, "
             f"ipset {m['ipset']}. Load average {results['loadavg']['start']} at start, "
             f"{results['loadavg'].get('end', '?')} at the end. Whole run {results.get('total_s', 0) / 60:.1f} min.", ""]
    from sections import fixed_memory_table, fleet_table, flood_table, kill_table, set_type_table
    from targets import targets  # both read this module's estimates
    lines += restore_tables(results) + action_tables(results) + kill_table(results)
    lines += set_type_table(results) + fixed_memory_table(results) + fleet_table(results) + flood_table(results)
    lines += ["### Targets", ""]
    lines += _table(["target", "measured", "met"], [[t, v, "yes" if ok else "**no**"] for t, v, ok in targets(results)])
    return "\n".join(lines)


# ---- chart ------------------------------------------------------------------------------------

COLOURS = {"f2bext-nftables.py": "#1b7837", "f2bext-ipset.py": "#5aae61", "f2bext-nftables": "#762a83",
           "f2bext-ipset": "#c2a5cf", "nftables-multiport": "#d6604d", "iptables-multiport": "#4393c3",
           "iptables-ipset-proto6": "#f4a582"}


def chart(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6.6))
    for ax, n in zip(axes, (10_000, 100_000)):
        longest = 0.0
        for action in OURS + STOCK:
            run = _runs(results, action).get(n)
            if not run:
                continue
            xs, ys = zip(*[(max(t, 0.05), c) for t, c in run["series"]])
            e = restore_time(results, action, n)
            lost = lost_after(run)
            longest = max(longest, xs[-1])
            ax.step(xs, ys, where="post", color=COLOURS[action], linewidth=2.4 if action in OURS_PY else 1.6,
                    linestyle="-" if action in OURS else "--",
                    label=f"{label(action)}: {duration(e.median, e.extrapolated).replace(' *', ' (extrapolated)')}"
                          + (f", then {lost:,} lost" if lost else ""))
        ax.axhline(n, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(0, n * 3)
        ax.set_xlim(0.1, longest * 1.1)
        ax.set_title(f"{n:,} current bans in fail2ban's database")
        ax.set_xlabel("seconds since fail2ban-server started (log)")
        ax.set_ylabel("bans enforced in the kernel (log)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  title=f"all {n:,} enforced after", title_fontsize=8.5, frameon=False)
    m = results["machine"]
    fig.suptitle(f"Restore at start, one line per action (Debian {m['debian']}, {m['cores']} cores, "
                 f"fail2ban {m['fail2ban']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(results: dict, outdir: str) -> None:
    with open(os.path.join(outdir, "tables.md"), "w") as f:
        f.write(tables(results) + "\n")
    chart(results, os.path.join(outdir, "restore.png"))


if __name__ == "__main__":  # redo the tables and chart from a results.json: report.py bench/out/results.json
    import json
    import sys
    with open(sys.argv[1]) as f:
        finish(json.load(f), os.path.dirname(os.path.abspath(sys.argv[1])))
