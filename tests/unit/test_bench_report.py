"""The bench's report reads a recorded run whole: every table and every target row comes out of it,
and a fresh run's extrapolation check is told apart from the capped runs it checks."""

import copy
import glob
import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)

import report  # noqa: E402
from targets import targets  # noqa: E402

RECORDED = os.path.join(BENCH, "results", "b5216dc5d3d0.json")


def recorded() -> dict:
    with open(RECORDED) as f:
        return json.load(f)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(BENCH, "results", "*.json"))))
def test_every_table_and_target_comes_out_of_each_recorded_run(path):
    with open(path) as f:
        results = json.load(f)
    text = report.tables(results)
    for heading in ("### 1. Restore", "### 2. Per-ban", "### 3. Verify", "### 4. Session kill", "### Targets"):
        assert heading in text
    assert ("### 9. A banned flood" in text) == bool(results.get("flood"))
    rows = targets(results)
    assert any("≤ 1.0 s" in t for t, _, _ in rows) and any("0.05 ms" in t for t, _, _ in rows)
    assert all(isinstance(ok, bool) for _, _, ok in rows)


def test_the_uncapped_check_run_is_not_one_of_the_capped_samples():
    results = recorded()
    capped = [dict(copy.deepcopy(r), n=report.CHECKED_N) for r in results["restore"]
              if r["action"] == report.UNCAPPED_STOCK and r["n"] == 10_000]
    results["restore"] += capped + [dict(copy.deepcopy(capped[0]), check=True, enforced_s=200.0)]
    estimate = report.restore_time(results, report.UNCAPPED_STOCK, report.CHECKED_N)
    assert estimate.extrapolated and estimate.samples == len(capped)
    line = " ".join(report.extrapolation_check(results))
    assert f"uncapped at N = {report.CHECKED_N:,}" in line and "3.3 min" in line and "short of" in line


def test_a_capped_check_run_that_finished_within_its_cap_is_said_to_leave_nothing_to_check():
    """d1726d1's machine restored 2,000 stock bans in 8.8 s, within the 10 s cap: no extrapolation,
    and the report says so rather than leave the check out."""
    with open(os.path.join(BENCH, "results", "d1726d1770c3.json")) as f:
        results = json.load(f)
    finished = [r for r in results["restore"] if r["action"] == report.UNCAPPED_STOCK and r["n"] == 2_000]
    assert len(finished) == 2 and all(r["enforced_s"] is not None for r in finished)
    for r in finished:
        r["n"] = report.CHECKED_N
    line = " ".join(report.extrapolation_check(results))
    assert line.startswith("Check of the extrapolation: none to check") and "8.80 s" in line and "9.08 s" in line
