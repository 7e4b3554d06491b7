"""What the doctor reads of fail2ban without a kernel: its log's notices per jail and window, its actions' kinds."""

import time

from f2bext import doctor


def test_notices_are_counted_per_jail_and_window(tmp_path):
    log = tmp_path / "fail2ban.log"
    now = time.time()
    stamp = lambda age: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - age))  # noqa: E731
    log.write_text("\n".join([
        f"{stamp(10)},123 fail2ban.actions        [99]: NOTICE  [postfix] 203.0.113.7 already banned",
        f"{stamp(7200)},1 fail2ban.actions: WARNING [postfix] 2001:db8::7 already banned",
        f"{stamp(100)},5 fail2ban.actions        [99]: NOTICE  [sshd] 198.51.100.9 already banned",
        f"{stamp(200000)},5 fail2ban.actions        [99]: NOTICE  [sshd] 198.51.100.9 already banned",
        f"{stamp(5)},5 fail2ban.actions        [99]: NOTICE  [sshd] Ban 198.51.100.9",
    ]))
    assert doctor.read_notices(str(log), now) == {"postfix": (1, 2), "sshd": (1, 1)}


def test_action_kinds_are_recognised_by_name_or_ban_command():
    assert doctor.action_kind("iptables-multiport", "") == "iptables"
    assert doctor.action_kind("iptables-ipset-proto6-allports", "") == "iptables-ipset"
    assert doctor.action_kind("nftables", "") == "nftables"
    assert doctor.action_kind("f2bext-ipset", "") == "f2bext-ipset"
    assert doctor.action_kind("custom", "<nftables> add element <table_family> <table> <addr_set> { <ip> }") == "nftables"
    assert doctor.action_kind("sendmail-whois", "printf %%b ...") == ""
