"""nftables backend: pure builders (spec -> libnftables JSON commands), a ruleset reader, and the
one class that talks to libnftables.

Layout, all in table `inet f2bext`, per jail J:
  sets J-v4, J-v6      single addresses (hash sets: adding to a 100k interval set costs ~0.5 s in
                       libnftables 1.0.6, a hash set ~0.25 ms)
  sets J-net4, J-net6  CIDR bans (small interval sets, kept as the collapsed union of the jail's networks)
  sets J-rv4, J-rv6, J-rnet4, J-rnet6  the same for bans other servers shared (fleet sharing), apart so
                       that the local fail2ban's unbans, flushes and rebuilds never disturb them
  chain J-input / J-forward  a base chain per hook at priority -10, one rule per set; in J-forward a
                       second rule per set matches the port the client asked for (`ct original
                       proto-dst`): Docker's DNAT (prerouting, -100) has rewritten `th dport` by then.
An accept in another base chain ends only that chain, so a drop here holds whatever else accepts.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from ...kernel import nftgen
from ...addr import Network, is_single
from ...errors import KernelError
from ...spec import JailSpec, PortRange
from ..base import BROKEN, Finding, Held, Op, SharedBans, refused

FAMILY = "inet"
TABLE = "f2bext"
PRIORITY = -10
RULE_COMMENT = "f2bext"
CHUNK = 1000  # elements per command, as firewalld does, to stay clear of netlink buffer limits
LOAD_BATCH = 1_000  # elements per transaction when a jail is filled at start: libnftables holds
                    # about 450 bytes per element of a batch, and fail2ban-server keeps the peak
                    # (10,000 per batch cost it 7 MB at 10,000 bans; 100,000 load as fast either way)

LOCAL_KINDS = ("v4", "net4", "v6", "net6")
REMOTE_KINDS = ("rv4", "rnet4", "rv6", "rnet6")
SET_KINDS = {"v4": ("ipv4_addr", False), "net4": ("ipv4_addr", True),
             "v6": ("ipv6_addr", False), "net6": ("ipv6_addr", True),
             "rv4": ("ipv4_addr", False), "rnet4": ("ipv4_addr", True),
             "rv6": ("ipv6_addr", False), "rnet6": ("ipv6_addr", True)}
_SADDR = {"ipv4_addr": "ip", "ipv6_addr": "ip6"}
# Where a rule reads the destination port: the packet's (after any DNAT), or the original tuple's.
DPORT, ORIGDPORT = "dport", "origdport"
_PORT_EXPRS = {DPORT: {"payload": {"protocol": "th", "field": "dport"}},
               ORIGDPORT: {"ct": {"key": "proto-dst", "dir": "original"}}}
# libnftables 1.0.6 lists `ct original proto-dst` values without their type: 587 as "0x24b [invalid type]".
_UNTYPED = re.compile(r"^0x([0-9a-f]{1,4}) \[invalid type\]$")

Command = dict[str, Any]


def set_name(jail: str, kind: str) -> str:
    return f"{jail}-{kind}"


def chain_name(jail: str, hook: str) -> str:
    return f"{jail}-{hook}"


def jail_of(name: str) -> str:
    """The jail an object of ours belongs to (names are `<jail>-<kind>`; kinds have no '-')."""
    return name.rsplit("-", 1)[0]


def set_kind(net: Network, remote: bool = False) -> str:
    kind = ("v" if is_single(net) else "net") + str(net.version)
    return "r" + kind if remote else kind


# ---- builders ---------------------------------------------------------------------------------

def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _element(net: Network) -> Any:
    if is_single(net):
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _port_value(ports: Sequence[PortRange]) -> Any:
    values = [lo if lo == hi else {"range": [lo, hi]} for lo, hi in ports]
    return values[0] if len(values) == 1 else {"set": values}


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def port_keys(spec: JailSpec, hook: str) -> tuple[str, ...]:
    """How the hook's rules read the port: forwarded traffic may have been DNAT'ed from the port the
    jail names (Docker's `-p 8025:25`) or to it, so the forward hook matches both."""
    if not spec.ports:
        return (DPORT,)
    return (DPORT, ORIGDPORT) if hook == "forward" else (DPORT,)


def build_rule_exprs(spec: JailSpec, kind: str, key: str = DPORT) -> list[dict[str, Any]]:
    addr_type, _ = SET_KINDS[kind]
    exprs = [_match({"payload": {"protocol": _SADDR[addr_type], "field": "saddr"}}, "@" + set_name(spec.jail, kind))]
    if spec.protocols:
        protos = list(spec.protocols)
        exprs.append(_match({"meta": {"key": "l4proto"}}, protos[0] if len(protos) == 1 else {"set": protos}))
    if spec.ports:
        exprs.append(_match(_PORT_EXPRS[key], _port_value(spec.ports)))
    exprs.append({"counter": None})
    if spec.blocktype == "drop":
        exprs.append({"drop": None})
    else:
        exprs.append({"reject": {"type": "icmpx", "expr": "admin-prohibited"}})
    return exprs


def build_structure(spec: JailSpec) -> list[Command]:
    """Table, sets, base chains and rules of one jail; assumes none of the jail's objects exist."""
    cmds: list[Command] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for kind, (addr_type, interval) in SET_KINDS.items():
        fields: dict[str, Any] = {"name": set_name(spec.jail, kind), "type": addr_type}
        if interval:
            fields["flags"] = ["interval"]
        cmds.append({"add": _obj("set", **fields)})
    for hook in spec.hooks:
        chain = chain_name(spec.jail, hook)
        cmds.append({"add": _obj("chain", name=chain, type="filter", hook=hook, prio=PRIORITY, policy="accept")})
        for kind in SET_KINDS:
            for key in port_keys(spec, hook):
                cmds.append({"add": _obj("rule", chain=chain, comment=RULE_COMMENT,
                                         expr=build_rule_exprs(spec, kind, key))})
    return cmds


def build_elements(op: Op, jail: str, nets: Iterable[Network], remote: bool = False) -> list[Command]:
    """`add` or `delete` element commands, grouped by set and chunked."""
    by_set: dict[str, list[Any]] = {}
    for net in nets:
        by_set.setdefault(set_name(jail, set_kind(net, remote)), []).append(_element(net))
    return _chunked(op, by_set)


def _chunked(op: str, by_set: dict[str, list[Any]]) -> list[Command]:
    cmds = []
    for name, elems in by_set.items():
        for i in range(0, len(elems), CHUNK):
            cmds.append({op: _obj("element", name=name, elem=elems[i:i + CHUNK])})
    return cmds


def build_load(jail: str, nets: Iterable[Network]) -> list[list[Command]]:
    """Fill a jail's sets with `nets` (flushed first) in transactions of LOAD_BATCH elements, reading
    `nets` once: only element text is kept, so a generator of 100,000 addresses stays small."""
    singles: dict[str, list[Any]] = {}
    networks: list[Network] = []
    for net in nets:
        if is_single(net):
            singles.setdefault(set_name(jail, set_kind(net)), []).append(_element(net))
        else:
            networks.append(net)
    batches: list[list[Command]] = [[{"flush": _obj("set", name=set_name(jail, k))} for k in LOCAL_KINDS]
                                    + build_elements("add", jail, collapsed_networks(networks))]
    for name, elems in singles.items():
        for i in range(0, len(elems), LOAD_BATCH):
            batches.append(_chunked("add", {name: elems[i:i + LOAD_BATCH]}))
    return batches


def build_network_sets(jail: str, networks: Iterable[Network], versions: Iterable[int],
                       remote: bool = False) -> list[Command]:
    """Rewrite the interval sets of the given IP versions as the collapsed union of `networks`.

    Interval sets refuse overlapping elements, so they always hold disjoint, merged prefixes.
    """
    versions = set(versions)
    prefix = "r" if remote else ""
    cmds: list[Command] = [{"flush": _obj("set", name=set_name(jail, f"{prefix}net{v}"))} for v in sorted(versions)]
    return cmds + build_elements("add", jail, [n for n in collapsed_networks(networks) if n.version in versions],
                                 remote)


def build_remote(jail: str, nets: Iterable[Network]) -> list[Command]:
    """Replace the jail's remote sets with exactly `nets`, in one transaction."""
    nets = list(nets)
    return ([{"flush": _obj("set", name=set_name(jail, k))} for k in REMOTE_KINDS]
            + build_elements("add", jail, [n for n in nets if is_single(n)], remote=True)
            + build_elements("add", jail, collapsed_networks(nets), remote=True))


def build_teardown(jail: str, observed: "Observed") -> list[Command]:
    """Delete whatever of the jail's objects exist (chains first: they reference the sets)."""
    cmds: list[Command] = []
    for name in sorted(observed.chains):
        if jail_of(name) == jail:
            cmds.append({"delete": _obj("chain", name=name)})
    for name in sorted(observed.sets):
        if jail_of(name) == jail:
            cmds.append({"delete": _obj("set", name=name)})
    return cmds


def build_rebuild(spec: JailSpec, observed: "Observed", held: Iterable[Network],
                  remote: Iterable[Network] = ()) -> list[Command]:
    """One transaction: drop what the jail has, build it anew, load every held address (and the
    bans other servers shared)."""
    held, remote = list(held), list(remote)
    return (build_teardown(spec.jail, observed) + build_structure(spec)
            + build_elements("add", spec.jail, [n for n in held if is_single(n)])
            + build_elements("add", spec.jail, collapsed_networks(held))
            + build_elements("add", spec.jail, [n for n in remote if is_single(n)], remote=True)
            + build_elements("add", spec.jail, collapsed_networks(remote), remote=True))


def collapsed_networks(held: Iterable[Network]) -> list[Network]:
    nets = [n for n in held if not is_single(n)]
    out: list[Network] = []
    for version in (4, 6):
        out += ipaddress.collapse_addresses([n for n in nets if n.version == version])  # type: ignore[arg-type]
    return out


def is_table_empty_after(jail: str, observed: "Observed") -> bool:
    return all(jail_of(n) == jail for n in list(observed.chains) + list(observed.sets))


# ---- reading the ruleset ------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    """What a rule of ours enforces, whatever form nft lists it in."""

    set: str
    protocols: tuple[str, ...]  # empty: every protocol
    ports: tuple[PortRange, ...]  # empty: every port
    verdict: str
    port_key: str = DPORT


@dataclass
class Observed:
    """Our table as the kernel holds it: sets and chains by name, rules per chain."""

    table: bool = False
    handle: Optional[int] = None
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


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


# ---- the kernel -------------------------------------------------------------------------------

class Nft:
    """The one place that talks to libnftables: JSON commands in one transaction, terse listings;
    and the ruleset generation, read over netlink, which moves with every transaction of anyone's."""

    def __init__(self) -> None:
        import nftables  # Debian's python3-nftables; imported here so the builders need nothing
        self._ctx = nftables.Nftables()
        self._ctx.set_json_output(True)
        self._lock = threading.Lock()
        self._generation = nftgen.Generation()

    def generation(self) -> int:
        return self._generation.read()

    def apply(self, cmds: list[Command], what: str) -> None:
        if not cmds:
            return
        with self._lock:
            rc, _out, err = self._ctx.json_cmd({"nftables": cmds})
        if rc != 0:
            raise KernelError(f"nftables refused to {what}", err)

    def ruleset(self) -> Observed:
        """Our table without set elements: cheap however many addresses are banned."""
        return parse_ruleset(self._list("list ruleset", terse=True))

    def listing(self) -> dict[str, Any]:
        """Every table, set elements included, as `nft -j list ruleset` prints it (the doctor's read)."""
        return self._list("list ruleset", terse=False)

    def elements(self, name: str) -> list[Network]:
        """The set's elements. A dump taken while the kernel still resizes a large hash set (right
        after a big load) can repeat some elements and skip others: such a listing is read again."""
        for attempt in range(10):
            nets = self._elements_once(name)
            if len(set(nets)) == len(nets):
                return nets
            time.sleep(0.1 * (attempt + 1))
        raise KernelError(f"the kernel gave no consistent listing of set {name}")

    def _elements_once(self, name: str) -> list[Network]:
        if name[0].isalpha():
            return parse_elements(self._list(f"list set {FAMILY} {TABLE} {name}", terse=False))
        # nft's command language cannot name a set that starts with a digit (jail "0day"), even quoted;
        # a JSON command can, but libnftables 1.0.6 cuts its output short past ~250,000 elements.
        with self._lock:
            self._ctx.set_terse_output(False)
            rc, out, err = self._ctx.json_cmd({"nftables": [{"list": _obj("set", name=name)}]})
        if rc != 0:
            raise KernelError(f"nftables refused to list set {name}", err)
        return parse_elements(out or {})

    def _list(self, command: str, terse: bool) -> dict[str, Any]:
        with self._lock:
            self._ctx.set_terse_output(terse)
            rc, out, err = self._ctx.cmd(command)
        if rc != 0:
            raise KernelError(f"nftables refused to {command}", err)
        return json.loads(out) if out.strip() else {}


class NftBackend:
    """The Backend interface on nftables."""

    name = "nftables"

    def __init__(self, nft: Optional[Nft] = None) -> None:
        self.nft = nft or Nft()
        self._remote = SharedBans()
        self._handles: dict[str, Optional[int]] = {}  # our table's handle when each jail was last built
        # The ruleset generation at which each jail last checked out: no listing is needed while it
        # stands, or moves only by our own add. A host's ruleset can be large (Docker, firewalld):
        # listing it at every ban cost 20 ms with 1,000 unrelated rules.
        self._good: dict[str, int] = {}

    def _replaced(self, spec: JailSpec, seen: Observed) -> list[Finding]:
        """A table that looks right but is not the one we built: a ruleset saved earlier and restored,
        whose sets hold bans lifted since and miss bans made since."""
        known = self._handles.get(spec.jail)
        if known is None or not seen.table or seen.handle == known:
            return []
        return [Finding(spec.jail, BROKEN, "table-replaced", f"table {FAMILY} {TABLE} was replaced (a ruleset "
                        "restore?): its sets no longer hold what fail2ban holds")]

    def _built(self, spec: JailSpec) -> None:
        self._handles[spec.jail] = self.nft.ruleset().handle

    def _check(self, spec: JailSpec, seen: Observed) -> list[Finding]:
        return check_jail(spec, seen) + self._replaced(spec, seen)

    def start(self, spec: JailSpec, held: Iterable[Network]) -> None:
        seen = self.nft.ruleset()
        if check_jail(spec, seen):
            self._rebuild(spec, seen, ())
        for batch in build_load(spec.jail, held):
            self.nft.apply(batch, f"load bans of jail {spec.jail}")
        self._built(spec)

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> list[Finding]:
        def everything() -> list[Network]:
            return list(held()) + list(nets)
        networks = [n for n in nets if not is_single(n)]
        cmds = build_elements("add", spec.jail, [n for n in nets if is_single(n)])
        if networks:
            cmds += build_network_sets(spec.jail, everything(), {n.version for n in networks})
        before = self.nft.generation()
        try:
            self.nft.apply(cmds, f"ban in jail {spec.jail}")
        except KernelError as e:
            self.repair(spec, everything())
            return [refused(spec.jail, e)]
        after = self.nft.generation()
        if self._good.get(spec.jail) == before and after - before in (0, 1):
            # Our add was the only change since the jail checked out (none at all when the address
            # was in the set already).
            self._good[spec.jail] = after
            return []
        seen = self.nft.ruleset()
        findings = self._check(spec, seen)
        if findings:
            self._rebuild(spec, seen, everything())
        else:
            self._good[spec.jail] = after
        return findings

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        singles = [n for n in nets if is_single(n)]
        networks = [n for n in nets if not is_single(n)]
        try:
            self.nft.apply(build_elements("delete", spec.jail, singles), f"unban in jail {spec.jail}")
        except KernelError:
            # One absent element fails the whole batch; unless the jail itself is broken,
            # delete one by one and take "not there" as done.
            if self._heal(spec, held):
                return
            for net in singles:
                try:
                    self.nft.apply(build_elements("delete", spec.jail, [net]), f"unban in jail {spec.jail}")
                except KernelError:
                    pass
        if networks:
            self.nft.apply(build_network_sets(spec.jail, held(), {n.version for n in networks}),
                           f"unban networks in jail {spec.jail}")

    def _heal(self, spec: JailSpec, held: Held) -> bool:
        """Rebuild the jail if its structure is broken; True when it was."""
        seen = self.nft.ruleset()
        if not self._check(spec, seen):
            return False
        self._rebuild(spec, seen, held())
        return True

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        generation = self.nft.generation()  # read first: a change after it shows at the next look
        stale = [spec for spec in specs if self._good.get(spec.jail) != generation]
        if not stale:
            return []
        seen = self.nft.ruleset()
        findings = []
        for spec in stale:
            found = self._check(spec, seen)
            if found:
                self._good.pop(spec.jail, None)
                findings += found
            else:
                self._good[spec.jail] = generation
        return findings

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        self._rebuild(spec, self.nft.ruleset(), held)

    def _rebuild(self, spec: JailSpec, seen: Observed, held: Iterable[Network]) -> None:
        held = list(held)
        # Shared bans this process knows of; otherwise (the command line) whatever the kernel still holds.
        remote = self._remote.get(spec.jail)
        if remote is None:
            remote = [n for k in REMOTE_KINDS if set_name(spec.jail, k) in seen.sets
                      for n in self.nft.elements(set_name(spec.jail, k))]
        try:
            self.nft.apply(build_rebuild(spec, seen, held, remote), f"rebuild jail {spec.jail}")
        except KernelError:
            # The ruleset moved between our look and our commit: look again, once.
            self.nft.apply(build_rebuild(spec, self.nft.ruleset(), held, remote), f"rebuild jail {spec.jail}")
        self._built(spec)

    def set_remote(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        self._remote.replace(spec.jail, nets)
        try:
            self.nft.apply(build_remote(spec.jail, nets), f"load shared bans of jail {spec.jail}")
        except KernelError:
            self.repair(spec, held())

    def change_remote(self, spec: JailSpec, op: Op, nets: Sequence[Network], held: Held) -> None:
        """Add or delete shared bans one event at a time (absent ones are not an error)."""
        current = self._remote.change(spec.jail, op, nets)
        networks = [n for n in nets if not is_single(n)]
        for net in (n for n in nets if is_single(n)):
            try:
                self.nft.apply(build_elements(op, spec.jail, [net], remote=True), f"{op} a shared ban")
            except KernelError:
                # A failed add, or a failed delete in a broken jail: the rebuild holds `current`.
                if op == "add":
                    self.repair(spec, held())
                    return
                if self._heal(spec, held):
                    return
        if networks:
            self.nft.apply(build_network_sets(spec.jail, current, {n.version for n in networks}, remote=True),
                           f"{op} shared network bans of jail {spec.jail}")

    def flush(self, spec: JailSpec) -> None:
        seen = self.nft.ruleset()
        names = [set_name(spec.jail, k) for k in LOCAL_KINDS if set_name(spec.jail, k) in seen.sets]
        self.nft.apply([{"flush": _obj("set", name=n)} for n in names], f"flush jail {spec.jail}")

    def stop(self, spec: JailSpec) -> None:
        seen = self.nft.ruleset()
        if not seen.table:
            return
        cmds = build_teardown(spec.jail, seen)
        if is_table_empty_after(spec.jail, seen):
            cmds = [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
        self.nft.apply(cmds, f"remove jail {spec.jail}")

    def entries(self, spec: JailSpec) -> None:
        """None: nf_tables keeps no count of a set's elements, only a listing would tell."""
        return None

    def banned(self, spec: JailSpec, remote: bool = False) -> list[Network]:
        seen = self.nft.ruleset()
        out: list[Network] = []
        for kind in REMOTE_KINDS if remote else LOCAL_KINDS:
            if set_name(spec.jail, kind) in seen.sets:
                out += self.nft.elements(set_name(spec.jail, kind))
        return out
