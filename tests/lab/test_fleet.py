"""One ban, every server: three servers, each with its own real fail2ban-server, sharing through a
real redis-server (password, unix socket), with real traffic from the attacker."""

import json
import os
import subprocess
import time

import pytest

from f2bext import lab
from f2bext.fleet import FLEET_JAIL

PASSWORD = "s3cret-fleet"
SERVERS = {"a": (lab.SERVER4, lab.SERVER6), "b": ("198.51.100.2", "2001:db8::2"), "c": ("198.51.100.3", "2001:db8::3")}


class Redis:
    """A redis-server of the test's own, on a unix socket, persisting so a restart keeps its data."""

    def __init__(self, folder):
        self.folder = folder
        self.sock = os.path.join(folder, "redis.sock")
        self.url = f"unix://:{PASSWORD}@{self.sock}"
        with open(os.path.join(folder, "redis.conf"), "w") as f:
            f.write(f"port 0\nunixsocket {self.sock}\nunixsocketperm 700\nrequirepass {PASSWORD}\n"
                    f"dir {folder}\nappendonly yes\nappendfsync always\nsave \"\"\ndaemonize no\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", os.path.join(self.folder, "redis.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.Fail2banLab.wait(lambda: self.cli("PING").strip() == "PONG", "redis-server")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-s", self.sock, "--no-auth-warning", "-a", PASSWORD, *args],
                              capture_output=True, text=True).stdout


@pytest.fixture
def redis(tmp_path):
    server = Redis(str(tmp_path))
    server.start()
    yield server
    server.stop()


def share_jail(url, origin, banaction="f2bext-nftables.py", port="smtp,ssmtp,submission", scope="", **extra):
    """The lab's postfix jail, sharing through `url`; `scope` sets share_scope."""
    jail = {k: v for k, v in lab.DEFAULT_JAIL.items() if k != "banaction"}
    scope = f', share_scope="{scope}"' if scope else ""
    jail["action"] = f'{banaction}[port="{port}", share="{url}", share_origin="{origin}"{scope}]'
    jail.update(extra)
    return jail


@pytest.fixture
def servers(hosts, tmp_path):
    """servers({name: jails}, backend): fail2ban-servers started on the lab's wire, a on the lab's
    server, b and c on servers of their own (SERVERS); all stopped when the test ends."""
    labs = {}

    def start(plan, backend="nftables"):
        for name, jails in plan.items():
            ns = hosts.server if name == "a" else lab.add_server(hosts, f"srv{name}", *SERVERS[name])
            lab.apply_seed_firewall(ns, lab.BACKENDS[backend][1])  # as the seed's: held sessions tracked, accepted
            (tmp_path / name).mkdir()
            labs[name] = lab.Fail2banLab(hosts, str(tmp_path / name), jails=jails, backend=backend, ns=ns)
        for server in labs.values():
            server.start()
        return labs
    yield start
    for server in labs.values():
        server.stop()


@pytest.fixture
def fleet(redis, servers):  # Redis outlives the servers: their stop sends what is queued
    b_ignores = {"ignoreip": f"127.0.0.1/8 ::1 {lab.BYSTANDER4}"}
    return servers({name: {"postfix": share_jail(redis.url, name, **(b_ignores if name == "b" else {}))}
                    for name in ("a", "b", "c")})


def enforced(server, remote_only=False, jail="postfix"):
    """Every address the server's kernel holds for the jail (its own bans and the shared ones)."""
    kinds = ("rv4", "rv6") if remote_only else ("v4", "v6", "rv4", "rv6")
    out = set()
    for kind in kinds:
        listing = server.ns.run(["nft", "-j", "list", "set", "inet", "f2bext", f"{jail}-{kind}"], check=False).stdout
        for item in json.loads(listing or '{"nftables": []}')["nftables"]:
            out.update(str(e) for e in item.get("set", {}).get("elem", []))
    return out


def fail_logins(hosts, server):
    lab.tool(hosts.attacker, server.workdir, "fail-logins", SERVERS[name_of(server)][0], "587", "4", check=True)


def name_of(server):
    return os.path.basename(server.workdir)


def refused(hosts, server, port=25, family=4):
    address = SERVERS[name_of(server)][0 if family == 4 else 1]
    return lab.tool(hosts.attacker, server.workdir, "probe", address, str(port)).returncode != 0


def ipset_members(server, name):
    listing = server.ns.run(["ipset", "list", name], check=False).stdout
    return set(listing.split("Members:", 1)[1].split()) if "Members:" in listing else set()


def test_a_ban_on_one_server_holds_on_every_server_and_cuts_a_session_held_on_another(hosts, fleet, held_session):
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    held = held_session(b.maillog, server=SERVERS["b"][0], ns=b.ns, folder=b.workdir)
    fail_logins(hosts, a)
    a.wait(lambda: lab.ATTACKER4 in enforced(a), "the ban on a")
    for other in (b, c):
        other.wait(lambda: lab.ATTACKER4 in enforced(other, remote_only=True), "the shared ban")
    assert refused(hosts, b) and refused(hosts, c, 465)
    held.assert_cut()  # b's own killer cut the session a's ban named
    assert lab.tool(hosts.bystander, b.workdir, "probe", SERVERS["b"][0], "25").returncode == 0
    # fail2ban on b and c holds nothing itself: the shared ban lives in their remote sets
    assert b.banned("postfix") == [] and c.banned("postfix") == []
    assert PASSWORD not in b.client("get", "postfix", "action", "f2bext-nftables", "share").stdout
    for server in fleet.values():
        assert PASSWORD not in open(os.path.join(server.workdir, "fail2ban.log")).read()


def test_sharing_through_the_ipset_action(hosts, redis, servers):
    fleet = servers({name: {"postfix": share_jail(redis.url, name, banaction="f2bext-ipset.py")} for name in "ab"},
                    backend="ipset-nft")
    a, b = fleet["a"], fleet["b"]
    fail_logins(hosts, a)
    a.wait(lambda: lab.ATTACKER4 in a.banned("postfix"), "a's ban")
    a.client("set", "postfix", "banip", lab.ATTACKER6)
    b.wait(lambda: lab.ATTACKER4 in ipset_members(b, "f2bxr-postfix"), "the shared ban in b's ipset")
    b.wait(lambda: lab.ATTACKER6 in ipset_members(b, "f2bxr6-postfix"), "the shared IPv6 ban in b's ipset")
    for port in lab.SMTP_PORTS:
        assert refused(hosts, b, port) and refused(hosts, b, port, family=6), f"b's port {port} still open"
    assert lab.tool(hosts.bystander, b.workdir, "probe", SERVERS["b"][0], "25").returncode == 0
    assert b.banned("postfix") == [] and ipset_members(b, "f2bext-postfix") == set()
    out = lab.f2bext_cmd(b.ns, b.workdir, "unban", "--jail", "postfix", lab.ATTACKER4, variant=b.variant)
    assert out.returncode == 0, out.stdout + out.stderr
    a.wait(lambda: lab.ATTACKER4 not in ipset_members(a, "f2bext-postfix"), "b's unban lifting a's own ban")
    assert not refused(hosts, a) and not refused(hosts, b)


def test_share_scope_all_bans_on_every_port_what_a_jail_this_server_does_not_run_caught(hosts, redis, servers):
    imap = lambda origin, **kw: share_jail(redis.url, origin, port="imap", **kw)  # noqa: E731
    fleet = servers({"a": {"postfix": share_jail(redis.url, "a"), "imap": imap("a")},
                     "b": {"imap": imap("b", scope="all")},
                     "c": {"imap": imap("c")}})
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    a.client("set", "postfix", "banip", lab.ATTACKER4)
    a.client("set", "imap", "banip", "203.0.113.30")  # published after the postfix ban: read after it
    for other in (b, c):
        other.wait(lambda: "203.0.113.30" in enforced(other, jail="imap"), "the imap ban, after the postfix one")
    b.wait(lambda: lab.ATTACKER4 in enforced(b, jail=FLEET_JAIL), f"the postfix ban in b's {FLEET_JAIL}")
    assert lab.ATTACKER4 not in enforced(b, jail="imap")
    for port in lab.SMTP_PORTS:  # b's own jail names only imap; share_scope = all closes every port
        assert refused(hosts, b, port), f"b's port {port} still open"
    # share_scope = jail (the default): c runs no postfix jail, so the postfix ban does not concern it.
    assert enforced(c, jail=FLEET_JAIL) == set() and not refused(hosts, c)


def test_an_unban_on_any_server_lifts_it_everywhere(hosts, fleet):
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    a.client("set", "postfix", "banip", lab.ATTACKER4)
    for other in (b, c):
        other.wait(lambda: lab.ATTACKER4 in enforced(other), "the shared ban")
    out = lab.f2bext_cmd(b.ns, b.workdir, "unban", "--jail", "postfix", lab.ATTACKER4)
    assert out.returncode == 0 and "unbanned 203.0.113.7 on every server" in out.stdout
    for server in (a, b, c):
        server.wait(lambda: lab.ATTACKER4 not in enforced(server), "the unban everywhere")
    a.wait(lambda: a.banned("postfix") == [], "a's fail2ban to drop its own ban")
    assert not refused(hosts, a) and not refused(hosts, c)


def test_a_server_that_was_down_converges_to_exactly_the_present(hosts, fleet, redis):
    a, c = fleet["a"], fleet["c"]
    c.stop()
    a.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6, "203.0.113.64/26")
    a.client("set", "postfix", "unbanip", lab.ATTACKER6)
    published = {f"postfix {lab.ATTACKER4}", "postfix 203.0.113.64/26"}
    a.wait(lambda: set(redis.cli("ZRANGE", "f2bext:bans", "0", "-1").splitlines()) == published,
           "a's bans and its unban published")
    c.start()
    c.wait(lambda: enforced(c, remote_only=True) == {lab.ATTACKER4}, "c to load the present")
    assert "203.0.113.64/26" in c.ns.nft("list", "set", "inet", "f2bext", "postfix-rnet4")
    assert refused(hosts, c)


def test_bans_made_while_redis_is_down_arrive_when_it_returns(hosts, fleet, redis):
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    redis.stop()
    a.client("set", "postfix", "banip", lab.ATTACKER4)  # lands while Redis is down
    assert lab.ATTACKER4 in enforced(a) and refused(hosts, a)
    log = os.path.join(a.workdir, "fail2ban.log")
    a.wait(lambda: "queuing on disk" in open(log).read(), "a to queue the ban while Redis is down")
    redis.start()
    for other in (b, c):
        other.wait(lambda: lab.ATTACKER4 in enforced(other), "the queued ban to arrive", timeout=30)


def test_crafted_entries_are_refused_by_every_follower(hosts, fleet, redis):
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    def xadd(**fields):
        args = [x for kv in fields.items() for x in kv]
        redis.cli("XADD", "f2bext:events", "*", *args)
    common = {"op": "ban", "jail": "postfix", "bantime": "600", "expires": str(time.time() + 600), "origin": "evil"}
    xadd(**dict(common, address="203.0.113.300"))
    xadd(**dict(common, address="$(touch /tmp/f2bext-pwned)"))
    xadd(**dict(common, jail="post;fix", address="203.0.113.9"))
    xadd(**dict(common, address="203.0.113.10", bantime="999999999999"))
    xadd(**dict(common, address="127.0.0.1"))
    xadd(**dict(common, address=lab.BYSTANDER4))  # in b's ignoreip
    xadd(**dict(common, address=SERVERS["c"][0]))  # c's own address
    xadd(**dict(common, address="203.0.113.11"))  # a fine one, as a marker that everything before was read
    for server in fleet.values():
        server.wait(lambda: "203.0.113.11" in enforced(server), "the marker ban")
    assert not os.path.exists("/tmp/f2bext-pwned")
    for server in fleet.values():
        got = enforced(server)
        assert not got & {"203.0.113.10", "203.0.113.9", "127.0.0.1"}
        log = open(os.path.join(server.workdir, "fail2ban.log")).read()
        assert "skipping event" in log and "Traceback" not in log
    assert lab.BYSTANDER4 not in enforced(b) and lab.BYSTANDER4 in enforced(a)
    assert SERVERS["c"][0] not in enforced(c)
    assert "it is in the jail's ignoreip (jail postfix)" in open(os.path.join(b.workdir, "fail2ban.log")).read()
    assert "an address of this host (eth0) (jail postfix)" in open(os.path.join(c.workdir, "fail2ban.log")).read()


def test_every_server_ends_with_exactly_the_union_of_current_bans(hosts, fleet):
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    a.client("set", "postfix", "banip", lab.ATTACKER4, "203.0.113.20")
    b.client("set", "postfix", "banip", lab.ATTACKER6, "203.0.113.21")
    c.client("set", "postfix", "banip", "203.0.113.22")
    c.client("set", "postfix", "unbanip", "203.0.113.22")
    union = {lab.ATTACKER4, "203.0.113.20", lab.ATTACKER6, "203.0.113.21"}
    for server in fleet.values():
        server.wait(lambda: enforced(server) == union, f"{name_of(server)} to hold exactly the union")


def make_tls_certificates(folder, *addresses):
    """A throwaway CA and a server certificate for each of `addresses`."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=f2bext test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr", "-subj", f"/CN={addresses[0]}")
    # What Python 3.13's default VERIFY_X509_STRICT asks of a server certificate (Debian 13).
    with open(os.path.join(folder, "ext"), "w") as f:
        f.write(f"subjectAltName={','.join('IP:' + a for a in addresses)}\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "redis.pem", "-days", "2", "-extfile", "ext")


def test_sharing_over_tls_between_two_servers(hosts, tmp_path):
    folder = str(tmp_path)
    make_tls_certificates(folder, lab.SERVER4)
    redis_tls = hosts.server.popen(["redis-server", "--port", "0", "--tls-port", "6380", "--bind", lab.SERVER4,
                                    "--tls-cert-file", f"{folder}/redis.pem", "--tls-key-file", f"{folder}/redis.key",
                                    "--tls-ca-cert-file", f"{folder}/ca.pem", "--tls-auth-clients", "no",
                                    "--requirepass", PASSWORD, "--save", "", "--dir", folder],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://:{PASSWORD}@{lab.SERVER4}:6380/0?ssl_ca_certs={folder}/ca.pem"
    b_ns = lab.add_server(hosts, "srvb", *SERVERS["b"])
    servers = []
    try:
        for name, ns in (("a", hosts.server), ("b", b_ns)):
            os.mkdir(os.path.join(folder, name))
            servers.append(lab.Fail2banLab(hosts, os.path.join(folder, name), jails={"postfix": share_jail(url, name)},
                                           ns=ns))
            servers[-1].start()
        a, b = servers
        a.client("set", "postfix", "banip", lab.ATTACKER4)
        b.wait(lambda: lab.ATTACKER4 in enforced(b, remote_only=True), "the ban shared over TLS")
        assert refused(hosts, b)
        assert PASSWORD not in b.client("get", "postfix", "action", "f2bext-nftables", "share").stdout
    finally:
        for server in servers:
            server.stop()
        redis_tls.kill()
        redis_tls.wait()
