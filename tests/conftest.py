"""Shared fixtures: namespaces are real, created per test and always removed."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from f2bext import lab  # noqa: E402


def _kernel_tests_possible() -> str:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "nft", "conntrack"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return ""


def pytest_collection_modifyitems(config, items):
    reason = _kernel_tests_possible()
    if reason and os.environ.get("F2BEXT_REQUIRE_KERNEL"):
        raise pytest.UsageError(f"F2BEXT_REQUIRE_KERNEL is set but the kernel tests cannot run: {reason}")
    if reason:
        for item in items:
            if "hosts" in getattr(item, "fixturenames", ()) or item.get_closest_marker("kernel"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def hosts():
    """Server, attacker and bystander namespaces on one bridge (documentation addresses)."""
    with lab.hosts_up() as h:
        yield h


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


@pytest.fixture
def smtp(hosts, workdir):
    """The lab's SMTP listeners on 25, 465, 587 and an unrelated 2525, in the server namespace."""
    proc = hosts.server.popen([lab.PYTHON, "-m", "f2bext.labtools", "serve", "--log", os.path.join(workdir, "mail.log"),
                               "--ports", "25,465,587,2525"], env=lab.lab_env(workdir), stdout=subprocess.PIPE,
                              text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


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
                    self.ns.run([lab.iptables(family, self.variant)] + shlex.split("-D" + line[2:]))

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


@pytest.fixture
def f2b(hosts, workdir, request):
    """A real fail2ban-server in the server namespace behind the seed's firewall, on the test's
    backend (nftables unless the test asks for `backend`); tests may set f2b.jails, then start()."""
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "nftables"
    lab.apply_seed_firewall(hosts.server, lab.BACKENDS[backend][1])
    server = lab.Fail2banLab(hosts, workdir, backend=backend)
    yield server
    server.stop()


@pytest.fixture
def host_kept_out(workdir, hosts):
    """For the labs running real firewall managers: the host's ruleset unchanged, and no firewalld or
    dbus-daemon of the test left anywhere once its namespaces are gone."""
    from f2bext import labmanagers
    before = labmanagers.host_ruleset()
    yield
    assert labmanagers.host_ruleset() == before, "the host's ruleset changed"
    for ns in hosts.all():
        ns.delete()
    assert labmanagers.daemons_of(workdir) == [], "a firewalld or dbus-daemon of the test outlived its namespace"
