"""No lockout: what must never be banned is refused on every path (fail2ban's own action, the .conf
twins and the command line, the fleet, rebuilds and verify). The doors untrusted text comes in by, which
need no kernel, are tests/unit/test_lockout_doors.py."""

import ipaddress
import json
import os
import subprocess
import time

import pytest

from f2bext import guard, lab

JAIL = "postfix"
IGNORED = lab.BYSTANDER4  # 198.51.100.20: in the jail's ignoreip
COVERING = "198.51.100.16/28"  # holds it, not the server's 198.51.100.1
MARKER = "203.0.113.0/24"  # a ban that must land: everything before it was read
VIP = "198.51.100.99"  # a failover address, banned while another host held it


def enforced(ns) -> set[str]:
    """Every element of every set of table inet f2bext: a jail's own bans, shared ones, the fleet jail."""
    out = nft_elements(ns)
    for line in ns.run(["ipset", "list", "-name"]).stdout.split():
        if line.startswith(("f2bext", "f2bxr")):
            listing = ns.run(["ipset", "list", line]).stdout
            out |= {str(ipaddress.ip_network(m)) for m in listing.split("Members:", 1)[1].split()}
    return out


def nft_elements(ns) -> set[str]:
    listing = json.loads(ns.run(["nft", "-j", "list", "table", "inet", "f2bext"], check=False).stdout or '{"nftables": []}')
    out = set()
    for item in listing["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "prefix" in elem:
                out.add(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            elif isinstance(elem, dict) and "range" in elem:
                out.add("-".join(elem["range"]))
            else:
                out.add(str(ipaddress.ip_network(elem)))
    return out


def overlapping(found: set[str], *addresses: str) -> set[str]:
    """The enforced entries that hold any of the addresses (ranges as nft lists them, a-b)."""
    hits = set()
    for entry in found:
        if "-" in entry:
            low, high = map(ipaddress.ip_address, entry.split("-"))
            nets = list(ipaddress.summarize_address_range(low, high))
        else:
            nets = [ipaddress.ip_network(entry)]
        for text in addresses:
            target = ipaddress.ip_network(text, strict=False)
            if any(n.version == target.version and n.overlaps(target) for n in nets):
                hits.add(entry)
    return hits


def log_text(server) -> str:
    with open(os.path.join(server.workdir, "fail2ban.log")) as f:
        return f.read()


def holds_marker(ns) -> bool:
    return bool(overlapping(enforced(ns), lab.ATTACKER4))


# ---- the host's next hops, read over netlink -----------------------------------------------------

GATEWAY4, GATEWAY6 = "198.51.100.254", "fe80::1"
ROUTES = [
    ["ip", "route", "add", "default", "via", GATEWAY4],
    ["ip", "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"],
    ["ip", "-6", "route", "add", "2001:db8:99::/48", "via", "2001:db8::fe"],
    ["ip", "route", "add", "192.0.2.0/25", "nexthop", "via", "198.51.100.253", "nexthop", "via", "198.51.100.252"],
    ["ip", "route", "add", "192.0.2.128/26", "via", "inet6", "2001:db8::fd", "dev", "eth0"],
    ["ip", "nexthop", "add", "id", "7", "via", "198.51.100.251", "dev", "eth0"],
    ["ip", "route", "add", "192.0.2.192/26", "nhid", "7"],
    ["ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.250", "table", "100"],
]


def iproute_gateways(ns) -> set[str]:
    """Every next hop `ip` lists, in every table and in the nexthop objects: the independent reading."""
    found = set()
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-6", "route", "show", "table", "all"],
                 ["ip", "-j", "nexthop", "show"]):
        for route in json.loads(ns.run(argv).stdout or "[]"):
            for hop in [route] + route.get("nexthops", []):
                via = hop.get("gateway") or (hop.get("via") or {}).get("host")
                if via:
                    found.add(via)
    return found


def test_every_next_hop_of_every_table_is_a_gateway_the_guard_keeps(hosts):
    for argv in ROUTES:
        hosts.server.run(argv)
    with hosts.server.entered():
        keeps = guard.host_keeps(fresh=True)
    gateways = {str(k.net.network_address) for k in keeps if k.why.startswith("a gateway")}
    assert gateways == iproute_gateways(hosts.server)
    assert {GATEWAY4, GATEWAY6, "198.51.100.251", "198.51.100.252", "2001:db8::fd"} <= gateways
    own = {str(k.net.network_address) for k in keeps if k.why.startswith("an address")}
    assert {lab.SERVER4, lab.SERVER6, "127.0.0.1", "::1"} <= own


# ---- a network overlapping what must stay reachable -----------------------------------------------

@pytest.mark.parametrize("action", ["py", "conf"])
def test_a_network_covering_an_ignoreip_address_is_refused_by_the_action_and_its_conf_twin(hosts, f2b, reach, action):
    f2b.jails[JAIL]["ignoreip"] = f"127.0.0.1/8 ::1 {IGNORED}"
    if action == "conf":
        f2b.jails[JAIL]["banaction"] = "f2bext-nftables"
    f2b.start()
    f2b.client("set", JAIL, "banip", COVERING, IGNORED, "198.51.100.0/16", MARKER)
    f2b.wait(lambda: holds_marker(hosts.server), "the marker ban")
    assert not overlapping(enforced(hosts.server), IGNORED), enforced(hosts.server)
    assert reach(hosts.bystander, lab.SERVER4, 25)
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    log = log_text(f2b)
    assert f"refusing to ban {COVERING}: it overlaps {IGNORED} in the jail's ignoreip" in log
    assert "Traceback" not in log


def test_an_ignoreip_or_ignorecommand_set_while_fail2ban_runs_holds_from_the_next_ban(hosts, f2b):
    """The ban path keeps its guard and ignore check between bans (internals.ignore_check); one
    changed through fail2ban-client holds from the next ban on. `banip` skips fail2ban's own check."""
    first, listed, commanded, second = "198.51.100.40", "198.51.100.41", "198.51.100.42", "203.0.113.50"
    f2b.start()
    f2b.client("set", JAIL, "banip", first)
    f2b.wait(lambda: overlapping(enforced(hosts.server), first), "the first ban")
    f2b.client("set", JAIL, "ignorecommand", f"test <ip> = {commanded}")
    f2b.client("set", JAIL, "banip", commanded, second)
    f2b.wait(lambda: overlapping(enforced(hosts.server), second), "the second ban")
    f2b.client("set", JAIL, "addignoreip", listed)
    f2b.client("set", JAIL, "banip", listed, MARKER)
    f2b.wait(lambda: holds_marker(hosts.server), "the marker ban")
    assert not overlapping(enforced(hosts.server), listed, commanded), enforced(hosts.server)
    log = log_text(f2b)
    assert f"refusing to ban {listed}: it is in the jail's ignoreip" in log
    assert f"refusing to ban {commanded}: it is in the jail's ignoreip" in log


def test_the_command_line_refuses_what_overlaps_the_ignoreip_it_is_given_and_changes_nothing(hosts, workdir):
    def ban(*args):
        return lab.f2bext_cmd(hosts.server, workdir, "ban", "--jail", JAIL, "--port", "25", *args)
    assert ban("--ignoreip", f"127.0.0.1/8 ::1 {lab.ATTACKER6}", lab.ATTACKER4).returncode == 0
    before = hosts.server.nft("list", "ruleset")
    for ignoreip, target in ((IGNORED, COVERING), (IGNORED, IGNORED), ("2001:db8::/64", "2001:db8::/56"),
                             ("198.51.100.20,192.0.2.0/24", "192.0.0.0/16")):
        result = ban("--ignoreip", ignoreip, target)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"f2bext: error: refusing to ban {target}: ")
    result = ban("--ignoreip", "198.51.100.20 $(reboot)", MARKER)
    assert result.returncode == 2 and "not an address, CIDR or host name" in result.stderr
    assert hosts.server.nft("list", "ruleset") == before
    # What a ban was given is kept with the jail: a later repair by hand never loads it either.
    assert ban(MARKER).returncode == 0
    assert lab.f2bext_cmd(hosts.server, workdir, "ban", "--jail", JAIL, lab.ATTACKER6).returncode == 2


# ---- link-local, multicast, and the host's gateways -----------------------------------------------

def test_the_gateways_link_local_and_multicast_are_never_banned_whoever_asks(hosts, f2b, reach):
    hosts.server.run(["ip", "route", "add", "default", "via", IGNORED])  # the bystander is the router
    hosts.server.run(["ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"])
    hosts.server.run(["ip", "-6", "route", "add", "2001:db8:99::/48", "via", lab.BYSTANDER6])
    f2b.jails[JAIL]["banaction"] = "f2bext-nftables.py[type=allports, protocol=all]"
    f2b.start()
    refused = ["fe80::1", "ff02::1", "169.254.0.1", "224.0.0.251", IGNORED, COVERING, lab.BYSTANDER6]
    f2b.client("set", JAIL, "banip", *refused, MARKER)
    f2b.wait(lambda: holds_marker(hosts.server), "the marker ban")
    assert not overlapping(enforced(hosts.server), *refused)
    assert reach(hosts.bystander, lab.SERVER4, 25) and reach(hosts.bystander, lab.SERVER6, 25)
    log = log_text(f2b)
    assert f"refusing to ban {IGNORED}: it holds {IGNORED}, a gateway of this host (eth0)" in log
    assert f"refusing to ban {lab.BYSTANDER6}: it holds {lab.BYSTANDER6}, a gateway of this host (eth0)" in log
    assert "refusing to ban link-local addresses: 'fe80::1'" in log


# ---- the fleet: the Redis server, peers' networks ----------------------------------------------------

PASSWORD = "s3cret-lockout"
REDIS_NAME = "redis.lab"  # resolved by the server through its namespace's /etc/hosts


@pytest.fixture
def tcp_redis(hosts, tmp_path):
    """A redis-server on the bystander's address, reached by the server under a host name."""
    proc = hosts.bystander.popen(["redis-server", "--port", "6379", "--bind", IGNORED, "--requirepass", PASSWORD,
                                  "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    etc = f"/etc/netns/{hosts.server.name}"  # `ip netns exec` mounts it over /etc/hosts
    os.makedirs(etc)
    with open(f"{etc}/hosts", "w") as f:
        f.write(f"127.0.0.1 localhost\n::1 localhost\n{IGNORED} {REDIS_NAME}\n")

    def cli(*args):
        return hosts.bystander.run(["redis-cli", "-h", IGNORED, "--no-auth-warning", "-a", PASSWORD, *args],
                                   check=False).stdout
    try:
        lab.Fail2banLab.wait(lambda: cli("PING").strip() == "PONG", "redis-server")
        yield cli
    finally:
        proc.kill()
        proc.wait()
        os.unlink(f"{etc}/hosts")
        os.rmdir(etc)


def test_the_redis_server_and_networks_too_wide_or_covering_ignoreip_are_never_banned_through_the_fleet(
        hosts, f2b, reach, tcp_redis):
    url = f"redis://{REDIS_NAME}:6379/0?password={PASSWORD}"  # redis-py takes the password from the query too
    f2b.jails[JAIL].pop("banaction")
    f2b.jails[JAIL]["ignoreip"] = "127.0.0.1/8 ::1 198.51.100.30"
    f2b.jails[JAIL]["action"] = (f'f2bext-nftables.py[port="smtp,ssmtp,submission", share="{url}", '
                                 f'share_scope="all", share_origin="a"]')
    f2b.start()
    common = ["op", "ban", "bantime", "600", "expires", str(time.time() + 600), "origin", "peer"]
    refused = [(JAIL, IGNORED), ("f2bext-sshd", IGNORED), ("f2bext-sshd", COVERING), (JAIL, "198.51.100.28/30"),
               ("f2bext-sshd", "192.0.0.0/12"), ("f2bext-sshd", "3fff::/20")]
    for jail, address in refused + [("f2bext-sshd", MARKER)]:
        tcp_redis("XADD", "f2bext:events", "*", *common, "jail", jail, "address", address)
    f2b.client("set", JAIL, "banip", IGNORED)
    f2b.wait(lambda: holds_marker(hosts.server), "the peer's marker ban")
    assert not overlapping(enforced(hosts.server), IGNORED, "198.51.100.30", "192.0.0.0/12", "3fff::/20")
    assert reach(hosts.bystander, lab.SERVER4, 25)
    log = log_text(f2b)
    assert f"it holds {IGNORED}, the Redis server of share redis://{REDIS_NAME}:6379/0?password=***" in log
    assert "it overlaps 198.51.100.30 in the jail's ignoreip" in log
    assert "wider than /16" in log and "wider than /32" in log
    assert PASSWORD not in log
    shown = f2b.client("get", JAIL, "action", "f2bext-nftables", "share").stdout
    assert "password=***" in shown and PASSWORD not in shown
    # Still sharing: a local ban reaches Redis.
    f2b.client("set", JAIL, "banip", lab.ATTACKER6)
    f2b.wait(lambda: f"{JAIL} {lab.ATTACKER6}" in tcp_redis("ZRANGE", "f2bext:bans", "0", "-1"), "the ban published")
    # A shared ban of an address that becomes this host's own later is lifted too.
    tcp_redis("XADD", "f2bext:events", "*", *common, "jail", "f2bext-sshd", "address", VIP)
    f2b.wait(lambda: overlapping(enforced(hosts.server), VIP), "the peer's ban of the failover address")
    hosts.server.add_address("eth0", f"{VIP}/32")
    f2b.wait(lambda: not overlapping(enforced(hosts.server), VIP), "the shared ban lifted", timeout=10)
    assert f"[f2bext-fleet] f2bext lifts a shared ban of {VIP}: it holds {VIP}, an address of this host" in log_text(f2b)


# ---- an address that becomes the host's own later -----------------------------------------------------



def test_an_address_that_becomes_the_hosts_own_is_lifted_once_and_no_rebuild_puts_it_back(hosts, f2b):
    f2b.start()
    f2b.client("set", JAIL, "banip", VIP, MARKER)
    f2b.wait(lambda: overlapping(enforced(hosts.server), VIP), "the ban of the address")
    hosts.server.add_address("eth0", f"{VIP}/32")  # the address moves onto this host
    f2b.wait(lambda: not overlapping(enforced(hosts.server), VIP), "the ban lifted from the kernel", timeout=10)
    assert VIP in f2b.banned(JAIL), "fail2ban keeps its ticket"
    hosts.server.nft("flush", "ruleset")  # the watchdog rebuilds the jail from fail2ban's list
    f2b.wait(lambda: holds_marker(hosts.server), "the rebuild", timeout=5)
    time.sleep(2.5)  # a few more watchdog rounds
    assert not overlapping(enforced(hosts.server), VIP)
    lines = [line for line in log_text(f2b).splitlines() if f"lifts its ban of {VIP}" in line]
    assert len(lines) == 1 and "an address of this host (eth0)" in lines[0], lines


def test_verify_is_not_ok_while_an_address_of_the_host_is_banned_and_repair_lifts_it(hosts, workdir, f2b):
    f2b.jails[JAIL]["banaction"] = "f2bext-nftables"  # the .conf twin: no watchdog, and its drainer ends
    f2b.start()
    f2b.client("set", JAIL, "banip", VIP, MARKER)
    f2b.wait(lambda: overlapping(enforced(hosts.server), VIP), "the ban of the address")
    f2b.wait(lambda: not lab.twin_drainer_alive(workdir, JAIL), "the drainer to end", timeout=30)
    hosts.server.add_address("eth0", f"{VIP}/32")
    result = lab.f2bext_cmd(hosts.server, workdir, "verify", "--jail", JAIL)
    assert result.returncode == 2 and f"ban of {VIP}: it holds {VIP}, an address of this host (eth0)" in result.stdout
    result = lab.f2bext_cmd(hosts.server, workdir, "repair", "--jail", JAIL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not overlapping(enforced(hosts.server), VIP) and holds_marker(hosts.server)
    assert lab.f2bext_cmd(hosts.server, workdir, "verify", "--jail", JAIL).returncode == 0
    assert VIP in f2b.banned(JAIL)
