"""Restore at start: a real fail2ban-server in a fresh namespace, its database holding N current bans
of jail postfix, and the kernel polled until every one of them is enforced (or a time cap)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import dbgen
import kernel
from dbgen import BANTIME, JAIL
from f2bext import lab
from f2bext.backends import nft
from f2bext.kernel import nftelem
from f2bext.lab.netns import Netns
from report import BASELINE as NOOP

NOOP_ACTION = os.path.join(os.path.dirname(os.path.abspath(__file__)), NOOP)
POLL = 0.2  # seconds between two looks at the kernel
FAST_POLL, FAST_FOR = 0.05, 10.0  # finer for the first seconds, where our actions finish
LATER_POLL = 5.0  # at least this far apart once every ban holds
SAMPLE = 256  # the database's addresses an nf_tables set is looked up for at each poll

# How each action's bans show in the kernel: nf_tables sets, nf_tables rules (iptables-nft) or ipsets.
NFT_SETS = {
    "nftables-multiport": [("f2b-table", "addr-set-" + JAIL), ("f2b-table", "addr6-set-" + JAIL)],
    "f2bext-nftables.py": [("f2bext", JAIL + "-v4"), ("f2bext", JAIL + "-v6")],
    "f2bext-nftables": [("f2bext", JAIL + "-v4"), ("f2bext", JAIL + "-v6")],
}
IPT_CHAINS = {"iptables-multiport": [(kernel.NFPROTO_IPV4, "filter", "f2b-" + JAIL),
                                     (kernel.NFPROTO_IPV6, "filter", "f2b-" + JAIL)]}
IPSETS = {
    "iptables-ipset-proto6": ["f2b-" + JAIL, "f2b-" + JAIL + "6"],
    "f2bext-ipset.py": ["f2bext-" + JAIL, "f2bext6-" + JAIL],
    "f2bext-ipset": ["f2bext-" + JAIL, "f2bext6-" + JAIL],
}


def counter(action: str, ns: Netns, n: int) -> Callable[[], int]:
    """A function returning how many of the database's n bans the kernel enforces right now.

    For the iptables-based actions a ban counts once the family's INPUT chain holds a rule (the
    jump or the set match; nothing else is in that chain here): f2bext-ipset fills its sets a few
    milliseconds before it places its rules. An nf_tables set is looked up (set_lookups)."""
    with ns.entered():
        nl = kernel.Netfilter()

    def hooked(family: int) -> bool:
        return nl.rules(family, "filter", "INPUT") > 0

    if action == NOOP:  # nothing reaches the kernel: fail2ban's own progress stands for it
        return lambda: -1
    if action in NFT_SETS:
        return set_lookups(nl, NFT_SETS[action], n)
    if action in IPT_CHAINS:
        # Each chain ends in the RETURN rule actionstart appends; every other rule is one ban.
        return lambda: sum(max(nl.rules(f, t, c) - 1, 0) for f, t, c in IPT_CHAINS[action] if hooked(f))
    argv = ns.argv([])
    v4, v6 = IPSETS[action]
    return lambda: ((kernel.ipset_entries(argv, [v4]) if hooked(kernel.NFPROTO_IPV4) else 0)
                    + (kernel.ipset_entries(argv, [v6]) if hooked(kernel.NFPROTO_IPV6) else 0))


def set_lookups(nl: kernel.Netfilter, sets: list[tuple[str, str]], n: int) -> Callable[[], int]:
    """The count of an action's nf_tables sets (IPv4, then IPv6), by lookups of the database's
    addresses: a dump of a hash set costs the kernel a walk from its start for every datagram (56 s
    at 1,000,000). Each poll looks up a fixed random SAMPLE of them and answers the share found, times
    n, below n; once the whole sample is there it looks up all n and answers what it found. A restore
    only adds, so a complete sample comes at most a few keys before the last: at 1,000,000 the full
    lookup takes seconds, and its time is not the moment of enforcement."""
    addresses: dict[int, list[int]] = {4: [], 6: []}
    for text in dbgen.addresses(n):
        addresses[6 if ":" in text else 4].append(int(ipaddress.ip_address(text)))
    keys = {v: nft.pack_keys(f"v{v}", addresses[v]) for v in (4, 6)}  # as the action's load packs them
    order = [(v, i) for v in (4, 6) for i in range(len(keys[v]))]
    sample: dict[int, list[bytes]] = {4: [], 6: []}
    for version, i in random.Random(n).sample(order, min(SAMPLE, n)):
        sample[version].append(keys[version][i])
    named = dict(zip((4, 6), sets))

    def held(of: dict[int, list[bytes]], per_message: int) -> int:
        return sum(nl.held_keys(kernel.NFPROTO_INET, *named[v], of[v], per_message) for v in (4, 6) if of[v])

    def count() -> int:
        found = held(sample, 1)
        if found < min(SAMPLE, n):
            return min(n - 1, round(found * n / min(SAMPLE, n)))
        return held(keys, nftelem.BULK_KEYS)
    return count


def jail_options(action: str) -> dict[str, str]:
    return {"enabled": "true", "filter": "postfix[mode=auth]", "port": "smtp,ssmtp,submission",
            "banaction": action, "maxretry": "3", "findtime": "600", "bantime": str(BANTIME)}


class BenchLab(lab.Fail2banLab):
    """The lab's fail2ban-server and configuration, without hosts or SMTP listeners: one namespace
    and a ready-made database."""

    def __init__(self, ns: Netns, workdir: str, action: str) -> None:
        super().__init__(_Hosts(ns), workdir, jails={JAIL: jail_options(action)})

    def write_config(self) -> None:
        super().write_config()
        shutil.copy(NOOP_ACTION, os.path.join(self.confdir, "action.d"))

    def launch(self, database: str) -> subprocess.Popen:
        self.write_config()
        shutil.copy(database, os.path.join(self.workdir, "fail2ban.sqlite3"))
        self.server = self.hosts.server.popen(
            ["fail2ban-server", "-f", "-x", "-c", self.confdir], env=lab.lab_env(self.workdir),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.workdir, "fail2ban.stderr"), "w"))
        return self.server


@dataclass
class _Hosts:
    server: Netns


@dataclass
class RestoreRun:
    action: str
    n: int
    cap: float
    series: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, enforced)
    enforced_s: Optional[float] = None  # every ban in the kernel; None when the cap came first
    fail2ban_s: Optional[float] = None  # fail2ban logged `Restore Ban` for every ban
    restored_logged: int = 0
    action_said_s: Optional[float] = None  # the action logged "f2bext ... enforcing": start() had loaded every ban
    vmhwm_kib: Optional[int] = None  # fail2ban-server's peak memory at the end (fail2ban caught up, or the cap)
    vmhwm_enforced_kib: Optional[int] = None  # its peak when the bench saw every ban enforced
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


ENFORCING = re.compile(rb"\] f2bext \S+ enforcing ")


def logged_at(line: bytes) -> float:
    """The wall-clock time a fail2ban log line was written (its local time, to the millisecond): the
    poll of a large nf_tables set takes seconds at 1,000,000, the log says when the load ended."""
    stamp, millis = line[:23].decode().split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def vmhwm(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def run(action: str, n: int, database: str, workdir: str, cap: float) -> RestoreRun:
    """Start fail2ban-server on `database`; poll until the kernel holds all n bans and fail2ban has
    restored them all, or until `cap` seconds. The namespace goes with everything in it."""
    result = RestoreRun(action, n, cap)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    ns = Netns.create("rst")
    server = None
    try:
        count = counter(action, ns, n)
        bench_lab = BenchLab(ns, workdir, action)
        logpath = os.path.join(workdir, "fail2ban.log")
        offset = 0
        start, wall = time.monotonic(), time.time()
        recount_at = 0.0
        server = bench_lab.launch(database)
        while True:
            now = time.monotonic() - start
            if os.path.exists(logpath):
                with open(logpath, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                # Whole lines only: the server may be half way through writing the last one.
                chunk = chunk[:chunk.rfind(b"\n") + 1]
                offset += len(chunk)
                result.restored_logged += chunk.count(b"] Restore Ban ")
                for line in chunk.splitlines():
                    if b" ERROR " in line and len(result.errors) < 5:
                        result.errors.append(line.decode(errors="replace")[:300])
                    if result.action_said_s is None and ENFORCING.search(line):
                        result.action_said_s = round(logged_at(line) - wall, 3)
                if result.restored_logged >= n and result.fail2ban_s is None:
                    result.fail2ban_s = round(now, 3)
            # Once every ban holds, the kernel is read only now and then, and once at the end (a ban
            # lost again must show): a dump of 1,000,000 elements takes most of a core, which
            # fail2ban's own pass would otherwise share.
            counted = time.monotonic()
            recount = result.enforced_s is None or counted >= recount_at
            enforced = count() if recount else result.series[-1][1]
            took = time.monotonic() - counted
            if recount and result.enforced_s is not None:
                recount_at = counted + max(LATER_POLL, 10 * took)
            if enforced < 0:
                enforced = result.restored_logged
            result.series.append((round(now, 3), enforced))
            if enforced >= n and result.enforced_s is None:
                result.enforced_s = round(now, 3)
                result.vmhwm_enforced_kib = vmhwm(server.pid)
            if server.poll() is not None:
                result.errors.append(f"fail2ban-server exited with {server.returncode}")
                break
            if (result.enforced_s is not None and result.fail2ban_s is not None) or now >= cap:
                break
            # As far apart as the count took at least: the kernel's dump of a large set is slow (0.2 to
            # 0.6 s at 100,000), and the bench must not take more than half of what it measures.
            step = max(FAST_POLL if now < FAST_FOR else POLL, 2 * took)
            time.sleep(max(0.0, step - (time.monotonic() - start - now)))
        result.vmhwm_kib = vmhwm(server.pid)
        final = count() if result.enforced_s is not None and server.poll() is None else -1
        if final >= 0:
            result.series.append((round(time.monotonic() - start, 3), final))  # what the kernel holds at the end
    finally:
        ns.delete()
        if server is not None:
            server.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(workdir, "fail2ban.sqlite3"))  # a copy of the template, up to 100 MB
    return result
