"""The report's shorter sections: session kill, set types, fixed memory, fleet and the banned flood."""

from __future__ import annotations

from report import _table

def set_type_table(results: dict) -> list[str]:
    st = results.get("set_types")
    if not st:
        return []
    out = [f"### 6. Set types and listings, libnftables, {st['elements']:,} elements per set", ""]
    rows = [[f"add one address to a {name} set", f"{q['p50_ms']:.3f}", f"{q['max_ms']:.3f}"]
            for name, q in st["add_one"].items()]
    rows += [[f"`{name}`", f"{q['p50_ms']:.3f}", f"{q['max_ms']:.3f}"] for name, q in st["listing"].items()]
    out += _table(["operation", "p50 ms", "max ms"], rows)
    return out


def fixed_memory_table(results: dict) -> list[str]:
    fm = results.get("fixed_memory")
    if not fm:
        return []
    out = ["### 7. Fixed memory cost: resident memory added to an interpreter that loaded fail2ban-server's",
           "modules, by one action's backend (median of 3)", ""]
    out += _table(["what is loaded", "MiB added"], [[name, f"{v['added_kib'] / 1024:.1f}"] for name, v in fm.items()])
    return out


def fleet_table(results: dict) -> list[str]:
    fl = results.get("fleet")
    if not fl:
        return []
    out = ["### 8. Fleet sharing through Redis, two real fail2ban-servers", ""]
    out += _table(["measure", "value"], [
        [f"ban asked of A (`banip`) until B's kernel holds it, {fl['rate_per_s']:.0f} bans/s, p50 / p99",
         f"{fl['propagation_p50_ms']} / {fl['propagation_p99_ms']} ms"],
        ["A's kernel holds it until B's kernel holds it, p50 / p99",
         f"{fl['kernel_to_kernel_p50_ms']} / {fl['kernel_to_kernel_p99_ms']} ms"],
        [f"fresh server: fail2ban-server start until {fl['catchup_bans']:,} shared bans are enforced",
         f"{fl['catchup_s']} s"],
        ["Redis memory per 100,000 bans (stream and current set)", f"{fl['redis_bytes_per_100k_bans'] / 1e6:.1f} MB"]])
    return out


def kill_table(results: dict) -> list[str]:
    k = results["kill"]
    if not k:
        return ["### 4. Session kill: failed, see the run's output", ""]
    out = [f"### 4. Session kill: {k['unrelated']:,} unrelated conntrack entries and {k['per_address']} of the "
           "banned address (ports 25, 465, 587)", ""]
    rows = []
    for v, addr in ((4, "203.0.113.7"), (6, "2001:db8::7")):
        a, c = k[f"ipv{v}"], k[f"conntrack_D_ipv{v}"]
        floor = k.get(f"floor_ipv{v}")  # runs before the floor was timed have none
        shown = f"{floor['p50_ms']:.1f} ({floor['dumps']} dump{'s' * (floor['dumps'] > 1)})" if floor else ""
        rows.append([f"IPv{v} {addr}", f"{a['p50_ms']:.1f}", f"{a['max_ms']:.1f}", f"{a['cut'][0]}", shown,
                     f"{c['p50_ms']:.0f}"])
    out += _table(["address", "kill_sessions p50 ms", "max ms", "entries cut", "the kernel's dumps alone, p50 ms",
                   "`conntrack -D -s` p50 ms"], rows)
    return out


FLOOD_CASES = ("none", "f2bext-nftables", "f2bext-nftables-drop", "f2bext-nftables-raw", "f2bext-nftables-raw-drop",
               "f2bext-ipset",
               "f2bext-ipset-raw-drop", "nftables-multiport", "iptables-ipset-proto6")


def flood_table(results: dict) -> list[str]:
    fl = results.get("flood")
    if not fl:
        return []
    out = [f"### 9. A banned flood: {fl['sources']:,} banned sources sending SYNs at ports 25, 465 and 587, "
           f"{fl['seconds']} s per run, {fl['rounds']} rounds (medians)", "",
           "Host CPU per packet: what one frame cost end to end on the flooding core, less what the frame",
           "alone costs on the wire (bench/flood.py says how it is attributed).", ""]
    rows = []
    for case in FLOOD_CASES:
        for suffix, ct in (("", "off"), (" ct", "on")):
            s = fl["summary"].get(case + suffix)
            if s:
                rows.append([case, ct, f"{s['sent_pps']:,.0f}", f"{s['dropped_pps']:,.0f}",
                             f"{s['host_ns_per_packet']:,.0f}", f"{s['core_capacity_pps']:,.0f}",
                             f"{s['ct_banned']:,}", f"{s['bystander_served_pct']:.0f}% / {s['bystander_p99_ms']:.0f} ms"])
    out += _table(["ruleset", "conntrack", "sent pps", "dropped pps", "host ns per packet",
                   "one core could drop, pps", "conntrack entries of banned sources",
                   "bystander served / p99"], rows)
    return out
