"""Set types and listings, on libnftables as f2bext uses it: one address added to a hash set and to
an interval set of 100,000 each, and the listings a verification could read with 100,000 banned.
Run inside a namespace (run.py does); prints JSON.

Why it matters: f2bext keeps single addresses in hash sets and networks in small interval sets
apart (libnftables reads an interval set whole to check a new element for overlaps), and verifies
with a terse `list ruleset`, which leaves set elements out.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from typing import Any, Callable

import nftables

from actiontime import quantiles

SIZE = 100_000
BASE = int(ipaddress.IPv4Address("100.64.0.0"))
TIMED_BASE = int(ipaddress.IPv4Address("198.51.100.0"))


def nft() -> nftables.Nftables:
    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(False)
    return ctx


def send(ctx: nftables.Nftables, commands: list[dict[str, Any]]) -> None:
    rc, _, err = ctx.json_cmd({"nftables": commands})
    if rc != 0:
        raise RuntimeError(err)


def element(table: str, name: str, addrs: list[str]) -> dict[str, Any]:
    return {"add": {"element": {"family": "inet", "table": table, "name": name, "elem": addrs}}}


def build(ctx: nftables.Nftables) -> None:
    send(ctx, [{"add": {"table": {"family": "inet", "name": "bench"}}},
               {"add": {"set": {"family": "inet", "table": "bench", "name": "hash", "type": "ipv4_addr"}}},
               {"add": {"set": {"family": "inet", "table": "bench", "name": "interval", "type": "ipv4_addr",
                                "flags": ["interval"]}}},
               {"add": {"chain": {"family": "inet", "table": "bench", "name": "input", "type": "filter",
                                  "hook": "input", "prio": 0, "policy": "accept"}}},
               {"add": {"rule": {"family": "inet", "table": "bench", "chain": "input", "expr": [
                   {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                              "right": "@hash"}}, {"drop": None}]}}}])
    addrs = [str(ipaddress.IPv4Address(BASE + 2 * i)) for i in range(SIZE)]  # never adjacent: no merging
    for name in ("hash", "interval"):
        for i in range(0, SIZE, 1000):
            send(ctx, [element("bench", name, addrs[i:i + 1000])])


def timed(fn: Callable[[], Any], times: int) -> list[float]:
    out = []
    for _ in range(times):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    ctx = nft()
    build(ctx)
    counter = iter(range(10_000))

    def add(name: str) -> Callable[[], None]:
        return lambda: send(ctx, [element("bench", name, [str(ipaddress.IPv4Address(TIMED_BASE + next(counter)))])])

    def listing(command: str, terse: bool) -> Callable[[], None]:
        def run() -> None:
            ctx.set_terse_output(terse)
            rc, _, err = ctx.cmd(command)
            if rc != 0:
                raise RuntimeError(err)
        return run

    out: dict[str, Any] = {"elements": SIZE, "add_one": {}, "listing": {}}
    for name, samples in (("hash", 50), ("interval", 10)):
        out["add_one"][name] = quantiles(timed(add(name), samples))
    for label, command, terse in (("list ruleset, terse", "list ruleset", True),
                                  ("list ruleset", "list ruleset", False),
                                  ("list table", "list table inet bench", False),
                                  ("list chain", "list chain inet bench input", False)):
        out["listing"][label] = quantiles(timed(listing(command, terse), 5))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
