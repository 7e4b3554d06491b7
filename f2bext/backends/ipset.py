"""iptables + ipset backend: pure builders (spec -> restore text), the check that reads iptables-save
as the kernel walks it, and the one class that runs iptables/ipset.

Per jail J: ipsets `f2bext-J` (inet) and `f2bext6-J` (inet6), both hash:net so that CIDR bans work,
and `f2bxr-J`/`f2bxr6-J` for the bans other servers shared (fleet sharing; apart, so that local unbans
and flushes never disturb them; short names keep within ipset's 31 characters),
and in each chain the jail hooks (INPUT, FORWARD) rules at the head of the chain:
  -p PROTO -m multiport --dports PORTS -m set --match-set f2bext-J src -m comment --comment f2bext:J -j REJECT
In FORWARD also, per port range, the port the client asked for, before Docker's DNAT rewrote it:
  -p PROTO -m conntrack --ctorigdstport PORT[:PORT] -m set --match-set f2bext-J src ... -j REJECT
An ACCEPT ahead of these would win, so every check reads the chain as iptables walks it (audit.py),
and a repair moves our rules back to the head in one iptables-restore transaction.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import shlex
import socket
import struct
import subprocess
import threading
from collections import Counter
from typing import Callable, Iterable, Optional, Sequence

from .. import audit, netlink
from ..addr import Network, to_text
from ..errors import KernelError
from ..spec import JailSpec, PortRange, format_ports
from ..severity import Severity
from .base import BROKEN, Finding, Held, SharedBans

FAMILIES = (4, 6)
CHAINS = {"input": "INPUT", "forward": "FORWARD"}
MAXELEM = 1048576  # fail2ban hosts with long bantimes collect hundreds of thousands of bans
MULTIPORT_MAX = 15  # ports per multiport match (a range counts twice)


def set_name(jail: str, family: int, remote: bool = False) -> str:
    if remote:
        return f"f2bxr-{jail}" if family == 4 else f"f2bxr6-{jail}"
    return f"f2bext-{jail}" if family == 4 else f"f2bext6-{jail}"


def set_names(jail: str, family: int) -> tuple[str, str]:
    """The jail's local and shared set of one family."""
    return set_name(jail, family), set_name(jail, family, remote=True)


def comment(jail: str) -> str:
    return f"f2bext:{jail}"


# ---- builders ---------------------------------------------------------------------------------

def _port_chunks(ports: tuple[PortRange, ...]) -> list[tuple[PortRange, ...]]:
    chunks: list[list[PortRange]] = [[]]
    used = 0
    for lo, hi in ports:
        cost = 1 if lo == hi else 2
        if used + cost > MULTIPORT_MAX:
            chunks.append([])
            used = 0
        chunks[-1].append((lo, hi))
        used += cost
    return [tuple(c) for c in chunks]


def rule_args(spec: JailSpec, family: int, hook: str = "input") -> list[list[str]]:
    """The jail's rules for one family and hook, as iptables arguments after the chain name. Forwarded
    traffic may have been DNAT'ed from a port the jail names (Docker's `-p 8025:25`): FORWARD matches
    the original destination port too (conntrack's takes one port or range per rule)."""
    if spec.blocktype == "drop":
        target = ["-j", "DROP"]
    else:
        target = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"]
    rules = []
    for name in set_names(spec.jail, family):
        match = ["-m", "set", "--match-set", name, "src", "-m", "comment", "--comment", comment(spec.jail)]
        for proto in spec.protocols or (None,):
            head = ["-p", proto] if proto else []
            if spec.ports:
                for chunk in _port_chunks(spec.ports):
                    rules.append(head + ["-m", "multiport", "--dports", format_ports(chunk)] + match + target)
                if hook == "forward":
                    for low, high in spec.ports:
                        rules.append(head + ["-m", "conntrack", "--ctorigdstport", format_ports(((low, high),))]
                                     + match + target)
            else:
                rules.append(head + match + target)
    return rules


def _is_ours(jail: str, family: int):
    def check(rule: audit.Rule) -> bool:
        return rule.comment == comment(jail) or any(s in set_names(jail, family) for s, _ in rule.match_sets)
    return check


def _shape(rule: audit.Rule) -> tuple:
    return (rule.proto, rule.dports, rule.orig_dports, tuple(rule.match_sets), rule.target, rule.reject_with,
            rule.in_iface, rule.source, rule.states, tuple(rule.unknown), rule.comment)


def expected_shapes(spec: JailSpec, family: int, hook: str) -> Counter:
    return Counter(_shape(audit.parse_rule(CHAINS[hook], args, 0, "")) for args in rule_args(spec, family, hook))


def build_rules_restore(spec: JailSpec, family: int, table: audit.Table) -> str:
    """iptables-restore --noflush input: drop the jail's rules wherever they are, put them at the head
    of each chain it hooks. One transaction."""
    lines = ["*filter"]
    ours = _is_ours(spec.jail, family)
    for chain, rules in table.chains.items():
        for rule in rules:
            if ours(rule):
                lines.append("-D" + rule.text[2:])
    for hook in spec.hooks:
        for args in reversed(rule_args(spec, family, hook)):
            lines.append(shlex.join(["-I", CHAINS[hook], "1", *args]))
    return "\n".join(lines + ["COMMIT", ""])


def build_rules_removal(jail: str, family: int, table: audit.Table) -> str:
    ours = _is_ours(jail, family)
    deletes = ["-D" + r.text[2:] for rules in table.chains.values() for r in rules if ours(r)]
    return "\n".join(["*filter", *deletes, "COMMIT", ""]) if deletes else ""


def build_set_restore(jail: str, nets: Iterable[Network], flush: bool,
                      remote: Optional[Iterable[Network]] = None) -> str:
    """ipset restore input: the jail's sets created if absent; the local ones optionally emptied, then
    filled; the shared ones replaced only when `remote` is given."""
    lines = []
    for family in FAMILIES:
        for name in set_names(jail, family):
            lines.append(f"create {name} hash:net family {'inet' if family == 4 else 'inet6'} "
                         f"hashsize 1024 maxelem {MAXELEM} -exist")
        if flush:
            lines.append(f"flush {set_name(jail, family)}")
        if remote is not None:
            lines.append(f"flush {set_name(jail, family, remote=True)}")
    for net in nets:
        lines.append(f"add {set_name(jail, net.version)} {to_text(net)} -exist")
    for net in remote or ():
        lines.append(f"add {set_name(jail, net.version, remote=True)} {to_text(net)} -exist")
    return "\n".join(lines) + "\n"


# ---- checks -----------------------------------------------------------------------------------

def parse_sets(text: str) -> dict[str, tuple[str, str, int, int]]:
    """`ipset list -t` output -> {set name: (type, family, maxelem, number of entries)}."""
    sets: dict[str, tuple[str, str, int, int]] = {}
    name, kind, words = "", "", []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "Name":
            name, kind, words = value, "", []
        elif key == "Type":
            kind = value
        elif key == "Header":
            words = value.split()
        elif key == "Number of entries" and name:
            def word_after(w: str) -> str:
                return words[words.index(w) + 1] if w in words else ""
            sets[name] = (kind, word_after("family"), int(word_after("maxelem") or 0), int(value))
    return sets


def parse_set_headers(text: str) -> dict[str, tuple[str, str]]:
    """{set name: (type, family)}."""
    return {name: (kind, family) for name, (kind, family, _, _) in parse_sets(text).items()}


def check_jail(spec: JailSpec, family: int, table: audit.Table, sets: dict[str, tuple[str, str]]) -> list[Finding]:
    """What keeps the jail's bans from holding in one family: missing or wrong sets, missing, altered
    or shadowed rules (each shadow quoted with its position)."""
    return check_sets(spec, family, sets) + check_rules(spec, family, table)


def check_sets(spec: JailSpec, family: int, sets: dict[str, tuple[str, str]]) -> list[Finding]:
    want = ("hash:net", "inet" if family == 4 else "inet6")
    findings = []
    for name in set_names(spec.jail, family):
        if name not in sets:
            findings.append(Finding(spec.jail, BROKEN, "set-missing", f"ipset {name} is missing"))
        elif sets[name] != want:
            findings.append(Finding(spec.jail, BROKEN, "set-altered",
                                    f"ipset {name} is {' '.join(sets[name])}, not {' '.join(want)}"))
    return findings


def check_rules(spec: JailSpec, family: int, table: audit.Table) -> list[Finding]:
    tool = "iptables" if family == 4 else "ip6tables"
    findings = []

    def add(severity: Severity, code: str, message: str, evidence: str = "") -> None:
        findings.append(Finding(spec.jail, severity, code, message, evidence))

    ours = _is_ours(spec.jail, family)
    for hook in spec.hooks:
        chain = CHAINS[hook]
        mine = [r for r in table.chains.get(chain, []) if ours(r)]
        if not mine:
            add(BROKEN, "jump-missing", f"{tool} {chain} has no rule for jail {spec.jail}")
            continue
        if Counter(_shape(r) for r in mine) != expected_shapes(spec, family, hook):
            add(BROKEN, "rule-altered", f"{tool} {chain} rules of jail {spec.jail} differ from what it asks for",
                "\n".join(r.text for r in mine))
        # In FORWARD the port a rule sees may be DNAT's (Docker's `-p 8025:25` accepts --dport 25):
        # an accept there lets banned traffic through whatever port it names.
        seen_as = dataclasses.replace(spec, ports=()) if hook == "forward" else spec
        for shadow in audit.shadows(chain, seen_as, table, ours):
            add(shadow.severity, shadow.code, shadow.says(tool, chain, "f2bext's", mine[0].position), shadow.rule)
    for chain, rules in table.chains.items():
        if chain not in {CHAINS[h] for h in spec.hooks} and any(ours(r) for r in rules):
            add(BROKEN, "hook-extra", f"{tool} {chain} holds rules of jail {spec.jail} it does not ask for")
    return findings


# ---- ipset over netlink (pure) -----------------------------------------------------------------

NFNL_SUBSYS_IPSET = 6
IPSET_PROTOCOL = 7
IPSET_CMD_LIST, IPSET_CMD_ADD, IPSET_CMD_DEL = 7, 9, 10
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_TYPENAME, IPSET_ATTR_FAMILY = 1, 2, 3, 5
IPSET_ATTR_FLAGS, IPSET_ATTR_DATA = 6, 7
IPSET_ATTR_IP, IPSET_ATTR_CIDR, IPSET_ATTR_MAXELEM, IPSET_ATTR_ELEMENTS = 1, 3, 19, 24
IPSET_ATTR_IPADDR_IPV4, IPSET_ATTR_IPADDR_IPV6 = 1, 2
IPSET_FLAG_LIST_HEADER = 1 << 2
NFPROTO_FAMILIES = {2: "inet", 10: "inet6"}
IPSET_ERRORS = {4097: "protocol error", 4102: "the set is of another type", 4106: "the set is of another family",
                4109: "not an IPv4 address", 4110: "not an IPv6 address", 4352: "the set is full (maxelem)"}


def _ipset_msg(cmd: int, flags: int, seq: int, body: bytes) -> bytes:
    return netlink.message(NFNL_SUBSYS_IPSET << 8 | cmd, netlink.NLM_F_REQUEST | flags, seq,
                           netlink.NFGEN.pack(socket.AF_INET, 0, 0)
                           + netlink.attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + body)


def pack_ipset_change(seq: int, op: str, name: str, net: Network) -> bytes:
    """ADD or DEL of one network; without NLM_F_EXCL the kernel takes present (or absent) as done."""
    kind = IPSET_ATTR_IPADDR_IPV4 if net.version == 4 else IPSET_ATTR_IPADDR_IPV6
    data = netlink.nest(IPSET_ATTR_DATA,
                        netlink.nest(IPSET_ATTR_IP, netlink.attr(kind | netlink.NLA_F_NET_BYTEORDER,
                                                                 net.network_address.packed)),
                        netlink.attr(IPSET_ATTR_CIDR | netlink.NLA_F_NET_BYTEORDER, bytes([net.prefixlen])))
    cmd = IPSET_CMD_ADD if op == "add" else IPSET_CMD_DEL
    return _ipset_msg(cmd, netlink.NLM_F_ACK, seq, netlink.attr(IPSET_ATTR_SETNAME, name.encode() + b"\0") + data)


def pack_ipset_headers(seq: int) -> bytes:
    """A dump of every set's header, no members: what `ipset list -t` prints."""
    flags = netlink.attr(IPSET_ATTR_FLAGS | netlink.NLA_F_NET_BYTEORDER, struct.pack(">I", IPSET_FLAG_LIST_HEADER))
    return _ipset_msg(IPSET_CMD_LIST, netlink.NLM_F_DUMP, seq, flags)


def parse_ipset_header(payload: bytes) -> Optional[tuple[str, tuple[str, str, int, int]]]:
    """One dumped header -> (set name, (type, family, maxelem, number of entries)), as parse_sets."""
    found: dict[int, bytes] = {}
    for kind, start, end in netlink.attrs(payload, netlink.NFGEN.size, len(payload)):
        if kind == IPSET_ATTR_DATA:
            for inner, i_start, i_end in netlink.attrs(payload, start, end):
                if inner in (IPSET_ATTR_MAXELEM, IPSET_ATTR_ELEMENTS):
                    found[0x100 | inner] = payload[i_start:i_end]
        else:
            found[kind] = payload[start:end]
    if IPSET_ATTR_SETNAME not in found:
        return None  # a member message: none are asked for

    def text(kind: int) -> str:
        return found.get(kind, b"").split(b"\0", 1)[0].decode(errors="replace")

    def number(kind: int) -> int:
        return int.from_bytes(found.get(0x100 | kind, b""), "big")
    family = NFPROTO_FAMILIES.get(found.get(IPSET_ATTR_FAMILY, b"\0")[0], "")
    return text(IPSET_ATTR_SETNAME), (text(IPSET_ATTR_TYPENAME), family, number(IPSET_ATTR_MAXELEM),
                                      number(IPSET_ATTR_ELEMENTS))


def ipset_error(e: OSError) -> str:
    if e.errno is None:
        return str(e) or "no answer"  # a timeout
    return IPSET_ERRORS.get(e.errno) or ("no such set" if e.errno == errno.ENOENT else os.strerror(e.errno))


# ---- iptables-legacy's rules, fingerprinted (pure) ---------------------------------------------
# iptables-legacy keeps no generation; its table blob, read with getsockopt, stands in for one. Each
# entry carries packet counters, which move with traffic, not with the rules: they are zeroed first.

IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES = 64, 65  # ip6t_ the same, at SOL_IPV6
XT_TABLE_INFO = struct.Struct("=32sI5I5III")  # name, valid hooks, hook entries, underflows, entries, size
XT_GET_ENTRIES = struct.Struct("=32sI4x")  # name, size, then the entries (aligned for their u64 counters)
# Per family: where an entry's next_offset and its counters (two u64) sit.
XT_ENTRY_LAYOUT = {4: (90, 96), 6: (142, 152)}


def table_fingerprint(family: int, blob: bytes) -> bytes:
    """The entries of a table as getsockopt returned them, their counters zeroed."""
    next_at, counters_at = XT_ENTRY_LAYOUT[family]
    out = bytearray(blob)
    offset = 0
    while offset + counters_at + 16 <= len(out):
        out[offset + counters_at:offset + counters_at + 16] = bytes(16)
        step = struct.unpack_from("=H", out, offset + next_at)[0]
        if step == 0:
            break
        offset += step
    return bytes(out)


# ---- the kernel -------------------------------------------------------------------------------

class Xtables:
    """The one place that runs iptables, ip6tables and ipset (argument lists, never a shell), and
    that reads ipsets and the rules' fingerprint from the kernel directly."""

    def __init__(self, variant: Optional[str] = None) -> None:
        variant = os.environ.get("F2BEXT_IPTABLES", "") if variant is None else variant
        if variant not in ("", "nft", "legacy"):
            raise KernelError(f"F2BEXT_IPTABLES must be nft or legacy, not {variant[:20]!r}")
        self.suffix = f"-{variant}" if variant else ""
        self.variant = variant or self._installed_variant()
        self._lock = threading.Lock()
        self._ipset: Optional[netlink.Socket] = None
        self._generation = netlink.Generation() if self.variant == "nft" else None

    def _run(self, argv: list[str], what: str, stdin: str = "") -> str:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise KernelError(f"cannot {what}: {argv[0]} is not installed") from None
        if done.returncode != 0:
            raise KernelError(f"{argv[0]} refused to {what}", done.stderr)
        return done.stdout

    def _tool(self, family: int, kind: str = "") -> str:
        return ("iptables" if family == 4 else "ip6tables") + self.suffix + kind

    def table(self, family: int) -> audit.Table:
        return audit.parse_save(self._run([self._tool(family, "-save"), "-t", "filter"], "list rules"))

    def save(self, family: int) -> str:
        """Every table's rules, as `iptables-save` prints them (the doctor's read)."""
        return self._run([self._tool(family, "-save")], "list rules")

    def restore_rules(self, family: int, text: str) -> None:
        if text:
            self._run([self._tool(family, "-restore"), "-w", "--noflush"], "change rules", text)

    def set_headers(self) -> dict[str, tuple[str, str]]:
        return self.sets()[0]

    def sets(self) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int, int]]]:
        """Every set's (type, family) and (maxelem, entries): `ipset list -t`, over netlink."""
        try:
            found = dict(filter(None, map(parse_ipset_header, self._ipset_ask(pack_ipset_headers))))
        except OSError as e:
            raise KernelError("cannot list ipsets", ipset_error(e)) from None
        return ({n: (kind, family) for n, (kind, family, _, _) in found.items()},
                {n: (maxelem, entries) for n, (_, _, maxelem, entries) in found.items()})

    def restore_sets(self, text: str) -> None:
        self._run(["ipset", "restore", "-exist"], "load ipsets", text)

    def destroy_set(self, name: str) -> None:
        self._run(["ipset", "destroy", name], f"remove ipset {name}")

    def members(self, name: str) -> list[Network]:
        out = self._run(["ipset", "list", name], f"list ipset {name}")
        return [ipaddress.ip_network(m) for m in audit.parse_members(out)]

    def change(self, op: str, name: str, net: Network) -> None:
        """One element in-process over netlink (no fork per ban); absent or present is not an error."""
        try:
            for _ in self._ipset_ask(lambda seq: pack_ipset_change(seq, op, name, net)):
                pass
        except OSError as e:
            raise KernelError(f"ipset refused to {op} {to_text(net)} in {name}", ipset_error(e)) from None

    def _ipset_ask(self, make: Callable[[int], bytes]) -> list[bytes]:
        with self._lock:
            if self._ipset is None:
                self._ipset = netlink.Socket(netlink.NETLINK_NETFILTER)
            try:
                return list(self._ipset.ask(make))
            except OSError as e:
                if e.errno is None or e.errno < 4096:  # not ipset's own refusal: the socket may be mid-answer
                    self._ipset.close()
                    self._ipset = None
                raise

    def rules_fingerprint(self) -> object:
        """Changes whenever any iptables rule does (ipsets aside): the nf_tables generation for
        iptables-nft, the filter tables' rules themselves for iptables-legacy."""
        if self._generation is not None:
            return self._generation.read()
        return tuple(_legacy_table(family) for family in FAMILIES)

    def _installed_variant(self) -> str:
        """What plain `iptables` runs, as `iptables -V` says; legacy when unsure, whose fingerprint
        reads the rules themselves (the nf_tables generation would miss legacy changes)."""
        try:
            said = self._run(["iptables", "-V"], "tell its version")
        except KernelError:
            return "legacy"
        return "nft" if "nf_tables" in said else "legacy"


_libc = None


def _legacy_table(family: int) -> bytes:
    """The legacy filter table of `family`, fingerprinted: two getsockopt calls on a raw socket."""
    import ctypes  # getsockopt with a filled-in buffer (the table's name), which Python's cannot send
    global _libc
    _libc = _libc or ctypes.CDLL(None, use_errno=True)
    level = socket.IPPROTO_IP if family == 4 else socket.IPPROTO_IPV6
    try:
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        raise KernelError("cannot read the iptables-legacy filter table", e.strerror or str(e)) from None
    with sock:
        def get(opt: int, buf: bytes) -> bytes:
            data, size = ctypes.create_string_buffer(buf, len(buf)), ctypes.c_uint(len(buf))
            if _libc.getsockopt(sock.fileno(), level, opt, data, ctypes.byref(size)) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            return data.raw[:size.value]
        try:
            for _ in range(5):
                info = get(IPT_SO_GET_INFO, XT_TABLE_INFO.pack(b"filter", 0, *[0] * 10, 0, 0))
                size = XT_TABLE_INFO.unpack(info)[-1]
                try:
                    blob = get(IPT_SO_GET_ENTRIES, XT_GET_ENTRIES.pack(b"filter", size) + bytes(size))
                except OSError as e:
                    if e.errno == errno.EAGAIN:  # the table was replaced between the two reads
                        continue
                    raise
                return table_fingerprint(family, blob[XT_GET_ENTRIES.size:])
        except OSError as e:
            raise KernelError("cannot read the iptables-legacy filter table", e.strerror) from None
    raise KernelError("cannot read the iptables-legacy filter table", "it kept changing")


class IpsetBackend:
    """The Backend interface on iptables (nft or legacy) and ipset."""

    name = "ipset"

    def __init__(self, xt: Optional[Xtables] = None) -> None:
        self.xt = xt or Xtables()
        self._remote = SharedBans()
        # The rules fingerprint at which each jail's rules last checked out: while it stands, no
        # iptables-save (two forks, 6 to 10 ms) is needed to know they still do. ipsets are read
        # over netlink at every check; they are not part of the fingerprint.
        self._good: dict[str, object] = {}

    def start(self, spec: JailSpec, held: Iterable[Network]) -> None:
        self.xt.restore_sets(build_set_restore(spec.jail, held, flush=False))
        self._place_rules(spec, only_if_broken=True)

    def ban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> list[str]:
        try:
            for net in nets:
                self.xt.change("add", set_name(spec.jail, net.version), net)
        except KernelError as e:
            self.repair(spec, list(held()) + list(nets))
            return [str(e)]
        # The add itself shows the set is there and takes the address. The sets' headers (type,
        # maxelem) are left to the watchdog's verify each second: the kernel counts a set's elements
        # to answer for its header, 0.5 ms at 100,000.
        if self._good.get(spec.jail) == self.xt.rules_fingerprint():
            return []
        broken = [f.message for f in self.verify([spec]) if f.severity == BROKEN]
        if broken:
            self.repair(spec, list(held()) + list(nets))
        return broken

    def unban(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        try:
            for net in nets:
                self.xt.change("del", set_name(spec.jail, net.version), net)
        except KernelError:
            self.repair(spec, held())

    def verify(self, specs: Sequence[JailSpec]) -> list[Finding]:
        fingerprint = self.xt.rules_fingerprint()  # read first: a change after it shows at the next look
        sets, limits = self.xt.sets()
        findings = []
        for spec in specs:
            for family in FAMILIES:
                findings += check_sets(spec, family, sets)
                name = set_name(spec.jail, family)
                if name in limits and limits[name][0] < MAXELEM:
                    findings.append(Finding(spec.jail, BROKEN, "set-altered", f"ipset {name} holds at most "
                                            f"{limits[name][0]} entries, not {MAXELEM}"))
        stale = [spec for spec in specs if self._good.get(spec.jail) != fingerprint]
        if stale:
            tables = {family: self.xt.table(family) for family in FAMILIES}
            # Rules read while they changed (a repair in another thread) must not stand for the
            # fingerprint read before: a legacy fingerprint comes back when the same rules do.
            steady = self.xt.rules_fingerprint() == fingerprint
            for spec in stale:
                found = [f for family in FAMILIES for f in check_rules(spec, family, tables[family])]
                if found:
                    self._good.pop(spec.jail, None)
                    findings += found
                elif steady:
                    self._good[spec.jail] = fingerprint
        return findings

    def repair(self, spec: JailSpec, held: Iterable[Network]) -> None:
        held = list(held)
        sets = self.xt.set_headers()
        for family in FAMILIES:
            for name in set_names(spec.jail, family):
                if name in sets and sets[name] != ("hash:net", "inet" if family == 4 else "inet6"):
                    # A set of the wrong type cannot be changed in place: unhook it, then replace it.
                    self.xt.restore_rules(family, build_rules_removal(spec.jail, family, self.xt.table(family)))
                    self.xt.destroy_set(name)
        # Shared sets survive iptables reloads; refill them only with what this process knows.
        # Each existing local set is filled apart and swapped in: the bans hold throughout, and a set
        # someone made too small (maxelem) is replaced.
        present, remote = self.xt.set_headers(), self._remote.get(spec.jail)
        lines = []
        for family in FAMILIES:
            kind = f"hash:net family {'inet' if family == 4 else 'inet6'} hashsize 1024 maxelem {MAXELEM}"
            shared = set_name(spec.jail, family, remote=True)
            lines += [f"create {shared} {kind} -exist"] + ([f"flush {shared}"] if remote is not None else [])
            lines += [f"add {shared} {to_text(n)} -exist" for n in remote or () if n.version == family]
            name, tmp = set_name(spec.jail, family), f"f2bxt{'' if family == 4 else '6'}-{spec.jail}"
            if name not in present:
                lines.append(f"create {name} {kind}")
            lines += [f"create {tmp} {kind} -exist", f"flush {tmp}"]
            lines += [f"add {tmp} {to_text(n)} -exist" for n in held if n.version == family]
            lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
        self.xt.restore_sets("\n".join(lines) + "\n")
        self._place_rules(spec, only_if_broken=False)

    def set_remote(self, spec: JailSpec, nets: Sequence[Network], held: Held) -> None:
        self._remote.replace(spec.jail, nets)
        self.xt.restore_sets(build_set_restore(spec.jail, (), flush=False, remote=nets))
        if any(f.severity == BROKEN for f in self.verify([spec])):
            self.repair(spec, held())

    def change_remote(self, spec: JailSpec, op: str, nets: Sequence[Network], held: Held) -> None:
        self._remote.change(spec.jail, op, nets)
        try:
            for net in nets:
                self.xt.change("add" if op == "add" else "del", set_name(spec.jail, net.version, remote=True), net)
        except KernelError:
            self.repair(spec, held())

    def _place_rules(self, spec: JailSpec, only_if_broken: bool) -> None:
        for family in FAMILIES:
            table = self.xt.table(family)
            if only_if_broken and not [f for f in check_jail(spec, family, table, self.xt.set_headers())
                                       if f.severity == BROKEN]:
                continue
            try:
                self.xt.restore_rules(family, build_rules_restore(spec, family, table))
            except KernelError:
                # The chain changed between our read and our write: read again, once.
                self.xt.restore_rules(family, build_rules_restore(spec, family, self.xt.table(family)))

    def flush(self, spec: JailSpec) -> None:
        sets = self.xt.set_headers()
        text = "".join(f"flush {set_name(spec.jail, f)}\n" for f in FAMILIES if set_name(spec.jail, f) in sets)
        if text:
            self.xt.restore_sets(text)

    def stop(self, spec: JailSpec) -> None:
        for family in FAMILIES:
            self.xt.restore_rules(family, build_rules_removal(spec.jail, family, self.xt.table(family)))
        sets = self.xt.set_headers()
        for family in FAMILIES:
            for name in set_names(spec.jail, family):
                if name in sets:
                    self.xt.destroy_set(name)

    def entries(self, spec: JailSpec) -> int:
        """How many bans the jail's local sets hold (the sets' headers: 0.5 ms at 100,000)."""
        limits = self.xt.sets()[1]
        return sum(limits.get(set_name(spec.jail, f), (0, 0))[1] for f in FAMILIES)

    def banned(self, spec: JailSpec, remote: bool = False) -> list[Network]:
        sets = self.xt.set_headers()
        names = [set_name(spec.jail, f, remote) for f in FAMILIES]
        return [n for name in names if name in sets for n in self.xt.members(name)]
