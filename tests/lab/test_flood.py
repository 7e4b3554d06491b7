"""bench/flood.py on a real kernel, briefly: a SYN flood from 1,000 banned sources is dropped, by the
input hook and by the prerouting variant alike, without a conntrack entry, while a bystander is served."""

import json
import os
import subprocess

import pytest

from f2bext import lab

FLOOD = os.path.join(lab.PROJECT_ROOT, "bench", "flood.py")
BANNED = ("f2bext-nftables", "f2bext-nftables-raw", "nftables-multiport")


@pytest.mark.kernel
def test_banned_flood_is_dropped_and_the_bystander_served(tmp_path):
    done = subprocess.run([lab.PYTHON, FLOOD, "--seconds", "1", "--rounds", "1", "--conntrack", "on",
                           "--cases", ",".join(("none",) + BANNED), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = {r["case"]: r for r in json.loads(done.stdout.splitlines()[-1])["runs"]}

    unbanned = runs["none"]
    assert unbanned["dropped"] < 0.01 * unbanned["received"], "without a ban the SYNs reach TCP"
    assert unbanned["ct_banned"] > 0, "and conntrack tracks their flows"
    for case in BANNED:
        run = runs[case]
        assert run["sent"] > 10_000, case
        # `sent` counts every frame the attacker's end sent, the bystander's few hundred among them.
        assert run["dropped"] >= 0.98 * run["sent"], (case, run)
        assert run["ct_banned"] == 0, f"{case}: a dropped SYN leaves no conntrack entry"
        bystander = run["bystander"]
        assert bystander["tries"] >= 10 and bystander["served_pct"] == 100.0, (case, bystander)
