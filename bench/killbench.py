"""Session kill time: f2bext.sessions.kill_sessions against a conntrack table of 100,000 unrelated
entries and 50 of the banned address. Run inside a namespace (run.py does); prints JSON.

The unrelated entries are a busy mail server's: established TCP flows to 198.51.100.1 and
2001:db8::1, half IPv4 (sources in 100.64.0.0/10), half IPv6 (2001:db8:1::/48), destination ports
cycling through 25, 465, 587, 443, 993 and 80, so half of them share the ban's ports. Beside each
kill, the floor the kernel leaves it: the same dumps read and dropped, and a walk that passes nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kernel  # noqa: E402
from actiontime import quantiles  # noqa: E402
from f2bext.addr import parse_target  # noqa: E402
from f2bext.kernel.ctnetlink import Conntrack, CtFilter  # noqa: E402
from f2bext.sessions import SWEEPERS, conntrack_filters, kill_sessions  # noqa: E402
from f2bext.spec import JailSpec  # noqa: E402

SERVER = {4: "198.51.100.1", 6: "2001:db8::1"}
BANNED = {4: "203.0.113.7", 6: "2001:db8::7"}
PORTS = (25, 465, 587, 443, 993, 80)
V4_BASE = int(ipaddress.IPv4Address("100.64.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8:1::"))


def unrelated(n: int) -> list[tuple[str, str, int, int]]:
    flows = []
    for i in range(n):
        if i % 2:
            src, dst = str(ipaddress.IPv6Address(V6_BASE + i)), SERVER[6]
        else:
            src, dst = str(ipaddress.IPv4Address(V4_BASE + 1 + i)), SERVER[4]
        flows.append((src, dst, 1024 + i % 60000, PORTS[(i // 2) % len(PORTS)]))
    return flows


def banned_flows(version: int, count: int) -> list[tuple[str, str, int, int]]:
    return [(BANNED[version], SERVER[version], 40000 + i, PORTS[i % 3]) for i in range(count)]


def entries() -> int:
    return int(subprocess.run(["conntrack", "-C"], capture_output=True, text=True).stdout.strip() or 0)


def dumps(filters: list[CtFilter]) -> float:
    """Seconds the kernel takes to walk the table for each filter and send what passes, read and
    dropped unparsed, the dumps side by side as a kill runs them: what no parsing here can go below."""
    def read(wanted: CtFilter) -> None:
        with Conntrack() as ct:
            for _ in ct.entries(wanted, (b"\xff" * 17,)):  # a needle no entry holds: nothing is cut up
                pass
    begin = time.perf_counter()
    for start in range(0, len(filters), SWEEPERS):
        workers = [threading.Thread(target=read, args=(f,)) for f in filters[start:start + SWEEPERS]]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return time.perf_counter() - begin


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--unrelated", type=int, default=100_000)
    p.add_argument("--per-address", type=int, default=50)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    spec = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})  # 25, 465, 587
    out: dict = {"unrelated": args.unrelated, "per_address": args.per_address}
    start = time.monotonic()
    refused = kernel.ct_insert(unrelated(args.unrelated))
    out["fill_s"] = round(time.monotonic() - start, 2)
    out["fill_refused"] = refused
    out["table"] = entries()
    for version in (4, 6):
        net = parse_target(BANNED[version])
        times, cut = [], []
        for _ in range(args.rounds):
            kernel.ct_insert(banned_flows(version, args.per_address))
            begin = time.perf_counter()
            report = kill_sessions([net], spec.protocols, spec.ports, spec.kill)
            times.append(time.perf_counter() - begin)
            cut.append(report.conntrack)
            if report.problems:
                out.setdefault("problems", []).extend(report.problems)
        out[f"ipv{version}"] = {**quantiles(times), "cut": cut}
        # The floor the kernel leaves: its dumps alone, and one walk that passes nothing.
        filters = conntrack_filters([net], spec.protocols, spec.ports)
        out[f"floor_ipv{version}"] = {"dumps": len(filters), **quantiles([dumps(filters) for _ in range(args.rounds)])}
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        out[f"walk_ipv{version}"] = quantiles([dumps([CtFilter(family, protocol=socket.IPPROTO_TCP, dport=9)])
                                              for _ in range(args.rounds)])
        # The usual recipe, for comparison: conntrack-tools (dumps the table, filters in user space).
        cmd_times = []
        for _ in range(3):
            kernel.ct_insert(banned_flows(version, args.per_address))
            begin = time.perf_counter()
            subprocess.run(["conntrack", "-D", "-p", "tcp", "-s", BANNED[version]], capture_output=True)
            cmd_times.append(time.perf_counter() - begin)
        out[f"conntrack_D_ipv{version}"] = quantiles(cmd_times)
    out["table_after"] = entries()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
