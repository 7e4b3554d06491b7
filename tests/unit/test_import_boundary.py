"""What fail2ban-server loads with our action: a jail that shares nothing loads neither the fleet nor
Redis, and no jail loads the doctor, the lab, the command line or `dataclasses` (which brings inspect,
ast and dis: 1 MiB); each costs fail2ban-server memory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from f2bext.errors import InputError
from f2bext.fail2ban.action import _share_options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEVER = ("redis", "f2bext.fleet", "f2bext.fail2ban.fleets", "f2bext.doctor", "f2bext.lab", "f2bext.cli")
NEVER_STDLIB = {"dataclasses", "inspect", "ast", "dis"}  # fail2ban-server itself loads none of them


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    # -B: no bytecode written beside the action files (action.d/__pycache__ would be copied as config).
    done = subprocess.run([sys.executable, "-B", "-c", probe], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    return set(done.stdout.split())


@pytest.mark.parametrize("action", ["f2bext-ipset.py", "f2bext-nftables.py"])
def test_an_action_file_loads_no_fleet_doctor_lab_cli_or_dataclasses(action):
    # As fail2ban's Actions loads a Python action: the file run as a module of its own.
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('act', 'action.d/{action}')\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "from f2bext.fail2ban.action import _share_options\n"
            "assert _share_options({'port': '25'}) == {}\n"
            # What the action's __init__ loads: its backend (built only in a jail, with the kernel).
            f"import f2bext.backends.{'ipset' if 'ipset' in action else 'nft'}")
    loaded = loaded_after(code)
    assert "f2bext.fail2ban.action" in loaded
    assert not [m for m in loaded if m.startswith(NEVER)]
    assert not loaded & NEVER_STDLIB
    assert "f2bext.sessions" not in loaded  # loaded by the first kill (fail2ban restores bans without one)


def test_fail2ban_server_itself_loads_no_dataclasses():
    # Else NEVER_STDLIB would guard nothing: what fail2ban-server has loaded when it loads an action.
    assert not loaded_after("import fail2ban.server.server, fail2ban.server.actions, fail2ban.server.jail") & NEVER_STDLIB


def test_share_options_load_the_fleet_and_are_still_checked():
    assert "f2bext.fleet" in loaded_after(
        "from f2bext.fail2ban.action import _share_options\n_share_options({'share': 'redis://127.0.0.1:6379/0'})")
    params = {"share": "redis://127.0.0.1/0", "port": "25"}
    assert _share_options(params)["share_scope"] == "jail"
    assert params == {"port": "25"}  # taken out, so the jail's spec never sees them
    with pytest.raises(InputError, match="need share"):
        _share_options({"share_scope": "all"})
    with pytest.raises(InputError, match="redis://"):
        _share_options({"share": "http://example.com/"})
