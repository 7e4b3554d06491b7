"""One ban, every server, even when the Redis master dies: on the namespaces of three servers, three
real redis-servers (a master, two replicas) and three real Sentinels; three real fail2ban-servers
share through the Sentinel URL. The master is killed with SIGKILL while bans flow."""

import json
import os
import time

import pytest

from f2bext import lab
from f2bext.lab.sentinel import BanFlow, SentinelLab, held
from test_fleet import SERVERS, enforced, make_tls_certificates, servers, share_jail  # noqa: F401 - servers is the fixture

# Measured here (Debian 12, 2 shared cores, four runs): every ban held everywhere at most 3.7-4.1 s
# after it was asked, the failover's included; the bound leaves CI's slower legs room.
BOUND = 15.0


def status(server):
    """What the server's fail2ban says of its sharing (the doctor reads the same)."""
    out = server.client("get", "postfix", "action", "f2bext-nftables", "share_status").stdout.strip()
    return json.loads(out.splitlines()[-1]) if out else {}


def log_of(server):
    with open(os.path.join(server.workdir, "fail2ban.log")) as f:
        return f.read()


@pytest.fixture
def sentinel_fleet(servers, tmp_path):
    """Servers a, b, c sharing through Sentinel; node i of Redis on server i's namespace, a's the master."""
    redis = SentinelLab(str(tmp_path / "redis"), [SERVERS[n][0] for n in "abc"])
    fleet = servers({n: {"postfix": share_jail(redis.url, n, bantime="1d")} for n in "abc"})
    try:
        redis.start([fleet[n].ns for n in "abc"])
        marker = "100.64.255.1"
        fleet["a"].client("set", "postfix", "banip", marker)
        for server in fleet.values():
            server.wait(lambda: marker in held(server.ns) and status(server).get("master_id"),
                        "sharing through the Sentinels, both ways", timeout=30)
        yield fleet, redis
    finally:
        redis.stop()


def new_master(redis):
    address = redis.master(1)
    assert address and address != redis.addresses[0], f"no failover: the Sentinels name {address!r}"
    return redis.node_of(address)


def test_every_ban_made_before_during_and_after_a_failover_holds_on_every_server(hosts, sentinel_fleet):
    fleet, redis = sentinel_fleet
    flow = BanFlow(fleet, rate=10)
    flow.start()
    time.sleep(2)  # bans before
    killed = time.time()
    redis.kill_redis(0)
    redis_wait = lab.Fail2banLab.wait(lambda: redis.master(1) not in ("", redis.addresses[0]), "the failover")
    time.sleep(4)  # bans after
    flow.settle(timeout=60)
    worst = flow.latencies()[-1]
    after = flow.latencies(since=killed)
    print(f"failover: Sentinels {redis_wait:.1f} s; {len(flow.asked)} bans, held everywhere within {worst:.1f} s "
          f"(after the kill: worst {after[-1]:.1f} s)")
    assert worst < BOUND
    for server in fleet.values():
        assert set(flow.asked) <= held(server.ns), "a ban lost"
        assert "following a new master at" in log_of(server)
    master = new_master(redis)
    # Each server reconciles once its queue is empty: bans the old master took but never passed on
    # (27 of 83 in one CI run) are published again a few seconds after the flow ends.
    lab.Fail2banLab.wait(lambda: redis.cli(master, "ZCARD", "f2bext:bans").strip() == str(len(flow.asked) + 1),
                         "every server's bans in the new master's present", timeout=BOUND)

    # An unban made after the failover lifts the ban everywhere (one a made before the kill).
    gone = next(a for a, (name, t) in flow.asked.items() if name == "a" and t < killed)
    out = lab.f2bext_cmd(fleet["b"].ns, fleet["b"].workdir, "unban", "--jail", "postfix", gone)
    assert out.returncode == 0, out.stdout + out.stderr
    for server in fleet.values():
        server.wait(lambda: gone not in held(server.ns), "the unban everywhere")

    # The old master comes back: the Sentinels make it a replica, and nothing changes.
    redis.start_redis(0, replica_of=None)
    redis.wait_role(0, "slave")
    expected = (set(flow.asked) | {"100.64.255.1"}) - {gone}
    time.sleep(2)
    for server in fleet.values():
        assert held(server.ns) == expected
    assert redis.master(0) == redis.addresses[master]

    # `f2bext doctor` names the master each server follows, the new one.
    out = lab.f2bext_cmd(fleet["c"].ns, fleet["c"].workdir, "doctor")
    assert f"follows the master at {redis.addresses[master]}:6379" in out.stdout, out.stdout


def test_a_hostile_entry_through_the_new_master_is_refused(hosts, sentinel_fleet):
    fleet, redis = sentinel_fleet
    redis.kill_redis(0)
    lab.Fail2banLab.wait(lambda: redis.master(1) not in ("", redis.addresses[0]), "the failover")
    master = new_master(redis)
    common = ["op", "ban", "jail", "postfix", "bantime", "600", "expires", str(time.time() + 600), "origin", "evil"]
    for address in ("203.0.113.300", "$(touch /tmp/f2bext-pwned)", "127.0.0.1", SERVERS["c"][0], "0.0.0.0/0"):
        redis.cli(master, "XADD", "f2bext:events", "*", *common, "address", address)
    redis.cli(master, "XADD", "f2bext:events", "*", *common, "address", "203.0.113.11")
    for server in fleet.values():
        server.wait(lambda: "203.0.113.11" in held(server.ns), "the marker through the new master", timeout=30)
        assert not held(server.ns) & {"127.0.0.1", SERVERS["c"][0], "0.0.0.0/0"}
        assert "Traceback" not in log_of(server)
    assert not os.path.exists("/tmp/f2bext-pwned")
    assert "refusing evil's ban of 198.51.100.3" in log_of(fleet["c"])


def test_bans_the_old_master_never_passed_on_are_published_again(hosts, sentinel_fleet):
    """Redis acknowledges before it replicates: the tail the replicas lack is made here by deleting
    it on them (a replica takes writes with replica-read-only off) just before the master dies."""
    fleet, redis = sentinel_fleet
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    lost = "100.64.200.1"
    a.client("set", "postfix", "banip", lost)
    for server in (b, c):
        server.wait(lambda: lost in held(server.ns), "the ban about to be lost")
    for replica in (1, 2):
        redis.cli(replica, "CONFIG", "SET", "replica-read-only", "no")
        newest = redis.cli(replica, "XREVRANGE", "f2bext:events", "+", "-", "COUNT", "1").split("\n")[0]
        assert redis.cli(replica, "XDEL", "f2bext:events", newest).strip() == "1"
        assert redis.cli(replica, "ZREM", "f2bext:bans", f"postfix {lost}").strip() == "1"
    redis.kill_redis(0)
    lab.Fail2banLab.wait(lambda: redis.master(1) not in ("", redis.addresses[0]), "the failover")
    master = new_master(redis)
    for server in (b, c):
        server.wait(lambda: "no longer holds this server's position" in log_of(server), "the follower to reload")
    a.wait(lambda: "1 of this server's 2 current bans were missing" in log_of(a), "a to publish its ban again")
    a.wait(lambda: f"postfix {lost}" in redis.cli(master, "ZRANGE", "f2bext:bans", "0", "-1"), "the ban back")
    for server in (b, c):
        server.wait(lambda: lost in enforced(server, remote_only=True), "the lost ban back on every server")
    stream = redis.cli(master, "XRANGE", "f2bext:events", "-", "+")
    assert stream.count(lost) == 1, "published again once, not twice"


def test_sharing_through_sentinels_over_tls_follows_a_failover(hosts, servers, tmp_path):
    """rediss+sentinel://: TLS to the Sentinels and to the master, whichever it is."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_tls_certificates(str(certs), *(SERVERS[n][0] for n in "abc"))
    redis = SentinelLab(str(tmp_path / "redis"), [SERVERS[n][0] for n in "abc"], tls=str(certs))
    assert redis.url.startswith("rediss+sentinel://")
    fleet = servers({n: {"postfix": share_jail(redis.url, n)} for n in "ab"})
    try:
        redis.start([fleet["a"].ns, fleet["b"].ns, lab.add_server(hosts, "srvc", *SERVERS["c"])])
        fleet["a"].client("set", "postfix", "banip", lab.ATTACKER4)
        fleet["b"].wait(lambda: lab.ATTACKER4 in enforced(fleet["b"], remote_only=True), "the ban over TLS", timeout=30)
        redis.kill_redis(0)
        lab.Fail2banLab.wait(lambda: redis.master(1) not in ("", redis.addresses[0]), "the failover")
        fleet["b"].client("set", "postfix", "banip", "203.0.113.21")
        fleet["a"].wait(lambda: "203.0.113.21" in enforced(fleet["a"], remote_only=True), "b's ban after it",
                        timeout=30)
        assert "SSL" not in log_of(fleet["a"]) + log_of(fleet["b"])
    finally:
        redis.stop()
