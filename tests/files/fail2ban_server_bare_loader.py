"""fail2ban-server, loading Python actions as fail2ban 1.1.1 and later do (Utils.load_python_module):
`exec_module` on a bare module, so the action file has no __file__ and is not in sys.modules.
Each load is recorded in $F2BEXT_LOADER_RECORD, one JSON line per action file."""

import importlib.machinery
import json
import os
import sys
import types

from fail2ban.client.fail2banserver import exec_command_line
from fail2ban.server.utils import Utils


def load_python_module(pythonModule):
    # fail2ban 1.1.1's function, word for word but for the record.
    pythonModuleName = os.path.splitext(os.path.basename(pythonModule))[0]
    ldr = importlib.machinery.SourceFileLoader(pythonModuleName, pythonModule)
    mod = types.ModuleType(ldr.name)
    ldr.exec_module(mod)
    with open(os.environ["F2BEXT_LOADER_RECORD"], "a") as record:
        record.write(json.dumps({"path": pythonModule, "has_file": hasattr(mod, "__file__"),
                                 "in_sys_modules": ldr.name in sys.modules}) + "\n")
    return mod


Utils.load_python_module = staticmethod(load_python_module)
exec_command_line(["fail2ban-server", *sys.argv[1:]])
