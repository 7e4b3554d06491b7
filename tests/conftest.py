"""Shared fixtures: namespaces are real, created per test and always removed."""

import os
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


@pytest.fixture
def f2b(hosts, workdir):
    """A real fail2ban-server in the server namespace behind the seed's firewall; tests may set
    f2b.jails before calling f2b.start()."""
    lab.apply_seed_firewall(hosts.server)
    server = lab.Fail2banLab(hosts, workdir)
    yield server
    server.stop()
