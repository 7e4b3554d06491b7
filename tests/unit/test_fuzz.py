"""Property-based tests over every parser and builder: whatever text arrives (from jail.local through
fail2ban's own option parser, or from the command line), f2bext either builds a rule that reads back as
what was asked for, or refuses with one InputError; never a traceback. Deterministic (derandomized, no
example database) so that CI is stable; tests/lab/test_fuzz_kernel.py runs the same specs against a
real kernel."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from fail2ban.helpers import extractOptions, splitWithOptions
from hypothesis import example, given, strategies as st

from f2bext import audit
from f2bext.addr import parse_target, to_text
from f2bext.backends import ipset as ipset_mod, nft
from f2bext.errors import InputError
from f2bext.spec import HOOKS, KILL_KINDS, PROTOCOLS, JailSpec, format_ports, parse_jail, parse_ports, parse_protocols

from fuzzing import (
    DOCUMENTED_JAIL, LOOPBACK, action_lines, address_text, consistent, exercised, fuzz, ipv4, ipv6, jail_names,
    junk, outcome, port_lists, services, valid_specs, word_lists,
)

NEVER = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "ff00::/8"))
TCP_SERVICES = services("tcp")


# ---- independent reference for what a valid parameter set means ------------------------------------

def covered(ranges) -> list[tuple[int, int]]:
    """Probe points that decide whether two port-range unions are the same set."""
    return sorted({p for lo, hi in ranges for p in (lo - 1, lo, hi, hi + 1) if 0 <= p <= 65535})


def in_ranges(port, ranges) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


def assert_canonical(ports):
    """Sorted, disjoint, not even touching: the one form a set of ports can take."""
    for lo, hi in ports:
        assert 0 <= lo <= hi <= 65535
    for (_, hi), (lo, _) in zip(ports, ports[1:]):
        assert lo > hi + 1


def expected_spec(jail: str, p: dict) -> JailSpec:
    words = [w.lower() for w in re.split(r"[\s,]+", p.get("protocol", "tcp").strip().strip("{}")) if w]
    protocols = () if words == ["all"] else tuple(x for x in PROTOCOLS if x in words)
    allports = p.get("type", "multiport").strip().lower() == "allports"
    ports = () if allports else parse_ports(p.get("port", "0:65535"), protocols)
    if ports == ((0, 65535),):
        ports = ()
    if "hooks" in p:
        hooks = tuple(h for h in HOOKS if h in p["hooks"].lower())
    else:
        chain = p.get("chain", "<known/chain>").lower()
        hooks = ("input",) if chain in ("input", "<known/chain>") else ("forward",)
    kill = p.get("kill", "conntrack,sockets").lower()
    return JailSpec(jail, ports, protocols, p.get("blocktype", "reject").lower(), hooks,
                    frozenset() if kill == "none" else frozenset(k for k in KILL_KINDS if k in kill))


def assert_well_formed(spec: JailSpec) -> None:
    """Everything a spec that came out of the parsers may hold."""
    assert DOCUMENTED_JAIL.fullmatch(spec.jail)
    assert_canonical(spec.ports)
    assert spec.ports != ((0, 65535),)
    assert set(spec.protocols) <= set(PROTOCOLS) and (spec.protocols or spec.allports)
    assert spec.blocktype in ("reject", "drop") and spec.hooks and set(spec.hooks) <= set(HOOKS)
    assert spec.kill <= set(KILL_KINDS)
    assert JailSpec.from_params(spec.jail, spec.to_params()) == spec


# ---- parsers --------------------------------------------------------------------------------------

@exercised(at_least=100)
@fuzz(600)
@given(st.one_of(address_text, st.integers(), st.none(), st.binary(max_size=20)))
@example("203.0.113.7\n")
def test_any_address_text_is_one_clean_network_or_an_input_error(text):
    try:
        net = parse_target(text)
    except InputError:
        return outcome("refused")
    outcome("valid")
    assert isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network))
    assert not any(net.version == lo.version and net.overlaps(lo) for lo in LOOPBACK + NEVER)
    assert not (net.network_address.is_unspecified and net.prefixlen == net.max_prefixlen)
    assert not (net.version == 6 and net.prefixlen == 128 and net.network_address.ipv4_mapped)
    assert parse_target(to_text(net)) == net


@fuzz(300)
@given(st.one_of(ipv4, ipv6), st.integers(0, 128))
def test_every_address_is_accepted_unless_it_is_loopback_link_local_multicast_or_unspecified(address, prefix):
    prefix = min(prefix, address.max_prefixlen)
    text = f"{address}/{prefix}"
    net = ipaddress.ip_network(text, strict=False)
    if net.version == 6 and prefix == 128 and address.ipv4_mapped:
        net = ipaddress.ip_network(address.ipv4_mapped)
    refused = (any(net.version == lo.version and net.overlaps(lo) for lo in LOOPBACK + NEVER)
               or (net.network_address.is_unspecified and net.prefixlen == net.max_prefixlen))
    if refused:
        with pytest.raises(InputError):
            parse_target(text)
    else:
        assert parse_target(text) == net


@exercised(at_least=50)
@fuzz(500)
@given(junk | port_lists().map(lambda case: case[0]))
@example("²")  # Unicode says it is a digit; int() says it is not
@example("9" * 5000)  # longer than Python converts to an int
@example("٢٥")  # Arabic-Indic 25
def test_any_port_text_is_canonical_ranges_or_an_input_error(text):
    try:
        ports = parse_ports(text)
    except InputError:
        return outcome("refused")
    outcome("valid")
    assert ports and all(isinstance(x, int) for r in ports for x in r)
    assert_canonical(ports)
    assert text.isascii(), f"{text!r} was read as ports {ports}: only ASCII digits are port numbers"
    assert parse_ports(format_ports(ports)) == ports


@fuzz(300)
@given(port_lists())
@example(("http-alt", [(8080, 8080)]))
@example(("ftp-data,ms-wbt-server", [(20, 20), (3389, 3389)]))
def test_valid_port_lists_name_exactly_the_ports_they_list(case):
    text, ranges = case
    ports = parse_ports(text)
    assert_canonical(ports)
    for port in covered(ranges) + covered(ports):
        assert in_ranges(port, ports) == in_ranges(port, ranges), port


def test_every_tcp_service_name_in_etc_services_is_a_port():
    refused = {}
    for name in TCP_SERVICES:
        try:
            assert parse_ports(name) == ((socket.getservbyname(name, "tcp"),) * 2,)
        except InputError as e:
            refused[name] = str(e)
    assert refused == {}, f"{len(refused)} of {len(TCP_SERVICES)} /etc/services names refused, e.g. " \
                          f"{dict(list(refused.items())[:3])}"


@exercised(at_least=30)
@fuzz(300)
@given(junk | word_lists(list(PROTOCOLS) + ["all", "icmp"], min_size=0))
def test_any_protocol_text_is_a_known_protocol_set_or_an_input_error(text):
    try:
        protocols = parse_protocols(text)
    except InputError:
        return outcome("refused")
    outcome("valid")
    assert list(protocols) == [p for p in PROTOCOLS if p in protocols]
    assert protocols or text.strip().lower() == "all"


@exercised(at_least=30)
@fuzz(400)
@given(junk | jail_names | jail_names.map(lambda j: j + "\n") | st.text(max_size=30))
@example("postfix\n")  # `$` in a regex also matches before a final newline
def test_a_jail_name_is_accepted_only_in_its_documented_form(text):
    try:
        name = parse_jail(text)
    except InputError:
        return outcome("refused")
    outcome("valid")
    assert DOCUMENTED_JAIL.fullmatch(name), f"accepted jail name {name!r}"


@fuzz(200)
@given(jail_names)
def test_every_documented_jail_name_is_accepted(name):
    assert parse_jail(name) == name


# ---- parameters as fail2ban hands them over --------------------------------------------------------

def fail2ban_options(line: str) -> dict:
    """What fail2ban's jail reader hands a Python action for `action = <line>` (values as JSON text)."""
    (act,) = [a.strip() for a in splitWithOptions(line) if a.strip()]
    name, opts = extractOptions(act)
    assert name == "f2bext-nftables.py"
    opts.pop("actname", None)
    return opts


@exercised(at_least=50)
@fuzz(600)
@given(action_lines(), jail_names | junk)
@example('f2bext-nftables.py[port="²"]', "postfix")
@example('f2bext-nftables.py[port="http-alt"]', "postfix")
def test_any_action_line_from_jail_local_gives_a_spec_or_one_input_error(line, jail):
    try:
        opts = fail2ban_options(line)
    except ValueError:
        return outcome("refused by fail2ban")  # fail2ban itself refuses the line when it reads jail.local
    try:
        spec = JailSpec.from_params(jail, opts)
    except InputError as e:
        assert "\n" not in str(e) and str(e)
        return outcome("refused")
    outcome("valid")
    assert_well_formed(spec)


@exercised(at_least=50)
@fuzz(150)
@given(action_lines(only_valid=True), jail_names)
def test_valid_action_lines_mean_exactly_what_they_say(line, jail):
    opts = fail2ban_options(line)
    if not consistent(opts):
        with pytest.raises(InputError):
            JailSpec.from_params(jail, opts)
        return outcome("refused")
    outcome("valid")
    spec = JailSpec.from_params(jail, opts)
    assert spec == expected_spec(jail, opts)
    assert_well_formed(spec)


# ---- builders without a kernel ---------------------------------------------------------------------

@fuzz(300)
@given(valid_specs())
def test_built_nft_rules_read_back_as_the_spec(spec):
    for kind in nft.SET_KINDS:
        assert nft.rule_signature({"expr": nft.build_rule_exprs(spec, kind)}) == nft.Signature(
            nft.set_name(spec.jail, kind), tuple(sorted(spec.protocols)), spec.ports, spec.blocktype)


@fuzz(300)
@given(valid_specs())
def test_built_iptables_rules_parse_back_to_the_shape_of_the_spec(spec):
    for family in (4, 6):
        groups: dict = {}
        for args in ipset_mod.rule_args(spec, family):
            rule = audit.parse_rule("INPUT", args, 1, "")
            assert len(rule.match_sets) == 1 and rule.match_sets[0][1] == "src"
            assert rule.comment == ipset_mod.comment(spec.jail) and rule.unknown == []
            assert rule.target == ("DROP" if spec.blocktype == "drop" else "REJECT")
            assert rule.proto in (spec.protocols or (None,))
            assert (rule.dports is None) == spec.allports
            groups.setdefault((rule.match_sets[0][0], rule.proto), []).extend(rule.dports or ())
        assert (ipset_mod.ipset_name(spec.jail, family), (spec.protocols or (None,))[0]) in groups
        for (_, proto), ports in groups.items():  # every set and protocol gets every port, once
            assert sorted(ports) == list(spec.ports)
        assert {proto for _, proto in groups} == set(spec.protocols or (None,))
