"""Fleet sharing figures, in the namespace lab with real fail2ban-servers and a real redis-server:
propagation latency A -> B at 100 bans/s (from the ban asked of A, and from A's kernel), catch-up of 100,000 current bans on a fresh server, and
Redis memory per 100,000 bans; and the failover: three servers sharing through Redis Sentinel (three
redis-servers, three Sentinels), the master killed with SIGKILL while bans flow: the time until bans
propagate again, and the bans lost. Writes bench/out/fleet.json (--failover-only: fleet-failover.json).

    /usr/bin/python3 bench/fleet.py [--bans 500] [--catchup 100000] [--failovers 3] [--failover-only]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from f2bext import lab  # noqa: E402
from f2bext.f2bsocket import Fail2banSocket  # noqa: E402
from f2bext.fleet import CURRENT, STREAM, STREAM_MAXLEN  # noqa: E402
from f2bext.lab.sentinel import BanFlow, SentinelLab  # noqa: E402

PASSWORD = "bench-secret"


def start_redis(folder: str) -> tuple[subprocess.Popen, str]:
    sock = os.path.join(folder, "redis.sock")
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                             "--requirepass", PASSWORD, "--save", "", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.Fail2banLab.wait(lambda: os.path.exists(sock), "redis-server")
    time.sleep(0.2)
    return proc, sock


def redis_client(sock: str):
    import redis
    return redis.Redis(unix_socket_path=sock, password=PASSWORD)


def share_jail(sock: str, origin: str, url: str = "") -> dict[str, str]:
    jail = {k: v for k, v in lab.DEFAULT_JAIL.items() if k != "banaction"}
    jail["action"] = (f'f2bext-nftables.py[port="smtp,ssmtp,submission", share="{url or f"unix://:{PASSWORD}@{sock}"}", '
                      f'share_origin="{origin}", kill="none"]')
    jail["bantime"] = "1d"
    return jail


def addresses(n: int, base: str = "100.64.0.0") -> list[str]:
    """Ban-list entries only: these addresses never carry traffic."""
    start = int(ipaddress.IPv4Address(base))
    return [str(ipaddress.IPv4Address(start + i)) for i in range(n)]


def element_times(ns, set_name: str) -> tuple[dict[str, float], subprocess.Popen]:
    """When each IPv4 address first appeared in `set_name` on `ns`, read from `nft monitor`."""
    seen: dict[str, float] = {}
    monitor = ns.popen(["nft", "monitor", "elements"], stdout=subprocess.PIPE, text=True)

    def read() -> None:
        for line in monitor.stdout:
            stamp = time.time()
            if f" {set_name} " in line:
                for token in line.replace("{", " ").replace("}", " ").replace(",", " ").split():
                    if token.count(".") == 3:
                        seen.setdefault(token, stamp)
    threading.Thread(target=read, daemon=True).start()
    return seen, monitor


def propagation(hosts: lab.Hosts, a: lab.Fail2banLab, b: lab.Fail2banLab, count: int,
                rate: float) -> tuple[list[float], list[float]]:
    """Seconds from the ban being asked of A (`banip` sent) to B's kernel holding it, and from A's
    kernel holding it to B's, both read from `nft monitor`."""
    on_a, monitor_a = element_times(a.ns, "postfix-v4")
    on_b, monitor_b = element_times(b.ns, "postfix-rv4")
    time.sleep(0.5)
    asked: dict[str, float] = {}
    with Fail2banSocket(os.path.join(a.workdir, "fail2ban.sock")) as f2b:
        start = time.time()
        for i, ip in enumerate(addresses(count, "100.65.0.0")):
            time.sleep(max(0.0, start + i / rate - time.time()))
            asked[ip] = time.time()  # the clock starts at the ban, before fail2ban has answered
            f2b.send(["set", "postfix", "banip", ip])
    lab.Fail2banLab.wait(lambda: len(on_b) >= count and len(on_a) >= count, "every ban on a and b", timeout=30)
    monitor_a.kill()
    monitor_b.kill()
    return ([on_b[ip] - asked[ip] for ip in asked if ip in on_b],
            [on_b[ip] - on_a[ip] for ip in asked if ip in on_b and ip in on_a])


def fill_redis(sock: str, count: int) -> int:
    """`count` current bans written as a publisher would; returns Redis' memory growth in bytes."""
    r = redis_client(sock)
    before = r.info("memory")["used_memory"]
    expires = time.time() + 86400
    pipe = r.pipeline(transaction=False)
    for i, ip in enumerate(addresses(count)):
        fields = {"op": "ban", "jail": "postfix", "address": ip, "bantime": "86400", "expires": str(expires),
                  "origin": "bench", "reason": "5 failures"}
        pipe.xadd(STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.zadd(CURRENT, {f"postfix {ip}": expires})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    return r.info("memory")["used_memory"] - before


def catch_up(hosts: lab.Hosts, folder: str, sock: str, count: int) -> float:
    """Seconds from a fresh server's fail2ban-server start until its kernel holds every current ban."""
    ns = lab.add_server(hosts, "srvc", "198.51.100.3", "2001:db8::3")
    workdir = os.path.join(folder, "c")
    os.mkdir(workdir)
    c = lab.Fail2banLab(hosts, workdir, jails={"postfix": share_jail(sock, "c")}, ns=ns)

    def held() -> int:
        out = ns.run(["nft", "-j", "list", "set", "inet", "f2bext", "postfix-rv4"], check=False).stdout
        return sum(len(i.get("set", {}).get("elem", [])) for i in json.loads(out or '{"nftables": []}')["nftables"])
    started = time.time()
    try:
        c.start()
        c.wait(lambda: held() >= count, f"{count} shared bans on c", timeout=120, step=0.25)
        return time.time() - started
    finally:
        c.stop()


def failover(rate: float, before: float, after: float) -> dict[str, float]:
    """One failover: bans asked of a, b and c in turn at `rate` a second, the master killed `before`
    seconds in; the figures from the kill: the Sentinels' new master, the first ban asked after the kill
    held by every server, the worst ban asked after it, and the bans never held everywhere."""
    addresses = {"a": lab.SERVER4, "b": "198.51.100.2", "c": "198.51.100.3"}
    with tempfile.TemporaryDirectory(prefix="f2bext-failover-") as folder, lab.hosts_up() as hosts:
        redis = SentinelLab(os.path.join(folder, "redis"), list(addresses.values()))
        servers: dict[str, lab.Fail2banLab] = {}
        try:
            for name, address in addresses.items():
                ns = hosts.server if name == "a" else lab.add_server(hosts, f"srv{name}", address, f"2001:db8::{name}")
                os.mkdir(os.path.join(folder, name))
                servers[name] = lab.Fail2banLab(hosts, os.path.join(folder, name), ns=ns,
                                                jails={"postfix": share_jail("", name, redis.url)})
                servers[name].start()
            redis.start([s.ns for s in servers.values()])
            for server in servers.values():  # every follower on the master before it dies
                server.wait(lambda: '"master_id": "' in server.client("get", "postfix", "action", "f2bext-nftables",
                                                                       "share_status").stdout, "sharing", timeout=30)
            flow = BanFlow(servers, rate=rate)
            flow.start()
            time.sleep(before)
            killed = time.time()
            redis.kill_redis(0)
            sentinels = lab.Fail2banLab.wait(lambda: redis.master(1) not in ("", lab.SERVER4), "the failover")
            time.sleep(after)
            try:
                flow.settle(timeout=60)
            except TimeoutError:
                pass  # counted below as lost
            later = [a for a, (_, t) in flow.asked.items() if t >= killed]
            held = [flow.everywhere[a] - killed for a in later if a in flow.everywhere]
            return {"bans": len(flow.asked), "sentinels_s": round(sentinels, 2),
                    "propagating_again_s": round(min(held), 2) if held else math.inf,
                    "worst_after_kill_s": round(max(flow.everywhere[a] - flow.asked[a][1] for a in later
                                                    if a in flow.everywhere), 2),
                    "lost": len(set(flow.asked) - set(flow.everywhere))}
        finally:
            for server in servers.values():
                server.stop()
            redis.stop()


def failovers(runs: int, rate: float) -> dict[str, object]:
    results = [failover(rate, before=3.0, after=6.0) for _ in range(runs)]
    for n, r in enumerate(results, 1):
        print(f"fleet: failover {n}: {r['bans']} bans at {rate:.0f}/s; the Sentinels named a new master "
              f"{r['sentinels_s']} s after the kill; bans held everywhere again {r['propagating_again_s']} s "
              f"after it (worst ban asked after the kill: {r['worst_after_kill_s']} s); lost {r['lost']}", file=sys.stderr)
    return {"failover_runs": results, "failover_rate_per_s": rate,
            "failover_propagating_again_s_max": max(r["propagating_again_s"] for r in results),
            "failover_bans_lost": sum(r["lost"] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bans", type=int, default=500, help="bans for the latency run (at --rate per second)")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--catchup", type=int, default=100_000)
    parser.add_argument("--failovers", type=int, default=3, help="failovers to time (a fresh lab each)")
    parser.add_argument("--failover-rate", type=float, default=20.0, help="bans a second while the master dies")
    parser.add_argument("--failover-only", action="store_true", help="time the failovers only")
    args = parser.parse_args()
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out_dir, exist_ok=True)
    if args.failover_only:
        figures = failovers(args.failovers, args.failover_rate)
        with open(os.path.join(out_dir, "fleet-failover.json"), "w") as f:
            json.dump(figures, f, indent=2)
        print(json.dumps(figures))
        return 0
    with tempfile.TemporaryDirectory(prefix="f2bext-fleet-") as folder, lab.hosts_up() as hosts:
        redis_proc, sock = start_redis(folder)
        servers = []
        try:
            b_ns = lab.add_server(hosts, "srvb", "198.51.100.2", "2001:db8::2")
            for name, ns in (("a", hosts.server), ("b", b_ns)):
                os.mkdir(os.path.join(folder, name))
                servers.append(lab.Fail2banLab(hosts, os.path.join(folder, name), jails={"postfix": share_jail(sock, name)},
                                               ns=ns))
                servers[-1].start()
            latencies, kernel_to_kernel = (sorted(x) for x in propagation(hosts, servers[0], servers[1],
                                                                          args.bans, args.rate))
            for server in servers:
                server.stop()
            redis_client(sock).flushall()
            memory = fill_redis(sock, args.catchup)
            catchup = catch_up(hosts, folder, sock, args.catchup)
        finally:
            for server in servers:
                server.stop()
            redis_proc.kill()
            redis_proc.wait()
    def p99(values: list[float]) -> float:
        return round(values[min(len(values) - 1, math.ceil(len(values) * 0.99) - 1)] * 1000, 1)
    result = {
        "propagation_bans": len(latencies), "rate_per_s": args.rate,
        "propagation_p50_ms": round(statistics.median(latencies) * 1000, 1), "propagation_p99_ms": p99(latencies),
        "kernel_to_kernel_p50_ms": round(statistics.median(kernel_to_kernel) * 1000, 1),
        "kernel_to_kernel_p99_ms": p99(kernel_to_kernel),
        "catchup_bans": args.catchup, "catchup_s": round(catchup, 2),
        "redis_bytes_per_100k_bans": round(memory * 100_000 / args.catchup),
        **failovers(args.failovers, args.failover_rate),
    }
    with open(os.path.join(out_dir, "fleet.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"fleet: ban asked of A -> B's kernel at {args.rate:.0f} bans/s: p50 {result['propagation_p50_ms']} ms, "
          f"p99 {result['propagation_p99_ms']} ms ({len(latencies)} bans); A's kernel -> B's kernel: "
          f"p50 {result['kernel_to_kernel_p50_ms']} ms, p99 {result['kernel_to_kernel_p99_ms']} ms", file=sys.stderr)
    print(f"fleet: catch-up of {args.catchup} current bans on a fresh server: {result['catchup_s']} s "
          f"(fail2ban-server start to every ban in the kernel)", file=sys.stderr)
    print(f"fleet: Redis memory for 100,000 bans (stream + current set): "
          f"{result['redis_bytes_per_100k_bans'] / 1e6:.1f} MB", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
