"""The restore's bulk path, pure: addresses checked without an object each (addr.parse_single), held to
parse_target's answers; the guard's integer check; the load's commands and ipset messages."""

import ipaddress
import socket
import struct

from hypothesis import example, given, strategies as st

from f2bext.addr import parse_single, parse_target, single_text, sort_singles, to_text
from f2bext.backends import nft
from f2bext.errors import InputError
from f2bext.guard import Guard, Keep
from f2bext.kernel import ipset as ipset_kernel
from f2bext.kernel.netlink import NLA_F_NESTED, attrs

from fuzzing import address_text, exercised, fuzz, ipv4, ipv6, junk, outcome


def full_path(text):
    """What parse_target makes of text, as (version, integer, text it writes back); None when refused."""
    try:
        net = parse_target(text)
    except InputError:
        return None
    return net.version, int(net.network_address), to_text(net), net.prefixlen == net.max_prefixlen


@exercised(at_least=100)
@fuzz(1500)
@given(st.one_of(address_text, junk, ipv4.map(str), ipv6.map(str), ipv6.map(lambda a: str(a).upper()),
                 ipv6.map(lambda a: a.exploded), st.integers(), st.none(), st.binary(max_size=20)))
@example("::ffff:203.0.113.7")
@example("::203.0.113.7")
@example("0.0.0.0")
@example("0.1.2.3")
@example("01.2.3.4")
@example("203.0.113.7\x00")
@example("fe80::1%eth0")
@example("0:2:3:4:5:6:7:8")
def test_a_bulk_address_is_one_parse_target_accepts_and_writes_back_the_same(text):
    found = parse_single(text)
    if found is None:
        return outcome("refused")  # left to parse_target
    outcome("valid")
    version, value, written, single = full_path(text)
    assert (version, value) == found and written == text and single


@fuzz(600)
@given(st.one_of(ipv4, ipv6))
def test_every_address_parse_target_takes_as_written_takes_the_bulk_path_unless_its_range_is_checked_apart(address):
    text = str(address)
    kept_apart = (address.version == 6 and int(address) >> 32 in (0, 0xFFFF)) or any(
        address in ipaddress.ip_network(n) for n in ("0.0.0.0/32", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                                                     "fe80::/10", "ff00::/8"))
    if not kept_apart:
        assert parse_single(text) == (address.version, int(address))
    elif parse_single(text) is not None:
        raise AssertionError(f"{text} must be left to parse_target")


def test_the_guards_integer_check_says_what_its_refusal_says():
    keeps = [Keep(ipaddress.ip_network("192.0.2.0/24"), "the jail's ignoreip", listed=True),
             Keep(ipaddress.ip_network("198.51.100.7/32"), "an address of this host (eth0)"),
             Keep(ipaddress.ip_network("2001:db8:1::/48"), "the jail's ignoreip", listed=True)]
    guard = Guard(keeps)
    for text in ("192.0.2.9", "192.0.3.1", "198.51.100.7", "198.51.100.8", "2001:db8:1::5", "2001:db8:2::5"):
        net = parse_target(text)
        assert guard.clear(*parse_single(text)) is (guard.refusal(net) is None), text


@fuzz(300)
@given(st.lists(st.one_of(address_text, junk, ipv4.map(str), ipv6.map(str)), max_size=30))
def test_sorted_for_the_load_every_text_lands_once_and_a_single_only_when_the_guard_clears_it(texts):
    guard = Guard([Keep(ipaddress.ip_network("203.0.113.0/25"), "the jail's ignoreip", listed=True),
                   Keep(ipaddress.ip_network("2001:db8::/33"), "the jail's ignoreip", listed=True)])
    skipped = {t for t in texts if t.endswith("7")}  # as fail2ban's ignore check would leave some out
    singles, rest = sort_singles(texts, guard.clear, skip=lambda text, found: text in skipped)
    kept = [t for t in texts if t not in skipped]
    # An integer taken is exactly its text again: only what parse_target takes unchanged.
    assert sorted([single_text(v, a) for v, taken in singles.items() for a in taken] + rest) == sorted(kept)
    for version, taken in singles.items():
        for value in taken:  # and what the guard allows
            net = parse_target(single_text(version, value))
            assert (net.version, int(net.network_address)) == (version, value) and guard.refusal(net) is None
    for text in rest:
        found = parse_single(text)
        assert found is None or not guard.clear(*found)


def integers(singles):
    """Single addresses by IP version, as a load takes them: integers."""
    return {v: [int(ipaddress.ip_address(t)) for t in texts] for v, texts in singles.items()}


def test_a_load_puts_bulk_addresses_in_their_sets_after_the_flush():
    v4 = [f"100.64.{i >> 8}.{i & 255}" for i in range(1, 2501)]
    load = nft.plan_load("postfix", [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::9/128")],
                         singles=integers({4: v4, 6: ["2001:db8::7"]}))
    assert [c["flush"]["set"]["name"] for c in load.first if "flush" in c] == [f"postfix-{k}" for k in nft.LOCAL_KINDS]
    assert [c["add"]["element"]["elem"] for c in load.first if "add" in c] == [[{"prefix": {"addr": "203.0.113.0",
                                                                                             "len": 24}}]]
    assert {kind: [single_text(int(kind[-1]), a) for a in found] for kind, found in load.singles.items()} \
        == {"v4": v4, "v6": ["2001:db8::7", "2001:db8::9"]}
    assert load.last == []


def test_a_load_into_a_kept_table_deletes_only_what_neither_the_bulk_nor_the_networks_hold():
    present = [ipaddress.ip_network(t) for t in ("100.64.0.1/32", "100.64.0.2/32", "2001:db8::7/128")]
    load = nft.plan_load("postfix", [], present, singles=integers({4: ["100.64.0.1"], 6: ["2001:db8::7"]}))
    deleted = [e for b in load.last for c in b if "delete" in c for e in c["delete"]["element"]["elem"]]
    assert deleted == ["100.64.0.2"]


def test_a_bulk_ipset_add_holds_one_data_attribute_per_address_as_ipset_restore_sends_them():
    packed = [socket.inet_pton(socket.AF_INET6, a) for a in ("2001:db8::1", "2001:db8::2")]
    msg = ipset_kernel.pack_ipset_adds(7, "f2bext6-postfix", 6, packed)
    length, msg_type, _flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, msg_type, seq) == (len(msg), ipset_kernel.NFNL_SUBSYS_IPSET << 8 | ipset_kernel.IPSET_CMD_ADD, 7)
    top = {kind: (start, end) for kind, start, end in attrs(msg, 16 + 4, len(msg))}
    assert msg[slice(*top[ipset_kernel.IPSET_ATTR_SETNAME])] == b"f2bext6-postfix\0"
    assert ipset_kernel.IPSET_ATTR_LINENO in top  # the kernel refuses IPSET_ATTR_ADT without it
    elements = list(attrs(msg, *top[ipset_kernel.IPSET_ATTR_ADT]))
    assert [k for k, _, _ in elements] == [ipset_kernel.IPSET_ATTR_DATA] * 2
    nested = [top[ipset_kernel.IPSET_ATTR_ADT]] + [(start, end) for _, start, end in elements]
    assert all(struct.unpack_from("=HH", msg, start - 4)[1] & NLA_F_NESTED for start, _ in nested)  # the kernel checks
    addresses = []
    for _, start, end in elements:
        ((_, ip_start, ip_end),) = attrs(msg, start, end)
        ((_, a_start, a_end),) = attrs(msg, ip_start, ip_end)
        addresses.append(msg[a_start:a_end])
    assert addresses == packed


def test_preloaded_bans_are_kept_while_fail2ban_works_through_them_and_dropped_once_it_stopped():
    from fail2ban.server.mytime import MyTime
    from f2bext.fail2ban.preload import GRACE, PER_BAN, Preloaded
    try:
        MyTime.setTime(1000.0)
        kept = Preloaded()
        kept.load(*sort_singles([f"100.64.0.{i}" for i in range(1, 100)] + ["100.64.1.0/24"], lambda v, a: True))
        MyTime.setTime(1000.0 + GRACE + 100 * PER_BAN - 1)
        assert len(kept) == len(kept.pending_texts()) == 100  # fail2ban still builds its tickets
        kept.take("100.64.0.1")  # fail2ban restored one
        MyTime.setTime(1000.0 + GRACE + 100 * PER_BAN + 1)
        assert len(kept) == 99 and "100.64.0.2" in kept and "100.64.1.0/24" in kept  # still at it: a new grace
        assert kept.pending_texts() == {f"100.64.0.{i}" for i in range(2, 100)} | {"100.64.1.0/24"}
        MyTime.setTime(1000.0 + 2 * GRACE + 100 * PER_BAN + 2)
        assert kept.pending() == ({4: set(), 6: set()}, set()) and "100.64.0.2" not in kept  # it stopped
    finally:
        MyTime.setTime(None)


@fuzz(400)
@given(st.lists(st.tuples(st.sampled_from([4, 6]), st.integers(0, 300), st.integers(0, 40)), max_size=8),
       st.lists(st.tuples(st.sampled_from([4, 6]), st.integers(0, 360)), min_size=1, max_size=20))
def test_spans_cover_exactly_what_any_of_their_ranges_covers(ranges, probes):
    """Overlapping, touching and nested ranges merged; the bisection agrees with the loop it replaced."""
    from f2bext.addr import Spans
    spans = Spans((v, low, low + width) for v, low, width in ranges)
    for version, value in probes:
        naive = any(v == version and low <= value <= low + width for v, low, width in ranges)
        assert spans.covers(version, value) is naive, (version, value)
    for version in (4, 6):  # split() sorts as covers() answers
        values = [value for v, value in probes if v == version]
        assert spans.split(version, values) == ([a for a in values if not spans.covers(version, a)],
                                                [a for a in values if spans.covers(version, a)])
