"""The ipset backend's set builders (pure: restore text checked without a kernel)."""

from __future__ import annotations

import ipaddress

from f2bext.backends import ipset

net = ipaddress.ip_network
HELD = [net("203.0.113.7/32"), net("2001:db8:7::/48"), net("198.51.100.0/24")]
SHARED = [net("192.0.2.1/32"), net("2001:db8::9/128")]


def header(family, entries, maxelem=ipset.MAXELEM):
    """A set as `ipset list -t` shows one of ours."""
    return ("hash:net", "inet" if family == 4 else "inet6", maxelem, entries)


# Every set of the jail there and whole, as after a firewall reload that kept the ipsets.
INTACT = {"f2bext-postfix": header(4, 2), "f2bext6-postfix": header(6, 1),
          "f2bxr-postfix": header(4, 1), "f2bxr6-postfix": header(6, 1)}


def lines(text: str) -> list[str]:
    assert text.endswith("\n")
    return text.splitlines()


def test_a_swap_refills_each_local_set_apart_and_swaps_it_in():
    emptied = {"f2bext-postfix": header(4, 0), "f2bext6-postfix": header(6, 0)}
    out = lines(ipset.build_set_swap("postfix", HELD, emptied))
    create4 = "create f2bxt-postfix hash:net family inet hashsize 1024 maxelem 1048576 -exist"
    assert out[out.index(create4):out.index(create4) + 6] == [
        create4, "flush f2bxt-postfix", "add f2bxt-postfix 203.0.113.7 -exist", "add f2bxt-postfix 198.51.100.0/24 -exist",
        "swap f2bxt-postfix f2bext-postfix", "destroy f2bxt-postfix"]
    assert "add f2bxt6-postfix 2001:db8:7::/48 -exist" in out
    assert out.index("add f2bxt6-postfix 2001:db8:7::/48 -exist") < out.index("swap f2bxt6-postfix f2bext6-postfix")
    assert out[-1] == "destroy f2bxt6-postfix"
    assert not any(line.startswith(("create f2bext-", "create f2bext6-", "flush f2bext")) for line in out)


def test_a_swap_creates_the_local_sets_that_are_absent_with_the_same_create_line_as_a_restore():
    out = lines(ipset.build_set_swap("postfix", [], {"f2bext-postfix": header(4, 0)}))
    restored = lines(ipset.build_set_restore("postfix", [], flush=False))
    assert "create f2bext6-postfix hash:net family inet6 hashsize 1024 maxelem 1048576" in out  # no -exist: it is absent
    assert out.index("create f2bext6-postfix hash:net family inet6 hashsize 1024 maxelem 1048576") < \
        out.index("swap f2bxt6-postfix f2bext6-postfix")
    assert not any(line.startswith("create f2bext-postfix ") for line in out)
    for shared in ("f2bxr-postfix", "f2bxr6-postfix"):
        (line,) = [line for line in restored if line.startswith(f"create {shared} ")]
        assert line in out


def test_a_swap_refills_the_shared_sets_only_when_this_process_knows_them():
    unknown = lines(ipset.build_set_swap("postfix", HELD, {}))
    assert not any(line.startswith(("flush f2bxr", "add f2bxr")) for line in unknown)
    known = lines(ipset.build_set_swap("postfix", HELD, {}, SHARED))
    assert known.index("flush f2bxr-postfix") < known.index("add f2bxr-postfix 192.0.2.1 -exist")
    assert known.index("flush f2bxr6-postfix") < known.index("add f2bxr6-postfix 2001:db8::9 -exist")
    assert lines(ipset.build_set_swap("postfix", HELD, {}, [])).count("flush f2bxr-postfix") == 1  # emptied


def test_a_repair_of_sets_that_kept_every_entry_changes_no_set():
    assert ipset.build_set_swap("postfix", HELD, INTACT) == ""
    assert ipset.build_set_swap("postfix", HELD, INTACT, SHARED) == ""
    assert ipset.build_set_swap("postfix", HELD + HELD[:1], INTACT) == ""  # a ban given twice is one entry


def test_only_the_set_that_lost_entries_or_shrank_is_refilled():
    for wrong in (header(4, 1), header(4, 3), header(4, 2, maxelem=65536)):  # another type is destroyed first
        out = lines(ipset.build_set_swap("postfix", HELD, {**INTACT, "f2bext-postfix": wrong}, SHARED))
        assert out == ["create f2bxt-postfix hash:net family inet hashsize 1024 maxelem 1048576 -exist",
                       "flush f2bxt-postfix", "add f2bxt-postfix 203.0.113.7 -exist",
                       "add f2bxt-postfix 198.51.100.0/24 -exist", "swap f2bxt-postfix f2bext-postfix",
                       "destroy f2bxt-postfix"], wrong
    out = lines(ipset.build_set_swap("postfix", HELD, {**INTACT, "f2bxr6-postfix": header(6, 0)}, SHARED))
    assert out == ["flush f2bxr6-postfix", "add f2bxr6-postfix 2001:db8::9 -exist"]
    out = lines(ipset.build_set_swap("postfix", HELD, {k: v for k, v in INTACT.items() if k != "f2bxr-postfix"}))
    assert out == ["create f2bxr-postfix hash:net family inet hashsize 1024 maxelem 1048576 -exist"]


def test_set_names_say_which_set_of_the_jail_they_name():
    assert ipset.ipset_names("postfix", 4) == ("f2bext-postfix", "f2bxr-postfix")
    assert ipset.ipset_names("postfix", 6) == ("f2bext6-postfix", "f2bxr6-postfix")
    assert (ipset.swap_name("postfix", 4), ipset.swap_name("postfix", 6)) == ("f2bxt-postfix", "f2bxt6-postfix")


def test_both_backends_implement_everything_the_interface_says():
    from f2bext.backends.base import Backend
    from f2bext.backends.nft import NftBackend
    said = {name for name in vars(Backend) if not name.startswith("_")} | set(Backend.__annotations__)
    assert {"entries", "ban", "verify", "repair", "banned"} <= said
    for backend in (NftBackend, ipset.IpsetBackend):
        assert [name for name in sorted(said) if not hasattr(backend, name)] == [], backend


def test_an_element_change_is_the_ipset_command_pyroute2_reads_it_as():
    from pyroute2.netlink.nfnetlink.ipset import IPSET_CMD_ADD, IPSET_CMD_DEL, ipset_msg

    from f2bext.kernel.ipset import pack_ipset_change
    for op, cmd, target in (("add", IPSET_CMD_ADD, "2001:db8:7::/48"), ("delete", IPSET_CMD_DEL, "198.51.100.0/24")):
        decoded = ipset_msg(pack_ipset_change(3, op, "f2bext-postfix", net(target)))
        decoded.decode()
        data = decoded.get_attr("IPSET_ATTR_DATA")
        assert decoded["header"]["type"] == 6 << 8 | cmd and decoded.get_attr("IPSET_ATTR_SETNAME") == "f2bext-postfix"
        address = data.get_attr("IPSET_ATTR_IP_FROM").get_attrs("IPSET_ATTR_IPADDR_IPV4") + \
            data.get_attr("IPSET_ATTR_IP_FROM").get_attrs("IPSET_ATTR_IPADDR_IPV6")
        assert net(f"{address[0]}/{data.get_attr('IPSET_ATTR_CIDR')}") == net(target)
