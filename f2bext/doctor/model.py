"""What the doctor reads (a Snapshot of fail2ban and the kernel) and what it says (Diagnosis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..severity import Severity
from ..spec import JailSpec

# The kernel reads, by the name a finding gives them when they fail.
NFTABLES, IPSETS, CONNTRACK, SOCKETS, INTERFACES = "nftables ruleset", "ipsets", "conntrack", "sockets", "interfaces"


def rules_read(family: int) -> str:
    return "iptables rules" if family == 4 else "ip6tables rules"


def set_read(name: str) -> str:
    return f"ipset {name}"


@dataclass(frozen=True)
class Diagnosis:
    jail: str
    severity: Severity  # WARNING, CRITICAL, or UNKNOWN for what could not be read
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
    nft_owner: str = ""  # who owns table inet f2bext ("fail2ban-server (pid 812)"); "" when no process does
    # What could not be read, and why: empty there means unknown, not absent (NFTABLES, rules_read(4), ...).
    unread: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Share:
    """One share URL as the running fail2ban follows it (Fleet.status()), and the jails sharing through it."""

    jails: tuple[str, ...]
    status: dict[str, Any]


@dataclass
class Snapshot:
    jails: list[JailInfo]
    kernel: KernelInfo
    specs: dict[str, JailSpec] = field(default_factory=dict)  # f2bext's own view of its jails
    shares: list[Share] = field(default_factory=list)
