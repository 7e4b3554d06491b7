"""The leak jail's repair action (action.d/f2bext-repair.conf) run as fail2ban runs it, for a jail
f2bext does not enforce: it ends quietly and runs nothing it was handed. Its repair of a jail f2bext
enforces is tests/lab/test_e2e_leak.py."""

import os
import subprocess

import pytest

from f2bext import lab


@pytest.mark.parametrize("capture", [{"jail": "postfix"}, {"jail": "nginx.http_auth"}, {},
                                     {"jail": "x; touch INJECTED"}])
def test_repair_action_ends_quietly_for_a_jail_f2bext_does_not_enforce(workdir, capture, repair_command):
    """No state for the jail (a stock action), a name f2bext refuses, no captured name, or a hostile one:
    exit 0, so fail2ban neither logs an error nor runs the command a second time."""
    result = subprocess.run(repair_command(capture), capture_output=True, text=True, cwd=workdir,
                            env=lab.lab_env(workdir), timeout=30)
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(os.path.join(workdir, "INJECTED"))
