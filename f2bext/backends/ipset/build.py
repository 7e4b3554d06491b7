"""iptables + ipset builders, pure: our sets' and rules' names, spec -> iptables rules, and the
iptables-restore and ipset restore text that places, removes, creates, fills and swaps them."""

from __future__ import annotations

import shlex
from typing import Iterable, Mapping, Optional

from ... import audit
from ...addr import Network, to_text
from ...spec import JailSpec, PortRange, format_ports

FAMILIES = (4, 6)
CHAINS = {"input": "INPUT", "forward": "FORWARD"}
MAXELEM = 1048576  # fail2ban hosts with long bantimes collect hundreds of thousands of bans
MULTIPORT_MAX = 15  # ports per multiport match (a range counts twice)
SetHeader = tuple[str, str, int, int]  # a set's type, family, maxelem and number of entries


def ipset_name(jail: str, family: int, remote: bool = False) -> str:
    """The name of the jail's ipset of one family, its own or the shared one (ipset names are host-wide,
    unlike nft.set_name's, which live in table inet f2bext)."""
    if remote:
        return f"f2bxr-{jail}" if family == 4 else f"f2bxr6-{jail}"
    return f"f2bext-{jail}" if family == 4 else f"f2bext6-{jail}"


def ipset_names(jail: str, family: int) -> tuple[str, str]:
    """The jail's local and shared set of one family."""
    return ipset_name(jail, family), ipset_name(jail, family, remote=True)


def swap_name(jail: str, family: int) -> str:
    """The set a repair fills before it swaps it in for the local one."""
    return f"f2bxt-{jail}" if family == 4 else f"f2bxt6-{jail}"


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
    for name in ipset_names(spec.jail, family):
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
        return rule.comment == comment(jail) or any(s in ipset_names(jail, family) for s, _ in rule.match_sets)
    return check


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


def _create(name: str, family: int, exist: bool = True) -> str:
    """The ipset restore line that creates one of our sets (if absent, with `exist`)."""
    return (f"create {name} hash:net family {'inet' if family == 4 else 'inet6'} hashsize 1024 maxelem {MAXELEM}"
            + (" -exist" if exist else ""))


def build_set_restore(jail: str, nets: Iterable[Network], flush: bool,
                      remote: Optional[Iterable[Network]] = None) -> str:
    """ipset restore input: the jail's sets created if absent; the local ones optionally emptied, then
    filled; the shared ones replaced only when `remote` is given."""
    lines = []
    for family in FAMILIES:
        lines += [_create(name, family) for name in ipset_names(jail, family)]
        if flush:
            lines.append(f"flush {ipset_name(jail, family)}")
        if remote is not None:
            lines.append(f"flush {ipset_name(jail, family, remote=True)}")
    for net in nets:
        lines.append(f"add {ipset_name(jail, net.version)} {to_text(net)} -exist")
    for net in remote or ():
        lines.append(f"add {ipset_name(jail, net.version, remote=True)} {to_text(net)} -exist")
    return "\n".join(lines) + "\n"


def standing(found: Mapping[str, SetHeader], name: str, family: int) -> bool:
    """Whether one of our sets is there as we make it: our type and family, and as large."""
    header = found.get(name)
    return (header is not None and header[:2] == ("hash:net", "inet" if family == 4 else "inet6")
            and header[2] >= MAXELEM)


def _intact(found: Mapping[str, SetHeader], name: str, family: int, count: int) -> bool:
    """Whether one of our sets is there as we make it, holding `count` entries."""
    return standing(found, name, family) and found[name][3] == count


def _texts(nets: Iterable[Network]) -> dict[int, list[str]]:
    """Each family's distinct addresses (as the kernel counts them) as text, in the given order; one pass."""
    out: dict[int, dict[str, None]] = {4: {}, 6: {}}
    for net in nets:
        out[net.version][to_text(net)] = None
    return {family: list(texts) for family, texts in out.items()}


def build_set_swap(jail: str, held: Iterable[Network], found: Mapping[str, SetHeader],
                   remote: Optional[Iterable[Network]] = None) -> str:
    """ipset restore input that puts back what the jail's sets lack, while the bans hold throughout:
    a local set that is absent, too small or holds another number of entries than `held` is filled
    apart with exactly `held` and swapped in; one that checks out in `found` (`ipset list -t`'s
    headers) is left alone. The shared sets are created if absent, and refilled when `remote` is given
    and they hold another number. "" when every set checks out."""
    ours_by, theirs_by = _texts(held), None if remote is None else _texts(remote)
    lines = []
    for family in FAMILIES:
        shared = ipset_name(jail, family, remote=True)
        if shared not in found:
            lines.append(_create(shared, family))
        theirs = None if theirs_by is None else theirs_by[family]
        if theirs is not None and not _intact(found, shared, family, len(theirs)):
            lines.append(f"flush {shared}")
            lines += [f"add {shared} {text} -exist" for text in theirs]
        name, tmp = ipset_name(jail, family), swap_name(jail, family)
        ours = ours_by[family]
        if _intact(found, name, family, len(ours)):
            continue
        if name not in found:
            lines.append(_create(name, family, exist=False))
        lines += [_create(tmp, family), f"flush {tmp}"]
        lines += [f"add {tmp} {text} -exist" for text in ours]
        lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
    return "\n".join(lines) + "\n" if lines else ""
