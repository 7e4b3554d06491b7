"""The firewall manager a host runs (firewalld, ufw), found in its ruleset, and what it does to each
kind of ban action: measured in the lab (tests/lab/test_managers.py), said here as advice with the fix.
Pure: `detect` and `advise` read what doctor's collect() gathered; tested on captured rulesets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from . import audit

FIREWALLD, UFW = "firewalld", "ufw"
_ZONE_PARTS = ("allow", "deny", "log", "pre", "post")


@dataclass(frozen=True)
class Manager:
    name: str  # FIREWALLD or UFW
    backend: str  # firewalld: nftables or iptables; ufw: iptables
    zones: tuple[str, ...] = ()  # firewalld's zones with rules in the kernel
    evidence: str = ""
    manage_builtins: Optional[bool] = None  # ufw's MANAGE_BUILTINS, when its defaults file was read
    version: str = ""  # firewalld's, when its python package could be read
    direct: bool = False  # firewalld holds direct rules (1.x: iptables chains *_direct; a firewallcmd-* action)


@dataclass(frozen=True)
class Advice:
    code: str
    critical: bool
    message: str
    evidence: str
    fix: str


def _zones(names: list[str], pattern: str) -> tuple[str, ...]:
    found = set()
    for name in names:
        m = re.fullmatch(pattern, name)
        if m and not any(m.group(1).endswith("_" + p) for p in _ZONE_PARTS):
            found.add(m.group(1))
    return tuple(sorted(found))


def detect(nft: dict[str, Any], iptables: dict[int, str], ufw_defaults: Optional[dict[str, str]] = None,
           firewalld_version: str = "") -> list[Manager]:
    """The managers whose rules are in the kernel: `nft -j list ruleset`, iptables-save text per family."""
    found: list[Manager] = []
    items = nft.get("nftables", [])
    fwd_chains = [i["chain"]["name"] for i in items if "chain" in i and i["chain"].get("table") == "firewalld"]
    filter4 = audit.parse_save(iptables.get(4, ""))
    direct = any(name.endswith("_direct") for f in (4, 6) for name in audit.parse_save(iptables.get(f, "")).chains)
    if fwd_chains:
        found.append(Manager(FIREWALLD, "nftables", _zones(fwd_chains, r"filter_IN_(\w+)"), "table inet firewalld",
                             version=firewalld_version, direct=direct))
    elif "INPUT_direct" in filter4.chains:  # firewalld makes it on its iptables backend (1.x and 2.x alike)
        found.append(Manager(FIREWALLD, "iptables", _zones(list(filter4.chains), r"IN_(\w+)"),
                             "iptables chain INPUT_direct", version=firewalld_version, direct=direct))
    if "ufw-before-input" in filter4.chains:
        builtins = None
        if ufw_defaults is not None:
            builtins = ufw_defaults.get("MANAGE_BUILTINS", "no").strip('"').lower() == "yes"
        found.append(Manager(UFW, "iptables", evidence="iptables chain ufw-before-input", manage_builtins=builtins))
    return found


def read_ufw_defaults(path: str = "/etc/default/ufw") -> Optional[dict[str, str]]:
    """KEY=value lines of ufw's defaults file, or None when there is none to read."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))


def read_firewalld_version() -> str:
    """The installed firewalld's version (its python package says it), or "" when there is none."""
    try:
        from firewall import config  # python3-firewall: firewalld itself is python
    except ImportError:
        return ""
    return str(getattr(config, "VERSION", ""))


def flushes_iptables(manager: Manager) -> bool:
    """Whether firewalld flushes every iptables table at reload, restart and stop. Measured: always on
    its iptables backend; on its nftables backend 1.3.3 does, 2.3.1 only while it holds direct rules
    (firewalld 2's may_skip_flush_direct_backends), and also when the first one is added. Direct rules
    of 2.x sit in the builtin chains, unnamed, so `direct` comes from the jails: a firewallcmd-* action.
    An unknown version is taken to flush."""
    if manager.backend == "iptables" or manager.direct:
        return True
    major = manager.version.split(".")[0]
    return not major.isdigit() or int(major) < 2


def _established_ahead(iptables: dict[int, str]) -> str:
    """ufw-before-input's RELATED,ESTABLISHED accept that runs before its jump to ufw-user-input."""
    for family in (4, 6):
        prefix = "ufw" if family == 4 else "ufw6"
        rules = audit.parse_save(iptables.get(family, "")).chains.get(f"{prefix}-before-input", [])
        for rule in rules:
            if rule.target == f"{prefix}-user-input":
                break
            if rule.target == "ACCEPT" and rule.states and not rule.states_negated and "ESTABLISHED" in rule.states:
                return rule.text
    return ""


def advise(manager: Manager, kind: str, iptables: dict[int, str]) -> list[Advice]:
    """What the manager does to a ban of this kind of action, and the fix."""
    if manager.name == FIREWALLD:
        where = f"firewalld ({manager.backend} backend" + (f", zone {', '.join(manager.zones)}" if manager.zones else "") + ")"
        flush = f"{where} flushes every iptables table (iptables -F -X -Z) at each reload, complete-reload and restart"
        if not flushes_iptables(manager) and kind != "firewallcmd-ipset":
            return []
        fix = ("banaction = f2bext-nftables.py: firewalld replaces only its own rules (table inet firewalld on "
               "its nftables backend), and that ban never leaked through a reload or restart on either backend")
        if kind == "f2bext-ipset":
            return [Advice("firewalld-flush", False, f"{flush}: this jail's ban is gone until the watchdog's next pass "
                           "(measured: up to 0.8 s a reload, 2.8 s a restart)", manager.evidence, fix)]
        if kind in ("iptables", "iptables-ipset"):
            return [Advice("firewalld-flush", False, f"{flush}: this stock action's rules go with it, and fail2ban "
                           "never puts them back (every ban lost at the next reload)", manager.evidence, fix)]
        if kind == "firewallcmd-ipset":
            return [Advice("firewalld-flush", False, f"{where} drops the runtime direct rule firewallcmd-ipset adds "
                           "at each reload, complete-reload and restart, and fail2ban never adds it back (every ban "
                           "lost at the next reload)", manager.evidence, fix)]
        return []
    if manager.name != UFW:
        return []
    if kind == "ufw":
        accept = _established_ahead(iptables)
        if not accept:
            return []
        return [Advice("ufw-established", True, "ufw-before-input accepts RELATED,ESTABLISHED ahead of ufw-user-input, "
                       "where the ufw action puts its bans: a banned address's open sessions go on (fail2ban issue 2545)",
                       accept, "action = ufw[kill-mode=ss] (cuts the sessions at the ban), or banaction = "
                       "f2bext-nftables.py (bans ahead of ufw's chains, sessions cut)")]
    if not manager.manage_builtins:
        return []  # measured: ufw leaves INPUT's other rules alone through reload and disable/enable
    flush = "ufw with MANAGE_BUILTINS=yes flushes INPUT at each reload and enable"
    fix = "banaction = f2bext-nftables.py (its own table: untouched by ufw), or MANAGE_BUILTINS=no in /etc/default/ufw"
    if kind == "f2bext-ipset":
        return [Advice("ufw-flush", False, f"{flush}: this jail's ban is gone until the watchdog's next pass "
                       "(measured: up to 1.3 s)", "MANAGE_BUILTINS=yes", fix)]
    if kind in ("iptables", "iptables-ipset"):
        return [Advice("ufw-flush", False, f"{flush}: this stock action's jump goes with it, and fail2ban never "
                       "puts it back (every ban lost at the next ufw reload)", "MANAGE_BUILTINS=yes", fix)]
    return []
