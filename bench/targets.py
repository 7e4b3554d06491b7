"""The bench's targets (issue 18, and the first benchmark's that still stand), each against what this
run measured: (target, measured, met)."""

from __future__ import annotations

from report import (BASELINE, MILLION, OURS_CONF, OURS_PY, SIZES, STOCK, TWENTY_K, _action_time, duration,
                    most_lost, ratio, restore_time, vmhwm_mib)

Target = tuple[str, str, bool]


def restore_targets(results: dict) -> list[Target]:
    out = []
    for action in OURS_PY:
        e = restore_time(results, action, 100_000)
        lost = most_lost(results, action, 100_000)
        out.append((f"100,000 bans enforced ≤ 1.0 s after fail2ban-server start ({action}, slowest run)",
                    duration(e.high) + (f", then {lost:,} lost" if lost else ""),
                    bool(e.high and e.high <= 1.0 and not e.extrapolated and not lost)))
    for action in OURS_PY:
        e = restore_time(results, action, MILLION)
        ours, base = vmhwm_mib(results, action, MILLION), vmhwm_mib(results, BASELINE, MILLION)
        memory = f"; peak {ours:.0f} MiB, fail2ban alone {base:.0f} MiB" if ours and base else ""
        out.append((f"1,000,000 bans: reported ({action})", duration(e.median) + memory,
                    e.median is not None and not e.extrapolated))
    stock20 = restore_time(results, STOCK[0], TWENTY_K)
    ours20 = restore_time(results, OURS_PY[0], TWENTY_K).median
    out.append((f"≥ 100× faster than stock nftables at 20,000 ({'extrapolated' if stock20.extrapolated else 'measured'}"
                " stock, medians)", ratio(stock20.median, ours20),
                bool(stock20.median and ours20 and stock20.median / ours20 >= 100)))
    return out


def heal_targets(results: dict) -> list[Target]:
    out = []
    for action in OURS_PY:
        for case in (_action_time(results, action, 100_000).get("self_heal") or {}).values():
            out.append((f"self-heal ≤ 0.5 s at 100,000 bans ({action}: {case['what']})",
                        f"{case['all_bans_s']:.2f} s", case["all_bans_s"] <= 0.5))
    return out


def ban_targets(results: dict) -> list[Target]:
    out = []
    nft = _action_time(results, OURS_PY[0], 100_000).get("ban")
    if nft:
        out.append((f"ban p50 ≤ 0.05 ms, p99 ≤ 0.3 ms with 100,000 banned ({OURS_PY[0]})",
                    f"{nft['p50_ms']:.3f} / {nft['p99_ms']:.3f} ms", nft["p50_ms"] <= 0.05 and nft["p99_ms"] <= 0.3))
    for action in OURS_PY[1:]:
        a = _action_time(results, action, 100_000).get("ban")
        if a:
            out.append((f"ban ≤ 0.5 ms p50 with 100,000 banned ({action})", f"{a['p50_ms']:.3f} ms",
                        a["p50_ms"] <= 0.5))
    for action in OURS_CONF:
        for preload in (0, 100_000):
            ours = _action_time(results, action, preload).get("ban")
            stock = _action_time(results, STOCK[0], preload).get("ban")
            if ours and stock:
                out.append((f"{action}.conf ban no slower than stock {STOCK[0]}, {preload:,} banned (p50)",
                            f"{ours['p50_ms']:.2f} vs {stock['p50_ms']:.2f} ms", ours["p50_ms"] <= stock["p50_ms"]))
    for action in OURS_PY:
        a = _action_time(results, action, 100_000)
        if "verify" in a:
            out.append((f"verify ≤ 1 ms ({action}, p50)", f"{a['verify']['p50_ms']:.3f} ms", a["verify"]["p50_ms"] <= 1))
    return out


def kill_targets(results: dict) -> list[Target]:
    out = []
    for v in (4, 6) if results.get("kill") else ():
        k = results["kill"][f"ipv{v}"]
        floor = results["kill"].get(f"floor_ipv{v}")
        shown = f"{k['p50_ms']:.1f} ms" + (f" (the kernel's dumps alone: {floor['p50_ms']:.1f} ms)" if floor else "")
        out.append((f"session kill ≤ 50 ms, or the kernel's floor shown (IPv{v}, p50)", shown,
                    k["p50_ms"] <= 50 or bool(floor)))
    return out


def memory_targets(results: dict) -> list[Target]:
    out = []
    for action in OURS_PY:
        for n in SIZES:
            ours = vmhwm_mib(results, action, n)
            worst = max((ours / s - 1 for s in (vmhwm_mib(results, x, n) for x in STOCK) if s and ours), default=None)
            base = vmhwm_mib(results, BASELINE, n)
            if worst is not None:
                extra = f" (vs baseline {ours / base * 100 - 100:+.0f}%)" if base else ""
                out.append((f"memory within 10% of stock at N = {n:,} ({action}, worst case)",
                            f"{worst * 100:+.0f}%{extra}", worst <= 0.10))
    return out


def targets(results: dict) -> list[Target]:
    return (restore_targets(results) + heal_targets(results) + ban_targets(results) + kill_targets(results)
            + memory_targets(results))
