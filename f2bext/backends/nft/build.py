"""nftables builders, pure: our objects' names and kinds, Observed (our table as read back), and
spec -> libnftables JSON commands (structure, elements, loads, rebuilds, teardown)."""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from ...addr import Network, is_single
from ...spec import JailSpec, PortRange
from ..base import Op, Singles

FAMILY = "inet"
TABLE = "f2bext"
PRIORITY = -10
RULE_COMMENT = "f2bext"
CHUNK = 1000  # elements per command, as firewalld does, to stay clear of netlink buffer limits
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



class Observed:
    """Our table as the kernel holds it: sets and chains by name, rules per chain."""

    def __init__(self) -> None:
        self.table = False
        self.handle: Optional[int] = None
        self.sets: dict[str, dict[str, Any]] = {}
        self.chains: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, list[dict[str, Any]]] = {}


# ---- builders ---------------------------------------------------------------------------------

def adds_table(cmd: Command) -> bool:
    return "table" in cmd.get("add", {})


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


class Load(NamedTuple):
    """A jail's sets filled at start, in order: `first` (one transaction), the single addresses of
    `singles` (set kind "v4"/"v6" -> addresses as integers) in transactions of their own, then `last`."""
    first: list[Command]
    singles: dict[str, list[int]]
    last: list[list[Command]]


def plan_load(jail: str, nets: Iterable[Network], present: Optional[Iterable[Network]] = None,
              singles: Optional[Singles] = None) -> Load:
    """Fill a jail's sets with `nets` and `singles`, reading `nets` once: only element text is kept.
    The sets are flushed first; or, given what they hold already (`present`: a table kept while
    fail2ban was down), the bans are added first and then what is not loaded is deleted, so no ban on
    both sides lapses."""
    by_kind: dict[str, list[int]] = {f"v{v}": list(found) for v, found in (singles or {}).items()}
    networks: list[Network] = []
    for net in nets:
        if is_single(net):
            by_kind.setdefault(set_kind(net), []).append(int(net.network_address))
        else:
            networks.append(net)
    if present is None:
        first = [{"flush": _obj("set", name=set_name(jail, k))} for k in LOCAL_KINDS]
        first += build_elements("add", jail, collapsed_networks(networks))
    else:
        first = build_network_sets(jail, networks, (4, 6))
    last: list[list[Command]] = []
    if present is not None:
        loaded = {kind: set(found) for kind, found in by_kind.items()}
        stale = [n for n in present if is_single(n) and int(n.network_address) not in loaded.get(set_kind(n), ())]
        last = [[cmd] for cmd in build_elements("delete", jail, stale)]
    return Load(first, {k: found for k, found in by_kind.items() if found}, last)


def pack_keys(kind: str, addresses: Iterable[int]) -> list[bytes]:
    """Single addresses of a set of `kind` ("v4", "v6"), checked already, as the kernel's set keys."""
    size = 4 if kind.endswith("4") else 16
    return [a.to_bytes(size, "big") for a in addresses]


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
    return (build_teardown(spec.jail, observed) + build_structure(spec)
            + _build_fill(spec.jail, held, remote=False) + _build_fill(spec.jail, remote, remote=True))


def _build_fill(jail: str, nets: Iterable[Network], remote: bool) -> list[Command]:
    """`add` commands for every address and the collapsed networks, in one pass over `nets`: a heal
    loads 100,000 of them while the jail enforces nothing."""
    singles: dict[int, list[str]] = {4: [], 6: []}
    networks = []
    for net in nets:
        if net.prefixlen == net.max_prefixlen:
            singles[net.version].append(str(net.network_address))
        else:
            networks.append(net)
    by_set = {set_name(jail, ("r" if remote else "") + f"v{version}"): texts for version, texts in singles.items()}
    return _chunked("add", by_set) + build_elements("add", jail, collapsed_networks(networks), remote)


def collapsed_networks(held: Iterable[Network]) -> list[Network]:
    nets = [n for n in held if not is_single(n)]
    out: list[Network] = []
    for version in (4, 6):
        out += ipaddress.collapse_addresses([n for n in nets if n.version == version])  # type: ignore[arg-type]
    return out


def is_table_empty_after(jail: str, observed: "Observed") -> bool:
    return all(jail_of(n) == jail for n in list(observed.chains) + list(observed.sets))
