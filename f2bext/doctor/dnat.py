"""DNAT, as the doctor reads it: a published port (Docker's `-p 8025:25`) whose traffic crosses FORWARD,
where a ban that sits in INPUT, or sees the container's port, does not stop it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import audit
from ..severity import Severity
from ..spec import JailSpec, PortRange
from .model import ActionInfo, Diagnosis, JailInfo, KernelInfo


def port_in(port: int, spec: JailSpec) -> bool:
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


def dnat_findings(jail: JailInfo, action: ActionInfo, spec: JailSpec, k: KernelInfo) -> list[Diagnosis]:
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
            if d.port is None or port_in(d.port, spec):
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
        out.append(Diagnosis(jail.name, Severity.CRITICAL, "dnat-bypass",
                             f"{d.describe()} (Docker?): that traffic crosses FORWARD, and {where}", d.text, fix))
    return out
