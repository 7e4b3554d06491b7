"""The .conf twins' fast path as fail2ban hands it to /bin/sh (its own reader, its own substitution),
with nft, ipset and f2bext replaced by programs that note how they were called; and the guard
patterns and spool it reads and leaves."""

import fnmatch
import ipaddress
import os
import random
import subprocess

import pytest
from fail2ban.client.actionreader import ActionReader
from fail2ban.server.action import CommandAction

from f2bext import lab, twins
from f2bext.guard import Keep

IGNOREIP = "127.0.0.1/8 ::1 192.0.2.0/24 2001:db8:abcd::/48"
TWINS = {"f2bext-nftables": "nft add element inet f2bext postfix-v{f} {{ {ip} }}",
         "f2bext-ipset": "ipset -exist add {set} {ip}"}


def actionban(confdir, name):
    """actionban of the jail `postfix` on action `name`, its static tags replaced as fail2ban does."""
    reader = ActionReader(name, "postfix", {"ignoreip": IGNOREIP}, basedir=confdir)
    assert reader.read()
    reader.getOptions({})
    props = {k: v for cmd in reader.convert() if cmd[:4] == ["multi-set", "postfix", "action", name] for k, v in cmd[4]}
    return CommandAction.replaceTag(props["actionban"], dict(props, name="postfix"))


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """run(action, ip) -> the calls the ban made, the spool's files after it."""
    bindir, log = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    for tool in ("nft", "ipset", "f2bext"):  # a drainer lingers a while, as the real one does
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n[ "$1" != drain ] || sleep 3\n')
        (bindir / tool).chmod(0o755)
    state = tmp_path / "run"
    monkeypatch.setenv("F2BEXT_STATE_DIR", str(state))
    twins.write_guard("postfix", [Keep(ipaddress.ip_network(n), "the jail's ignoreip", True)
                                  for n in ("127.0.0.0/8", "::1", "192.0.2.0/24", "2001:db8:abcd::/48")])
    spool = state / "twins" / "postfix" / "spool"
    server = lab.Fail2banLab(None, str(tmp_path))
    server.write_config()
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")

    def run(action, ip):
        cmd = CommandAction.replaceDynamicTags(actionban(server.confdir, action), {"ip": ip, "restored": 0})
        done = subprocess.run(cmd if isinstance(cmd, list) else ["/bin/sh", "-c", cmd],
                              shell=isinstance(cmd, list), env=env, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        files = sorted(os.listdir(spool))
        for name in files:
            os.unlink(spool / name)
        run.drains += sum(c.startswith("f2bext drain") for c in calls)
        return [c for c in calls if not c.startswith("f2bext drain")], files
    run.drains = 0
    return run


@pytest.mark.parametrize("action", list(TWINS))
@pytest.mark.parametrize("ip", ["203.0.113.7", "2001:db8::7", "2001:db8:abce::5", "0.0.0.1"])
def test_a_plain_address_the_guard_allows_takes_the_fast_add_and_is_spooled(shell, action, ip):
    f = 6 if ":" in ip else 4
    calls, files = shell(action, ip)
    want = TWINS[action].format(f=f, ip=ip, set="f2bext-postfix" if f == 4 else "f2bext6-postfix")
    assert calls == [want] and files == [f"0_{ip}"]


@pytest.mark.parametrize("action", list(TWINS))
@pytest.mark.parametrize("ip", [
    "192.0.2.9", "2001:db8:abcd::5", "127.0.0.9", "::1", "169.254.1.1", "fe80::1", "febf::1", "224.0.0.1",
    "239.1.2.3", "ff02::1", "0.0.0.0", "::",  # the guard's
    "198.51.100.0/24", "2001:db8::/64", "010.1.2.3", "1.2.3.256", "1.2.3", "1.2.3.4.5", ".1.2.3", "1..2.3",
    "localhost", "2001:DB8::7", "::ffff:1.2.3.4", "1.2.3.4 5.6.7.8", "", "1.2.3.4-1.2.3.9"])
def test_anything_else_goes_the_full_way_and_nothing_reaches_the_kernel_tool(shell, action, ip):
    calls, files = shell(action, ip)
    assert calls == [f"f2bext ban --backend {'nftables' if action.endswith('nftables') else 'ipset'} --jail postfix "
                     f"--port 0:65535 --protocol tcp --type multiport --blocktype reject --hooks input "
                     f"--kill conntrack,sockets --ignoreip {IGNOREIP} {ip}"] and files == []


@pytest.mark.parametrize("action", list(TWINS))
def test_shell_text_in_the_address_is_one_argument_and_never_runs(shell, tmp_path, action):
    ip = f"1.2.3.4;touch {tmp_path}/owned;$(touch {tmp_path}/owned)`touch {tmp_path}/owned`"
    calls, files = shell(action, ip)
    assert calls[0].endswith(" " + ip) and files == []
    assert not (tmp_path / "owned").exists()


@pytest.mark.parametrize("action", list(TWINS))
@pytest.mark.parametrize("text", ["", "# no function\n", "f2bext_may_ban() { return 1; }\n",
                                  "f2bext_may_ban() { case $1 in\n"])
def test_a_guard_that_says_nothing_or_is_broken_sends_every_ban_the_full_way(shell, tmp_path, action, text):
    """The shell sources the guard: only a function that answers yes takes the fast add. Missing,
    cut short or saying no, every ban goes to f2bext, which decides exactly."""
    guard = tmp_path / "run" / "twins" / "postfix" / twins.GUARD
    if text == "":
        guard.unlink()
    else:
        guard.write_text(text)
    calls, files = shell(action, "203.0.113.7")
    assert len(calls) == 1 and calls[0].startswith("f2bext ban ") and files == []


@pytest.mark.parametrize("pattern", ["1.2.3.4) :;; *", "1.2.3.4|*", "$(touch x)", "1.2.3.4 *", "a'b", "", "1.2.3.4\n*"])
def test_a_guard_pattern_the_shell_would_parse_is_refused(pattern):
    with pytest.raises(ValueError):
        twins.guard_script(["127.*", pattern])
    with pytest.raises(ValueError):
        twins.guard_script([])


def _inside(net, rng):
    span = net.num_addresses - 1
    return [net.network_address, net.broadcast_address, net.network_address + rng.randint(0, span)]


def test_every_address_of_every_kept_network_matches_a_guard_pattern_as_fail2ban_writes_it():
    rng = random.Random(18)
    nets = []
    for _ in range(300):
        v6 = rng.random() < 0.6
        bits = 128 if v6 else 32
        length = rng.choice([bits, bits, rng.randint(0, bits), rng.randint(bits // 2, bits)])
        raw = rng.getrandbits(bits)
        if v6 and rng.random() < 0.5:
            raw &= ~((1 << 96) - 1) >> rng.randint(0, 64)  # zero runs, folded into "::"
        nets.append(ipaddress.ip_network((raw, length), strict=False))
    keeps = [Keep(n, "test", True) for n in nets]
    patterns = twins.guard_patterns(keeps)
    for net in nets:
        for addr in _inside(net, rng):
            assert any(fnmatch.fnmatchcase(str(addr), p) for p in patterns), (net, addr)


def test_guard_patterns_leave_addresses_outside_alone():
    patterns = twins.guard_patterns([Keep(ipaddress.ip_network(n), "test", True)
                                     for n in ("10.0.0.0/8", "2001:db8:abcd::/48", "198.51.100.7")])
    for text in ("100.1.2.3", "11.0.0.1", "198.51.100.70", "2001:db8:abce::1", "2001:db9::1", "203.0.113.7"):
        assert not any(fnmatch.fnmatchcase(text, p) for p in patterns), text


def test_spool_take_forget_and_lifted(tmp_path, monkeypatch):
    monkeypatch.setenv("F2BEXT_STATE_DIR", str(tmp_path))
    twins.write_guard("postfix", [])
    spool = tmp_path / "twins" / "postfix" / "spool"
    for name in ("0_203.0.113.7", "1_2001:db8::7", "0_198.51.100.9", "0_not-an-address"):
        (spool / name).touch()
    twins.forget("postfix", [ipaddress.ip_network("198.51.100.9")])
    assert twins.lifted("postfix") == set(), "no drainer runs: nothing to tell"
    (tmp_path / "twins" / "postfix" / "drain.pid").write_text("1\n")
    twins.forget("postfix", [ipaddress.ip_network("203.0.113.8")])
    assert twins.lifted("postfix") == {ipaddress.ip_network("203.0.113.8")} and twins.lifted("postfix") == set()
    taken = sorted(twins.take("postfix"), key=lambda e: str(e[0]))
    assert taken == [(ipaddress.ip_network("2001:db8::7"), True), (ipaddress.ip_network("203.0.113.7"), False)]
    assert os.listdir(spool) == []


def test_a_flood_of_fast_bans_starts_one_drainer_not_one_process_a_ban(shell):
    for i in range(20):
        assert shell("f2bext-nftables", f"203.0.113.{i + 1}")[1] == [f"0_203.0.113.{i + 1}"]
    assert shell.drains == 1
