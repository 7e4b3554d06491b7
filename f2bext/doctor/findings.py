"""The doctor's correlation: fail2ban's banned lists against what the kernel holds, the hooks and
rules that apply them, the firewall manager, live sessions and DNAT, into findings per jail. Pure:
`diagnose()` is what the tests feed fixtures to. What could not be read makes an UNKNOWN finding
naming it, and no finding that would read its emptiness as "not there"."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Iterable

from .. import audit, managers
from ..backends import ipset as ipset_backend
from ..backends import nft as nft_backend
from ..errors import InputError
from ..severity import Severity
from ..spec import JailSpec
from .dnat import dnat_findings, port_in
from .shares import share_findings
from .model import (CONNTRACK, INTERFACES, IPSETS, NFTABLES, SOCKETS, ActionInfo, Diagnosis, JailInfo, KernelInfo,
                    Snapshot, rules_read, set_read)

CRITICAL, WARNING, UNKNOWN = Severity.CRITICAL, Severity.WARNING, Severity.UNKNOWN
NFT_KINDS = ("f2bext-nftables", "nftables")
IPSET_KINDS = ("f2bext-ipset", "iptables-ipset", "firewallcmd-ipset")


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
    if action.kind in IPSET_KINDS:
        return [m for n in _set_names(jail, action) if n in k.ipsets for m in k.ipsets[n][1]]
    if action.kind == "ufw":  # `ufw prepend deny from ADDR`: a rule in ufw's user chain
        return [r.source for family, text in k.iptables.items()
                for r in audit.parse_save(text).chains.get("ufw-user-input" if family == 4 else "ufw6-user-input", [])
                if r.source and r.target in ("DROP", "REJECT")]
    # stock iptables: one `-s ADDR -j REJECT` rule per ban in chain f2b-<name>
    chain = f"f2b-{_stock_name(jail, action)}"
    return [r.source for text in k.iptables.values() for r in audit.parse_save(text).chains.get(chain, []) if r.source]


def _set_names(jail: JailInfo, action: ActionInfo) -> list[str]:
    if action.kind == "f2bext-ipset":
        return [ipset_backend.ipset_name(jail.name, f) for f in (4, 6)]
    return [f"f2b-{_stock_name(jail, action)}", f"f2b-{_stock_name(jail, action)}6"]


def _members_read(jail: JailInfo, action: ActionInfo) -> list[str]:
    """The kernel reads `enforced_members` takes the action's bans from."""
    if action.kind in NFT_KINDS:
        return [NFTABLES]
    if action.kind in IPSET_KINDS:
        return [IPSETS] + [set_read(n) for n in _set_names(jail, action)]
    return [rules_read(4), rules_read(6)]


def _rules_read(action: ActionInfo, family: int) -> list[str]:
    """The kernel reads `_hook_findings` checks the action's hooks or rules of one family in."""
    if action.kind in NFT_KINDS:
        return [NFTABLES]
    if action.kind in ("firewallcmd-ipset", "ufw"):
        return []
    return [rules_read(family)] + ([IPSETS] if action.kind == "f2bext-ipset" else [])


def unread_for(jail: JailInfo, action: ActionInfo, k: KernelInfo) -> dict[str, str]:
    """What the action's findings needed and could not be read, with why."""
    wanted = _members_read(jail, action) + _rules_read(action, 4) + _rules_read(action, 6)
    wanted += [INTERFACES] if action.kind in ("iptables", "iptables-ipset") else []
    wanted += [CONNTRACK, SOCKETS] if jail.banned else []
    return {w: k.unread[w] for w in dict.fromkeys(wanted) if w in k.unread}


def _unknown(jail: JailInfo, action: ActionInfo, unread: dict[str, str]) -> Diagnosis:
    return Diagnosis(jail.name, UNKNOWN, "unreadable",
                     f"{action.name}: could not read the {', '.join(unread)}: what depends on it is unknown, "
                     "not found absent", "; ".join(unread.values()),
                     "install or repair what could not be read (or see why it fails), then run the doctor again")


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
    if action.kind in NFT_KINDS and NFTABLES in k.unread:
        return out  # an empty listing would read as every hook missing
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
        if any(w in k.unread for w in _rules_read(action, family)):
            continue
        table = audit.parse_save(k.iptables.get(family, ""))
        tool = "iptables" if family == 4 else "ip6tables"
        if action.kind == "f2bext-ipset":
            sets = {n: h for n, (h, _) in k.ipsets.items()}
            for f in ipset_backend.check_jail(spec, family, table, sets):
                out.append(Diagnosis(jail.name, f.severity, f.code, f.message, f.evidence,
                                     _fix_for(jail.name, action), owned))
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
            first = mine[0]
            out.append(Diagnosis(
                jail.name, shadow.severity, shadow.code, shadow.says(tool, chain, "fail2ban's", first.position),
                shadow.rule, f"{tool} -D {chain} {first.position}; {tool} -I {chain} 1 {first.text[3 + len(chain) + 1:]}   "
                f"(moves fail2ban's rule to the head)"))
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
            unread = unread_for(jail, action, k)
            if unread:
                found.append(_unknown(jail, action, unread))
            members_known = not any(w in unread for w in _members_read(jail, action))
            members = enforced_members(jail, action, k) if members_known else []
            missing = [ip for ip in jail.banned if not _covered(ip, members)] if members_known else []
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
            inside = [f for f in flows if port_in(f.dport, spec) and (not spec.protocols or f.proto in spec.protocols)]
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
            found += dnat_findings(jail, action, spec, k)
        if jail.notices_day:
            causes = sorted({d.code for d in found if d.severity == CRITICAL})
            found.append(Diagnosis(
                jail.name, CRITICAL if causes else WARNING, "already-banned",
                f"fail2ban logged 'already banned' {jail.notices_hour} times in the last hour, "
                f"{jail.notices_day} in the last day", "likely cause: " + (", ".join(causes) if causes else
                                                                           "none found in the kernel now (fixed since, or a slow action)")))
        out += sorted(found, key=lambda d: -d.severity.rank)
    return out + share_findings(snap.shares)
