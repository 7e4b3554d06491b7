"""The restore bench's count of an nf_tables set, on a real kernel: lookups of the database's
addresses (bench/restore.set_lookups) answer what a dump of the set answers, below n until every one
is there, and nothing for a set that does not exist."""

import os
import socket
import sys

import pytest

from f2bext import lab
from f2bext.lab.netns import Netns

sys.path.insert(0, os.path.join(lab.PROJECT_ROOT, "bench"))
import dbgen  # noqa: E402
import kernel  # noqa: E402
import restore  # noqa: E402

N = 3000


@pytest.fixture
def scratch():
    ns = Netns.create("cnt")
    try:
        ns.nft("add", "table", "inet", "f2bext")
        for kind, addr in (("v4", "ipv4_addr"), ("v6", "ipv6_addr")):
            ns.nft("add", "set", "inet", "f2bext", f"postfix-{kind}", f"{{ type {addr}; }}")
        yield ns
    finally:
        ns.delete()


def add(ns, texts):
    lines = "".join(f"add element inet f2bext postfix-{'v6' if ':' in t else 'v4'} {{ {t} }}\n" for t in texts)
    ns.run(["nft", "-f", "-"], input=lines)


def dumped(nl):
    return sum(nl.set_elements(kernel.NFPROTO_INET, "f2bext", f"postfix-{k}") for k in ("v4", "v6"))


def test_lookups_count_what_the_set_holds_and_reach_n_only_when_every_address_is_there(scratch):
    with scratch.entered():
        nl = kernel.Netfilter()
    count = restore.set_lookups(nl, restore.NFT_SETS["f2bext-nftables.py"], N)
    texts = list(dbgen.addresses(N))
    assert count() == 0
    add(scratch, texts[:N // 2])
    assert 0 < count() < N
    add(scratch, texts[:-1])  # all but one: the sample may be whole, the full lookup is not
    assert dumped(nl) == N - 1 and count() < N
    add(scratch, texts[-1:])
    assert count() == N == dumped(nl)


def test_a_lookup_answers_each_key_apart_or_stops_a_message_at_the_first_missing(scratch):
    with scratch.entered():
        nl = kernel.Netfilter()
    present = [f"100.64.0.{i}" for i in range(1, 200)]
    add(scratch, present + ["2001:db8::1"])
    keys = [socket.inet_aton(t) for t in present]
    missing = socket.inet_aton("100.64.1.1")
    mixed = keys[:50] + [missing] + keys[50:]
    assert nl.held_keys(kernel.NFPROTO_INET, "f2bext", "postfix-v4", mixed) == len(keys)
    assert nl.held_keys(kernel.NFPROTO_INET, "f2bext", "postfix-v4", mixed, per_message=2048) == 50
    assert nl.held_keys(kernel.NFPROTO_INET, "f2bext", "postfix-v4", keys, per_message=2048) == len(keys)
    v6 = [socket.inet_pton(socket.AF_INET6, "2001:db8::1"), socket.inet_pton(socket.AF_INET6, "2001:db8::2")]
    assert nl.held_keys(kernel.NFPROTO_INET, "f2bext", "postfix-v6", v6) == 1
    assert nl.held_keys(kernel.NFPROTO_INET, "f2bext", "nosuch", keys[:3]) == 0
    assert nl.held_keys(kernel.NFPROTO_INET, "nosuch", "postfix-v4", keys[:3]) == 0
