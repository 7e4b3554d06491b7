"""Network namespaces for the lab and the tests: create, wire, run in, enter, remove."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from typing import Iterator, Optional, Sequence

PREFIX = "f2bx-"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def existing() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Remove namespaces a killed lab or test left behind; returns their names."""
    gone = []
    for name in existing():
        if name.startswith(PREFIX):
            Netns(name).delete()
            gone.append(name)
    return gone


class Netns:
    """One named network namespace (`ip netns`), with loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, role: str, tag: Optional[str] = None) -> "Netns":
        ns = cls(f"{PREFIX}{tag or secrets.token_hex(3)}-{role}")
        _ip("netns", "add", ns.name)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def delete(self) -> None:
        # Processes left inside keep the namespace alive; end them first.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60,
            env: Optional[dict[str, str]] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), check=check, capture_output=True, text=True, timeout=timeout,
                              env=env, input=input)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kwargs)

    def nft(self, *args: str, check: bool = True) -> str:
        return self.run(["nft", *args], check=check).stdout

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into the namespace; sockets opened meanwhile stay in it."""
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.name}") as target:
            self._setns(target.fileno())
            try:
                yield
            finally:
                self._setns(home.fileno())

    @staticmethod
    def _setns(fd: int) -> None:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def add_address(self, dev: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        self.run(["ip", "addr", "add", cidr, "dev", dev, *extra])


def wire(a: Netns, a_dev: str, b: Netns, b_dev: str) -> None:
    """A veth pair from namespace a to namespace b, both ends up."""
    tmp_a, tmp_b = f"f2bx{secrets.token_hex(3)}", f"f2bx{secrets.token_hex(3)}"
    _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
    _ip("link", "set", tmp_a, "netns", a.name)
    _ip("link", "set", tmp_b, "netns", b.name)
    a.run(["ip", "link", "set", tmp_a, "name", a_dev])
    b.run(["ip", "link", "set", tmp_b, "name", b_dev])
    a.run(["ip", "link", "set", a_dev, "up"])
    b.run(["ip", "link", "set", b_dev, "up"])
