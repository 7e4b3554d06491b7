"""Killing a banned address's sessions: real TCP sessions held open across namespaces, then cut; and the
doctor reading them. What the kills ask of the kernel, checked without one, is
tests/unit/test_sessions_scope.py."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from f2bext import doctor, lab
from f2bext.doctor import reading
from f2bext.doctor.model import CONNTRACK, SOCKETS
from f2bext import sessions as sessions_mod
from f2bext.kernel import ctnetlink
from f2bext.kernel.ctnetlink import CtFilter
from f2bext.kernel.sockdiag import MAX_NETS, SockDiag
from f2bext.sessions import MAX_NEEDLES, KillReport, kill_sessions

net = ipaddress.ip_network
ATT4, ATT4B, ATT6 = lab.ATTACKER4, lab.ATTACKER_NET_PEER4, lab.ATTACKER6
BY4 = lab.BYSTANDER4
SRV4, SRV6 = lab.SERVER4, lab.SERVER6
BOTH = frozenset({"conntrack", "sockets"})
SMTP = ((25, 25), (587, 587))

# A server in the server namespace: dual-stack listeners on `::` (IPv4 peers arrive v4-mapped), one
# IPv4-only listener; it echoes, and reports each session's start and end on stdout.
LISTENER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for family, host, port in [(socket.AF_INET6, "::", 25), (socket.AF_INET6, "::", 587),
                           (socket.AF_INET6, "::", 8080), (socket.AF_INET, "0.0.0.0", 2525)]:
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(16)
    sel.register(s, selectors.EVENT_READ, "listen")
def say(*words):
    print(*words, flush=True)
say("ready")
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if key.data == "listen":
            c, peer = s.accept()
            tag = f"{c.getpeername()[0].removeprefix('::ffff:')}:{c.getpeername()[1]}>{c.getsockname()[1]}"
            sel.register(c, selectors.EVENT_READ, tag)
            say("open", tag)
            continue
        try:
            data = s.recv(4096)
        except OSError as e:
            data, why = b"", type(e).__name__
        else:
            why = "eof"
        if data:
            s.sendall(data)
        else:
            sel.unregister(s); s.close()
            say("closed", key.data, why)
"""

# Clients: connect from the given source addresses and hold the sessions; on each stdin line `i`,
# send a ping over connection i and report whether it came back (or how the connection failed).
CLIENT = r"""
import socket, sys
conns = []
for spec in sys.argv[1:]:
    src, dst, port = spec.split(",")
    c = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
    c.bind((src, 0)); c.connect((dst, int(port))); c.settimeout(3)
    conns.append(c)
    print("up", len(conns) - 1, f"{src}:{c.getsockname()[1]}", flush=True)
for line in sys.stdin:
    i = int(line)
    try:
        conns[i].sendall(b"ping")
        got = conns[i].recv(4, socket.MSG_WAITALL)
        print("echo", i, "ok" if got == b"ping" else "eof", flush=True)
    except OSError as e:
        print("echo", i, type(e).__name__, flush=True)
"""


class Proc:
    """A helper process in a namespace; its stdout lines are collected in the background."""

    def __init__(self, ns, code: str, *args: str) -> None:
        self.popen = ns.popen([sys.executable, "-u", "-c", code, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[list[str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line.split())

    def next(self, word: str, timeout: float = 10) -> list[str]:
        """The next line starting with `word` (earlier lines are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {word!r} line; stderr: {self._stderr()}") from None
            self.seen.append(line)
            if line[0] == word:
                return line

    def drain(self, wait: float = 0.3) -> list[list[str]]:
        time.sleep(wait)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def _stderr(self) -> str:
        if self.popen.poll() is None:
            return "(still running)"
        return self.popen.stderr.read()

    def stop(self) -> None:
        self.popen.kill()
        self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            stream.close()


class Session:
    """One held TCP connection, seen from its client and from the server that accepted it."""

    def __init__(self, client: Proc, index: int, tag: str, server: Proc) -> None:
        self.client, self.index, self.tag, self.server = client, index, tag, server

    @property
    def src(self) -> str:
        return self.tag.rsplit(":", 1)[0]

    @property
    def sport(self) -> int:
        return int(self.tag.rsplit(":", 1)[1])

    def ping(self) -> str:
        """`ok` while the session lives; the client's error once it was cut."""
        self.client.popen.stdin.write(f"{self.index}\n")
        self.client.popen.stdin.flush()
        return self.client.next("echo")[2]

    def server_closed(self, within: float = 0.2) -> str:
        """How the server saw the session end, or "" if it has not within `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            for line in self.server.drain(0.05):
                if line[0] == "closed" and line[1].split(">")[0] == self.tag:
                    return line[2]
            if time.monotonic() >= deadline:
                return ""


class Lab:
    """The hosts with conntrack in use on the server, a listener there, and helpers to hold sessions."""

    def __init__(self, hosts) -> None:
        self.hosts = hosts
        self.procs: list[Proc] = []
        for cmd in (["add", "table", "inet", "lab"],
                    ["add", "chain", "inet", "lab", "in", "{ type filter hook input priority 0; }"],
                    ["add", "rule", "inet", "lab", "in", "ct", "state", "established", "accept"],
                    ["add", "chain", "inet", "lab", "out", "{ type filter hook output priority 0; }"],
                    ["add", "rule", "inet", "lab", "out", "ct", "state", "established", "accept"]):
            hosts.server.nft(*cmd)
        self.listener = self.start(hosts.server, LISTENER)
        self.listener.next("ready")

    def start(self, ns, code: str, *args: str) -> Proc:
        proc = Proc(ns, code, *args)
        self.procs.append(proc)
        return proc

    def hold(self, ns, *specs: tuple[str, str, int], server: Proc = None) -> list[Session]:
        """Open and hold connections (source, destination, port) from `ns`, accepted by `server`."""
        server = server or self.listener
        client = self.start(ns, CLIENT, *(f"{src},{dst},{port}" for src, dst, port in specs))
        sessions = [Session(client, int(line[1]), line[2], server) for line in (client.next("up") for _ in specs)]
        for session in sessions:
            assert session.ping() == "ok"
        return sessions

    def flows(self, session: Session, ns=None) -> list[str]:
        """The conntrack entries of one session, as `conntrack -L` lists them in `ns` (the server)."""
        ns = ns or self.hosts.server
        listing = ns.run(["conntrack", "-L", "-f", "ipv6" if ":" in session.src else "ipv4"]).stdout
        return [line for line in listing.splitlines()
                if f"src={session.src} " in line and f"sport={session.sport} " in line]

    def kill(self, nets: list[str], protocols=("tcp",), ports=SMTP, kinds=BOTH) -> KillReport:
        with self.hosts.server.entered():
            return kill_sessions([net(n) for n in nets], protocols, ports, kinds)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def sessions_lab(hosts):
    lab_ = Lab(hosts)
    try:
        yield lab_
    finally:
        lab_.close()


def assert_cut(lab_: Lab, session: Session) -> None:
    assert session.server_closed(within=10) == "ConnectionAbortedError"  # the server process saw its end
    assert session.ping() in ("ConnectionResetError", "BrokenPipeError")  # the client got a reset
    assert lab_.flows(session) == []


def assert_alive(lab_: Lab, session: Session) -> None:
    assert session.ping() == "ok"
    assert session.server_closed() == ""
    assert lab_.flows(session)


def test_held_session_to_a_banned_port_is_cut_and_the_bystander_keeps_his(sessions_lab):
    (attacker,) = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 25))
    (bystander,) = sessions_lab.hold(sessions_lab.hosts.bystander, (BY4, SRV4, 25))
    assert sessions_lab.flows(attacker)

    report = sessions_lab.kill([ATT4])

    assert report == KillReport(conntrack=1, sockets=1, problems=())
    assert_cut(sessions_lab, attacker)
    assert_alive(sessions_lab, bystander)


def test_multiport_kill_spares_other_ports_and_an_allports_kill_cuts_them(sessions_lab):
    smtp, web = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 587), (ATT4, SRV4, 8080))

    assert sessions_lab.kill([ATT4], ports=SMTP) == KillReport(1, 1, ())
    assert_cut(sessions_lab, smtp)
    assert_alive(sessions_lab, web)

    assert sessions_lab.kill([ATT4], ports=()) == KillReport(1, 1, ())
    assert_cut(sessions_lab, web)


def test_session_on_an_ipv4_only_socket_is_cut(sessions_lab):
    (session,) = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 2525))

    assert sessions_lab.kill([ATT4], ports=((2500, 2600),)) == KillReport(1, 1, ())
    assert_cut(sessions_lab, session)


def test_ipv6_attacker_session_is_cut_and_his_ipv4_session_is_not(sessions_lab):
    v6, v4 = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT6, SRV6, 587), (ATT4, SRV4, 587))
    (bystander,) = sessions_lab.hold(sessions_lab.hosts.bystander, (lab.BYSTANDER6, SRV6, 587))

    assert sessions_lab.kill([ATT6]) == KillReport(1, 1, ())
    assert_cut(sessions_lab, v6)
    assert_alive(sessions_lab, v4)
    assert_alive(sessions_lab, bystander)


def test_cidr_ban_cuts_every_address_inside_it(sessions_lab):
    first, second = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 25), (ATT4B, SRV4, 25))
    (bystander,) = sessions_lab.hold(sessions_lab.hosts.bystander, (BY4, SRV4, 25))

    assert sessions_lab.kill(["203.0.113.0/24"]) == KillReport(2, 2, ())
    assert_cut(sessions_lab, first)
    assert_cut(sessions_lab, second)
    assert_alive(sessions_lab, bystander)


def test_allports_kill_also_cuts_flows_the_server_opened_to_the_address(sessions_lab):
    hosts = sessions_lab.hosts
    remote = sessions_lab.start(hosts.attacker, LISTENER)
    remote.next("ready")
    (outgoing,) = sessions_lab.hold(hosts.server, (SRV4, ATT4, 8080), server=remote)
    server_side = [line for line in sessions_lab.flows(outgoing) if f"dst={ATT4} " in line]
    assert server_side

    assert sessions_lab.kill([ATT4], ports=SMTP) == KillReport(0, 0, ())
    assert outgoing.ping() == "ok"

    assert sessions_lab.kill([ATT4], ports=()) == KillReport(1, 1, ())
    assert outgoing.ping() in ("ConnectionAbortedError", "BrokenPipeError")  # the server's own socket died
    assert sessions_lab.flows(outgoing) == []


def test_each_kind_does_only_its_part_and_no_kind_does_nothing(sessions_lab):
    (session,) = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 25))

    assert sessions_lab.kill([ATT4], kinds=frozenset()) == KillReport(0, 0, ())
    assert_alive(sessions_lab, session)

    assert sessions_lab.kill([ATT4], kinds=frozenset({"conntrack"})) == KillReport(1, 0, ())
    assert session.ping() == "ok"  # the socket lives on; its next packets are tracked afresh
    assert session.server_closed() == ""

    assert sessions_lab.kill([ATT4], kinds=frozenset({"sockets"})) == KillReport(0, 1, ())
    assert session.server_closed(within=10) == "ConnectionAbortedError"


def test_conntrack_kill_follows_protocols_and_ports(sessions_lab):
    server = sessions_lab.hosts.server

    def insert(proto: str, src: str, dport: int, *extra: str) -> None:
        server.run(["conntrack", "-I", "-p", proto, "-s", src, "-d", SRV4, "--sport", "40000",
                    "--dport", str(dport), "-t", "300", *extra])

    def listed(proto: str) -> list[str]:
        return [line for line in server.run(["conntrack", "-L", "-p", proto]).stdout.splitlines()
                if f"src={ATT4} " in line]

    insert("udp", ATT4, 53)
    insert("sctp", ATT4, 5060, "--state", "ESTABLISHED", "--orig-vtag", "1", "--reply-vtag", "2")
    insert("sctp", ATT4, 5061, "--state", "ESTABLISHED", "--orig-vtag", "3", "--reply-vtag", "4")

    assert sessions_lab.kill([ATT4], protocols=("tcp",), ports=()) == KillReport(0, 0, ())
    assert sessions_lab.kill([ATT4], protocols=("sctp",), ports=((5060, 5060),)) == KillReport(1, 0, ())
    assert [line for line in listed("sctp") if "dport=5061 " in line] and not \
        [line for line in listed("sctp") if "dport=5060 " in line]
    assert listed("udp")
    report = sessions_lab.kill(["203.0.113.0/25"], protocols=(), ports=(), kinds=frozenset({"conntrack"}))
    assert report == KillReport(2, 0, ())
    assert listed("udp") == listed("sctp") == []


def test_held_sessions_lose_their_entries_by_exact_tuple_with_no_dump(sessions_lab, monkeypatch):
    monkeypatch.setattr(sessions_mod, "conntrack_filters", lambda *args: [])  # no dump at all
    v6, mapped4 = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT6, SRV6, 587), (ATT4, SRV4, 25))
    (bystander,) = sessions_lab.hold(sessions_lab.hosts.bystander, (lab.BYSTANDER6, SRV6, 587))

    assert sessions_lab.kill([ATT6]) == KillReport(1, 1, ())
    assert_cut(sessions_lab, v6)
    # The `::` listener saw ATT4 as ::ffff:203.0.113.7; conntrack tracks that flow as plain IPv4.
    assert sessions_lab.kill([ATT4]) == KillReport(1, 1, ())
    assert_cut(sessions_lab, mapped4)
    assert_alive(sessions_lab, bystander)


def test_entries_without_a_socket_are_found_by_port_narrowed_dumps_for_ipv6_and_cidrs(sessions_lab, monkeypatch):
    server = sessions_lab.hosts.server
    dumps: list[CtFilter] = []
    real_dump = ctnetlink.Conntrack.entries
    monkeypatch.setattr(ctnetlink.Conntrack, "entries",
                        lambda ct, wanted, needles=(): dumps.append(wanted) or real_dump(ct, wanted, needles))

    flows = [(ATT6, SRV6, 25), (ATT6, SRV6, 8080), (lab.BYSTANDER6, SRV6, 25),
             (ATT4B, SRV4, 587), (ATT4B, SRV4, 8080), (BY4, SRV4, 587)]
    for src, dst, dport in flows:  # no socket holds them: forwarded or DNAT'd flows look like this
        server.run(["conntrack", "-I", "-p", "tcp", "-s", src, "-d", dst, "--sport", "40000", "--dport", str(dport),
                    "--state", "ESTABLISHED", "-t", "300"])

    def left() -> set[tuple[str, int]]:
        """(source, destination port) of each entry still in the table, original direction."""
        found = set()
        for family in ("ipv4", "ipv6"):
            for line in server.run(["conntrack", "-L", "-f", family]).stdout.splitlines():
                orig: dict[str, str] = {}
                for word in line.split():
                    if "=" in word:
                        orig.setdefault(*word.split("=", 1))  # the reply direction repeats the keys
                found.add((orig["src"], int(orig["dport"])))
        return found

    assert sessions_lab.kill([ATT6]) == KillReport(1, 0, ())
    assert dumps == [CtFilter(socket.AF_INET6, protocol=6, dport=25), CtFilter(socket.AF_INET6, protocol=6, dport=587)]
    assert left() == {(ATT6, 8080), (lab.BYSTANDER6, 25), (ATT4B, 587), (ATT4B, 8080), (BY4, 587)}

    dumps.clear()
    assert sessions_lab.kill(["203.0.113.0/24"]) == KillReport(1, 0, ())
    assert dumps == [CtFilter(socket.AF_INET, protocol=6, dport=25), CtFilter(socket.AF_INET, protocol=6, dport=587)]
    assert left() == {(ATT6, 8080), (lab.BYSTANDER6, 25), (ATT4B, 8080), (BY4, 587)}

    # An all-ports ban dumps the family and protocol, and takes the rest of the address's flows.
    assert sessions_lab.kill([ATT6, "203.0.113.0/24"], ports=()) == KillReport(2, 0, ())
    assert left() == {(lab.BYSTANDER6, 25), (BY4, 587)}


def test_a_burst_of_bans_is_cut_with_a_socket_dump_per_family_and_a_conntrack_dump_per_port(sessions_lab, monkeypatch):
    """Each dump walks a whole kernel table, however narrow its filter: a burst of bans (the killer
    gathers them) is looked for together, and each of its sessions is cut, the bystander's not."""
    held4, held4b, held6 = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 25), (ATT4B, SRV4, 587),
                                             (ATT6, SRV6, 25))
    (bystander,) = sessions_lab.hold(sessions_lab.hosts.bystander, (BY4, SRV4, 25))
    stray = "203.0.113.99"  # an entry no socket holds (a forwarded flow): only a dump finds it
    sessions_lab.hosts.server.run(["conntrack", "-I", "-p", "tcp", "-s", stray, "-d", SRV4, "--sport", "40000",
                                   "--dport", "587", "--state", "ESTABLISHED", "-t", "300"])
    socket_dumps: list[int] = []
    ct_dumps: list[CtFilter] = []
    real_sockets, real_entries = SockDiag.sockets, ctnetlink.Conntrack.entries
    monkeypatch.setattr(SockDiag, "sockets", lambda diag, family, *rest: socket_dumps.append(family)
                        or real_sockets(diag, family, *rest))
    monkeypatch.setattr(ctnetlink.Conntrack, "entries",
                        lambda ct, wanted, needles=(): ct_dumps.append(wanted) or real_entries(ct, wanted, needles))

    assert sessions_lab.kill([ATT4, ATT4B, ATT6, stray]) == KillReport(4, 3, ())

    assert sorted(socket_dumps) == [socket.AF_INET, socket.AF_INET6]
    assert sorted(ct_dumps) == sorted(CtFilter(family, protocol=6, dport=port)
                                      for family in (socket.AF_INET, socket.AF_INET6) for port in (25, 587))
    for held in (held4, held4b, held6):
        assert_cut(sessions_lab, held)
    assert_alive(sessions_lab, bystander)


def test_a_burst_of_thousands_of_bans_cuts_each_of_its_sessions_and_no_other(sessions_lab):
    """Past MAX_NETS prefixes a socket dump is split, past MAX_NEEDLES the conntrack dumps are matched
    by bisection alone: the real kernel runs both filters, and only the burst's sessions end."""
    server = sessions_lab.hosts.server
    held4, held6 = sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 25), (ATT6, SRV6, 587))
    (bystander,) = sessions_lab.hold(sessions_lab.hosts.bystander, (BY4, SRV4, 25))
    for src in ("203.0.113.99", "198.51.100.77"):  # entries no socket holds: one banned, one not
        server.run(["conntrack", "-I", "-p", "tcp", "-s", src, "-d", SRV4, "--sport", "40000", "--dport", "587",
                    "--state", "ESTABLISHED", "-t", "300"])
    burst = [ATT4, ATT6, "203.0.113.99"] + [f"100.64.{i // 256}.{i % 256}" for i in range(2 * MAX_NETS + 50)]
    assert len(burst) > MAX_NEEDLES

    assert sessions_lab.kill(burst) == KillReport(3, 2, ())

    assert_cut(sessions_lab, held4)
    assert_cut(sessions_lab, held6)
    assert_alive(sessions_lab, bystander)
    listed = server.run(["conntrack", "-L", "-p", "tcp"]).stdout
    assert "src=198.51.100.77 " in listed and "src=203.0.113.99 " not in listed


UDP_SERVER = r"""
import socket
served = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
served.bind(("0.0.0.0", 53))
peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
peer.bind(("198.51.100.1", 5300)); peer.connect(("203.0.113.7", 53))
print("ready", flush=True)
try:
    peer.recv(100)
except OSError as e:
    print("ended", type(e).__name__, flush=True)
print("got", served.recv(100).decode(), flush=True)
"""


def test_connected_udp_sockets_are_destroyed_and_unconnected_ones_are_not(sessions_lab):
    hosts = sessions_lab.hosts
    server = sessions_lab.start(hosts.server, UDP_SERVER)
    server.next("ready")

    # Even a ban of everything leaves the unconnected (serving) socket alone: it holds no session.
    report = sessions_lab.kill(["0.0.0.0/0"], protocols=("udp",), ports=(), kinds=frozenset({"sockets"}))

    assert report == KillReport(0, 1, ())
    assert server.next("ended") == ["ended", "ConnectionAbortedError"]
    hosts.attacker.run([sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                        f".sendto(b'hello', ('{SRV4}', 53))"])
    assert server.next("got") == ["got", "hello"]


def test_the_doctor_reads_the_banned_peers_sessions_from_the_kernel(sessions_lab):
    hosts = sessions_lab.hosts
    sessions_lab.hold(hosts.attacker, (ATT4, SRV4, 587), (ATT6, SRV6, 25))
    sessions_lab.hold(hosts.bystander, (BY4, SRV4, 25))
    hosts.attacker.run([sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                        f"s.bind(({ATT4!r}, 5353)); s.sendto(b'q', ({SRV4!r}, 53))"])
    info = doctor.KernelInfo()

    with hosts.server.entered():
        flows = reading.read_flows(info, [net(ATT4), net("2001:db8::/32")])

    assert info.unread == {}
    assert sorted((f.peer, f.proto, f.dport, f.what) for f in flows) == sorted([
        (ATT4, "tcp", 587, "conntrack ESTABLISHED"), (ATT6, "tcp", 25, "conntrack ESTABLISHED"),
        (ATT4, "udp", 53, "conntrack "),
        (ATT4, "tcp", 587, "socket established"), (ATT6, "tcp", 25, "socket established")])


# The doctor's reading, run where the kernel refuses conntrack: without CAP_NET_ADMIN.
READ_FLOWS = f"""
import ipaddress, json
from f2bext import doctor
from f2bext.doctor import reading
info = doctor.KernelInfo()
flows = reading.read_flows(info, [ipaddress.ip_network({ATT4!r})])
print(json.dumps([[f.peer, f.what] for f in flows] + [info.unread]))
"""


def test_conntrack_the_kernel_refuses_is_unread_not_no_sessions(sessions_lab):
    sessions_lab.hold(sessions_lab.hosts.attacker, (ATT4, SRV4, 25))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lab.__file__)))
    done = sessions_lab.hosts.server.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                                          sys.executable, "-c", READ_FLOWS], env=env)

    *flows, unread = json.loads(done.stdout)
    assert flows == [[ATT4, "socket established"]]  # sock_diag needs no privilege; its answer stands
    assert set(unread) == {CONNTRACK} and "Operation not permitted" in unread[CONNTRACK]
    assert SOCKETS not in unread
