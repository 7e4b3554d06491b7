"""Real firewall managers in the lab's server namespace: firewalld on a private D-Bus system bus, and
ufw, each with private configuration bound over its /etc paths in a mount namespace of its own, so
nothing starts on the host, reads the host's configuration or touches the host's ruleset. (The doctor's
detection of a manager from a ruleset is f2bext/managers.py.)

    python3 -m f2bext.lab.managers leakwatch HOST PORT SECONDS   (in the attacker's namespace)
        connects every 20 ms for SECONDS and prints one JSON line: the seconds, from its start, at
        which a connection got through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

from .netns import Netns

FIREWALLD_SERVICES = ("smtp", "smtps", "smtp-submission")
UFW_PORTS = (25, 465, 587)
DAEMONS = ("firewalld", "dbus-daemon")


def in_mounts(binds: Sequence[tuple[str, str]], argv: Sequence[str]) -> list[str]:
    """argv run in a private mount namespace where each private path is bound over its target."""
    script = "".join('mount --bind "$1" "$2" && shift 2 && ' for _ in binds) + 'exec "$@"'
    flat = [p for pair in binds for p in pair]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *flat, *argv]


def _wait(cond, what: str, timeout: float, step: float = 0.2) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


DBUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

ZONE = """<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
  <description>The lab's mail server: smtp, smtps and submission open.</description>
{services}
</zone>
"""


class Firewalld:
    """firewalld --nofork --nopid in the server namespace, on its own dbus-daemon, with a private
    /etc/firewalld (copied from the package's, backend chosen, zone public opening the mail ports)."""

    def __init__(self, ns: Netns, workdir: str, backend: str = "nftables") -> None:
        self.ns, self.backend = ns, backend
        self.dir = os.path.join(workdir, "firewalld")
        self.etc = os.path.join(self.dir, "etc")
        self.socket = os.path.join(self.dir, "system_bus_socket")
        self.log = os.path.join(self.dir, "firewalld.log")
        self.env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={self.socket}")
        self.bus: Optional[subprocess.Popen] = None
        self.daemon: Optional[subprocess.Popen] = None

    def write_config(self) -> None:
        shutil.copytree("/etc/firewalld", self.etc, dirs_exist_ok=True)
        conf = os.path.join(self.etc, "firewalld.conf")
        with open(conf) as f:
            text = f.read()
        text = re.sub(r"(?m)^FirewallBackend=.*$", f"FirewallBackend={self.backend}", text)
        text = re.sub(r"(?m)^DefaultZone=.*$", "DefaultZone=public", text)
        with open(conf, "w") as f:
            f.write(text)
        os.makedirs(os.path.join(self.etc, "zones"), exist_ok=True)
        with open(os.path.join(self.etc, "zones", "public.xml"), "w") as f:
            f.write(ZONE.format(services="\n".join(f'  <service name="{s}"/>' for s in FIREWALLD_SERVICES)))
        with open(os.path.join(self.dir, "bus.conf"), "w") as f:
            f.write(DBUS_CONFIG.format(socket=self.socket))

    def start(self) -> None:
        if self.bus is None:
            self.write_config()
            self.bus = self.ns.popen(["dbus-daemon", f"--config-file={self.dir}/bus.conf", "--nofork", "--nopidfile"],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "dbus.log"), "a"))
            _wait(lambda: os.path.exists(self.socket), "the private D-Bus socket", 10, 0.05)
        self.daemon = self.ns.popen(
            in_mounts([(self.etc, "/etc/firewalld")], ["firewalld", "--nofork", "--nopid", "--log-target", "console"]),
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        _wait(lambda: self._state() == "running" or self.daemon.poll() is not None, "firewalld running", 60)
        if self.daemon.poll() is not None:
            raise RuntimeError(f"firewalld exited: {self.log_tail()}")

    def _state(self) -> str:
        return self.cmd("--state", check=False).stdout.strip()

    def cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ns.run(["firewall-cmd", *args], check=check, env=self.env, timeout=120)

    def reload(self) -> None:
        self.cmd("--reload")

    def complete_reload(self) -> None:
        self.cmd("--complete-reload")

    def stop_daemon(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()  # firewalld's own stop: CleanupOnExit removes its rules
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def restart(self) -> None:
        self.stop_daemon()
        self.start()

    def stop(self) -> None:
        self.stop_daemon()
        if self.bus and self.bus.poll() is None:
            self.bus.terminate()
            self.bus.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log) as f:
            return "".join(f.readlines()[-lines:])


class Ufw:
    """ufw in the server namespace with a private /etc/ufw, /etc/default/ufw and /lib/ufw (its lock
    file, through TESTSTATE, which changes nothing else), allowing the mail ports."""

    def __init__(self, ns: Netns, workdir: str, manage_builtins: bool = False) -> None:
        self.ns = ns
        self.dir = os.path.join(workdir, "ufw")
        self.binds = [(os.path.join(self.dir, "etc"), "/etc/ufw"), (os.path.join(self.dir, "default"), "/etc/default/ufw"),
                      (os.path.join(self.dir, "lib"), "/lib/ufw")]
        self.env = dict(os.environ, TESTSTATE="1")
        self.manage_builtins = manage_builtins

    def write_config(self) -> None:
        shutil.copytree("/etc/ufw", self.binds[0][0], dirs_exist_ok=True)
        shutil.copytree("/lib/ufw", self.binds[2][0], dirs_exist_ok=True)
        with open("/etc/default/ufw") as f:
            text = f.read()
        value = "yes" if self.manage_builtins else "no"
        with open(self.binds[1][0], "w") as f:
            f.write(re.sub(r"(?m)^MANAGE_BUILTINS=.*$", f"MANAGE_BUILTINS={value}", text))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return self.ns.run(in_mounts(self.binds, ["ufw", *args]), env=self.env, timeout=120)

    def start(self) -> None:
        self.write_config()
        for port in UFW_PORTS:
            self.run("allow", f"{port}/tcp")
        self.run("--force", "enable")

    def reload(self) -> None:
        self.run("reload")

    def cycle(self) -> None:
        """`ufw disable; ufw --force enable`, as an admin does to start over."""
        self.run("disable")
        self.run("--force", "enable")


# ---- keeping the host out of it ----------------------------------------------------------------

def host_ruleset() -> str:
    """The host's own ruleset, as text, to compare before and after."""
    parts = []
    for argv in (["nft", "list", "ruleset"], ["iptables-save"], ["ip6tables-save"]):
        done = subprocess.run(argv, capture_output=True, text=True)
        parts.append(done.stdout)
    text = "\n".join(line for part in parts for line in part.splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]", "", text)


def _netns_of(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _program(argv: list[str]) -> str:
    """firewalld runs as `python3 /usr/sbin/firewalld ...`: the first argument that is a daemon's name."""
    for arg in argv[:2]:
        if os.path.basename(arg) in DAEMONS:
            return os.path.basename(arg)
    return ""


def daemons_of(workdir: str) -> list[tuple[int, str, str]]:
    """(pid, program, its network namespace) of every firewalld or dbus-daemon started for workdir
    (named in its arguments or its environment: the private bus's address)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode("utf-8", "replace").split("\0")
            program = _program(argv)
            if not program:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if workdir in " ".join(argv) or workdir in environ:
            found.append((int(pid), program, _netns_of(pid)))
    return found


def netns_id(ns: Netns) -> str:
    return "net:[%d]" % os.stat(f"/run/netns/{ns.name}").st_ino


# ---- the leak window ---------------------------------------------------------------------------

def leakwatch(host: str, port: int, seconds: float) -> list[float]:
    """The times (from the start) at which a connection to host:port got through."""
    start, through = time.monotonic(), []
    while time.monotonic() - start < seconds:
        t = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=0.2):
                through.append(round(t - start, 3))
        except OSError:
            pass
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
    return through


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "leakwatch":
        print(json.dumps(leakwatch(argv[1], int(argv[2]), float(argv[3]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
