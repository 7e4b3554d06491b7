"""Redis with Sentinel in the lab, for the failover tests and the bench: on each given namespace one
redis-server (the first the master, the others its replicas) and one Sentinel (Debian's redis-server
run with --sentinel), timeouts small so a failover takes seconds; and a flow of bans asked of
several servers, timed until every server's kernel holds each."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import threading
import time
from typing import Optional

from ..f2bsocket import Fail2banSocket
from . import Fail2banLab
from .netns import Netns

SERVICE = "fleet"
PASSWORD, SENTINEL_PASSWORD = "s3cret-master", "s3cret-sentinel"
PORT, SENTINEL_PORT = 6379, 26379
DOWN_AFTER_MS = 1000  # a master silent this long is down, to a Sentinel
FAILOVER_TIMEOUT_MS = 3000


class SentinelLab:
    """Three (or more) Redis nodes and their Sentinels; node i listens on addresses[i], in the i-th
    namespace start() is given (the URL is known before: the servers that share need it first).
    tls: a folder with ca.pem, redis.pem and redis.key (for every address): TLS only, replication and
    the Sentinels' links included."""

    def __init__(self, folder: str, addresses: list[str], tls: str = "") -> None:
        self.folder, self.addresses, self.tls = folder, addresses, tls
        self.spaces: list[Netns] = []
        self.redis: list[Optional[subprocess.Popen]] = [None] * len(addresses)
        self.sentinels: list[Optional[subprocess.Popen]] = [None] * len(addresses)
        members = ",".join(f"{address}:{SENTINEL_PORT}" for address in addresses)
        self.url = (f"redis{'s' if tls else ''}+sentinel://:{PASSWORD}@{members}/{SERVICE}/0"
                    f"?sentinel_password={SENTINEL_PASSWORD}" + (f"&ssl_ca_certs={tls}/ca.pem" if tls else ""))

    def _listen(self, port: int) -> str:
        if not self.tls:
            return f"port {port}\n"
        return (f"port 0\ntls-port {port}\ntls-cert-file {self.tls}/redis.pem\ntls-key-file {self.tls}/redis.key\n"
                f"tls-ca-cert-file {self.tls}/ca.pem\ntls-auth-clients no\ntls-replication yes\n")

    def _cli(self, i: int, port: int, password: str, args: tuple[str, ...]) -> str:
        tls = ["--tls", "--cacert", f"{self.tls}/ca.pem"] if self.tls else []
        return self.spaces[i].run(["redis-cli", "-h", self.addresses[i], "-p", str(port), *tls, "--no-auth-warning",
                                   "-a", password, *args], check=False, timeout=10).stdout

    def _dir(self, i: int) -> str:
        path = os.path.join(self.folder, f"redis{i}")
        os.makedirs(path, exist_ok=True)
        return path

    def start(self, spaces: list[Netns]) -> None:
        self.spaces = spaces
        for i in range(len(spaces)):
            self.start_redis(i, replica_of=None if i == 0 else self.addresses[0])
        for i in range(len(spaces)):
            self.start_sentinel(i)
        Fail2banLab.wait(lambda: all("master_link_status:up" in self.cli(i, "INFO", "replication")
                                     for i in range(1, len(spaces))), "every replica in sync")
        Fail2banLab.wait(lambda: all(len(self.replicas(i)) == len(spaces) - 1 for i in range(len(spaces))),
                         "every Sentinel to see every replica")

    def start_redis(self, i: int, replica_of: Optional[str]) -> None:
        """Node i's redis-server, on the configuration it was first given (a master comes back as one:
        the Sentinels turn it into a replica)."""
        ns, address = self.spaces[i], self.addresses[i]
        conf = os.path.join(self._dir(i), "redis.conf")
        if not os.path.exists(conf):
            with open(conf, "w") as f:
                f.write(f"bind {address}\n{self._listen(PORT)}dir {self._dir(i)}\nrequirepass {PASSWORD}\n"
                        f"masterauth {PASSWORD}\nlogfile {self._dir(i)}/redis.log\n"
                        f"repl-diskless-sync-delay 0\nappendonly yes\nsave \"\"\ndaemonize no\n"
                        + (f"replicaof {replica_of} {PORT}\n" if replica_of else ""))
        self.redis[i] = ns.popen(["redis-server", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        Fail2banLab.wait(lambda: self.cli(i, "PING").strip() == "PONG", f"redis-server {i}")

    def start_sentinel(self, i: int) -> None:
        ns, address = self.spaces[i], self.addresses[i]
        conf = os.path.join(self._dir(i), "sentinel.conf")
        with open(conf, "w") as f:  # the Sentinel rewrites it: it must be its own, and writable
            f.write(f"bind {address}\n{self._listen(SENTINEL_PORT)}dir {self._dir(i)}\ndaemonize no\n"
                    f"requirepass {SENTINEL_PASSWORD}\nlogfile {self._dir(i)}/sentinel.log\n"
                    f"sentinel monitor {SERVICE} {self.addresses[0]} {PORT} 2\n"
                    f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n")
        self.sentinels[i] = ns.popen(["redis-server", conf, "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        Fail2banLab.wait(lambda: self.sentinel_cli(i, "PING").strip() == "PONG", f"sentinel {i}")

    def kill_redis(self, i: int) -> None:
        """SIGKILL: no shutdown, no last write passed on to the replicas."""
        proc = self.redis[i]
        if proc:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.redis[i] = None

    def stop(self) -> None:
        for proc in self.sentinels + self.redis:
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()

    def cli(self, i: int, *args: str) -> str:
        return self._cli(i, PORT, PASSWORD, args)

    def sentinel_cli(self, i: int, *args: str) -> str:
        return self._cli(i, SENTINEL_PORT, SENTINEL_PASSWORD, args)

    def master(self, i: int = 0) -> str:
        """The master's address as Sentinel i names it."""
        return self.sentinel_cli(i, "SENTINEL", "get-master-addr-by-name", SERVICE).split("\n")[0].strip()

    def replicas(self, i: int) -> list[str]:
        out = self.sentinel_cli(i, "SENTINEL", "replicas", SERVICE).split("\n")
        return [out[n + 1] for n, word in enumerate(out[:-1]) if word == "name"]

    def node_of(self, address: str) -> int:
        return self.addresses.index(address)

    def role(self, i: int) -> str:
        """"master" or "slave" (ROLE's word; "replica" read as it, should a Redis say that)."""
        role = self.cli(i, "ROLE").split("\n")[0].strip()
        return "slave" if role == "replica" else role

    def wait_role(self, i: int, role: str, timeout: float = 60) -> float:
        """Until node i is a "master" or a "slave" (the Sentinels take about 10 s to convert a master
        that came back)."""
        return Fail2banLab.wait(lambda: self.role(i) == role, f"redis-server {i} to be a {role}", timeout=timeout)


def held(ns: Netns, jail: str = "postfix") -> set[str]:
    """Every IPv4 address a server's kernel holds for the jail: its own bans and the shared ones."""
    out: set[str] = set()
    for kind in ("v4", "rv4"):
        listing = ns.run(["nft", "-j", "list", "set", "inet", "f2bext", f"{jail}-{kind}"], check=False).stdout
        for item in json.loads(listing or '{"nftables": []}')["nftables"]:
            out.update(str(e) for e in item.get("set", {}).get("elem", []))
    return out


class BanFlow:
    """Bans asked of each server in turn, `rate` a second, in one thread (through fail2ban's socket);
    another notes when each is first held by every server's kernel."""

    def __init__(self, servers: dict[str, Fail2banLab], rate: float = 10.0, base: str = "100.64.0.0") -> None:
        self.servers, self.rate, self.base = servers, rate, ipaddress.IPv4Address(base)
        self.asked: dict[str, tuple[str, float]] = {}  # address -> (the server asked, when)
        self.everywhere: dict[str, float] = {}  # address -> when the last server's kernel held it
        self._banning, self._watching = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=self._ban, daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def settle(self, timeout: float = 60) -> None:
        """Stop asking; wait until every ban asked is held everywhere (TimeoutError naming the rest)."""
        self._banning.set()
        self._threads[0].join()
        try:
            Fail2banLab.wait(lambda: set(self.asked) <= set(self.everywhere),
                             f"every ban everywhere (missing: {sorted(set(self.asked) - set(self.everywhere))[:5]})",
                             timeout=timeout)
        finally:
            self._watching.set()
            self._threads[1].join()

    def latencies(self, since: float = 0.0) -> list[float]:
        """Seconds from each ban asked at `since` or later to every kernel holding it."""
        return sorted(self.everywhere[a] - t for a, (_, t) in self.asked.items() if t >= since and a in self.everywhere)

    def _ban(self) -> None:
        names = sorted(self.servers)
        sockets = {n: Fail2banSocket(os.path.join(self.servers[n].workdir, "fail2ban.sock")) for n in names}
        start, n = time.time(), 0
        try:
            while not self._banning.is_set():
                name, address = names[n % len(names)], str(self.base + n + 1)
                self.asked[address] = (name, time.time())
                sockets[name].send(["set", "postfix", "banip", address])
                n += 1
                self._banning.wait(max(0.0, start + n / self.rate - time.time()))
        finally:
            for sock in sockets.values():
                sock.__exit__(None, None, None)

    def _watch(self) -> None:
        while not self._watching.is_set():
            common = set.intersection(*(held(s.ns) for s in self.servers.values()))
            now = time.time()
            for address in common & set(self.asked):
                self.everywhere.setdefault(address, now)
            self._watching.wait(0.1)
