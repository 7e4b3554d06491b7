"""No shared ban lost, and no peer that floods us: the disk queue and the publisher's survival with a
real redis-server, and real fail2ban-servers in namespaces. The queue and the notices on their own,
which are pure, are tests/unit/test_fleet_queue.py."""

import errno
import os
import subprocess
import time

import pytest

from f2bext import lab
from f2bext.fleet import DiskQueue, Fleet, events, notices, share
from fleet_events import BANNED, event
from test_fleet import PASSWORD, SERVERS, enforced, redis, share_jail  # noqa: F401 - redis is the fixture


def shared_bans(redis):
    """The members of Redis's current bans, as "JAIL ADDRESS"."""
    return set(redis.cli("ZRANGE", "f2bext:bans", "0", "-1").splitlines())


def published(redis, address):
    return f"postfix {address}" in shared_bans(redis)


def log_of(server):
    with open(os.path.join(server.workdir, "fail2ban.log")) as f:
        return f.read()


@pytest.fixture
def server_a(hosts, tmp_path, redis):
    """One fail2ban-server sharing its jail through the test's Redis."""
    workdir = tmp_path / "a"
    workdir.mkdir()
    server = lab.Fail2banLab(hosts, str(workdir), jails={"postfix": share_jail(redis.url, "a")})
    yield server
    server.stop()


def lib_of(server):
    return os.path.join(lab.lab_env(server.workdir)["F2BEXT_STATE_DIR"], "lib")


# -- with a real redis-server and real fail2ban-servers ---------------------------------------------

def test_a_stop_sends_everything_queued_while_redis_answers(tmp_path, redis):
    fleet = Fleet(redis.url, "a", str(tmp_path / "lib"), apply=lambda *a: None, jails=lambda: {"postfix"})
    fleet.start()
    for n in range(3 * share.BATCH):
        fleet.publish(event(f"100.64.{n // 256}.{n % 256}"))
    fleet.stop(wait=60)
    assert int(redis.cli("XLEN", "f2bext:events")) == 3 * share.BATCH
    assert len(fleet.queue) == 0


HANGING_REDIS = r"""
import socket, sys, threading
path, capture = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen(16)
lock = threading.Lock()
# The handshake redis-py makes (AUTH, CLIENT SETINFO from redis-py 5 on, SELECT, PING) is answered;
# not one command after it: the transactions hang, read and kept.
HANDSHAKE = {b"AUTH": b"+OK\r\n", b"CLIENT": b"+OK\r\n", b"SELECT": b"+OK\r\n", b"PING": b"+PONG\r\n"}
def commands(buffer):
    # The names of the whole RESP commands at the head of buffer, and what is left of it.
    names = []
    while buffer.startswith(b"*") and b"\r\n" in buffer:
        head, rest = buffer.split(b"\r\n", 1)
        args = []
        for _ in range(int(head[1:])):
            if not rest.startswith(b"$") or b"\r\n" not in rest:
                return names, buffer
            size, rest = rest.split(b"\r\n", 1)
            if len(rest) < int(size[1:]) + 2:
                return names, buffer
            args.append(rest[:int(size[1:])])
            rest = rest[int(size[1:]) + 2:]
        names.append(args[0].upper() if args else b"")
        buffer = rest
    return names, buffer
def serve(conn):
    buffer, silent = b"", False
    while True:
        data = conn.recv(65536)
        if not data:
            return
        with lock, open(capture, "ab") as f:
            f.write(data)
        buffer += data
        names, buffer = commands(buffer)
        for name in names:
            silent = silent or name not in HANDSHAKE
            if not silent:
                conn.sendall(HANDSHAKE[name])
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def test_bans_queued_while_redis_hangs_survive_a_stop_and_arrive_after_restart(server_a, redis, tmp_path):
    """The hung Redis takes the AUTH and the transactions and answers none: the events are in flight,
    on the wire and nowhere else, when fail2ban stops."""
    a = server_a
    a.start()
    redis.stop()
    capture = str(tmp_path / "capture")
    open(capture, "w").close()
    hung = subprocess.Popen([lab.PYTHON, "-c", HANGING_REDIS, redis.sock, capture])
    try:
        lab.Fail2banLab.wait(lambda: os.path.exists(redis.sock), "the hung redis")
        a.client("set", "postfix", "banip", *BANNED)
        a.wait(lambda: set(BANNED) <= enforced(a), "the bans on a")
        a.wait(lambda: all(addr.encode() in open(capture, "rb").read() for addr in BANNED),
               "every ban in flight to the hung redis", timeout=60)
        a.stop()
    finally:
        hung.kill()
        hung.wait()
    os.unlink(redis.sock)
    redis.start()
    a.start()
    a.wait(lambda: {f"postfix {addr}" for addr in BANNED} <= shared_bans(redis), "every queued ban in Redis",
           timeout=60)
    stream = redis.cli("XRANGE", "f2bext:events", "-", "+")
    assert all(addr in stream for addr in BANNED)


def queued(server):
    """The addresses waiting in the server's disk queues, read as a restarted server would."""
    folder = lib_of(server)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    paths = [os.path.join(folder, n) for n in names if n.endswith(".queue")]
    return {item["address"] for path in paths for item in DiskQueue(path).head(share.BATCH)[2]}


def test_bans_queued_while_redis_is_down_survive_a_crash_of_fail2ban(server_a, redis):
    a = server_a
    a.start()
    redis.stop()
    a.client("set", "postfix", "banip", *BANNED[:3])
    a.wait(lambda: queued(a) == set(BANNED[:3]), "the bans in a's disk queue")
    a.server.kill()  # SIGKILL: no stop, no flush
    a.server.wait()
    a.stop()
    redis.start()
    a.start()
    a.wait(lambda: {f"postfix {addr}" for addr in BANNED[:3]} <= shared_bans(redis), "the queued bans in Redis")
    a.wait(lambda: queued(a) == set(), "a's queue emptied")


@pytest.fixture
def small_disk(server_a):
    """a's state folder (its queue under it) on a tmpfs of its own, for the test to fill up."""
    folder = lab.lab_env(server_a.workdir)["F2BEXT_STATE_DIR"]
    os.makedirs(folder)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "f2bext-test", folder], check=True)
    try:
        yield folder
    finally:
        server_a.stop()
        subprocess.run(["umount", folder], check=True)


def fill(folder):
    fd = os.open(os.path.join(folder, "fill"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_does_not_stop_publishing(server_a, small_disk, redis):
    a = server_a
    a.start()
    a.wait(lambda: "shares its bans through" in log_of(a), "a's fleet to start")
    fill(small_disk)
    redis.stop()
    a.client("set", "postfix", "banip", *BANNED[:3])
    a.wait(lambda: "cannot queue events in" in log_of(a), "the full queue to be logged", timeout=30)
    redis.start()
    a.wait(lambda: {f"postfix {addr}" for addr in BANNED[:3]} <= shared_bans(redis), "the bans held in memory",
           timeout=60)
    os.unlink(os.path.join(small_disk, "fill"))
    a.client("set", "postfix", "banip", BANNED[3])
    a.wait(lambda: published(redis, BANNED[3]), "a ban made after the disk has room again", timeout=30)
    a.wait(lambda: "queue again" in log_of(a), "the queue back in use")
    assert "Traceback" not in log_of(a)


@pytest.fixture
def twins(hosts, tmp_path, redis):
    """Two servers, a and b, with one share_origin (as two clones' host names would give them)."""
    b_ns = lab.add_server(hosts, "srvb", *SERVERS["b"])
    servers = []
    for name, ns in (("a", hosts.server), ("b", b_ns)):
        (tmp_path / name).mkdir()
        servers.append(lab.Fail2banLab(hosts, str(tmp_path / name), jails={"postfix": share_jail(redis.url, "mail")},
                                       ns=ns))
    yield servers
    for server in servers:
        server.stop()


def shares_both_ways(a, b):
    a.client("set", "postfix", "banip", lab.ATTACKER4)
    b.wait(lambda: lab.ATTACKER4 in enforced(b, remote_only=True), "a's ban on b")
    b.client("set", "postfix", "banip", "203.0.113.21")
    a.wait(lambda: "203.0.113.21" in enforced(a, remote_only=True), "b's ban on a")


def test_two_servers_with_one_origin_share_their_bans(twins):
    a, b = twins
    for server in twins:
        server.start()
    shares_both_ways(a, b)
    for server in twins:
        server.wait(lambda: "publishes to" in log_of(server) and "this server's origin" in log_of(server),
                    "the warning about the shared origin")
    ids = [open(os.path.join(lib_of(s), "instance-id")).read() for s in twins]
    assert ids[0] != ids[1] and all(events.INSTANCE.fullmatch(i.strip()) for i in ids)


def test_two_clones_with_one_instance_id_still_share_and_say_so(twins):
    a, b = twins
    for server in twins:
        os.makedirs(lib_of(server))
        with open(os.path.join(lib_of(server), "instance-id"), "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")  # copied with the image
        server.start()
    shares_both_ways(a, b)
    for server in twins:
        server.wait(lambda: "carries this server's instance id" in log_of(server), "the warning about the copied id")
    assert lab.ATTACKER4 not in enforced(a, remote_only=True), "a's own ban is a's, not a shared one"


def test_a_flood_of_crafted_entries_costs_a_few_log_lines(server_a, redis):
    import redis as redis_py
    a = server_a
    a.jails = {"postfix": share_jail(redis.url, "a", ignoreip="127.0.0.1/8 ::1 192.0.2.0/24")}
    a.start()
    client = redis_py.Redis(unix_socket_path=redis.sock, password="s3cret-fleet")
    common = {"op": "ban", "jail": "postfix", "bantime": "600", "expires": str(time.time() + 600), "origin": "evil"}
    pipe = client.pipeline(transaction=False)
    for n in range(1_500):
        pipe.xadd("f2bext:events", dict(common, address=f"bad-{n}"))
        pipe.xadd("f2bext:events", dict(common, address=f"192.0.2.{n % 256}"))  # in a's ignoreip
    pipe.xadd("f2bext:events", dict(common, address="203.0.113.11"))  # the marker: everything before was read
    pipe.execute()
    a.wait(lambda: "203.0.113.11" in enforced(a), "the marker ban", timeout=60)
    lines = [line for line in log_of(a).splitlines() if "f2bext share:" in line and "WARNING" in line]
    assert len(lines) <= 2 * notices.NOTICE_BURST, lines[-3:]
    assert any("skipping event" in line for line in lines) and any("refusing evil's ban" in line for line in lines)


def test_the_stream_stays_bounded_at_about_100000_entries_the_newest_kept(tmp_path, redis):
    """A fleet's stream after years of events: the next publish trims it to about STREAM_MAXLEN."""
    import redis as redis_py
    assert share.STREAM_MAXLEN == 100_000  # what the README promises
    client = redis_py.Redis(unix_socket_path=redis.sock, password=PASSWORD)
    old = event("203.0.113.99").fields()
    for _ in range(share.STREAM_MAXLEN // 10_000 + 1):
        pipe = client.pipeline(transaction=False)
        for _ in range(10_000):
            pipe.xadd(share.STREAM, old)
        pipe.execute()
    assert client.xlen(share.STREAM) == share.STREAM_MAXLEN + 10_000
    fleet = Fleet(redis.url, "a", str(tmp_path / "lib"), apply=lambda *a: None, jails=lambda: {"postfix"})
    fleet.start()
    fleet.publish(event(BANNED[0]))
    fleet.stop(wait=30)
    # Trimmed by whole nodes of the stream (approximate MAXLEN): never below the bound, at most a node above.
    node = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    assert share.STREAM_MAXLEN <= client.xlen(share.STREAM) <= share.STREAM_MAXLEN + node
    (_, newest), = client.xrevrange(share.STREAM, count=1)
    assert newest[b"address"] == BANNED[0].encode()


def test_an_outage_is_said_once_and_its_end_once_each_time(server_a, redis):
    """However many retries an outage takes: one line each from the publisher and the follower that
    Redis is unreachable, one that it is back; and the same again for the next outage."""
    a = server_a
    a.start()
    a.wait(lambda: "shares its bans through" in log_of(a), "a's fleet to start")
    for outage, batch in enumerate((BANNED[:3], BANNED[3:6]), 1):
        redis.stop()
        for address in batch:  # the outage lasts about 3 s: several retries (backoff 0.2 s, doubling)
            a.client("set", "postfix", "banip", address)
            time.sleep(1)
        redis.start()
        a.wait(lambda: {f"postfix {addr}" for addr in batch} <= shared_bans(redis), "the queued bans in Redis")
        a.wait(lambda: log_of(a).count("reachable again") == outage, "the line that Redis is back")
    log = log_of(a)
    assert log.count("cannot publish to unix://:***@") == 2 and log.count("; queuing on disk") == 2
    assert log.count("cannot follow unix://:***@") == 2
    assert log.count("reachable again; sending 3 queued events") == 2
    assert PASSWORD not in log and "Traceback" not in log
