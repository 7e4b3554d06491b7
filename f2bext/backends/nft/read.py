"""nftables reader, pure: our table picked out of a `list ruleset` listing, its rules reduced to
signatures and checked against what a jail asks for, and a set's elements read back."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, NamedTuple, Optional

from ...addr import Network
from ...spec import JailSpec, PortRange
from ..base import BROKEN, Finding
from .build import (DPORT, FAMILY, ORIGDPORT, PRIORITY, SET_KINDS, TABLE, _PORT_EXPRS, Observed, chain_name,
                    jail_of, port_keys, set_name)

# libnftables 1.0.6 lists `ct original proto-dst` values without their type: 587 as "0x24b [invalid type]".
_UNTYPED = re.compile(r"^0x([0-9a-f]{1,4}) \[invalid type\]$")


class Signature(NamedTuple):
    """What a rule of ours enforces, whatever form nft lists it in."""

    set: str
    protocols: tuple[str, ...]  # empty: every protocol
    ports: tuple[PortRange, ...]  # empty: every port
    verdict: str
    port_key: str = DPORT


def parse_ruleset(listing: dict[str, Any]) -> Observed:
    """Pick our table's objects out of a `list ruleset` JSON document."""
    seen = Observed()
    for item in listing.get("nftables", []):
        (kind, body), = item.items()
        if not isinstance(body, dict) or body.get("family") != FAMILY:
            continue
        if kind == "table" and body.get("name") == TABLE:
            seen.table = True
            seen.handle = body.get("handle")
        elif body.get("table") != TABLE:
            continue
        elif kind == "set":
            seen.sets[body["name"]] = body
        elif kind == "chain":
            seen.chains[body["name"]] = body
            seen.rules.setdefault(body["name"], [])
        elif kind == "rule":
            seen.rules.setdefault(body["chain"], []).append(body)
    return seen


def _port_of(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    untyped = _UNTYPED.match(value) if isinstance(value, str) else None
    return int(untyped.group(1), 16) if untyped else None


def _ports_of(right: Any) -> Optional[tuple[PortRange, ...]]:
    values = right["set"] if isinstance(right, dict) and "set" in right else [right]
    ports = []
    for v in values:
        if isinstance(v, dict) and "range" in v and len(v["range"]) == 2:
            lo, hi = (_port_of(x) for x in v["range"])
        else:
            lo = hi = _port_of(v)
        if lo is None or hi is None:
            return None
        ports.append((lo, hi))
    return tuple(sorted(ports))


def rule_signature(rule: dict[str, Any]) -> Optional[Signature]:
    """Reduce a listed rule to its Signature; None when it holds anything we did not put there."""
    target = protos = verdict = None
    ports: tuple[PortRange, ...] = ()
    key = DPORT
    for expr in rule.get("expr", []):
        (kind, body), = expr.items()
        if kind == "counter":
            continue
        if kind in ("drop", "reject"):
            verdict = kind
            continue
        if kind != "match" or body.get("op") != "==":
            return None
        left, right = body.get("left", {}), body.get("right")
        payload = left.get("payload", {})
        if payload.get("field") == "saddr" and payload.get("protocol") in ("ip", "ip6") \
                and isinstance(right, str) and right.startswith("@"):
            target = right[1:]
        elif left.get("meta", {}).get("key") == "l4proto":
            values = right["set"] if isinstance(right, dict) and "set" in right else [right]
            protos = tuple(sorted(str(v) for v in values))
        elif payload.get("field") == "dport" and payload.get("protocol") in ("th", "tcp", "udp", "sctp"):
            found = _ports_of(right)
            if found is None:
                return None
            ports = found
            if payload["protocol"] != "th":  # nft lists `meta l4proto tcp th dport` as `tcp dport`
                protos = (payload["protocol"],)
        elif left.get("ct") == _PORT_EXPRS[ORIGDPORT]["ct"]:
            found = _ports_of(right)
            if found is None:
                return None
            ports, key = found, ORIGDPORT
        else:
            return None
    if target is None or verdict is None:
        return None
    return Signature(target, protos or (), ports, verdict, key)


def _order(sig: Signature) -> tuple[str, str]:
    return sig.set, sig.port_key


def expected_signatures(spec: JailSpec, hook: str = "input") -> list[Signature]:
    return sorted((Signature(set_name(spec.jail, kind), tuple(sorted(spec.protocols)), spec.ports, spec.blocktype, key)
                   for kind in SET_KINDS for key in port_keys(spec, hook)), key=_order)


def check_jail(spec: JailSpec, seen: Observed) -> list[Finding]:
    """Everything that keeps the jail's bans from holding; empty when all is in place."""
    def broken(code: str, message: str, evidence: str = "") -> Finding:
        return Finding(spec.jail, BROKEN, code, message, evidence)

    if not seen.table:
        return [broken("table-missing", f"table {FAMILY} {TABLE} is gone (a ruleset flush or reload?)")]
    findings = []
    for kind, (addr_type, interval) in SET_KINDS.items():
        name = set_name(spec.jail, kind)
        body = seen.sets.get(name)
        if body is None:
            findings.append(broken("set-missing", f"set {name} is missing"))
        elif body.get("type") != addr_type or ("interval" in body.get("flags", [])) != interval:
            findings.append(broken("set-altered", f"set {name} has the wrong type or flags", json.dumps(body)))
    for hook in spec.hooks:
        name = chain_name(spec.jail, hook)
        body = seen.chains.get(name)
        if body is None:
            findings.append(broken("hook-missing", f"base chain {name} on hook {hook} is missing"))
            continue
        if (body.get("type"), body.get("hook"), body.get("prio"), body.get("policy")) != \
                ("filter", hook, PRIORITY, "accept"):
            findings.append(broken("hook-altered", f"base chain {name} is not a filter hook on {hook} at priority "
                                   f"{PRIORITY}", json.dumps(body)))
        rules = seen.rules.get(name, [])
        signatures = [rule_signature(r) for r in rules]
        if None in signatures or sorted(signatures, key=_order) != expected_signatures(spec, hook):  # type: ignore[arg-type]
            findings.append(broken("rule-altered", f"rules of chain {name} differ from what the jail asks for",
                                   json.dumps([r.get("expr") for r in rules])[:2000]))
    for name in seen.chains:
        if jail_of(name) == spec.jail and name not in {chain_name(spec.jail, h) for h in spec.hooks}:
            findings.append(broken("hook-extra", f"chain {name} is not one the jail asks for"))
    return findings


def parse_elements(listing: dict[str, Any]) -> list[Network]:
    """The elements of a `list set` JSON document."""
    nets: list[Network] = []
    for item in listing.get("nftables", []):
        body = item.get("set")
        if not body:
            continue
        for elem in body.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                elem = elem["elem"]["val"]
            if isinstance(elem, dict) and "prefix" in elem:
                nets.append(ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}"))
            elif isinstance(elem, dict) and "range" in elem:
                low, high = (ipaddress.ip_address(a) for a in elem["range"])
                nets += ipaddress.summarize_address_range(low, high)
            else:
                nets.append(ipaddress.ip_network(str(elem)))
    return nets
