"""Parsing of what users and fail2ban hand us: addresses, ports, protocols, jail names, parameters."""

import ipaddress
import random

import pytest

from f2bext import addr
from f2bext.addr import parse_target, parse_targets, to_text
from f2bext.errors import InputError
from f2bext.spec import JailSpec, format_ports, parse_jail, parse_ports, parse_protocols


@pytest.mark.parametrize("text,expected", [
    ("203.0.113.7", "203.0.113.7/32"),
    ("2001:db8::7", "2001:db8::7/128"),
    ("198.51.100.0/24", "198.51.100.0/24"),
    ("198.51.100.7/24", "198.51.100.0/24"),  # host bits dropped, as fail2ban does
    ("::ffff:203.0.113.7", "203.0.113.7/32"),  # the kernel sees it as IPv4
])
def test_addresses_and_cidrs_parse(text, expected):
    assert str(parse_target(text)) == expected


@pytest.mark.parametrize("text", [
    "", " 203.0.113.7", "203.0.113.7 ", "203.0.113.256", "example.com", "203.0.113.7; rm -rf /",
    "$(reboot)", "fe80::1%eth0", "0.0.0.0", "::", "127.0.0.1", "::1", "0.0.0.0/0", "::/0", "1.2.3.4/33",
    "2001:db8::/129", "٣.٣.٣.٣", "a" * 200,
])
def test_bad_or_dangerous_addresses_are_refused(text):
    with pytest.raises(InputError):
        parse_target(text)


def outcome(parse, text):
    try:
        return parse(text)
    except InputError as e:
        return str(e)


def test_the_ipv4_fast_path_answers_exactly_as_the_full_path():
    rng = random.Random(18)
    edges = [f"{a}.{b}.0.{d}" for a in (0, 1, 126, 127, 128, 169, 223, 224, 239, 240, 255)
             for b in (0, 253, 254, 255) for d in (0, 1, 255)]
    odd = ["01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1..2.3", "1.2.3.4\n", "1.2.3.4/32",
           "\uff11.2.3.4", "\u0661.2.3.4", "+1.2.3.4", "1.2.3.-4", "0x1.2.3.4", "1.2.3.4 ", "1e2.1.1.1"]
    randoms = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(5000)]
    for text in edges + odd + randoms:
        assert outcome(parse_target, text) == outcome(addr._parse, text), text


def test_one_bad_address_refuses_the_whole_list():
    with pytest.raises(InputError):
        parse_targets(["203.0.113.7", "nope"])


def test_to_text_is_bare_for_hosts():
    assert to_text(ipaddress.ip_network("203.0.113.7/32")) == "203.0.113.7"
    assert to_text(ipaddress.ip_network("203.0.113.0/24")) == "203.0.113.0/24"


@pytest.mark.parametrize("text,expected", [
    ("smtp,ssmtp,submission", ((25, 25), (465, 465), (587, 587))),
    ("25, 465 ,587", ((25, 25), (465, 465), (587, 587))),
    ("587,25,25", ((25, 25), (587, 587))),
    ("1000:2000,1500-2500", ((1000, 2500),)),
    ("24,25,26", ((24, 26),)),
    ("0:65535", ((0, 65535),)),
])
def test_port_lists_parse_and_merge(text, expected):
    assert parse_ports(text) == expected


@pytest.mark.parametrize("text", ["", "70000", "2000:1000", "smtpx", "25;reboot", "1:2:3", "-1", "$(id)", "25,,x y z"])
def test_bad_port_lists_are_refused(text):
    with pytest.raises(InputError):
        parse_ports(text)


def test_format_ports_round_trips():
    ports = parse_ports("25,465,1000:2000")
    assert parse_ports(format_ports(ports)) == ports


def test_protocols():
    assert parse_protocols("tcp") == ("tcp",)
    assert parse_protocols("udp,tcp") == ("tcp", "udp")
    assert parse_protocols("all") == ()
    for bad in ("icmp", "", "tcp;udp", "TCPX"):
        with pytest.raises(InputError):
            parse_protocols(bad)


@pytest.mark.parametrize("name", ["postfix", "postfix-sasl", "nginx_http_auth", "a", "x" * 23])
def test_jail_names_that_fit_ipset_are_accepted(name):
    assert parse_jail(name) == name


@pytest.mark.parametrize("name", ["", "x" * 24, "post fix", "post/fix", "-lead", "jail;rm", "jäil", "a.b"])
def test_jail_names_nftables_or_ipset_could_not_carry_are_refused(name):
    with pytest.raises(InputError):
        parse_jail(name)


def test_stock_action_macro_parameters_are_understood():
    # What jail.conf's action_ passes, with chain still unresolved.
    spec = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission", "protocol": "tcp",
                                            "chain": "<known/chain>"})
    assert spec.ports == ((25, 25), (465, 465), (587, 587))
    assert spec.hooks == ("input",) and spec.protocols == ("tcp",) and not spec.allports
    assert spec.kill == frozenset({"conntrack", "sockets"}) and spec.blocktype == "reject"


def test_allports_and_docker_chain():
    spec = JailSpec.from_params("leak", {"type": "allports", "protocol": "all", "chain": "DOCKER-USER"})
    assert spec.allports and spec.protocols == () and spec.hooks == ("forward",)
    assert JailSpec.from_params("j", {"port": "0:65535"}).allports


def test_hooks_win_over_chain_and_params_round_trip():
    spec = JailSpec.from_params("j", {"port": "25", "hooks": "forward,input", "chain": "INPUT", "kill": "none",
                                      "blocktype": "DROP", "protocol": "tcp,udp"})
    assert spec.hooks == ("input", "forward") and spec.kill == frozenset() and spec.blocktype == "drop"
    assert JailSpec.from_params("j", spec.to_params()) == spec


@pytest.mark.parametrize("params", [
    {"bogus": "1"}, {"type": "someports"}, {"blocktype": "tarpit"}, {"hooks": "output"}, {"kill": "everything"},
    {"chain": "f2b-custom"}, {"protocol": "all", "type": "multiport"}, {"port": "25;reboot"},
])
def test_bad_parameters_are_refused(params):
    with pytest.raises(InputError):
        JailSpec.from_params("postfix", params)
