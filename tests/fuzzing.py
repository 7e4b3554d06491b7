"""Hostile input as hypothesis draws it, for tests/unit/test_fuzz.py (parsers and builders) and
tests/lab/test_fuzz_kernel.py (the same specs against a real kernel): the strategies, and the fuzz
settings that keep every run the same."""

from __future__ import annotations

import collections
import functools
import ipaddress
import re
import socket

from hypothesis import HealthCheck, event, settings, strategies as st

from f2bext.spec import HOOKS, KILL_KINDS, PARAMETERS, PROTOCOLS, JailSpec

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
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


SERVICES = {proto: services(proto) for proto in PROTOCOLS}

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
                     params(only_valid=True, dashed=False).filter(consistent))


def consistent(p: dict) -> bool:
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
