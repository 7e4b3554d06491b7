"""The lab's fixtures: namespaces are real, created per test and always removed."""

import os
import re
import shlex
import subprocess

import pytest

from f2bext import lab


@pytest.fixture
def hosts():
    """Server, attacker and bystander namespaces on one bridge (documentation addresses)."""
    with lab.hosts_up() as h:
        yield h


@pytest.fixture(scope="module")
def scratch():
    """One bare namespace for a whole module (hypothesis runs many examples per test)."""
    ns = lab.Netns.create("scratch")
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def listen(hosts, workdir):
    """listen(ports, log='other.log'): the lab's listeners on those ports of the server, until the test ends."""
    procs = []

    def start(ports, log="other.log"):
        proc = hosts.server.popen([lab.PYTHON, "-m", "f2bext.lab.tools", "serve", "--log", os.path.join(workdir, log),
                                   "--ports", ",".join(map(str, ports))], env=lab.lab_env(workdir),
                                  stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def smtp(listen):
    """The lab's SMTP listeners on 25, 465, 587 and an unrelated 2525, in the server namespace."""
    return listen((25, 465, 587, 2525), log="mail.log")


@pytest.fixture
def reach(hosts, workdir):
    """reach(ns, host, port, source='') -> True when a TCP connection gets through."""
    def probe(ns, host, port, source=""):
        args = ["probe", host, str(port)] + (["--source", source] if source else [])
        return lab.tool(ns, workdir, *args).returncode == 0
    return probe


@pytest.fixture(params=list(lab.BACKENDS))
def backend(request):
    """Each end-to-end test runs on nftables, and on ipset with iptables-nft and iptables-legacy."""
    return request.param


RULE_GONE = re.compile(r"No such file or directory|does a matching rule exist")


class Firewall:
    """The server's firewall as a test sees it, whichever backend enforces the jail."""

    def __init__(self, ns, backend):
        self.ns, self.backend = ns, backend
        self.variant = lab.BACKENDS[backend][1]
        self.baseline = {f: "" for f in (4, 6)}

    def save_baseline(self):
        for family in (4, 6):
            self.baseline[family] = self.ns.run([lab.iptables(family, self.variant, "-save")]).stdout

    def wipe(self):
        """A firewall reload: nft flush ruleset, or iptables-restore of the saved baseline."""
        if self.backend == "nftables":
            self.ns.nft("flush", "ruleset")
        else:
            for family in (4, 6):
                self.ns.run([lab.iptables(family, self.variant, "-restore")], input=self.baseline[family])

    def unhook(self, jail):
        """Remove the jail's hook (nft base chain, or iptables rules) and nothing else."""
        if self.backend == "nftables":
            self.ns.nft("delete", "chain", "inet", "f2bext", f"{jail}-input")
            return
        for family in (4, 6):
            for line in self.ns.run([lab.iptables(family, self.variant, "-save")]).stdout.splitlines():
                if f"f2bext:{jail}" in line:
                    deleted = self.ns.run([lab.iptables(family, self.variant)] + shlex.split("-D" + line[2:]),
                                          check=False)
                    # The watchdog may rebuild the hook between the listing and this rule's delete: a rule
                    # already gone is what was asked for; any other refusal is the test's own fault.
                    if deleted.returncode and not RULE_GONE.search(deleted.stderr):
                        raise AssertionError(f"{line!r} not deleted: {deleted.stderr}")

    def rules(self, jail):
        if self.backend == "nftables":
            listing = self.ns.nft("list", "table", "inet", "f2bext", check=False)
            return [line for line in listing.splitlines() if "@" + jail + "-" in line]
        return [line for f in (4, 6) for line in self.ns.run([lab.iptables(f, self.variant, "-save")]).stdout.splitlines()
                if f'"f2bext:{jail}"' in line or f"f2bext:{jail} " in line]

    def holds(self, jail, address):
        if self.backend == "nftables":
            kind = "v6" if ":" in address else "v4"
            return address in self.ns.nft("list", "set", "inet", "f2bext", f"{jail}-{kind}", check=False)
        name = f"f2bext6-{jail}" if ":" in address else f"f2bext-{jail}"
        return self.ns.run(["ipset", "test", name, address], check=False).returncode == 0

    def snapshot(self):
        """Everything a backend could leave behind, as text."""
        parts = [self.ns.nft("list", "ruleset"), self.ns.run(["ipset", "save"]).stdout]
        if self.variant == "legacy":
            parts += [self.ns.run([lab.iptables(f, "legacy", "-save")]).stdout for f in (4, 6)]
        text = "\n".join(line for part in parts for line in part.splitlines() if not line.startswith("#"))
        return re.sub(r"\[\d+:\d+\]|packets \d+ bytes \d+", "", text)  # counters move with traffic


@pytest.fixture
def fw(hosts, backend):
    return Firewall(hosts.server, backend)


def _tail(path, lines=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A lab test that fails leaves its evidence in the report: fail2ban's log, the twins' drain logs
    and the server's ruleset as they stood (the namespaces are gone by the time anyone reads CI)."""
    report = (yield).get_result()
    server = item.funcargs.get("f2b") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or not isinstance(server, lab.Fail2banLab):
        return
    sections = [("fail2ban.log", _tail(os.path.join(server.workdir, "fail2ban.log")))]
    twins = os.path.join(server.workdir, "run", "twins")
    for jail in sorted(os.listdir(twins)) if os.path.isdir(twins) else ():
        sections.append((f"drain.log of {jail}", _tail(os.path.join(twins, jail, "drain.log"))))
    if server.ns is not None:
        listing = [server.ns.run(cmd, check=False).stdout for cmd in (
            ["nft", "list", "ruleset"], ["ipset", "list", "-t"],
            [lab.iptables(4, server.variant, "-save")], [lab.iptables(6, server.variant, "-save")])]
        sections.append(("the server's ruleset", "\n".join(listing)))
    for title, text in sections:
        if text:
            report.sections.append((f"lab: {title}", text))


@pytest.fixture
def f2b(hosts, workdir, request):
    """A real fail2ban-server in the server namespace behind the seed's firewall, on the test's
    backend (nftables unless the test asks for `backend`); tests may set f2b.jails, then start()."""
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "nftables"
    lab.apply_seed_firewall(hosts.server, lab.BACKENDS[backend][1])
    server = lab.Fail2banLab(hosts, workdir, backend=backend)
    yield server
    server.stop()


class HeldSession:
    """A session the attacker holds open on a lab server, seen from both ends: the client's status file,
    and on the server its process's own log line when the socket ends, its socket and conntrack entry."""

    def __init__(self, client_ns, server_ns, workdir, maillog, server=lab.SERVER4, port=25, peer=lab.ATTACKER4):
        self.server_ns, self.maillog, self.port, self.peer = server_ns, maillog, port, peer
        self.status = os.path.join(workdir, f"hold-{server}-{port}")
        self.proc = client_ns.popen([lab.PYTHON, "-m", "f2bext.lab.tools", "hold", server, str(port), self.status],
                                    env=lab.lab_env(workdir))
        lab.Fail2banLab.wait(lambda: os.path.exists(self.status), "the held session")
        assert self.client() == "open"
        assert self.established() and self.tracked(), "the held session is not up on the server"

    def client(self) -> str:
        """What the client saw: "open", or "ended: <why>"."""
        with open(self.status) as f:
            return f.read()

    def server_end(self) -> str:
        """Why the server process saw its socket end (its log's disconnect line), or "" while it lives."""
        with open(self.maillog) as f:
            for line in f:
                if f"disconnect from unknown[{self.peer}] port {self.port} (" in line:
                    return line.rsplit("(", 1)[1].rstrip(")\n")
        return ""

    def established(self) -> bool:
        """The server's kernel still holds the session's socket established."""
        out = self.server_ns.run(["ss", "-Htn", "state", "established", "sport", "=", f":{self.port}"]).stdout
        peers = {line.split()[-1].rsplit(":", 1)[0].strip("[]") for line in out.splitlines()}
        return self.peer in peers or "::ffff:" + self.peer in peers

    def tracked(self) -> bool:
        """The server's conntrack table still holds the session's entry."""
        family = "ipv6" if ":" in self.peer else "ipv4"
        out = self.server_ns.run(["conntrack", "-L", "-f", family, "-p", "tcp", "-s", self.peer,
                                  "--dport", str(self.port)], check=False).stdout
        return bool(out.strip())

    def assert_cut(self, timeout=10):
        """The cut itself: the server's socket destroyed (the process sees ECONNABORTED), the entry gone."""
        lab.Fail2banLab.wait(lambda: self.server_end() != "", "the server to see its socket end", timeout=timeout)
        assert self.server_end() == "Software caused connection abort", self.server_end()
        lab.Fail2banLab.wait(lambda: not self.tracked(), "the conntrack entry to go", timeout=timeout)
        assert not self.established()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def held_session(hosts, workdir):
    """held_session(maillog, server=..., port=..., ns=...) -> a HeldSession from the attacker; killed at the end."""
    made = []

    def hold(maillog, server=lab.SERVER4, port=25, ns=None, peer=lab.ATTACKER4, folder=None):
        made.append(HeldSession(hosts.attacker, ns or hosts.server, folder or workdir, maillog, server, port, peer))
        return made[-1]
    yield hold
    for session in made:
        session.stop()


@pytest.fixture
def host_kept_out(workdir, hosts):
    """For the labs running real firewall managers: the host's ruleset unchanged, and no firewalld or
    dbus-daemon of the test left anywhere once its namespaces are gone."""
    from f2bext.lab import managers
    before = managers.host_ruleset()
    yield
    assert managers.host_ruleset() == before, "the host's ruleset changed"
    for ns in hosts.all():
        ns.delete()
    assert managers.daemons_of(workdir) == [], "a firewalld or dbus-daemon of the test outlived its namespace"
