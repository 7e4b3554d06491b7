"""`make test` without root or without the lab's tools says so and fails, as CI does: the kernel
tests are never skipped in silence; `make unit` needs neither. Run as the unprivileged user nobody
(setpriv), on a copy of the checkout it can read."""

import os
import shutil
import subprocess
import tempfile

import pytest

from f2bext import lab

pytestmark = pytest.mark.kernel  # root, to become nobody or to hide the tools

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def checkout():
    """A copy of the checkout that anyone can read (a CI clone may sit in root's home)."""
    folder = tempfile.mkdtemp(prefix="f2bext-guard-")
    try:
        os.chmod(folder, 0o755)
        copy = os.path.join(folder, "f2bext")
        shutil.copytree(lab.PROJECT_ROOT, copy, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist"))
        subprocess.run(["chmod", "-R", "a+rX", folder], check=True)
        yield copy
    finally:
        shutil.rmtree(folder)


def run(argv, cwd, **env):
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", **env}
    done = subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_make_test_without_root_says_so_and_fails(checkout):
    code, out = run([*NOBODY, "make", "test"], checkout)
    assert code != 0, out
    assert "kernel tests cannot run here: they need root" in out and "sudo make test" in out, out[-2000:]
    assert " passed" not in out and " skipped" not in out


def test_kernel_tests_without_the_lab_tools_name_them_and_fail(checkout, tmp_path):
    code, out = run([lab.PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/lab/test_nft_kernel.py"],
                    checkout, PATH=str(tmp_path))
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert "kernel tests cannot run here: missing ip, nft, conntrack," in out and "make deps" in out, out[-2000:]


def test_tests_that_need_no_kernel_still_run_without_root(checkout):
    code, out = run([*NOBODY, lab.PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not kernel",
                     "tests/unit/test_input.py", "tests/lab/test_nft_kernel.py"], checkout)
    assert code == 0, out[-2000:]
    assert " passed" in out and " skipped" not in out and " deselected" in out


def test_make_unit_runs_every_pure_test_without_root(checkout):
    code, out = run([*NOBODY, "make", "unit"], checkout)
    assert code == 0, out[-2000:]
    assert " passed" in out and " skipped" not in out and " deselected" not in out
