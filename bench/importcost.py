"""The fixed memory cost f2bext's Python actions add to fail2ban-server: resident memory of a fresh
interpreter that has loaded what fail2ban-server loads, before and after starting an empty jail on
each action's backend; and, for comparison, pyroute2, which f2bext does not import. Prints JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

STEPS = {
    "f2bext-nftables.py": "from f2bext.fail2ban import shared_backend\nshared_backend('nftables')",
    "f2bext-ipset.py": "from f2bext.fail2ban import shared_backend\nshared_backend('ipset')",
    "pyroute2 (not used by f2bext)": "import pyroute2\npyroute2.IPRoute().close()",
}

PROBE = """
import gc, json, sys
def rss():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS:'))
import fail2ban.server.server, fail2ban.server.actions, fail2ban.server.jail  # what fail2ban-server has loaded
gc.collect()
before = rss()
exec(sys.argv[1])
gc.collect()
print(json.dumps({"before_kib": before, "after_kib": rss()}))
"""


def main() -> int:
    out = {}
    for name, code in STEPS.items():
        samples = []
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", PROBE, code], capture_output=True, text=True, check=True)
            r = json.loads(done.stdout)
            samples.append(r["after_kib"] - r["before_kib"])
        out[name] = {"added_kib": sorted(samples)[1], "samples_kib": samples}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
