"""A real Docker daemon in the lab's server namespace: dockerd with its own socket, exec root, data
root and pidfile, in a mount namespace of its own (private /run, /opt, /etc/docker: containerd writes
under /run and /opt), an image imported from Debian's busybox-static (no registry), and containers
published on the server's addresses. Nothing starts on the host, and nothing touches its ruleset."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from typing import Any, Optional, Sequence
from urllib.parse import quote

from . import PYTHON, lab_env
from .netns import Netns

BUSYBOX = "/bin/busybox"  # busybox-static: runs in an image that holds nothing else
IMAGE, IMAGE_TAG = "f2bext-lab/busybox", "latest"
# Docker's own networks inside the namespace, documentation addresses (RFC 5737 / RFC 3849).
BRIDGE4, BRIDGE6 = "192.0.2.1/24", "2001:db8:d0c::/64"
CONTAINER_PORT = 25
# What the container runs on CONTAINER_PORT: an SMTP-ish greeting, then one answer per line, so the
# lab's probe and hold clients talk to it as to the host's listeners.
SMTP_SCRIPT = "#!/bin/sh\necho '220 container ESMTP'\nwhile read line; do echo '250 ok'; done\n"

# The holder: PID of a process that keeps the mount namespace (and sits in the network namespace),
# so dockerd can be killed and started again in the same private /run, as an admin restarts it.
_MOUNTS = r"""
set -eu
mount --make-rprivate /
mkdir -p "$LAB/hostrun"
mount --bind /run "$LAB/hostrun"
mount -t tmpfs -o mode=0755 tmpfs /run
# One xtables lock for every iptables user in the namespace, as on a real host.
if [ -e "$LAB/hostrun/xtables.lock" ]; then touch /run/xtables.lock; mount --bind "$LAB/hostrun/xtables.lock" /run/xtables.lock; fi
umount -l "$LAB/hostrun"
# Where dockerd and containerd keep keys, plugins and config (only those that exist: none is made here).
for d in /opt /etc/docker /etc/containerd; do if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 tmpfs "$d"; fi; done
# `ip netns exec` mounted a fresh /sys without the cgroup hierarchies: mount the ones this kernel runs.
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
v1=$(sed -n 's/^[1-9][0-9]*:\([^:]*\):.*/\1/p' /proc/self/cgroup)
if [ -z "$v1" ]; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  for c in $v1; do d=${c#name=}; mkdir -p "/sys/fs/cgroup/$d"; mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$d"; done
  mkdir -p /sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified 2>/dev/null || true
fi
echo ready
exec sleep infinity
"""


def busybox_rootfs() -> bytes:
    """A tar of a root file system holding busybox-static, its applets as links, and the SMTP script."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes = b"", mode: int = 0o755, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname, info.size = mode, kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
        for d in ("bin", "srv", "tmp", "etc", "proc", "sys", "dev"):
            add(d, kind=tarfile.DIRTYPE)
        with open(BUSYBOX, "rb") as f:
            add("bin/busybox", f.read())
        for applet in ("sh", "nc", "cat", "sleep", "echo"):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("srv/smtp", SMTP_SCRIPT.encode())
    return out.getvalue()


class Dockerd:
    """dockerd in `ns`, in a private mount namespace; its containers, cgroups and state are the lab's."""

    def __init__(self, ns: Netns, workdir: str, tag: str, ipv6: bool = True) -> None:
        self.ns, self.tag, self.ipv6 = ns, tag, ipv6
        self.lab = os.path.join(workdir, "docker")
        self.data_root = os.path.join(self.lab, "data")
        self.log = os.path.join(self.lab, "dockerd.log")
        self.cgroup_parent = f"f2bext-{tag}"
        self.holder: Optional[subprocess.Popen] = None
        self.daemon: Optional[subprocess.Popen] = None

    # ---- the namespace ----

    def enter(self, argv: Sequence[str]) -> list[str]:
        """argv run in the daemon's network and mount namespaces. Entering a mount namespace resets the
        root to the namespace's own: --root keeps the holder's (a chroot's, as in CI's Debian 13 root)."""
        assert self.holder is not None
        return ["nsenter", "--target", str(self.holder.pid), "--mount", "--net", "--root", "--wd", *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(self.enter(argv), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
        return done

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """One call to Docker's Engine API on the daemon's socket (Debian 13 ships the `docker` client
        apart, Debian 12 with the daemon: the lab needs neither). JSON in and out; bytes go as a tar."""
        conn = _UnixHTTPConnection(f"/proc/{self.holder.pid}/root/run/docker.sock", timeout)  # type: ignore[union-attr]
        try:
            if isinstance(body, bytes):
                conn.request(method, path, body=body, headers={"Content-Type": "application/x-tar"})
            elif body is not None:
                conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            else:
                conn.request(method, path)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            raise RuntimeError(f"Docker refused {method} {path}: {response.status} {raw[:500]!r}")
        if response.getheader("Content-Type", "").startswith("application/json") and raw.strip():
            try:
                return json.loads(raw)
            except ValueError:
                return raw  # a stream of progress documents (an import)
        return raw

    def start(self) -> None:
        os.makedirs(self.lab, exist_ok=True)
        with open(os.path.join(self.lab, "daemon.json"), "w") as f:
            f.write("{}\n")  # never the host's /etc/docker/daemon.json
        env = dict(os.environ, LAB=self.lab)
        self.holder = self.ns.popen(["sh", "-c", _MOUNTS], env=env, stdout=subprocess.PIPE,
                                    stderr=open(os.path.join(self.lab, "holder.stderr"), "w"))
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != b"ready":
            raise RuntimeError("the Docker lab's mount namespace failed: "
                               + open(os.path.join(self.lab, "holder.stderr")).read())
        self.start_daemon()

    # ---- the daemon ----

    def daemon_argv(self) -> list[str]:
        argv = ["dockerd", "-H", "unix:///run/docker.sock", "--exec-root", "/run/docker",
                "--pidfile", "/run/docker.pid", "--data-root", self.data_root,
                "--config-file", os.path.join(self.lab, "daemon.json"), "--storage-driver", "vfs",
                "--iptables=true", "--bip", BRIDGE4, "--cgroup-parent", self.cgroup_parent,
                "--log-level", "info"]
        if self.ipv6:
            # Docker 20.10 keeps ip6tables behind --experimental; later versions accept it as well.
            argv += ["--ipv6", "--fixed-cidr-v6", BRIDGE6, "--ip6tables", "--experimental"]
        return argv

    def start_daemon(self, timeout: float = 60) -> None:
        log = open(self.log, "a")
        self.daemon = subprocess.Popen(self.enter(self.daemon_argv()), stdout=log, stderr=log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.api("GET", "/info", timeout=10).get("ID"):
                    return
            except (OSError, RuntimeError, http.client.HTTPException):
                pass
            if self.daemon.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not come up: {self.log_tail()}")

    def stop_daemon(self, timeout: float = 30) -> None:
        """What `systemctl stop docker` does: SIGTERM, then wait (dockerd stops its containers)."""
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def restart(self) -> None:
        self.stop_daemon()
        self.start_daemon()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return "(no dockerd log)"

    # ---- images and containers ----

    def import_image(self) -> None:
        """`docker import`: the image from a root file system tar, no registry."""
        progress = self.api("POST", f"/images/create?fromSrc=-&repo={quote(IMAGE)}&tag={IMAGE_TAG}",
                            busybox_rootfs())
        if b'"error"' in (progress if isinstance(progress, bytes) else json.dumps(progress).encode()):
            raise RuntimeError(f"Docker could not import the image: {progress!r:.500}")

    def run_smtp(self, name: str, published: int, port: int = CONTAINER_PORT, restart: str = "always") -> str:
        """`docker run -d --init --restart always -p PUBLISHED:PORT`: a container answering on `port`,
        published on the server's `published` (IPv4 and IPv6)."""
        spec = {"Image": f"{IMAGE}:{IMAGE_TAG}", "Cmd": ["nc", "-ll", "-p", str(port), "-e", "/srv/smtp"],
                "ExposedPorts": {f"{port}/tcp": {}},
                "HostConfig": {"PortBindings": {f"{port}/tcp": [{"HostIp": "", "HostPort": str(published)}]},
                               "RestartPolicy": {"Name": restart}, "Init": True}}
        created = self.api("POST", f"/containers/create?name={quote(name)}", spec)
        self.api("POST", f"/containers/{created['Id']}/start")
        return created["Id"]

    def remove(self, name: str) -> None:
        """`docker rm -f`."""
        self.api("DELETE", f"/containers/{quote(name)}?force=1")

    def inspect(self, name: str) -> dict[str, Any]:
        return self.api("GET", f"/containers/{quote(name)}/json")

    def addresses(self, name: str) -> list[str]:
        """The container's IPv4 and (with IPv6 on) IPv6 address on Docker's bridge."""
        net = self.inspect(name)["NetworkSettings"]
        return [a for a in (net.get("IPAddress"), net.get("GlobalIPv6Address")) if a]

    def wait_running(self, name: str, timeout: float = 30, port: int = CONTAINER_PORT) -> None:
        """Until the container answers on each of its addresses (its IPv6 one is usable only once
        duplicate address detection is over, a second or two after start)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                running = self.inspect(name)["State"]["Running"]
            except (OSError, RuntimeError, http.client.HTTPException):
                running = False
            if running and all(self.answers(address, port) for address in self.addresses(name)):
                return
            time.sleep(0.2)
        raise RuntimeError(f"container {name} is not serving: {self.log_tail()}")

    def answers(self, address: str, port: int) -> bool:
        probe = [PYTHON, "-m", "f2bext.lab.tools", "probe", address, str(port)]
        return self.ns.run(probe, check=False, env=lab_env(self.lab)).returncode == 0

    # ---- the end ----

    def stop(self) -> None:
        """Containers, dockerd (and its containerd), the lab's cgroups and state: all gone."""
        if self.holder is None:
            return
        if self.daemon and self.daemon.poll() is None:
            try:
                for container in self.api("GET", "/containers/json?all=1", timeout=10):
                    self.remove(container["Id"])
            except (OSError, RuntimeError, http.client.HTTPException):
                pass  # a daemon that does not answer: its containers end with the namespace below
        self.stop_daemon()
        # Anything left in the namespaces (a shim, a containerd that outlived dockerd) ends with them.
        pids = subprocess.run(["ip", "netns", "pids", self.ns.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            if int(pid) != self.holder.pid and _in_mount_ns(int(pid), self.holder.pid):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.run(["sh", "-c", f"find /sys/fs/cgroup -depth -type d -name '{self.cgroup_parent}' "
                              "-exec find {} -depth -type d -delete \\;"], check=False)
        self.holder.kill()
        self.holder.wait()
        self.holder = None
        shutil.rmtree(self.lab, ignore_errors=True)


def _in_mount_ns(pid: int, holder: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{holder}/ns/mnt")
    except OSError:
        return False


def daemons_on_host() -> list[str]:
    """dockerd, containerd, shims or docker-proxy running in this process's own network namespace
    (the host's, for the lab): the lab starts them only in the server's."""
    home = os.readlink("/proc/self/ns/net")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if comm in ("dockerd", "containerd", "docker-proxy") or comm.startswith("containerd-shim"):
                if os.readlink(f"/proc/{pid}/ns/net") == home:
                    found.append(f"{pid} {comm}")
        except OSError:
            continue
    return found


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: how Docker's API is reached."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock
