#!/usr/bin/python3
"""f2bext benchmark: restore at start, per-ban action time, verify/repair, session kill and memory,
f2bext's actions against fail2ban's stock ones, side by side on this machine, each in a namespace of
its own with a real fail2ban-server or fail2ban's own action objects.

    sudo /usr/bin/python3 bench/run.py            # the whole run, 9 to 20 minutes on 2 cores
    sudo /usr/bin/python3 bench/run.py --quick    # one sample, short caps: a smoke test of the harness
    sudo /usr/bin/python3 bench/run.py --record   # also keep the run as bench/results/<commit>.json

Writes bench/out/results.json, bench/out/restore.png and bench/out/tables.md, and prints the tables.
The README quotes a recorded run; `bench/report.py bench/results/<commit>.json` redraws its tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, ROOT]

import dbgen  # noqa: E402
import report  # noqa: E402
import restore  # noqa: E402
from f2bext import lab  # noqa: E402
from f2bext.lab.netns import Netns  # noqa: E402
from report import (BASELINE, CHECKED_N, MILLION, OURS_CONF, OURS_PY, SIZES, STOCK, TWENTY_K,  # noqa: E402
                    UNCAPPED_STOCK)

OTHER_RULES = 1_000  # unrelated iptables rules, as on a host running Docker or firewalld


def restore_plan(quick: bool, sample: int) -> list[tuple[str, int, float, bool]]:
    """(action, N, cap in seconds, whether it is the extrapolation check) of one round. Every round
    times the Python actions and the baseline at every N; the first also times the fork-per-ban
    actions, capped at 10,000 and 100,000 (they would need hours there, and are extrapolated),
    1,000,000 once, and one stock case uncapped at CHECKED_N beside its capped run, so that the
    extrapolation is checked against a finished run."""
    plan = []
    for n in SIZES + ((TWENTY_K,) if sample == 1 else ()):
        for action in [BASELINE, *OURS_PY] if n != TWENTY_K else OURS_PY[:1]:
            plan.append((action, n, 60.0, False))
    if sample > 1:
        return plan
    for n in SIZES:
        for action in STOCK + OURS_CONF:
            plan.append((action, n, 10.0 if quick else (40.0 if n == SIZES[0] else 10.0), False))
    plan.append((UNCAPPED_STOCK, CHECKED_N, 10.0, False))
    if not quick:
        plan.append((UNCAPPED_STOCK, CHECKED_N, 600.0, True))
        plan += [(action, MILLION, 300.0, False) for action in [BASELINE, *OURS_PY]]
    return plan


def precompile(work: str) -> None:
    """Bytecode for every interpreter the bench starts, as an installed system has it (Debian compiles
    a package at install): without it each fail2ban-server compiles what it imports, which costs an
    f2bext action 0.4 MiB of peak memory. A cache prefix redirects every lookup, the standard
    library's too, so that is compiled into it as well; every action, stock ones included, reads it."""
    pycache = os.path.join(work, "pycache")
    stdlib = os.path.dirname(os.__file__)
    dist = "/usr/lib/python3/dist-packages"
    trees = [stdlib, *(os.path.join(dist, p) for p in ("fail2ban", "nftables", "_distutils_hack")),
             os.path.join(ROOT, "f2bext"), BENCH]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *(t for t in trees if os.path.exists(t))],
                   env=dict(os.environ, PYTHONPYCACHEPREFIX=pycache), check=True, stdout=subprocess.DEVNULL)
    os.environ["PYTHONPYCACHEPREFIX"] = pycache


def commit() -> dict:
    """The checkout the bench ran from: its commit, and whether files differed from it."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", ROOT, *argv], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""
    return {"commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine() -> dict:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    with open("/etc/debian_version") as f:
        debian = f.read().strip()
    from fail2ban.version import version as f2b_version
    return {"debian": debian, "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "fail2ban": f2b_version, "nft": version(["nft", "--version"]), "iptables": version(["iptables", "-V"]),
            "ipset": version(["ipset", "version"]), "conntrack": version(["conntrack", "--version"]),
            "nf_conntrack_buckets": version(["sysctl", "-n", "net.netfilter.nf_conntrack_buckets"])}


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def in_namespace(role: str, argv: list[str], workdir: str, action: str = "", timeout: float = 300) -> dict:
    """Run one of the bench's children in a fresh namespace; its JSON answer."""
    ns = Netns.create(role)
    try:
        env = lab.lab_env(workdir)
        env["PYTHONPATH"] = os.pathsep.join([BENCH, env.get("PYTHONPATH", ROOT)])
        if action:  # the lab's configuration directory, with the jail on this action
            restore.BenchLab(ns, workdir, action).write_config()
        done = ns.run([lab.PYTHON, *argv], check=False, timeout=timeout, env=env)
    finally:
        ns.delete()
    return answer(done, " ".join(argv[:2]))


def in_process(argv: list[str], timeout: float = 600) -> dict:
    """Run one of the bench's children that sets up namespaces of its own; its JSON answer."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([BENCH, ROOT]))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    return answer(done, os.path.basename(argv[1]))


def answer(done: subprocess.CompletedProcess, what: str) -> dict:
    """A child's JSON answer: the last line it printed."""
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def say(text: str) -> None:
    print(text, flush=True)


def restore_case(results: dict, action: str, n: int, cap: float, sample: int, db: str, work: str,
                 check: bool) -> None:
    try:
        run = restore.run(action, n, db, os.path.join(work, f"restore-{action}-{n}"), cap)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        say(f"   #{sample} {action:24} N={n:>7,}: failed: {e}")
        results["restore"].append({"action": action, "n": n, "cap": cap, "sample": sample, "series": [],
                                   "check": check, "error": str(e)})
        return
    results["restore"].append({**run.to_json(), "sample": sample, "check": check})
    done = f"{run.enforced_s:.2f} s" if run.enforced_s is not None else f"capped at {cap:.0f} s"
    say(f"   #{sample} {action:24} N={n:>7,}: {done:>16}, {run.series[-1][1]:>7,} enforced, "
        f"fail2ban caught up {run.fail2ban_s if run.fail2ban_s is not None else '-'} s, "
        f"VmHWM {run.vmhwm_kib and run.vmhwm_kib // 1024} MiB{'  ' + run.errors[0] if run.errors else ''}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(BENCH, "out"))
    p.add_argument("--quick", action="store_true", help="short caps and one sample: checks the harness only")
    p.add_argument("--samples", type=int, help="runs of each restore case (default 3, 1 with --quick)")
    p.add_argument("--record", action="store_true", help="also write bench/results/<commit>.json")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, firewalls, conntrack)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "work")
    subprocess.run(["rm", "-rf", work])
    began = time.monotonic()
    precompile(work)
    samples = args.samples or (1 if args.quick else 3)
    results: dict = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     **commit(), "machine": machine(), "quick": args.quick, "samples": samples,
                     "loadavg": {"start": loadavg()}, "restore": [], "action_time": [], "kill": None}

    say("building fail2ban databases ...")
    dbs = {}
    for n in sorted({n for sample in (1, 2) for _, n, _, _ in restore_plan(args.quick, sample)}):
        dbs[n] = os.path.join(args.out, "db", f"{n}.sqlite3")
        os.makedirs(os.path.dirname(dbs[n]), exist_ok=True)
        dbgen.build(dbs[n], n)

    phase = time.monotonic()
    say(f"1. restore at start, {samples} round(s): each round runs every case once, so that a change")
    say("   of the machine's load spreads over all of them")
    for sample in range(1, samples + 1):
        for action, n, cap, check in restore_plan(args.quick, sample):
            restore_case(results, action, n, cap, sample, dbs[n], work, check)

    results["phase_s"] = {"restore": round(time.monotonic() - phase)}
    phase = time.monotonic()
    say("2./3. per-ban action time; verify and repair")
    cases = [(a, p, 0) for a in OURS_PY + STOCK + OURS_CONF for p in (0, 100_000)]
    cases += [(a, 100_000, OTHER_RULES) for a in OURS_PY]
    for action, preload, other in cases:
        py = action in OURS_PY
        workdir = os.path.join(work, f"act-{action}-{preload}-{other}")
        argv = [os.path.join(BENCH, "actiontime.py"), "--confdir", os.path.join(workdir, "etc"),
                "--preload", str(preload), "--samples", str(300 if py else 100),
                "--budget", str(2.0 if args.quick else 3.0), "--other-rules", str(other)]
        if preload:
            argv.append("--verify")
        label = f"{action:24} {preload:>7,} banned" + (f", {other:,} other rules" if other else "")
        try:
            out = in_namespace("act", argv, workdir, action)
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
            say(f"   {label}: failed: {e}")
            results["action_time"].append({"action": action, "preload": preload, "other_rules": other, "error": str(e)})
            continue
        results["action_time"].append(out)
        say(f"   {label}: ban p50 {out['ban']['p50_ms']:.3f} ms, p99 {out['ban']['p99_ms']:.3f} ms"
            + (f"; verify p50 {out['verify']['p50_ms']:.3f} ms" if "verify" in out else ""))

    results["phase_s"]["action_time"] = round(time.monotonic() - phase)
    phase = time.monotonic()
    say("4. session kill")
    try:
        results["kill"] = in_namespace("kill", [os.path.join(BENCH, "killbench.py")], os.path.join(work, "kill"))
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        say(f"   failed: {e}")
    for v in (4, 6) if results["kill"] else ():
        k = results["kill"][f"ipv{v}"]
        say(f"   IPv{v}: p50 {k['p50_ms']:.1f} ms, max {k['max_ms']:.1f} ms, cut {k['cut'][0]} entries")

    results["phase_s"]["kill"] = round(time.monotonic() - phase)
    for key, title, argv in (
            ("set_types", "6. set types: one add, and the listings verification reads", ["settypes.py"]),
            ("fixed_memory", "7. fixed memory cost in fail2ban-server", ["importcost.py"]),
            ("fleet", "8. fleet sharing through Redis", ["fleet.py", "--failovers", "1",
                                                        *(["--bans", "100", "--catchup", "10000"] if args.quick else [])]),
            ("flood", "9. a banned flood", ["flood.py", "--workdir", os.path.join(work, "flood"),
                                            *(["--seconds", "0.5", "--rounds", "1"] if args.quick else [])])):
        phase = time.monotonic()
        say(title)
        try:
            if key in ("fleet", "flood"):  # each builds a lab of its own: several namespaces
                results[key] = in_process([lab.PYTHON, os.path.join(BENCH, argv[0]), *argv[1:]])
            else:
                results[key] = in_namespace(key, [os.path.join(BENCH, argv[0]), *argv[1:]],
                                            os.path.join(work, key))
            say("   " + json.dumps(results[key]))
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
            results[key] = None
            say(f"   failed: {e}")
        results["phase_s"][key] = round(time.monotonic() - phase)
    results["loadavg"]["end"] = loadavg()
    results["total_s"] = round(time.monotonic() - began, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report.finish(results, args.out)
    if args.record:
        recorded = os.path.join(BENCH, "results", f"{results['commit']}.json")
        os.makedirs(os.path.dirname(recorded), exist_ok=True)
        with open(recorded, "w") as f:
            json.dump(results, f, indent=1)
        say(f"recorded {recorded}" + (" (the checkout had uncommitted changes)" if results["dirty"] else ""))
    with open(os.path.join(args.out, "tables.md")) as f:
        say("\n" + f.read())
    say(f"total {results['total_s'] / 60:.1f} min; wrote {args.out}/results.json, restore.png, tables.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
