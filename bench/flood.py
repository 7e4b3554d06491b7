"""A banned flood: 1,000 banned addresses send TCP SYNs at the host's mail ports as fast as one process
can, while a bystander keeps connecting; per ruleset, what the host drops, its CPU per packet, and
whether the bystander is served. Sets up its own namespaces (run it as root); prints one JSON line.

Two namespaces on one veth pair: "host" (198.51.100.1, 2001:db8::1, listeners on 25/465/587) and
"attacker", which holds the bystander's addresses too (198.51.100.20, 2001:db8::20): its connections
share the wire, and the host's receive path, with the flood. The flood is 500 sources from
192.0.2.0/24 and 203.0.113.0/24 and 500 from 2001:db8:ffff::/48, every one banned: prebuilt Ethernet
frames in an AF_PACKET TX ring, handed to the kernel in a tight loop by a process pinned to CPU 0.

Cases: "wire" (frames for another MAC, which the host's IP never takes: the send and the veth
alone); "none" (no ban); f2bext's two backends as their start() builds them (input hook, priority
-10), the nftables one with blocktype drop too; "f2bext-nftables-raw" and "-raw-drop" (its table
and sets, the rules moved to prerouting at priority raw behind `fib daddr type local`) and
"f2bext-ipset-raw-drop" (its rules moved to the raw table's PREROUTING behind `-m addrtype
--dst-type LOCAL`), both built here, not by the backends; fail2ban's stock nftables-multiport and
iptables-ipset-proto6 as their actionstart/actionban build them. Each without conntrack, and with
the seed firewall's conntrack rule loaded.

CPU: a veth hands each frame to the host's receive backlog on the sending CPU, and the host's whole
receive path (IP, conntrack, netfilter, the drop or reject) runs there in softirq as the send leaves
its bottom-half section, inside the sender's system call or, if it falls behind, in ksoftirqd. So the
sender's and CPU 0's ksoftirqd's run time (schedstat, in nanoseconds) per frame is what one frame
costs end to end; less the "wire" case's, it is the host's CPU per packet. CPU 0's softirq ticks
(/proc/stat) per frame are shown beside it as a coarser check. The bystander, the listeners and the
firewall tools run on CPU 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from f2bext import lab  # noqa: E402
from f2bext.lab.netns import Netns, wire  # noqa: E402
from floodsend import FLOOD_CPU, HOST4, HOST6, PORTS, runtime_ns, sources  # noqa: E402

PEER4, PEER6 = "198.51.100.2", "2001:db8::2"  # the attacker's own end, the host's gateway
BYSTANDER4, BYSTANDER6 = "198.51.100.20", "2001:db8::20"
JAIL = "postfix"
OTHER_CPU = 1  # the bystander, the listeners, the firewall tools; the flood has FLOOD_CPU
CASES = ("none", "f2bext-nftables", "f2bext-nftables-drop", "f2bext-nftables-raw", "f2bext-nftables-raw-drop",
         "f2bext-ipset", "f2bext-ipset-raw-drop",
         "nftables-multiport", "iptables-ipset-proto6")


# ---- the host's rules, one builder per case ---------------------------------------------------------

def _spec(blocktype: str = "reject"):
    from f2bext.spec import JailSpec
    return JailSpec.from_params(JAIL, {"port": "smtp,ssmtp,submission", "blocktype": blocktype})


def _nets(addrs: list[str]) -> list:
    return [ipaddress.ip_network(a) for a in addrs]


def f2bext_backend(name: str, blocktype: str = "reject") -> Callable[[Netns, str, list[str]], None]:
    def build(host: Netns, workdir: str, addrs: list[str]) -> None:
        from f2bext.backends import get_backend
        with host.entered():
            get_backend(name).start(_spec(blocktype), _nets(addrs))
    return build


def raw_prerouting(blocktype: str = "reject") -> Callable[[Netns, str, list[str]], None]:
    """f2bext-nftables' table and sets, its rules moved to prerouting at priority raw, ahead of
    conntrack, and scoped to the host's own addresses with `fib daddr type local`."""
    def build(host: Netns, workdir: str, addrs: list[str]) -> None:
        from f2bext.backends.nft.build import FAMILY, SET_KINDS, TABLE, build_rule_exprs, chain_name
        spec = _spec(blocktype)
        f2bext_backend("nftables", blocktype)(host, workdir, addrs)
        chain = chain_name(JAIL, "prerouting")
        local = {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}
        cmds: list[dict[str, Any]] = [
            {"delete": {"chain": {"family": FAMILY, "table": TABLE, "name": chain_name(JAIL, "input")}}},
            {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": chain, "type": "filter",
                               "hook": "prerouting", "prio": -300, "policy": "accept"}}}]
        for kind in SET_KINDS:
            cmds.append({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain,
                                          "expr": [local, *build_rule_exprs(spec, kind)]}}})
        host.run(["nft", "-j", "-f", "-"], input=json.dumps({"nftables": cmds}))
    return build


def ipset_raw(host: Netns, workdir: str, addrs: list[str]) -> None:
    """f2bext-ipset's sets and rules, the rules moved from INPUT to the raw table's PREROUTING behind
    `-m addrtype --dst-type LOCAL`; DROP, since iptables refuses REJECT outside the filter table."""
    from f2bext.backends.ipset.build import rule_args
    spec = _spec("drop")
    f2bext_backend("ipset", "drop")(host, workdir, addrs)
    for family in (4, 6):
        for args in rule_args(spec, family):
            host.run([lab.iptables(family), "-w", "-D", "INPUT", *args])
            host.run([lab.iptables(family), "-w", "-t", "raw", "-A", "PREROUTING", "-m", "addrtype",
                      "--dst-type", "LOCAL", *args])


def stock(action: str) -> Callable[[Netns, str, list[str]], None]:
    """A stock action as fail2ban builds it: its actionstart run by fail2ban's own CommandAction (one
    IPv4 and one IPv6 ban start both families), the other bans added as its actionban would."""
    def build(host: Netns, workdir: str, addrs: list[str]) -> None:
        import actiontime
        import restore
        from fail2ban.server.actions import Actions
        restore.BenchLab(host, workdir, action).write_config()
        warm = [addrs[0], addrs[-1]]
        with host.entered():
            jail, _name, act = actiontime.build_jail(os.path.join(workdir, "etc"))
            for ip in warm:
                t = actiontime.ticket(ip)
                jail.actions.banManager.addBanTicket(t)
                act.ban(Actions.ActionInfo(t, jail))
            actiontime.preload_kernel(action, act, addrs[1:-1])
    return build


BUILDERS = {"none": lambda host, workdir, addrs: None,
            "wire": lambda host, workdir, addrs: None,
            "f2bext-nftables": f2bext_backend("nftables"),
            "f2bext-nftables-drop": f2bext_backend("nftables", "drop"),
            "f2bext-nftables-raw": raw_prerouting(),
            "f2bext-nftables-raw-drop": raw_prerouting("drop"),
            "f2bext-ipset": f2bext_backend("ipset"),
            "f2bext-ipset-raw-drop": ipset_raw,
            "nftables-multiport": stock("nftables-multiport"),
            "iptables-ipset-proto6": stock("iptables-ipset-proto6")}


# ---- counters -------------------------------------------------------------------------------------

def ip_counters() -> dict[str, int]:
    """Packets IP received and delivered, both families, in the calling thread's namespace."""
    out = {}
    with open("/proc/thread-self/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Ip:")]
    fields = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    out["in4"], out["delivered4"] = fields["InReceives"], fields["InDelivers"]
    with open("/proc/thread-self/net/snmp6") as f:
        fields6 = dict((k, int(v)) for k, v in (line.split() for line in f))
    out["in6"], out["delivered6"] = fields6["Ip6InReceives"], fields6["Ip6InDelivers"]
    return out


def cpu_ticks(cpu: int) -> dict[str, int]:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = list(map(int, line.split()[1:]))
                return {"busy": v[5] + v[6], "steal": v[7], "total": sum(v[:8])}  # irq + softirq
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def backlog_drops(cpu: int) -> int:
    """Packets the CPU's receive backlog had no room for (softnet_stat's second column)."""
    with open("/proc/net/softnet_stat") as f:
        return int(f.readlines()[cpu].split()[1], 16)


def conntrack_banned(host: Netns, banned: set[str]) -> int:
    """Conntrack entries whose original source is one of the banned addresses."""
    out = host.run(["conntrack", "-L"], check=False).stdout
    return sum(1 for line in out.splitlines() if line.split("src=", 1)[-1].split(" ", 1)[0] in banned)


def ksoftirqd(cpu: int) -> str:
    """The pid of the CPU's ksoftirqd, which takes over softirq work the sender leaves; "" inside a PID
    namespace, whose /proc shows no kernel thread (the sender's own time then stands alone, and the
    answer says so: `ksoftirqd_seen`)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == f"ksoftirqd/{cpu}":
                    return pid
        except OSError:
            continue
    return ""


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


# ---- the host's listeners and the bystander ---------------------------------------------------------

def listen(host: Netns, stop: threading.Event, ready: threading.Event) -> None:
    """Accept and close on every port, both families, until stopped (a thread in the host's namespace)."""
    sel = selectors.DefaultSelector()
    with host.entered():
        for family, addr in ((socket.AF_INET, HOST4), (socket.AF_INET6, HOST6)):
            for port in PORTS:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, port))
                s.listen(512)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
    ready.set()
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            try:
                key.fileobj.accept()[0].close()
            except BlockingIOError:
                continue
    for key in list(sel.get_map().values()):
        key.fileobj.close()


class Bystander:
    """Connects to the host's ports in turn, both families, from an unbanned address; each connect
    gets one second (a lost SYN is resent after one, so a lost SYN is a failure)."""

    def __init__(self, ns: Netns, interval: float) -> None:
        self.ns, self.interval = ns, interval
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.ns.entered():
            i = 0
            while not self.stop.is_set():
                family, src, dst = ((socket.AF_INET, BYSTANDER4, HOST4) if i % 2 == 0
                                    else (socket.AF_INET6, BYSTANDER6, HOST6))
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.bind((src, 0))
                    begin = time.perf_counter()
                    try:
                        s.connect((dst, PORTS[(i // 2) % len(PORTS)]))
                        self.latencies.append(time.perf_counter() - begin)
                    except OSError:
                        self.failed += 1
                i += 1
                self.stop.wait(self.interval)

    def __enter__(self) -> "Bystander":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict[str, Any]:
        done = sorted(self.latencies)
        tries = len(done) + self.failed
        return {"tries": tries, "served": len(done), "served_pct": round(100 * len(done) / tries, 1) if tries else None,
                "p50_ms": round(done[len(done) // 2] * 1e3, 2) if done else None,
                "p99_ms": round(done[min(len(done) - 1, int(0.99 * len(done)))] * 1e3, 2) if done else None}


# ---- the lab and one run ----------------------------------------------------------------------------

def build_lab() -> tuple[Netns, Netns]:
    host, attacker = Netns.create("flhost"), Netns.create("flatt")
    try:
        wire(host, "eth0", attacker, "eth0")
        for cidr in (f"{HOST4}/24", f"{HOST6}/64"):
            host.add_address("eth0", cidr)
        for cidr in (f"{PEER4}/24", f"{BYSTANDER4}/24", f"{PEER6}/64", f"{BYSTANDER6}/64"):
            attacker.add_address("eth0", cidr)
        # The host answers the banned sources (a reject) through the attacker, which drops what it gets.
        host.run(["ip", "route", "add", "default", "via", PEER4])
        host.run(["ip", "-6", "route", "add", "default", "via", PEER6])
    except BaseException:
        host.delete()
        attacker.delete()
        raise
    return host, attacker


def mac(ns: Netns) -> str:
    return ns.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip().replace(":", "")


def reset(host: Netns) -> None:
    host.run(["nft", "flush", "ruleset"])  # iptables-nft's tables too
    host.run(["ipset", "destroy"], check=False)


class Window:
    """The host's counters over a stretch of time, and the run time of CPU 0's ksoftirqd."""

    def __init__(self, host: Netns, softirqd: str) -> None:
        self.host, self.softirqd = host, softirqd

    def __enter__(self) -> "Window":
        with self.host.entered():
            self.ip = ip_counters()
        self.cpu, self.backlog, self.ran = cpu_ticks(FLOOD_CPU), backlog_drops(FLOOD_CPU), runtime_ns(self.softirqd)
        self.begin = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.monotonic() - self.begin
        self.ran = runtime_ns(self.softirqd) - self.ran
        with self.host.entered():
            self.ip = delta(ip_counters(), self.ip)
        cpu = delta(cpu_ticks(FLOOD_CPU), self.cpu)
        self.softirq = cpu["busy"] / cpu["total"] if cpu["total"] else 0.0
        self.steal = cpu["steal"] / cpu["total"] if cpu["total"] else 0.0
        self.backlog = backlog_drops(FLOOD_CPU) - self.backlog


SENDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floodsend.py")
OTHERHOST_MAC = "020000000001"  # the "wire" case: frames for another host, dropped before IP looks


def run_case(lab_: tuple[Netns, Netns, str], case: str, conntrack: bool, args: argparse.Namespace,
             addrs: list[str], quiet: float) -> dict[str, Any]:
    host, attacker, softirqd = lab_
    reset(host)
    BUILDERS[case](host, os.path.join(args.workdir, case), addrs)
    if conntrack:
        lab.apply_seed_firewall(host)
    host.run(["conntrack", "-F"], check=False)
    dst = OTHERHOST_MAC if case == "wire" else mac(host)
    sender = attacker.popen([lab.PYTHON, SENDER, "--seconds", str(args.seconds),
                             "--sources", str(args.sources), "--src-mac", mac(attacker), "--dst-mac", dst],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if sender.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the sender did not start ({sender.wait()})")
        with Window(host, softirqd) as w, Bystander(attacker, args.interval) as by:
            sender.stdin.write("go\n")
            sender.stdin.flush()
            sent = json.loads(sender.stdout.readline())
    finally:
        sender.kill()
        sender.wait()
    received = w.ip["in4"] + w.ip["in6"]
    dropped = (w.ip["in4"] - w.ip["delivered4"]) + (w.ip["in6"] - w.ip["delivered6"])
    frames = sent["sent"] or 1
    return {"case": case, "conntrack": conntrack, "sent": sent["sent"], "sent_pps": round(sent["sent"] / sent["seconds"]),
            "received": received, "dropped": dropped, "dropped_pps": round(dropped / w.seconds),
            "backlog_drops": w.backlog, "ns_per_packet": round((sent["run_ns"] + w.ran) / frames),
            "flood_cpu_pct": round(100 * (sent["run_ns"] + w.ran) / 1e9 / sent["seconds"], 1),
            "softirq_pct": round(100 * w.softirq, 1), "steal_pct": round(100 * w.steal, 1),
            "softirq_ns_per_packet": round(max(0.0, w.softirq - quiet) * w.seconds / frames * 1e9),
            "ct_banned": conntrack_banned(host, set(addrs)), "bystander": by.summary()}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case and conntrack setting, the medians over rounds; host_ns_per_packet is the flood's
    cost above the wire's (the send, the veth, a frame the host's IP never takes)."""
    wire = statistics.median(r["ns_per_packet"] for r in runs if r["case"] == "wire")
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(f"{r['case']}{' ct' if r['conntrack'] else ''}", []).append(r)
    out = {}
    for key, rows in groups.items():
        def med(field: str) -> Any:
            values = [r[field] for r in rows if r[field] is not None]
            return round(statistics.median(values)) if values else None
        served = [r["bystander"]["served_pct"] for r in rows if r["bystander"]["served_pct"] is not None]
        p99 = [r["bystander"]["p99_ms"] for r in rows if r["bystander"]["p99_ms"] is not None]
        host_ns = med("ns_per_packet") - round(wire)
        out[key] = {"dropped_pps": med("dropped_pps"), "sent_pps": med("sent_pps"), "ns_per_packet": med("ns_per_packet"),
                    "host_ns_per_packet": host_ns, "core_capacity_pps": round(1e9 / host_ns) if host_ns > 0 else None,
                    "softirq_ns_per_packet": med("softirq_ns_per_packet"),
                    "ct_banned": max(r["ct_banned"] for r in rows), "bystander_served_pct": min(served) if served else None,
                    "bystander_p99_ms": max(p99) if p99 else None}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.5, help="length of each flood")
    p.add_argument("--rounds", type=int, default=2, help="passes through every case, interleaved")
    p.add_argument("--sources", type=int, default=1000, help="banned sources (half IPv4, half IPv6)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--conntrack", choices=("off", "on", "both"), default="both",
                   help="on: the seed firewall's conntrack rule loaded (conntrack then sees every packet)")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between the bystander's connects")
    p.add_argument("--workdir", default="/tmp/f2bext-flood")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in BUILDERS]
    if unknown or not cases:
        p.error(f"unknown case {unknown[0][:40]!r}" if unknown else "no case")
    if (os.cpu_count() or 1) < 2 or args.seconds <= 0 or args.rounds < 1:
        p.error("needs two CPUs, --seconds > 0 and --rounds >= 1")
    os.sched_setaffinity(0, {OTHER_CPU})  # the bystander, the listeners, the firewall tools
    try:
        addrs = sources(args.sources)
    except ValueError as e:
        p.error(f"--sources: {e}")
    conntracks = {"off": (False,), "on": (True,), "both": (False, True)}[args.conntrack]
    host, attacker = build_lab()
    stop, ready = threading.Event(), threading.Event()
    listener = threading.Thread(target=listen, args=(host, stop, ready), daemon=True)
    try:
        listener.start()
        ready.wait(10)
        with Window(host, ksoftirqd(FLOOD_CPU)) as quiet, Bystander(attacker, args.interval) as by:
            time.sleep(1.0)
        out: dict[str, Any] = {"seconds": args.seconds, "rounds": args.rounds, "sources": args.sources,
                               "cpu": FLOOD_CPU, "ksoftirqd_seen": bool(ksoftirqd(FLOOD_CPU)),
                               "quiet_softirq_pct": round(100 * quiet.softirq, 1), "quiet_bystander": by.summary(),
                               "runs": []}
        plan = [("wire", False)] + [(c, ct) for ct in conntracks for c in cases]
        for _ in range(args.rounds):
            for case, conntrack in plan:
                out["runs"].append(run_case((host, attacker, ksoftirqd(FLOOD_CPU)), case, conntrack, args, addrs,
                                            quiet.softirq))
        out["summary"] = summarize(out["runs"])
    finally:
        stop.set()
        listener.join(5)
        host.delete()
        attacker.delete()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
