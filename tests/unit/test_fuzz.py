"""Property-based tests over every parser and builder: whatever text arrives (from jail.local through
fail2ban's own option parser, or from the command line), f2bext either builds a rule the kernel
accepts and reads back as what was asked for, or refuses with one InputError; never a traceback,
never a partial change. Deterministic (derandomized, no example database) so that CI is stable."""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import ipaddress
import json
import os
import re
import shutil
import socket

import pytest
from fail2ban.helpers import extractOptions, splitWithOptions
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from f2bext import audit, cli, state
from f2bext.addr import parse_target, to_text
from f2bext.backends import get_backend, ipset as ipset_mod, nft
from f2bext.errors import InputError
from f2bext.lab.netns import Netns
from f2bext.spec import (
    HOOKS, KILL_KINDS, PARAMETERS, PROTOCOLS, JailSpec, format_ports, parse_jail, parse_ports, parse_protocols,
)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
NEVER = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "ff00::/8"))
DOCUMENTED_JAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,22}")


def fuzz(examples: int) -> settings:
    """`examples` runs, the same ones every time: derandomized, no example database, no deadline."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


TALLY: collections.Counter = collections.Counter()


def outcome(kind: str) -> None:
    """Count an example's outcome ("valid" once it got past validation), also as a hypothesis event."""
    TALLY[kind] += 1
    event(kind)


def exercised(at_least: int):
    """For a property that returns early on refused input: at least `at_least` of its examples got past
    validation, so it cannot pass with a parser that refuses everything."""
    def wrap(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            TALLY.clear()
            test(*args, **kwargs)
            assert TALLY["valid"] >= at_least, f"only {TALLY['valid']} valid examples: {dict(TALLY)}"
        return run
    return wrap


def services(proto: str) -> list[str]:
    """Every name and alias /etc/services gives for the protocol."""
    names = set()
    with open("/etc/services") as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[1].endswith("/" + proto):
                names.update([words[0], *words[2:]])
    return sorted(names)


TCP_SERVICES = services("tcp")
SERVICES = {proto: services(proto) for proto in PROTOCOLS}

# ---- strategies ----------------------------------------------------------------------------------

# Text as hostile input arrives: anything, plus the characters that matter to our parsers and to the
# shells, restore files and rule languages behind them, plus non-ASCII digits and letters.
NASTY = st.sampled_from(list(",:-/ \t\n{}[]\"';$`\\%<>|&*0129²٣\x00ſK")) | st.characters()
junk = st.text(NASTY, max_size=40)

ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
address_text = st.one_of(
    ipv4.map(str), ipv6.map(str), ipv6.map(lambda a: a.exploded),
    st.tuples(ipv4, st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(ipv6, st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
    ipv4.map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["127.0.0.1", "127.1.2.3/8", "::1", "0.0.0.0", "::", "0.0.0.0/0", "::/0", "0.0.0.0/1",
                     "::ffff:127.0.0.1", "fe80::1%eth0", "203.0.113.7/255.255.255.0", "203.0.113.7/0.0.0.255"]),
    st.tuples(ipv4.map(str), junk).map("".join),
    junk,
)

port_number = st.integers(0, 65535)
separator = st.sampled_from([",", ", ", " , ", " ", ",\n "])


def port_tokens(proto: str, dashed: bool = True):
    names = [n for n in SERVICES[proto] if dashed or "-" not in n]
    return st.one_of(
        port_number.map(lambda p: (str(p), (p, p))),
        st.tuples(port_number, port_number, st.sampled_from([":", "-"])).map(
            lambda t: (f"{min(t[:2])}{t[2]}{max(t[:2])}", (min(t[:2]), max(t[:2])))),
        st.sampled_from(names).map(lambda n: (n, (socket.getservbyname(n, proto),) * 2)),
    )


@st.composite
def port_lists(draw, proto="tcp", dashed=True):
    """(text, the ranges it names) for a valid port list; service names known for `proto`."""
    tokens = draw(st.lists(port_tokens(proto, dashed), min_size=1, max_size=12))
    seps = [draw(separator) for _ in tokens]
    text = "".join(t + s for (t, _), s in zip(tokens, seps))[:-len(seps[-1])]
    if draw(st.booleans()):
        text = "{ " + text + " }"
    return text, [r for _, r in tokens]


def mixed_case(words):
    return st.sampled_from(words).flatmap(
        lambda w: st.lists(st.booleans(), min_size=len(w), max_size=len(w)).map(
            lambda up: "".join(c.upper() if u else c for c, u in zip(w, up))))


def word_lists(words, min_size=1):
    return st.lists(mixed_case(words), min_size=min_size, max_size=4).flatmap(
        lambda ws: separator.map(lambda s: s.join(ws)))


jail_names = st.from_regex(DOCUMENTED_JAIL, fullmatch=True)

# One fail2ban parameter value: valid text for the parameter, or anything at all.
VALID_VALUES = {
    "protocol": word_lists(list(PROTOCOLS)) | mixed_case(["all"]),
    "type": mixed_case(["multiport", "allports"]).map(lambda w: f" {w} "),
    "blocktype": mixed_case(["reject", "drop"]),
    "hooks": word_lists(list(HOOKS)),
    "chain": mixed_case(["INPUT", "FORWARD", "DOCKER-USER"]) | st.just("<known/chain>"),
    "kill": word_lists(list(KILL_KINDS)) | st.just("none"),
    "name": jail_names,
}


@st.composite
def params(draw, only_valid=False, dashed=True):
    keys = draw(st.lists(st.sampled_from(PARAMETERS), unique=True, max_size=len(PARAMETERS)))
    out = {k: draw(VALID_VALUES[k] if only_valid else VALID_VALUES[k] | junk) for k in keys if k != "port"}
    if "port" in keys:
        # Service names the first of the jail's protocols knows (parse_ports asks them in order).
        words = re.split(r"[\s,{}]+", out.get("protocol", "tcp").lower())
        proto = next((p for p in PROTOCOLS if p in words), "tcp")
        port = port_lists(proto, dashed).map(lambda p: p[0])
        out["port"] = draw(port if only_valid else port | junk)
    if not only_valid and draw(st.integers(0, 9)) == 0:
        out[draw(st.from_regex(r"[\w.-]{1,12}", fullmatch=True))] = draw(junk)
    return out


def fits(value: str, how: str) -> bool:
    """Whether fail2ban's option syntax can carry the value quoted this way."""
    if how == "bare":
        return not re.search(r"[,\]\n\"']", value)
    return ('"' if how == "double" else "'") not in value


def quoted(value: str, how: str) -> str:
    return {"double": f'"{value}"', "single": f"'{value}'", "bare": value}[how]


@st.composite
def action_lines(draw, only_valid=False):
    """A jail.local `action = f2bext-nftables.py[...]` value, each value quoted as an admin might."""
    opts = draw(params(only_valid))
    parts = []
    for key, value in opts.items():
        fitting = [h for h in ("double", "single", "bare") if fits(value, h)]
        how = draw(st.sampled_from(fitting or ["double"]))
        parts.append(f"{key}={quoted(value, how)}")
    joiner = draw(st.sampled_from([", ", ",", ",\n         "]))
    return "f2bext-nftables.py[" + joiner.join(parts) + "]"


def valid_specs(jail=jail_names):
    """Specs as the parsers build them (service names without a dash: see the port list tests)."""
    return st.builds(lambda j, p: JailSpec.from_params(j, p), jail,
                     params(only_valid=True, dashed=False).filter(_consistent))


def _consistent(p: dict) -> bool:
    return not (p.get("protocol", "tcp").strip().lower() == "all" and p.get("type", "multiport").strip().lower()
                != "allports")


def _bannable(net) -> bool:
    return not any(net.version == lo.version and net.overlaps(lo) for lo in LOOPBACK)


_singles4 = ipv4.filter(lambda a: not a.is_unspecified).map(ipaddress.ip_network)
_singles6 = ipv6.filter(lambda a: a.ipv4_mapped is None and not a.is_unspecified).map(ipaddress.ip_network)
_cidr4 = st.tuples(ipv4, st.integers(8, 31)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
_cidr6 = st.tuples(ipv6, st.integers(16, 127)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
bannable = st.one_of(_singles4, _singles6, _cidr4, _cidr6).filter(_bannable)


def nets_for(max_size=12):
    return st.lists(bannable, max_size=max_size, unique=True)


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
    if not _consistent(opts):
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
        assert (ipset_mod.set_name(spec.jail, family), (spec.protocols or (None,))[0]) in groups
        for (_, proto), ports in groups.items():  # every set and protocol gets every port, once
            assert sorted(ports) == list(spec.ports)
        assert {proto for _, proto in groups} == set(spec.protocols or (None,))


# ---- builders against a real kernel, in a namespace of this module's own ----------------------------

@pytest.fixture(scope="module")
def scratch():
    """One namespace for the whole module (hypothesis runs many examples per test)."""
    ns = Netns.create("fuzz")
    try:
        yield ns
    finally:
        ns.delete()


def reset(ns: Netns) -> None:
    """An empty firewall: nft (iptables-nft included), legacy iptables, ipsets."""
    ns.run(["nft", "flush", "ruleset"])
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        ns.run([tool, "-w", "-F"], check=False)
    ns.run(["ipset", "destroy"], check=False)


def nft_kernel_view(ns: Netns, spec: JailSpec) -> tuple[list, set]:
    """Findings of the jail as read back from the kernel, and the elements of its sets."""
    with ns.entered():
        kernel = nft.Nft()
        seen = kernel.ruleset()
        held = set()
        for kind in nft.SET_KINDS:
            if nft.set_name(spec.jail, kind) in seen.sets:
                held |= set(kernel.elements(nft.set_name(spec.jail, kind)))
        return nft.check_jail(spec, seen), held


@fuzz(120)
@given(valid_specs(), nets_for())
def test_nft_builders_give_rules_the_kernel_takes_and_lists_back_as_the_spec(scratch, spec, nets):
    reset(scratch)
    singles = [n for n in nets if n.prefixlen == n.max_prefixlen]
    with scratch.entered():
        nft.Nft().apply(nft.build_structure(spec) + nft.build_elements("add", spec.jail, singles)
                        + nft.build_network_sets(spec.jail, nets, (4, 6)), "build")
    findings, held = nft_kernel_view(scratch, spec)
    assert findings == []
    assert held == set(singles) | set(nft.collapsed_networks(nets))


def objects_of(ns: Netns, jail: str) -> list:
    """The jail's sets (with their elements), chains and rules as the kernel lists them."""
    listing = ns.run(["nft", "-j", "list", "table", "inet", "f2bext"], check=False).stdout
    items = json.loads(listing)["nftables"] if listing.strip() else []
    return [item for item in items for kind, body in item.items()
            if kind in ("set", "chain", "rule") and nft.jail_of(body.get("name", body.get("chain", ""))) == jail]


@fuzz(60)
@given(valid_specs(jail_names.filter(lambda j: len(j) <= 15)), st.sampled_from(list(nft.SET_KINDS) + list(HOOKS)),
       nets_for(6), nets_for(6), valid_specs())
def test_rebuilding_and_removing_one_jail_leaves_a_neighbour_with_a_lookalike_name_untouched(
        scratch, spec, suffix, nets, other_nets, other):
    neighbour = JailSpec(f"{spec.jail}-{suffix}", other.ports, other.protocols, other.blocktype, other.hooks,
                         other.kill)
    reset(scratch)
    with scratch.entered():
        backend = nft.NftBackend()
        backend.start(neighbour, other_nets)
        backend.start(spec, nets)
    before = objects_of(scratch, neighbour.jail)
    with scratch.entered():
        backend.repair(spec, nets[:3])
        backend.ban(spec, nets[3:], lambda: nets[:3])
        backend.flush(spec)
        backend.stop(spec)
    assert before and objects_of(scratch, neighbour.jail) == before
    with scratch.entered():
        backend.stop(neighbour)
    assert "f2bext" not in scratch.nft("list", "ruleset")


@fuzz(40)
@given(valid_specs(), nets_for(), st.sampled_from(["nft", "legacy"]))
def test_ipset_builders_give_rules_iptables_takes_and_saves_back_as_the_spec(scratch, spec, nets, variant):
    reset(scratch)
    with scratch.entered():
        xt = ipset_mod.Xtables(variant)
        xt.restore_sets(ipset_mod.build_set_restore(spec.jail, nets, flush=True))
        for family in (4, 6):
            xt.restore_rules(family, ipset_mod.build_rules_restore(spec, family, xt.table(family)))
        sets = xt.set_headers()
        for family in (4, 6):
            assert ipset_mod.check_jail(spec, family, xt.table(family), sets) == []
        held = set(xt.members(ipset_mod.set_name(spec.jail, 4)) + xt.members(ipset_mod.set_name(spec.jail, 6)))
        assert held == set(nets)
        backend = ipset_mod.IpsetBackend(xt)
        backend.stop(spec)
        assert xt.set_headers() == {}
        for family in (4, 6):
            assert all(not rules for rules in xt.table(family).chains.values())


# ---- the command line, in-process, against the kernel -----------------------------------------------

value = junk.filter(lambda s: not s.startswith("-"))


@st.composite
def command_lines(draw):
    argv = [draw(st.sampled_from(["ban", "unban"]))]
    argv += ["--backend", draw(st.sampled_from(["nftables", "ipset"]))]
    argv += ["--jail", draw(st.one_of(jail_names, jail_names, jail_names, value))]
    for option, valid in (("--port", port_lists().map(lambda p: p[0])), ("--protocol", VALID_VALUES["protocol"]),
                          ("--type", VALID_VALUES["type"]), ("--hooks", VALID_VALUES["hooks"]),
                          ("--kill", st.just("none"))):
        if draw(st.booleans()):
            argv += [option, draw(st.one_of(valid, valid, valid, value))]
    addresses = bannable.map(to_text)
    argv += draw(st.lists(st.one_of(addresses, addresses, addresses, address_text.filter(
        lambda s: not s.startswith("-"))), min_size=1, max_size=3))
    return argv


def snapshot(ns: Netns) -> str:
    parts = [ns.nft("list", "ruleset"), ns.run(["ipset", "save"]).stdout]
    parts += [ns.run([f"{t}-save"]).stdout for t in ("iptables", "ip6tables")]
    text = "\n".join(line for part in parts for line in part.splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]|packets \d+ bytes \d+", "", text)


@contextlib.contextmanager
def command_env(tmp):
    saved = dict(os.environ)
    os.environ.update(F2BEXT_STATE_DIR=os.path.join(tmp, "run"), F2BEXT_FAIL2BAN_SOCKET=os.path.join(tmp, "none"),
                      F2BEXT_IPTABLES="nft")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def command_tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli"))


@exercised(at_least=6)
@fuzz(80)
@given(command_lines())
@example(["ban", "--backend", "nftables", "--jail", "postfix", "--port", "²", "203.0.113.7"])
@example(["ban", "--backend", "ipset", "--jail", "postfix\n", "203.0.113.7"])
def test_any_command_line_exits_0_or_2_a_refusal_changes_nothing_and_an_unban_builds_nothing(
        scratch, command_tmp, argv):
    reset(scratch)
    shutil.rmtree(os.path.join(command_tmp, "run"), ignore_errors=True)
    scratch.run(["ip", "addr", "replace", "198.51.100.1/24", "dev", "lo"])  # an own address to refuse
    before = snapshot(scratch)
    err = io.StringIO()
    with command_env(command_tmp), scratch.entered(), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    if code == 2:
        assert err.getvalue().startswith("f2bext: error: ") and err.getvalue().count("\n") == 1, err.getvalue()
        assert snapshot(scratch) == before
        return outcome("refused")
    assert code == 0, f"exit {code}: {err.getvalue()}"
    outcome("valid")
    event(f"{argv[0]} exit 0")
    if argv[0] == "unban":  # of a jail f2bext does not enforce here: nothing to lift, nothing to create
        assert snapshot(scratch) == before
    else:
        with command_env(command_tmp), scratch.entered():
            known = state.load(argv[4])
            assert get_backend(known.backend).verify([known.spec]) == []
