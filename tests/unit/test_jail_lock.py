"""The jail lock excludes other processes, even once /run was emptied under it: no rebuild races another."""

import os
import shutil
import subprocess

import pytest

from f2bext import lab, state
from f2bext.errors import KernelError

JAIL = "postfix"


HOLD_LOCK = """
import sys
from f2bext import state
with state.JailLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_the_jail_lock_excludes_other_processes_even_after_its_file_was_removed(workdir, monkeypatch):
    monkeypatch.setenv("F2BEXT_STATE_DIR", os.path.join(workdir, "run"))
    monkeypatch.setattr(state, "LOCK_WAIT", 0.5)
    mine = state.JailLock(JAIL)
    with mine:  # opened once and kept, as the in-process action keeps it
        pass
    shutil.rmtree(os.path.join(workdir, "run"))  # /run emptied under a running fail2ban
    other = subprocess.Popen([lab.PYTHON, "-c", HOLD_LOCK, JAIL], env=dict(os.environ, PYTHONPATH=lab.PROJECT_ROOT),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(KernelError, match="stayed locked"):
            with mine:
                pass
    finally:
        other.communicate("\n")
    with mine:
        pass
