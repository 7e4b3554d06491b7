"""`f2bext doctor`: why does a banned address still get through?

Reads fail2ban's state (control socket, log) and the kernel (nftables, iptables/ip6tables on both
backends, ipsets, conntrack, sockets), for jails using f2bext's actions or fail2ban's stock ones, and
correlates them into findings: each with a severity, a plain sentence, the evidence and the fix.
`collect()` does the reading; `diagnose()` is pure and is what the tests feed fixtures to.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from .. import audit, managers, state
from ..addr import Network
from ..backends import ipset as ipset_backend
from ..backends import nft as nft_backend
from ..errors import InputError
from ..spec import JailSpec, PortRange

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
NOTICE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d+ fail2ban\.actions\s*(?:\[\d+\])?:\s+\w+\s+"
                    r"\[([^\]]+)\]\s+(\S+) already banned")


@dataclass(frozen=True)
class Diagnosis:
    jail: str
    severity: int  # WARNING or CRITICAL
    code: str
    message: str
    evidence: str = ""
    fix: str = ""
    owned: bool = False  # f2bext owns what is broken, so `--fix` may repair it


@dataclass(frozen=True)
class ActionInfo:
    """One ban action of a jail as fail2ban runs it: its kind and its parameters."""

    name: str
    kind: str  # f2bext-nftables, f2bext-ipset, nftables, iptables, iptables-ipset, firewallcmd-ipset, ufw
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JailInfo:
    name: str
    banned: tuple[str, ...]
    actions: tuple[ActionInfo, ...]
    notices_hour: int = 0
    notices_day: int = 0


@dataclass
class Flow:
    """One conntrack entry or socket of a banned address."""

    peer: str
    proto: str
    dport: int
    what: str  # "conntrack <state>" or "socket <state>"


@dataclass
class KernelInfo:
    nft: dict[str, Any] = field(default_factory=dict)  # `nft -j list ruleset`, elements included
    iptables: dict[int, str] = field(default_factory=dict)  # family -> iptables-save text (all tables)
    ipsets: dict[str, tuple[tuple[str, str], list[str]]] = field(default_factory=dict)  # name -> (header, members)
    flows: list[Flow] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    ufw_defaults: Optional[dict[str, str]] = None  # /etc/default/ufw, read when ufw's chains are there
    firewalld_version: str = ""  # read when firewalld's rules are there


@dataclass
class Snapshot:
    jails: list[JailInfo]
    kernel: KernelInfo
    specs: dict[str, JailSpec] = field(default_factory=dict)  # f2bext's own view of its jails


# ---- reading -----------------------------------------------------------------------------------

def action_kind(name: str, actionban: str) -> str:
    """Which enforcement an action is, from its name or, for renamed ones, its ban command."""
    for kind in ("f2bext-nftables", "f2bext-ipset", "firewallcmd-ipset"):
        if name.startswith(kind):
            return kind
    text = f"{name} {actionban}"
    if "f2bext" in text:
        return "f2bext-ipset" if "ipset" in text else "f2bext-nftables"
    if name.startswith("nftables") or "add element" in actionban:
        return "nftables"
    if name.startswith("iptables-ipset") or ("ipset" in actionban and "iptables" in name):
        return "iptables-ipset"
    if name.startswith("iptables") or "-I f2b-" in actionban:
        return "iptables"
    if name.startswith("ufw") or re.search(r"\bufw (?:prepend|insert|delete)\b", actionban):
        return "ufw"
    return ""


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def read_notices(path: str, now: float, tail_bytes: int = 8 << 20) -> dict[str, tuple[int, int]]:
    """`already banned` notices per jail in fail2ban's log: (last hour, last day)."""
    counts: dict[str, list[int]] = {}
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        m = NOTICE.match(line)
        if not m:
            continue
        age = now - time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        if age <= 86400:
            c = counts.setdefault(m.group(2), [0, 0])
            c[1] += 1
            c[0] += age <= 3600
    return {jail: (c[0], c[1]) for jail, c in counts.items()}


def read_fail2ban(sock: Optional[str] = None) -> tuple[list[JailInfo], str]:
    """Jails, their ban actions and banned lists, and the log path, from fail2ban's socket."""
    from ..f2bsocket import Fail2banSocket
    with Fail2banSocket(sock) as f2b:
        status = dict(f2b.send(["status"]))
        names = [n.strip() for n in str(status.get("Jail list", "")).split(",") if n.strip()]
        logtarget = str(f2b.send(["get", "logtarget"]))
        jails = []
        for name in names:
            banned = tuple(str(ip) for ip in f2b.send(["get", name, "banip"]))
            actions = []
            for act in f2b.send(["get", name, "actions"]):
                params = {}
                for key in ("port", "protocol", "chain", "name", "type", "blocktype", "actionban"):
                    try:
                        value = f2b.send(["get", name, "action", act, key])
                    except OSError:
                        continue
                    if isinstance(value, (str, int)):
                        params[key] = str(value)
                kind = action_kind(act, params.pop("actionban", ""))
                if kind:
                    actions.append(ActionInfo(act, kind, params))
            jails.append(JailInfo(name, banned, tuple(actions)))
    return jails, logtarget


def read_kernel(banned: Iterable[Network]) -> KernelInfo:
    info = KernelInfo()
    listing = _run(["nft", "-j", "list", "ruleset"])
    info.nft = json.loads(listing) if listing.strip() else {}
    for family in (4, 6):
        prog = "iptables" if family == 4 else "ip6tables"
        # Both backends may hold rules at once; the kernel runs both.
        info.iptables[family] = "\n".join(_run([f"{prog}{v}-save"]) for v in ("-nft", "-legacy"))
    for name, header in ipset_backend.parse_set_headers(_run(["ipset", "list", "-t"])).items():
        if name.startswith(("f2b-", "f2bext", "f2bxr")):  # stock sets, ours, ours of shared bans
            out = _run(["ipset", "list", name])
            members = [m.split()[0] for m in out.split("Members:", 1)[1].splitlines() if m.strip()] \
                if "Members:" in out else []
            info.ipsets[name] = (header, members)
    info.flows = read_flows(list(banned))
    found = {m.name for m in managers.detect(info.nft, info.iptables)}
    if managers.UFW in found:
        info.ufw_defaults = managers.read_ufw_defaults()
    if managers.FIREWALLD in found:
        info.firewalld_version = managers.read_firewalld_version()
    info.interfaces = [line.split(":")[1].strip().split("@")[0] for line in _run(["ip", "-o", "link"]).splitlines()
                       if line.count(":") >= 2]
    return info


_CT = re.compile(r"^(\w+)\s+\d+\s+(?:\d+\s+)?(\S+\s+)?src=(\S+) dst=\S+ (?:sport=\d+ dport=(\d+))?")
_SS = re.compile(r"^(\S+)\s+\d+\s+\d+\s+\S+:(\d+)\s+\[?([0-9a-fA-F:.]+?)\]?:\d+\s*$")


def _banned_lookup(banned: list[Network]):
    singles = {str(n.network_address) for n in banned if n.prefixlen == n.max_prefixlen}
    networks = [n for n in banned if n.prefixlen != n.max_prefixlen]

    def hit(text: str) -> bool:
        if text.startswith("::ffff:") and "." in text:
            text = text[7:]
        if text in singles:
            return True
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(addr in n for n in networks)
    return hit


def read_flows(banned: list[Network]) -> list[Flow]:
    """Conntrack entries and TCP sockets whose peer is a banned address: one listing each, matched
    here against the banned set (a per-address kernel query costs more once bans number thousands)."""
    if not banned:
        return []
    hit = _banned_lookup(banned)
    flows = []
    for family in ("ipv4", "ipv6"):
        for line in _run(["conntrack", "-L", "-f", family]).splitlines():
            m = _CT.match(line)
            if m and m.group(4) and hit(m.group(3)):
                flows.append(Flow(m.group(3), m.group(1), int(m.group(4)), f"conntrack {(m.group(2) or '').strip()}"))
    for line in _run(["ss", "-Htn", "state", "established"]).splitlines():
        parts = line.split()
        if len(parts) >= 4:
            local, peer = parts[-2], parts[-1]
            host = peer.rsplit(":", 1)[0].strip("[]")
            if hit(host):
                flows.append(Flow(host[7:] if host.startswith("::ffff:") else host, "tcp",
                                  int(local.rsplit(":", 1)[1]), "socket established"))
    return flows


def collect(sock: Optional[str] = None) -> Snapshot:
    jails, logtarget = read_fail2ban(sock)
    notices = read_notices(logtarget, time.time()) if logtarget.startswith("/") else {}
    jails = [JailInfo(j.name, j.banned, j.actions, *notices.get(j.name, (0, 0))) for j in jails]
    banned = []
    for j in jails:
        for ip in j.banned:
            try:
                banned.append(ipaddress.ip_network(ip, strict=False))
            except ValueError:
                continue
    specs = {}
    for entry in state.load_all():
        specs[entry.spec.jail] = entry.spec
    return Snapshot(jails, read_kernel(banned), specs)


# ---- diagnosing --------------------------------------------------------------------------------

def spec_for(jail: JailInfo, action: ActionInfo, specs: dict[str, JailSpec]) -> JailSpec:
    """What the action asks the kernel for; f2bext's own state wins for its actions."""
    if action.kind.startswith("f2bext") and jail.name in specs:
        return specs[jail.name]
    p = action.params
    params = {"port": p.get("port", "0:65535"), "protocol": p.get("protocol", "tcp"),
              "type": "allports" if "allports" in action.name or p.get("type") == "allports" else "multiport",
              "chain": p.get("chain", "INPUT")}
    try:
        return JailSpec.from_params(jail.name if len(jail.name) <= 23 else "jail", params)
    except InputError:
        return JailSpec.from_params("jail", {"type": "allports"})


def _nft_elements(listing: dict[str, Any], table: str, names: Iterable[str]) -> list[str]:
    wanted, out = set(names), []
    for item in listing.get("nftables", []):
        body = item.get("set")
        if body and body.get("table") == table and body.get("name") in wanted:
            for elem in body.get("elem", []):
                if isinstance(elem, dict) and "elem" in elem:
                    elem = elem["elem"]["val"]
                if isinstance(elem, dict) and "prefix" in elem:
                    out.append(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                elif isinstance(elem, dict) and "range" in elem:
                    lo, hi = (ipaddress.ip_address(a) for a in elem["range"])
                    out += [str(n) for n in ipaddress.summarize_address_range(lo, hi)]
                else:
                    out.append(str(elem))
    return out


def _stock_name(jail: JailInfo, action: ActionInfo) -> str:
    return action.params.get("name", jail.name)


def enforced_members(jail: JailInfo, action: ActionInfo, k: KernelInfo) -> list[str]:
    """The addresses the kernel holds for this action."""
    if action.kind == "f2bext-nftables":
        # Shared bans from other servers (the remote sets) are not fail2ban's here: not counted.
        return _nft_elements(k.nft, nft_backend.TABLE, [nft_backend.set_name(jail.name, s) for s in nft_backend.LOCAL_KINDS])
    if action.kind == "nftables":
        name = _stock_name(jail, action)
        return _nft_elements(k.nft, "f2b-table", [f"addr-set-{name}", f"addr6-set-{name}"])
    if action.kind == "f2bext-ipset":
        names = [ipset_backend.set_name(jail.name, f) for f in (4, 6)]
    elif action.kind == "ufw":  # `ufw prepend deny from ADDR`: a rule in ufw's user chain
        return [r.source for family, text in k.iptables.items()
                for r in audit.parse_save(text).chains.get("ufw-user-input" if family == 4 else "ufw6-user-input", [])
                if r.source and r.target in ("DROP", "REJECT")]
    elif action.kind in ("iptables-ipset", "firewallcmd-ipset"):
        names = [f"f2b-{_stock_name(jail, action)}", f"f2b-{_stock_name(jail, action)}6"]
    else:  # stock iptables: one `-s ADDR -j REJECT` rule per ban in chain f2b-<name>
        chain = f"f2b-{_stock_name(jail, action)}"
        out = []
        for text in k.iptables.values():
            for rule in audit.parse_save(text).chains.get(chain, []):
                if rule.source:
                    out.append(rule.source)
        return out
    return [m for n in names if n in k.ipsets for m in k.ipsets[n][1]]


def _covered(ip: str, members: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("/")[0])
    except ValueError:
        return True
    for m in members:
        try:
            if addr in ipaddress.ip_network(m, strict=False):
                return True
        except ValueError:
            continue
    return False


def _fix_for(jail: str, action: ActionInfo) -> str:
    if action.kind.startswith("f2bext"):
        return f"f2bext repair --jail {jail}   (or: f2bext doctor --fix)"
    return (f"fail2ban-client restart {jail}   (re-applies the bans); to stop it recurring on every firewall "
            f"reload: banaction = {'f2bext-nftables.py' if action.kind == 'nftables' else 'f2bext-ipset.py'}")


def _hook_findings(jail: JailInfo, action: ActionInfo, spec: JailSpec, k: KernelInfo) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    owned = action.kind.startswith("f2bext")
    if action.kind == "f2bext-nftables":
        for f in nft_backend.check_jail(spec, nft_backend.parse_ruleset(k.nft)):
            out.append(Diagnosis(jail.name, CRITICAL, f.code, f.message, f.evidence, _fix_for(jail.name, action), owned))
        return out
    if action.kind == "nftables":
        chains = [i["chain"] for i in k.nft.get("nftables", []) if "chain" in i and i["chain"].get("table") == "f2b-table"]
        if jail.banned and not any(c.get("hook") == "input" for c in chains):
            out.append(Diagnosis(jail.name, CRITICAL, "hook-missing", "table inet f2b-table has no input hook "
                                 "(a ruleset flush or reload removed it)", fix=_fix_for(jail.name, action)))
        return out
    if action.kind in ("firewallcmd-ipset", "ufw"):
        return out  # the manager's own rules: what it does to them is managers.advise's
    for family in (4, 6):
        table = audit.parse_save(k.iptables.get(family, ""))
        tool = "iptables" if family == 4 else "ip6tables"
        if action.kind == "f2bext-ipset":
            sets = {n: h for n, (h, _) in k.ipsets.items()}
            for f in ipset_backend.check_jail(spec, family, table, sets):
                out.append(Diagnosis(jail.name, CRITICAL if f.severity == "broken" else WARNING, f.code, f.message,
                                     f.evidence, _fix_for(jail.name, action), owned))
            continue
        name = _stock_name(jail, action)
        if action.kind == "iptables-ipset":
            target = f"f2b-{name}" if family == 4 else f"f2b-{name}6"
            ours = lambda r, t=target: any(s == t for s, _ in r.match_sets)  # noqa: E731
        else:
            ours = lambda r, t=f"f2b-{name}": r.target == t  # noqa: E731
        chain = action.params.get("chain", "INPUT")
        chain = "INPUT" if chain.startswith("<") else chain
        rules = table.chains.get(chain, [])
        mine = [r for r in rules if ours(r)]
        wants_family = any((":" in ip) == (family == 6) for ip in jail.banned)
        if not mine:
            if wants_family:
                out.append(Diagnosis(jail.name, CRITICAL, "jump-missing" if family == 4 else "ipv6-uncovered",
                                     f"{tool} {chain} has no rule sending traffic to fail2ban's {name} ban",
                                     fix=_fix_for(jail.name, action)))
            continue
        for rule in mine:
            if rule.in_iface and not rule.in_iface_negated:
                others = [i for i in k.interfaces if i not in (rule.in_iface, "lo")]
                if others:
                    out.append(Diagnosis(jail.name, CRITICAL, "interface-tied",
                                         f"{tool} {chain} rule {rule.position} applies the ban only on {rule.in_iface}; "
                                         f"traffic arriving on {', '.join(others)} is not banned", rule.text,
                                         f"{tool} -D {chain} {rule.position}, then fail2ban-client restart {jail.name}"))
        for shadow in audit.shadows(chain, spec, table, ours):
            what = {audit.FULL: "accepts the banned traffic", audit.HELD: "accepts held sessions of banned addresses",
                    audit.SOURCE: "accepts banned traffic from some sources"}[shadow.scope]
            first = mine[0]
            out.append(Diagnosis(
                jail.name, WARNING if shadow.scope == audit.SOURCE else CRITICAL,
                "shadowed" if shadow.scope == audit.FULL else f"shadowed-{shadow.scope}",
                f"{tool} {chain} rule {shadow.position} {what} before fail2ban's rule {first.position}",
                shadow.rule, f"{tool} -D {chain} {first.position}; {tool} -I {chain} 1 {first.text[3 + len(chain) + 1:]}   "
                f"(moves fail2ban's rule to the head)"))
    return out


def _port_in(port: int, spec: JailSpec) -> bool:
    return spec.allports or any(lo <= port <= hi for lo, hi in spec.ports)


@dataclass(frozen=True)
class Dnat:
    """A NAT rule that sends traffic on to another host or container (Docker's `-p 8025:25`)."""

    published: Optional[tuple[PortRange, ...]]  # the ports clients connect to; None: every port
    address: str  # where it goes
    port: Optional[int]  # the port it arrives at there; None: unchanged
    text: str

    def reaches(self, spec: JailSpec) -> bool:
        """Whether the jail names the published port: the one clients ask for."""
        if spec.allports or self.published is None:
            return True
        return any(lo <= hi2 and lo2 <= hi for lo, hi in self.published for lo2, hi2 in spec.ports)

    def describe(self) -> str:
        published = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in self.published or ()) or "every port"
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{published} is forwarded to {address}:{self.port if self.port is not None else '(same port)'}"


def _split_destination(text: str) -> tuple[str, Optional[int]]:
    """`192.0.2.2:25`, `[2001:db8::2]:25`, `192.0.2.2` (a port range keeps its first port)."""
    if text.startswith("["):
        address, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        address, port = text.split(":")
    else:
        address, port = text, ""
    first = port.split("-")[0]
    return address, int(first) if first.isdigit() else None


def dnat_rules(k: KernelInfo) -> list[Dnat]:
    """The DNAT rules of both iptables and of nftables: their traffic crosses FORWARD, not INPUT."""
    found = []
    for text in k.iptables.values():
        for rules in audit.parse_save(text, "nat").chains.values():
            for r in rules:
                if r.target == "DNAT":
                    found.append(Dnat(r.dports, *_split_destination(r.to_destination), r.text))
    for item in k.nft.get("nftables", []):
        rule = item.get("rule")
        dnat = next((e["dnat"] for e in rule.get("expr", []) if "dnat" in e), None) if rule else None
        if not isinstance(dnat, dict):
            continue
        ports = [e["match"]["right"] for e in rule["expr"] if "match" in e
                 and e["match"].get("left", {}).get("payload", {}).get("field") == "dport"]
        published = tuple(sorted((p, p) for p in ports if isinstance(p, int))) or None
        port = dnat.get("port")
        found.append(Dnat(published, str(dnat.get("addr", "")), port if isinstance(port, int) else None,
                          f"nft {rule.get('family')} {rule.get('table')} {rule.get('chain')} handle {rule.get('handle')}"))
    return found


def _dnat_findings(jail: JailInfo, action: ActionInfo, spec: JailSpec, k: KernelInfo) -> list[Diagnosis]:
    """Docker's DNAT, per action: where its ban sits and which port it can see there."""
    out = []
    chain = action.params.get("chain", "INPUT").upper()
    for d in (d for d in dnat_rules(k) if d.reaches(spec)):
        behind = d.port if d.port is not None else "the same port"
        if action.kind.startswith("f2bext"):
            if "forward" in spec.hooks:
                continue  # the forward hook matches the port the client asked for too
            where = "the ban sits in INPUT only"
            fix = (f'action = {action.kind}.py[port="{action.params.get("port", "")}", hooks="input,forward"]   '
                   "(the forward hook matches the port the client asked for, before DNAT)")
        elif action.kind in ("iptables", "iptables-ipset") and chain in ("FORWARD", "DOCKER-USER"):
            if d.port is None or _port_in(d.port, spec):
                continue  # FORWARD sees the port behind the DNAT, and the jail names it
            where = f"the ban sits in {chain}, which sees port {behind} after DNAT, not the published one"
            fix = (f"port = {action.params.get('port', '')},{behind} (the container's port, as {chain} sees it), "
                   "or banaction = f2bext-ipset.py with hooks=\"input,forward\"")
        else:
            where = "the ban sits in INPUT only" if action.kind != "nftables" else "the ban hooks input only"
            fix = (f"keep this action for the host's ports and add one with chain = DOCKER-USER, port = {behind} "
                   "(the container's port: DOCKER-USER sees it after DNAT); or banaction = f2bext-ipset.py "
                   "with hooks=\"input,forward\", which matches the published port"
                   if action.kind != "nftables" else
                   'banaction = f2bext-nftables.py with hooks="input,forward" (or, stock: chain_hook = prerouting, '
                   "chain_priority = -150, blocktype = drop: before DNAT, where the published port is seen)")
        out.append(Diagnosis(jail.name, CRITICAL, "dnat-bypass",
                             f"{d.describe()} (Docker?): that traffic crosses FORWARD, and {where}", d.text, fix))
    return out


def diagnose(snap: Snapshot) -> list[Diagnosis]:
    """Every reason, per jail, that a banned address could still get through."""
    out: list[Diagnosis] = []
    k = snap.kernel
    found_managers = managers.detect(k.nft, k.iptables, k.ufw_defaults, k.firewalld_version)
    if any(a.kind == "firewallcmd-ipset" for j in snap.jails for a in j.actions):  # it adds direct rules
        found_managers = [dataclasses.replace(m, direct=True) if m.name == managers.FIREWALLD else m
                          for m in found_managers]
    for jail in snap.jails:
        found: list[Diagnosis] = []
        for action in jail.actions:
            spec = spec_for(jail, action, snap.specs)
            members = enforced_members(jail, action, k)
            missing = [ip for ip in jail.banned if not _covered(ip, members)]
            if missing:
                found.append(Diagnosis(
                    jail.name, CRITICAL, "not-enforced",
                    f"{len(missing)} of {len(jail.banned)} addresses fail2ban holds banned are not in the kernel "
                    f"({action.name}: lost in a firewall reload?)", ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""),
                    _fix_for(jail.name, action), action.kind.startswith("f2bext")))
            found += _hook_findings(jail, action, spec, k)
            for manager in found_managers:
                for a in managers.advise(manager, action.kind, k.iptables):
                    found.append(Diagnosis(jail.name, CRITICAL if a.critical else WARNING, a.code,
                                           f"{action.name}: {a.message}", a.evidence, a.fix))
            if action.kind == "iptables-ipset" and "proto6" not in action.name and any(":" in ip for ip in jail.banned) \
                    and not any(d.code == "ipv6-uncovered" for d in found):
                found.append(Diagnosis(jail.name, CRITICAL, "ipv6-uncovered", f"{action.name} enforces IPv4 only, "
                                       "and the jail bans IPv6 addresses", fix="banaction = f2bext-ipset.py"))
            stale = [m for m in members if not _covered(m, list(jail.banned))]
            if stale:
                found.append(Diagnosis(jail.name, WARNING, "stale", f"{len(stale)} addresses are banned in the kernel "
                                       "but no longer held by fail2ban", ", ".join(stale[:8]),
                                       _fix_for(jail.name, action), action.kind.startswith("f2bext")))
            flows = [f for f in k.flows if _covered(f.peer, list(jail.banned))]
            inside = [f for f in flows if _port_in(f.dport, spec) and (not spec.protocols or f.proto in spec.protocols)]
            outside = [f for f in flows if f not in inside and f.what.startswith("conntrack")]
            if inside:
                found.append(Diagnosis(jail.name, CRITICAL, "sessions-alive",
                                       f"{len(inside)} sessions of banned addresses are still alive on the jail's ports",
                                       "; ".join(f"{f.peer} {f.proto}/{f.dport} ({f.what})" for f in inside[:8]),
                                       "f2bext kill " + " ".join(sorted({f.peer for f in inside})[:8]),
                                       action.kind.startswith("f2bext")))
            if outside:
                ports = sorted({f"{f.proto}/{f.dport}" for f in outside})
                found.append(Diagnosis(jail.name, WARNING, "ports-uncovered",
                                       f"banned addresses are reaching ports the ban does not cover: {', '.join(ports)}",
                                       "; ".join(f"{f.peer} {f.proto}/{f.dport}" for f in outside[:8]),
                                       f"add them to the jail: port = {action.params.get('port', '')},"
                                       f"{','.join(p.split('/')[1] for p in ports)}"))
            found += _dnat_findings(jail, action, spec, k)
        if jail.notices_day:
            causes = sorted({d.code for d in found if d.severity == CRITICAL})
            found.append(Diagnosis(
                jail.name, CRITICAL if causes else WARNING, "already-banned",
                f"fail2ban logged 'already banned' {jail.notices_hour} times in the last hour, "
                f"{jail.notices_day} in the last day", "likely cause: " + (", ".join(causes) if causes else
                                                                           "none found in the kernel now (fixed since, or a slow action)")))
        out += sorted(found, key=lambda d: -d.severity)
    return out


# ---- speaking ----------------------------------------------------------------------------------

def overall(findings: list[Diagnosis]) -> int:
    return max((d.severity for d in findings), default=OK)


def perfdata(snap: Snapshot, findings: list[Diagnosis]) -> dict[str, int]:
    return {
        "jails": len(snap.jails),
        "banned": sum(len(j.banned) for j in snap.jails),
        "leaking": sum(1 for d in findings if d.code in ("not-enforced", "shadowed", "jump-missing", "hook-missing",
                                                          "ipv6-uncovered", "dnat-bypass", "interface-tied")),
        "sessions": sum(1 for d in findings if d.code == "sessions-alive"),
        "notices_1h": sum(j.notices_hour for j in snap.jails),
        "critical": sum(1 for d in findings if d.severity == CRITICAL),
        "warning": sum(1 for d in findings if d.severity == WARNING),
    }


def summary_line(snap: Snapshot, findings: list[Diagnosis]) -> str:
    code = overall(findings)
    perf = " ".join(f"{k}={v}" for k, v in perfdata(snap, findings).items())
    if code == OK:
        what = f"{len(snap.jails)} jails, {perfdata(snap, findings)['banned']} bans, every ban holds"
    else:
        worst = [d for d in findings if d.severity == code]
        what = "; ".join(f"{d.jail}: {d.message}" for d in worst[:3]) + (f" (+{len(worst) - 3} more)" if len(worst) > 3 else "")
    return f"F2BEXT DOCTOR {STATUS[code]} - {what} | {perf}"


def render(snap: Snapshot, findings: list[Diagnosis]) -> str:
    lines = [summary_line(snap, findings)]
    if not findings:
        return lines[0]
    jails = sorted({d.jail for d in findings}, key=lambda j: -max(d.severity for d in findings if d.jail == j))
    for jail in jails:
        lines.append(f"\n[{jail}]")
        for d in (d for d in findings if d.jail == jail):
            lines.append(f"  {STATUS[d.severity]:8} {d.message}")
            if d.evidence:
                lines.append(f"           evidence: {d.evidence}")
            if d.fix:
                lines.append(f"           fix: {d.fix}")
    return "\n".join(lines)


def to_json(snap: Snapshot, findings: list[Diagnosis]) -> str:
    return json.dumps({"status": STATUS[overall(findings)], "summary": summary_line(snap, findings),
                       "perfdata": perfdata(snap, findings),
                       "findings": [dict(asdict(d), severity=STATUS[d.severity]) for d in findings]}, indent=2)


def render_unknown(why: str, as_json: bool) -> str:
    """The one line (or, for --json, the document) when nothing could be checked."""
    line = f"F2BEXT DOCTOR {STATUS[UNKNOWN]} - {why}"
    if not as_json:
        return line
    return json.dumps({"status": STATUS[UNKNOWN], "summary": line, "perfdata": {}, "findings": []}, indent=2)


def write_prom(path: str, snap: Snapshot, findings: list[Diagnosis]) -> None:
    """node_exporter textfile metrics, written atomically (temporary file, then rename)."""
    lines = ["# HELP f2bext_doctor_status 0 ok, 1 warning, 2 critical", "# TYPE f2bext_doctor_status gauge",
             f"f2bext_doctor_status {overall(findings)}",
             "# HELP f2bext_jail_banned addresses fail2ban holds banned", "# TYPE f2bext_jail_banned gauge"]
    lines += [f'f2bext_jail_banned{{jail="{j.name}"}} {len(j.banned)}' for j in snap.jails]
    lines += ["# HELP f2bext_jail_findings findings by severity", "# TYPE f2bext_jail_findings gauge"]
    for j in snap.jails:
        for sev in (WARNING, CRITICAL):
            n = sum(1 for d in findings if d.jail == j.name and d.severity == sev)
            lines.append(f'f2bext_jail_findings{{jail="{j.name}",severity="{STATUS[sev].lower()}"}} {n}')
    lines += ["# HELP f2bext_already_banned_notices notices in fail2ban's log", "# TYPE f2bext_already_banned_notices gauge"]
    for j in snap.jails:
        lines.append(f'f2bext_already_banned_notices{{jail="{j.name}",window="1h"}} {j.notices_hour}')
        lines.append(f'f2bext_already_banned_notices{{jail="{j.name}",window="1d"}} {j.notices_day}')
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".f2bext-doctor-")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
