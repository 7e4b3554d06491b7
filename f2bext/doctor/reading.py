"""The doctor's reading: fail2ban's jails through its control socket, its log's `already banned`
notices, and the kernel through the backends' readers (`nft.Nft`, `ipset.Xtables`) and the kernel
wing (conntrack, sockets, interfaces over netlink). A read that fails is named in
`KernelInfo.unread`, never left as an empty "nothing there"."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import time
from typing import Callable, Iterable, Optional, TypeVar

from .. import managers, relay, state
from ..addr import Address, Network, is_single, to_text
from ..backends import ipset as ipset_backend
from ..backends import nft as nft_backend
from ..errors import KernelError
from ..kernel import ctnetlink, rtnl, sockdiag
from ..spec import PROTOCOL_NUMBERS
from .shares import read_shares
from .model import (CONNTRACK, INTERFACES, IPSETS, NFTABLES, SOCKETS, ActionInfo, Flow, JailInfo, KernelInfo,
                    Snapshot, rules_read, set_read)

PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
TCP_ESTABLISHED = 1  # the kernel's TCP socket state, as a sock_diag state bit
NOTICE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d+ fail2ban\.actions\s*(?:\[\d+\])?:\s+\w+\s+"
                    r"\[([^\]]+)\]\s+(\S+) already banned")
WATCHED_SETS = ("f2b-", "f2bext", "f2bxr")  # stock sets, ours, ours of shared bans
T = TypeVar("T")


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


def _read(info: KernelInfo, what: str, read: Callable[[], T], default: T) -> T:
    """`read()`, or `default` with the reason kept in `info.unread[what]`."""
    try:
        return read()
    except (KernelError, OSError, ImportError, ValueError) as e:
        info.unread[what] = str(e) or type(e).__name__
        return default


def read_iptables(info: KernelInfo, family: int) -> str:
    """Both backends' rules, all tables: both may hold rules at once, and the kernel runs both. A
    backend whose tool is not installed holds none; a tool that fails leaves the family unread."""
    prog = "iptables" if family == 4 else "ip6tables"
    texts = []
    for variant in ("nft", "legacy"):
        if shutil.which(f"{prog}-{variant}-save"):
            texts.append(_read(info, rules_read(family), lambda v=variant: ipset_backend.Xtables(v).save(family), ""))
    if not texts:
        info.unread[rules_read(family)] = f"neither {prog}-nft-save nor {prog}-legacy-save is installed"
    return "\n".join(texts)


def read_ipsets(info: KernelInfo) -> None:
    xt = _read(info, IPSETS, ipset_backend.Xtables, None)
    headers = _read(info, IPSETS, xt.set_headers, {}) if xt else {}
    for name, header in headers.items():
        if name.startswith(WATCHED_SETS):
            members = _read(info, set_read(name), lambda n=name: [to_text(m) for m in xt.members(n)], [])
            info.ipsets[name] = (header, members)


def _banned_lookup(banned: list[Network]) -> Callable[[Address], bool]:
    singles = {n.network_address for n in banned if is_single(n)}
    networks = [n for n in banned if not is_single(n)]
    return lambda addr: addr in singles or any(addr in n for n in networks)


def _conntrack_flows(hit: Callable[[Address], bool]) -> list[Flow]:
    """The banned peers' conntrack entries, from one dump of each family's table."""
    flows = []
    with ctnetlink.Conntrack() as ct:
        for family in (socket.AF_INET, socket.AF_INET6):
            for payload in ct.entries(ctnetlink.CtFilter(family)):
                orig = ctnetlink.parse_ct_orig(payload)
                if orig is not None and orig.dport is not None and hit(orig.src):
                    flows.append(Flow(str(orig.src), PROTOCOL_NAMES.get(orig.protocol, str(orig.protocol)),
                                      orig.dport, f"conntrack {ctnetlink.parse_ct_tcp_state(payload)}"))
    return flows


def _socket_flows(hit: Callable[[Address], bool]) -> list[Flow]:
    """The banned peers' established TCP sockets; an IPv4-mapped peer as plain IPv4."""
    flows = []
    with sockdiag.SockDiag() as diag:
        for family in (socket.AF_INET, socket.AF_INET6):
            for sock in diag.sockets(family, socket.IPPROTO_TCP, 1 << TCP_ESTABLISHED):
                peer = getattr(sock.remote, "ipv4_mapped", None) or sock.remote
                if hit(peer):
                    flows.append(Flow(str(peer), "tcp", sock.local_port, "socket established"))
    return flows


def read_flows(info: KernelInfo, banned: list[Network]) -> list[Flow]:
    """Conntrack entries and TCP sockets whose peer is a banned address: one kernel dump each, matched
    here against the banned set (a per-address kernel query costs more once bans number thousands)."""
    if not banned:
        return []
    hit = _banned_lookup(banned)
    return (_read(info, CONNTRACK, lambda: _conntrack_flows(hit), [])
            + _read(info, SOCKETS, lambda: _socket_flows(hit), []))


def read_kernel(banned: Iterable[Network]) -> KernelInfo:
    info = KernelInfo()
    info.nft = _read(info, NFTABLES, lambda: nft_backend.Nft().listing(), {})
    info.nft_owner = _read(info, NFTABLES, relay.table_owner, "")
    info.iptables = {family: read_iptables(info, family) for family in (4, 6)}
    read_ipsets(info)
    info.flows = read_flows(info, list(banned))
    found = {m.name for m in managers.detect(info.nft, info.iptables)}
    if managers.UFW in found:
        info.ufw_defaults = managers.read_ufw_defaults()
    if managers.FIREWALLD in found:
        info.firewalld_version = managers.read_firewalld_version()
    info.interfaces = _read(info, INTERFACES, rtnl.read_link_names, [])
    return info


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
    return Snapshot(jails, read_kernel(banned), specs, read_shares(sock, jails))
