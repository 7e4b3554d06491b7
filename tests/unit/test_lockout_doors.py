"""No lockout, without a kernel: the doors untrusted text comes in by hold their shape (validators,
link-local and multicast targets, ignoreip words, the fleet's size bound), passwords stay out of the
log, and the guard's reading of this host copes with the kernel's interrupted and failed answers.
Every ban path refusing what must never be banned is tests/lab/test_lockout.py."""

import ipaddress
import subprocess

import pytest

from f2bext import guard, lab
from f2bext.kernel import netlink
from f2bext.addr import parse_target
from f2bext.errors import InputError
from f2bext.fleet import check_origin, parse_max_prefix, redact, too_wide
from f2bext.spec import parse_jail, parse_ports


# ---- the validators match whole strings --------------------------------------------------------

@pytest.mark.parametrize("check,text", [
    (check_origin, "evil\n"), (check_origin, "evil\nFAKE fail2ban line"), (parse_jail, "postfix\n"),
    (parse_ports, "25\n:26"),
])
def test_a_validator_refuses_text_with_a_trailing_newline(check, text):
    with pytest.raises(InputError):
        check(text)


@pytest.mark.parametrize("url,shown", [
    ("redis://:s3cret@192.0.2.5:6379/0", "redis://:***@192.0.2.5:6379/0"),
    ("redis://192.0.2.5:6379/0?password=s3cret", "redis://192.0.2.5:6379/0?password=***"),
    ("rediss://[2001:db8::5]:6380/0?ssl_cert_reqs=none&password=s3cret",
     "rediss://[2001:db8::5]:6380/0?ssl_cert_reqs=none&password=***"),
    ("unix:///run/redis/redis.sock?db=0&pass%77ord=s3cret", "unix:///run/redis/redis.sock?db=0&password=***"),
    ("redis://192.0.2.5:6379/0", "redis://192.0.2.5:6379/0"),
])
def test_redact_hides_every_password_redis_py_would_use(url, shown):
    assert redact(url) == shown
    assert "s3cret" not in redact(url)


# ---- link-local and multicast ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["fe80::1", "fe80::/10", "fe80::/64", "fe00::/7", "ff02::1", "ff00::/8",
                                  "169.254.0.1", "169.254.0.0/16", "169.0.0.0/8", "224.0.0.251", "239.0.0.0/8",
                                  "128.0.0.0/1", "192.0.0.0/2"])
def test_link_local_and_multicast_targets_are_refused(text):
    with pytest.raises(InputError, match="link-local|multicast"):
        parse_target(text)


# ---- the kernel's answers: interrupted dumps, refusals ----------------------------------------------

def _datagram(flags):
    return netlink.message(20, flags, 7, bytes(8)) + netlink.message(netlink.NLMSG_DONE, flags, 7, bytes(4))


def test_an_interrupted_dump_is_recognised_and_asked_again_a_bounded_number_of_times():
    assert netlink.interrupted(_datagram(netlink.NLM_F_DUMP_INTR), 7)
    assert not netlink.interrupted(_datagram(0), 7) and not netlink.interrupted(_datagram(netlink.NLM_F_DUMP_INTR), 8)
    answers = iter([([b"partial"], True), ([b"partial"], True), ([b"whole"], False)])
    assert netlink.consistent(lambda: next(answers)) == [b"whole"]
    tries = []
    with pytest.raises(OSError, match="interrupted"):
        netlink.consistent(lambda: tries.append(1) or ([b"partial"], True))
    assert len(tries) == netlink.DUMP_TRIES


def test_the_guard_reports_a_netlink_failure_as_a_kernel_error():
    # No file descriptor left for the netlink socket: a real failure of the kernel's answer.
    code = ("import ipaddress, resource\n"
            "from f2bext import guard\n"
            "from f2bext.errors import KernelError\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))\n"
            "try:\n"
            "    guard.Guard().refuse([ipaddress.ip_network('203.0.113.7')])\n"
            "except KernelError as e:\n"
            "    print('KernelError', e)\n")
    out = subprocess.run([lab.PYTHON, "-c", code], capture_output=True, text=True, cwd=lab.PROJECT_ROOT)
    assert out.stdout.startswith("KernelError cannot read this host's addresses and routes"), out.stderr



def test_the_guard_keeps_its_last_read_when_the_kernel_cannot_answer_again():
    # A good read, then no file descriptor left: the bans go on, guarded by the last read, said once.
    code = ("import ipaddress, logging, resource\n"
            "from f2bext import guard\n"
            "logging.basicConfig(format='%(message)s')\n"
            "first = guard.host_keeps()\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))\n"
            "assert guard.host_keeps(fresh=True) == first and first\n"
            "guard.Guard().refuse([ipaddress.ip_network('203.0.113.7')])\n"
            "print('guarded')\n")
    out = subprocess.run([lab.PYTHON, "-c", code], capture_output=True, text=True, cwd=lab.PROJECT_ROOT)
    assert out.stdout == "guarded\n", out.stderr
    assert out.stderr.count("guarding with the last read") == 1, out.stderr


def test_an_ignoreip_word_fail2ban_takes_but_matches_nothing_with_is_left_out_not_fatal():
    # fail2ban accepts 10.0.0/24 or my_host in ignoreip and matches nothing with them; a .conf jail
    # passing its ignoreip must not lose every ban over one such word.
    keeps = guard.parse_list("10.0.0/24 my_host 198.51.100.20, 192.0.2.0/24", guard.IGNOREIP)
    assert [str(k.net) for k in keeps] == ["198.51.100.20/32", "192.0.2.0/24"]
    for text in ("198.51.100.20 $(reboot)", "a;b", "x`id`", "é"):
        with pytest.raises(InputError, match="not an address, CIDR or host name"):
            guard.parse_list(text, guard.IGNOREIP)


# ---- the fleet: the size bound ----------------------------------------------------------------------

def test_share_max_prefix_parses_and_bounds_a_peers_networks():
    assert parse_max_prefix("16,32") == (16, 32) and parse_max_prefix(" 24 , 48 ") == (24, 48)
    for bad in ("16", "33,32", "16,129", "16,32\n,1", "a,b", ""):
        with pytest.raises(InputError):
            parse_max_prefix(bad)
    assert too_wide(ipaddress.ip_network("198.51.0.0/16"), (16, 32)) is None
    assert "wider than /16" in too_wide(ipaddress.ip_network("192.0.0.0/12"), (16, 32))
    assert too_wide(ipaddress.ip_network("2001:db8::/32"), (16, 32)) is None
    assert "wider than /32" in too_wide(ipaddress.ip_network("3fff::/20"), (16, 32))
