"""No lost ban: a rebuild never holds fewer bans than fail2ban does, whoever runs it and whatever it
could not read. Real fail2ban-server, real kernel, in the lab's namespaces."""

from __future__ import annotations

import pytest

from f2bext import lab
from test_faults import JAIL, addresses, assert_kernel_mirrors, ban, hook_count


def conf_twin(f2b):
    """The jail on the .conf twin of the test's backend: every ban a `f2bext ban` process."""
    f2b.jails[JAIL]["banaction"] = f2b.banaction.removesuffix(".py")


def reload_firewall(fw):
    """A firewall reload that forgets our objects: nft flush ruleset; for ipset, the baseline's rules
    restored and the jail's sets destroyed (as netfilter-persistent's ipset plugin flushes them)."""
    fw.wipe()
    if fw.backend != "nftables":
        for name in (f"f2bext-{JAIL}", f"f2bext6-{JAIL}"):
            fw.ns.run(["ipset", "destroy", name], check=False)


def test_conf_twin_banip_after_a_firewall_reload_brings_back_every_ban(hosts, f2b, fw, backend):
    fw.save_baseline()
    conf_twin(f2b)
    f2b.start()
    ban(f2b, *addresses(7))
    assert_kernel_mirrors(f2b, fw, timeout=10, what="the first seven bans")
    rules = hook_count(fw)
    reload_firewall(fw)
    # From fail2ban's socket thread: the `f2bext ban` it runs cannot ask it for the banned list.
    ban(f2b, lab.ATTACKER4)
    assert len(f2b.banned(JAIL)) == 8
    assert_kernel_mirrors(f2b, fw, timeout=10, what="all eight bans after the next banip", rules=rules)
