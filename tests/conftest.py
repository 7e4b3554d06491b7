"""What both halves of the suite share: the kernel marker and its guards (kernel tests that cannot run
fail the run, and none sits in tests/unit), and the fixtures tests/unit and tests/lab both use. The
lab's fixtures (real namespaces, created per test and always removed) are in tests/lab/conftest.py."""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fail2ban.client.actionreader import ActionReader  # noqa: E402
from fail2ban.server.action import CommandAction  # noqa: E402

from f2bext import lab  # noqa: E402


# What the kernel tests run: the lab's namespaces, firewalls, fail2ban and Redis (`make deps` installs them).
LAB_TOOLS = ("ip", "nft", "conntrack", "ipset", "iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy",
             "fail2ban-server", "fail2ban-client", "redis-server", "redis-cli", "openssl")


def kernel_tests_impossible() -> str:
    """Why the kernel tests cannot run here ("" when they can)."""
    if os.geteuid() != 0:
        return "they need root (network namespaces, firewalls): sudo make test"
    missing = [tool for tool in LAB_TOOLS if not shutil.which(tool)]
    return f"missing {', '.join(missing)} (sudo make deps installs them)" if missing else ""


# The fixtures that create network namespaces: the lab's hosts, test_fuzz_kernel's scratch namespace.
NAMESPACE_FIXTURES = {"hosts", "scratch"}
UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:  # before -m selects: `-m "not kernel"` leaves them out
        if NAMESPACE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)
    # `make unit` runs tests/unit as any user: a kernel test there would fail it without root.
    misplaced = [item.nodeid for item in items
                 if item.get_closest_marker("kernel") and str(item.path).startswith(UNIT + os.sep)]
    if misplaced:
        raise pytest.UsageError(f"kernel tests in tests/unit, which runs without root: {', '.join(misplaced)}; "
                                f"they belong in tests/lab")


def pytest_collection_finish(session):
    """Kernel tests that cannot run fail the run, saying why: never a silent skip (CI counts on it)."""
    kernel = [item for item in session.items if item.get_closest_marker("kernel")]
    reason = kernel_tests_impossible() if kernel else ""
    if reason:
        raise pytest.UsageError(f"{len(kernel)} kernel tests cannot run here: {reason}; "
                                f"or leave them out with -m 'not kernel'")


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


@pytest.fixture
def repair_command():
    """repair_command(capture) -> argv: the repair action's ban command as fail2ban builds it for a
    ticket of the lab's attacker with these filter captures."""
    def build(capture: dict) -> list[str]:
        reader = ActionReader("f2bext-repair", "f2bext-leak", {}, basedir=lab.PROJECT_ROOT)
        assert reader.read()
        reader.getOptions({})
        (_, _, _, _, opts), = [c for c in reader.convert() if c[0] == "multi-set"]
        opts = dict(opts)
        cmd = CommandAction.replaceTag(opts["actionban"], opts)
        cmd = CommandAction.replaceDynamicTags(cmd, {"ip": lab.ATTACKER4, "F-*": capture})
        # Escaped values come back as positional arguments of the shell, as fail2ban runs them.
        return ["sh", "-c", cmd] if isinstance(cmd, str) else ["sh", "-c", *cmd]
    return build
