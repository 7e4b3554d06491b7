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
import math
import sys
from typing import Any, Callable

import nftables

from actiontime import quantiles, timed

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


def build(ctx: nftables.Nftables, table: str, interval: bool) -> None:
    """A table of its own holding one set of SIZE addresses (libnftables reads every interval set of
    a table it adds to, so a hash set beside a large interval set would be timed as slow as it)."""
    kind = {"type": "ipv4_addr", **({"flags": ["interval"]} if interval else {})}
    send(ctx, [{"add": {"table": {"family": "inet", "name": table}}},
               {"add": {"set": {"family": "inet", "table": table, "name": "banned", **kind}}},
               {"add": {"chain": {"family": "inet", "table": table, "name": "input", "type": "filter",
                                  "hook": "input", "prio": 0, "policy": "accept"}}},
               {"add": {"rule": {"family": "inet", "table": table, "chain": "input", "expr": [
                   {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                              "right": "@banned"}}, {"drop": None}]}}}])
    addrs = [str(ipaddress.IPv4Address(BASE + 2 * i)) for i in range(SIZE)]  # never adjacent: no merging
    # One transaction: libnftables reads an interval set whole at each add, so 100 adds of 1,000 took
    # a minute of the bench's fifteen.
    send(ctx, [element(table, "banned", addrs)])


def main() -> int:
    ctx = nft()
    counter = iter(range(10_000))

    def add(table: str) -> Callable[[], None]:
        return lambda: send(ctx, [element(table, "banned", [str(ipaddress.IPv4Address(TIMED_BASE + next(counter)))])])

    def listing(command: str, terse: bool) -> Callable[[], None]:
        def run() -> None:
            ctx.set_terse_output(terse)
            rc, _, err = ctx.cmd(command)
            if rc != 0:
                raise RuntimeError(err)
        return run

    out: dict[str, Any] = {"elements": SIZE, "add_one": {}, "listing": {}}
    build(ctx, "hash", interval=False)
    out["add_one"]["hash"] = quantiles(timed(add("hash"), 50, budget=math.inf))
    for label, command, terse in (("list ruleset, terse", "list ruleset", True),
                                  ("list ruleset", "list ruleset", False),
                                  ("list table", "list table inet hash", False),
                                  ("list chain", "list chain inet hash input", False)):
        out["listing"][label] = quantiles(timed(listing(command, terse), 3, budget=math.inf))
    build(ctx, "interval", interval=True)
    out["add_one"]["interval"] = quantiles(timed(add("interval"), 5, budget=math.inf))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
