"""Set elements sent over netlink (kernel/nftelem.py) on a real kernel, in namespaces: with and
without an owned table, and libnftables still at ease on the socket it shares with them."""

import ipaddress
import subprocess

import pytest

from f2bext import lab
from f2bext.backends.nft import NftBackend
from f2bext.errors import KernelError
from f2bext.kernel import nftelem, nftgen
from f2bext.spec import JailSpec

POSTFIX = JailSpec.from_params("postfix", {"port": "smtp,ssmtp,submission"})


def net(text):
    return ipaddress.ip_network(text)


def nothing():
    return []


def listed(ns, name):
    return ns.nft("list", "set", "inet", "f2bext", name)


@pytest.mark.parametrize("owner", [True, False])
def test_elements_added_over_netlink_are_in_the_set_and_deletes_remove_them(hosts, smtp, reach, owner):
    with hosts.server.entered():
        backend = NftBackend(owner=owner)
        backend.start(POSTFIX, [net("198.51.100.9")])
        assert backend.ban(POSTFIX, [net(lab.ATTACKER4)], nothing) == []
        assert backend.ban(POSTFIX, [net(lab.ATTACKER6)], nothing) == []
        assert backend.nft._elements.sock is not None, "sent over netlink, not through libnftables"
        if owner:  # the owner's own socket: no other may change the table
            assert backend.nft._elements.sock.getsockname()[0] == nftgen.read_table("inet", "f2bext").owner
    assert lab.ATTACKER4 in listed(hosts.server, "postfix-v4") and lab.ATTACKER6 in listed(hosts.server, "postfix-v6")
    assert not reach(hosts.attacker, lab.SERVER4, 25) and not reach(hosts.attacker, lab.SERVER6, 25)
    with hosts.server.entered():
        backend.unban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("198.51.100.9"), net(lab.ATTACKER6)])
        backend.unban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("198.51.100.9"), net(lab.ATTACKER6)])  # absent
        # libnftables shares the socket on an owned table: its listings still read their own answers.
        assert sorted(map(str, backend.banned(POSTFIX))) == ["198.51.100.9/32", f"{lab.ATTACKER6}/128"]
        assert backend.verify([POSTFIX]) == []
    assert lab.ATTACKER4 not in listed(hosts.server, "postfix-v4")
    assert reach(hosts.attacker, lab.SERVER4, 25)


@pytest.mark.parametrize("owner", [True, False])
def test_an_absent_element_or_a_missing_set_is_a_clear_refusal(hosts, owner):
    with hosts.server.entered():
        backend = NftBackend(owner=owner)
        backend.start(POSTFIX, [])
        with pytest.raises(KernelError) as e:
            backend.nft.send_elements("delete", "postfix-v4", [net("203.0.113.77")], "unban in jail postfix")
        assert "refused to unban in jail postfix" in str(e.value) and "No such file" in str(e.value)
        with pytest.raises(KernelError) as e:
            backend.nft.send_elements("add", "nosuch-v4", [net("203.0.113.77")], "ban in jail nosuch")
        assert "refused to ban in jail nosuch" in str(e.value) and "No such file" in str(e.value)
        # Nothing of the refusals is left unread on the socket libnftables reads next.
        assert backend.banned(POSTFIX) == [] and backend.verify([POSTFIX]) == []


def test_the_transaction_echoes_the_generation_it_made(hosts):
    with hosts.server.entered():
        backend = NftBackend(owner=True)
        backend.start(POSTFIX, [])
        before = backend.nft.generation()
        made = backend.nft.send_elements("add", "postfix-v4", [net("203.0.113.5")], "ban")
        assert made == before + 1 == backend.nft.generation()
        assert backend.nft.send_elements("add", "postfix-v4", [net("203.0.113.5")], "ban") is None, "no change"
        assert backend.nft.generation() == made


@pytest.mark.parametrize("owner", [True, False])
def test_more_bans_at_once_than_a_message_holds_go_in_one_transaction(hosts, owner):
    """A drainer's burst or `f2bext ban` of thousands: one transaction of several messages (an element
    list's length is 16 bits), bigger than a socket's default send buffer (16,391 addresses are 262 KB),
    made whole or, when one delete fails, not at all; and the answers of a refused one all read, so
    that the next change reads its own."""
    many = [ipaddress.ip_network(0x64400000 + i) for i in range(8 * nftelem.BULK_KEYS + 7)]
    absent = net("203.0.113.77")
    with hosts.server.entered():
        backend = NftBackend(owner=owner)
        backend.start(POSTFIX, [])
        before = backend.nft.generation()
        assert backend.ban(POSTFIX, many, nothing) == []
        assert backend.nft.generation() == before + 1, "one transaction"
        assert len(backend.banned(POSTFIX)) == len(many) and backend.verify([POSTFIX]) == []
        with pytest.raises(KernelError):  # refused in its first message: eight more answers follow
            backend.nft.send_elements("delete", "postfix-v4", [absent] + many, "unban in jail postfix")
        assert len(backend.banned(POSTFIX)) == len(many), "the absent one failed the whole transaction"
        made = backend.nft.send_elements("add", "postfix-v4", [net("203.0.113.78")], "ban in jail postfix")
        assert made == before + 2 == backend.nft.generation(), "its own answer, not one left from before"
        with pytest.raises(KernelError):
            backend.nft.send_elements("delete", "postfix-v4", [absent], "unban in jail postfix")
        backend.unban(POSTFIX, many[1:], lambda: many[:1] + [net("203.0.113.78")])
        assert sorted(backend.banned(POSTFIX)) == sorted(many[:1] + [net("203.0.113.78")])
        assert backend.verify([POSTFIX]) == []


def test_a_ban_after_anothers_change_on_the_owned_table_still_looks_and_repairs(hosts, smtp, reach):
    with hosts.server.entered():
        backend = NftBackend(owner=True)
        backend.start(POSTFIX, [])
        assert backend.verify([POSTFIX]) == []
        assert backend.ban(POSTFIX, [net("203.0.113.50")], nothing) == []
        hosts.server.nft("add", "table", "inet", "someone_else")  # moves the generation, changes nothing of ours
        assert backend.ban(POSTFIX, [net("203.0.113.51")], nothing) == []
        # No other process may break an owned table (below): its owner flushes the jail's chain.
        backend.nft.apply([{"flush": {"chain": {"family": "inet", "table": "f2bext", "name": "postfix-input"}}}],
                          "break the jail")
        reasons = backend.ban(POSTFIX, [net(lab.ATTACKER4)], lambda: [net("203.0.113.50"), net("203.0.113.51")])
        assert reasons, "the change since the last look was found"
        assert backend.verify([POSTFIX]) == []
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    denied = subprocess.run(["ip", "netns", "exec", hosts.server.name, "nft", "add", "element", "inet", "f2bext",
                             "postfix-v4", "{ 203.0.113.99 }"], capture_output=True, text=True)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr
