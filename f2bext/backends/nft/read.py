"""nftables reader, pure: our table as a `list ruleset` listing gives it (the doctor's read) or as
nf_tables netlink dumps it (kernel/nftdump.py: the backend's read), its rules reduced to signatures and
checked against what a jail asks for, and a set's elements from its dump."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from ...addr import Network
from ...kernel import nftdump
from ...kernel.nftbatch import (CMP_EQ, CMP_GTE, CMP_LTE, CT_ORIGINAL, CT_PROTO_DST, ICMPX_ADMIN_PROHIBITED,
                                META_L4PROTO, META_NFPROTO, NF_DROP, NFT_REG_1 as REG_1, NFT_SET_ANONYMOUS,
                                NFT_SET_ELEM_INTERVAL_END, NFT_SET_INTERVAL, PAYLOAD_NETWORK, PAYLOAD_TRANSPORT,
                                REJECT_ICMPX)
from ...spec import JailSpec, PortRange
from ..base import BROKEN, Finding
from . import wire
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


# ---- our table as nf_tables netlink dumps it (kernel/nftdump.py), in the shapes above ---------------

# The encoder's names (wire.py), the other way round: what it writes reads back as what it was asked.
_KEY_TYPES = {key_type: name for name, (key_type, _) in wire.KEY_TYPES.items()} | \
    {wire.INET_PROTO[0]: "inet_proto", wire.INET_SERVICE[0]: "inet_service"}
_SET_FLAGS = ((0x2, "constant"), (0x4, "interval"), (0x10, "timeout"), (0x20, "dynamic"))
_HOOKS = {number: name for name, number in wire.HOOKS.items()} | {5: "ingress"}
_POLICIES = {number: name for name, number in wire.POLICIES.items()}
_PROTOCOLS = {number: name for name, number in wire.PROTOCOLS.items()}
_NFPROTO_SADDR = {nfproto: (name, offset, size) for name, (nfproto, offset, size) in wire.SADDR.items()}
_REGISTER_ATTR = {"meta": 1, "payload": 1, "ct": 1, "cmp": 1, "range": 1, "lookup": 2}  # DREG, or SREG
_UNKNOWN = "unknown"  # an expression this reader does not follow: rule_signature reads such a rule as not ours


def observed_from_dump(dump: nftdump.Dump) -> Observed:
    """Our table from its netlink dump, as parse_ruleset reads it from a terse `list ruleset`: anonymous
    sets folded into the rules that look them up, libnftables' implicit `meta nfproto` left out."""
    seen = Observed()
    if dump.handle is None:
        return seen
    seen.table, seen.handle = True, dump.handle
    base = {"family": FAMILY, "table": TABLE}
    anonymous = {s.name: s for s in dump.sets if s.flags & NFT_SET_ANONYMOUS}
    for found in dump.sets:
        if found.flags & NFT_SET_ANONYMOUS:
            continue
        body: dict[str, Any] = dict(base, name=found.name, handle=found.handle,
                                    type=_KEY_TYPES.get(found.key_type, f"type {found.key_type}"))
        flags = [word for bit, word in _SET_FLAGS if found.flags & bit]
        if flags:
            body["flags"] = flags
        seen.sets[found.name] = body
    for chain in dump.chains:
        body = dict(base, name=chain.name, handle=chain.handle)
        if chain.hook is not None:
            body.update(type=chain.type, hook=_HOOKS.get(chain.hook, str(chain.hook)), prio=chain.priority,
                        policy=_POLICIES.get(chain.policy, str(chain.policy)))
        seen.chains[chain.name] = body
        seen.rules.setdefault(chain.name, [])
    for rule in dump.rules:
        body = dict(base, chain=rule.chain, handle=rule.handle,
                    expr=rule_exprs(rule.exprs, anonymous, dump.elements))
        if rule.comment is not None:
            body["comment"] = rule.comment
        seen.rules.setdefault(rule.chain, []).append(body)
    return seen


def rule_exprs(exprs: Sequence[nftdump.Expr], anonymous: Mapping[str, nftdump.Set],
               elements: Mapping[str, Sequence[nftdump.Element]]) -> list[dict[str, Any]]:
    """A rule's expressions as libnftables' JSON says the ones of our rules: a load into register 1
    and the comparison or lookup that reads it become one `match`. Our rules use that register alone:
    any other (a 32-bit one overlaps it) reads as unknown."""
    held: Any = None  # the JSON `left` of what register 1 holds
    nfproto: Optional[int] = None
    low: Optional[int] = None  # a `cmp gte`'s value, for the `cmp lte` of its range
    out: list[dict[str, Any]] = []

    def unknown(expr: nftdump.Expr) -> None:
        out.append({_UNKNOWN: {"expr": expr.name, "attrs": {k: v.hex() for k, v in expr.attrs.items()}}})

    for expr in exprs:
        register = _REGISTER_ATTR.get(expr.name)
        if register is not None and expr.u32(register) != REG_1 or \
                low is not None and not (expr.name == "cmp" and expr.u32(2) == CMP_LTE):
            unknown(expr)  # a set of a key rather than a load, another register, or half a range
            held = low = None
            continue
        if expr.name == "meta":
            held = {META_NFPROTO: "nfproto", META_L4PROTO: {"meta": {"key": "l4proto"}}}.get(expr.u32(2) or -1)
        elif expr.name == "payload":
            where = (expr.u32(2), expr.u32(3), expr.u32(4))
            saddr = _NFPROTO_SADDR.get(nfproto) if nfproto is not None else None
            if saddr and where == (PAYLOAD_NETWORK, saddr[1], saddr[2]):
                held = {"payload": {"protocol": saddr[0], "field": "saddr"}}
            elif where == (PAYLOAD_TRANSPORT, 2, 2):
                held = {"payload": {"protocol": "th", "field": "dport"}}
            else:
                held = None
        elif expr.name == "ct":
            original = expr.u32(2) == CT_PROTO_DST and expr.u8(3) == CT_ORIGINAL
            held = {"ct": {"key": "proto-dst", "dir": "original"}} if original else None
        elif expr.name == "cmp":
            value, op = expr.data(3), expr.u32(2)
            if value is None or held is None:
                unknown(expr)
            elif held == "nfproto" and op == CMP_EQ and len(value) == 1 and nfproto is None:
                nfproto = value[0]  # libnftables' dependency of `ip saddr` in an inet table, not listed
            elif op == CMP_EQ and "meta" in held and len(value) == 1:
                out.append(_match(held, _PROTOCOLS.get(value[0], str(value[0]))))
            elif op == CMP_EQ and _is_port(held) and len(value) == 2:
                out.append(_match(held, int.from_bytes(value, "big")))
            elif op == CMP_GTE and _is_port(held) and len(value) == 2:
                low = int.from_bytes(value, "big")
            elif op == CMP_LTE and low is not None and _is_port(held) and len(value) == 2:
                out.append(_match(held, {"range": [low, int.from_bytes(value, "big")]}))
                low = None
            else:
                unknown(expr)
        elif expr.name == "range":
            lo, hi = expr.data(3), expr.data(4)
            if expr.u32(2) == CMP_EQ and held is not None and _is_port(held) and lo and hi and len(lo) == len(hi) == 2:
                out.append(_match(held, {"range": [int.from_bytes(lo, "big"), int.from_bytes(hi, "big")]}))
            else:
                unknown(expr)
        elif expr.name == "lookup":
            name = expr.text(1) or ""
            if held is None or held == "nfproto" or expr.u32(3) is not None or (expr.u32(5) or 0) != 0:
                unknown(expr)  # a map (a destination register), an inverted lookup, or a load we did not follow
            elif name in anonymous:
                out.append(_match(held, {"set": _set_values(held, anonymous[name], elements.get(name, ()))}))
            else:
                out.append(_match(held, "@" + name))
        elif expr.name == "counter":
            out.append({"counter": None})
        elif expr.name == "reject":
            out.append({"reject": {"type": "icmpx", "expr": "admin-prohibited"}}
                       if (expr.u32(1), expr.u8(2)) == (REJECT_ICMPX, ICMPX_ADMIN_PROHIBITED) else
                       {"reject": {"type": f"type {expr.u32(1)}", "code": expr.u8(2)}})
        elif expr.name == "immediate" and expr.u32(1) == 0 and expr.verdict(2) == NF_DROP:
            out.append({"drop": None})
        else:
            unknown(expr)
    if low is not None:
        out.append({_UNKNOWN: {"expr": "cmp", "attrs": {}}})
    return out


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _is_port(left: Any) -> bool:
    return isinstance(left, dict) and ("ct" in left or left.get("payload", {}).get("field") == "dport")


def _set_values(left: dict[str, Any], anonymous: nftdump.Set, found: Sequence[nftdump.Element]) -> list[Any]:
    """An anonymous set's values: protocols by name, ports and port ranges."""
    if "meta" in left:
        return sorted(_PROTOCOLS.get(e.key[0], str(e.key[0])) for e in found if len(e.key) == 1)
    if anonymous.key_len != 2:
        return []
    if not anonymous.flags & NFT_SET_INTERVAL:
        return sorted(int.from_bytes(e.key, "big") for e in found if len(e.key) == 2)
    return [_port_range(low, high) for low, high in intervals(found, 2)]


def intervals(found: Sequence[nftdump.Element], size: int) -> list[tuple[int, int]]:
    """An interval set's inclusive ranges of keys of `size` bytes. The kernel holds a range as its first
    key and, flagged as an end, the key after its last (none for a range up to the last key); where
    one range ends just before the next begins, that end and the next start share a key."""
    keyed = sorted((int.from_bytes(e.key, "big"), not e.flags & NFT_SET_ELEM_INTERVAL_END, e.key_end)
                   for e in found if len(e.key) == size)  # at one key, the end first
    ranges: list[tuple[int, int]] = []
    start: Optional[int] = None
    for key, is_start, key_end in keyed:
        if key_end is not None:
            ranges.append((key, int.from_bytes(key_end, "big")))
            continue
        if start is not None and key > start:
            ranges.append((start, key - 1))  # an end closes its range; a second start closes the first
        start = key if is_start else None
    if start is not None:
        ranges.append((start, (1 << (8 * size)) - 1))
    return ranges


def _port_range(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


def networks_of(found: nftdump.Set, elements: Sequence[nftdump.Element]) -> list[Network]:
    """A named set's elements as networks: each key of a hash set, each range of an interval set."""
    size = found.key_len
    if size not in (4, 16):
        return []
    make = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    if not found.flags & NFT_SET_INTERVAL:
        network = ipaddress.IPv4Network if size == 4 else ipaddress.IPv6Network
        return [network(int.from_bytes(e.key, "big")) for e in elements if len(e.key) == size]
    ranges = intervals(elements, size)
    return [net for lo, hi in ranges for net in ipaddress.summarize_address_range(make(lo), make(hi))]
