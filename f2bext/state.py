"""Which jails f2bext enforces, with what parameters: small JSON files under /run, so that the command
line (`f2bext verify`, `repair`) knows what each jail asks for without fail2ban's help. The command
line also records there the bans it made, so that a rebuild after a firewall reload can restore them
when fail2ban cannot be asked. And the lock every change to a jail's kernel objects takes."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from .errors import InputError, KernelError
from .guard import Keep
from .spec import JailSpec, parse_jail

log = logging.getLogger("f2bext")

LOCK_WAIT = 60.0  # seconds; the longest a holder runs is one rebuild (a firewall tool has 120 s at worst)


def state_dir() -> str:
    return os.environ.get("F2BEXT_STATE_DIR", "/run/f2bext")


def lib_dir() -> str:
    """What must survive a reboot (the fleet's queue and instance id): /var/lib/f2bext, or under
    F2BEXT_STATE_DIR when that moves f2bext's state elsewhere (the lab does)."""
    moved = os.environ.get("F2BEXT_STATE_DIR")
    return os.path.join(moved, "lib") if moved else "/var/lib/f2bext"


class JailState(NamedTuple):
    backend: str
    spec: JailSpec
    bans: frozenset[str] = frozenset()  # what the command line banned in the jail, as text
    keeps: tuple[Keep, ...] = ()  # what the jail must never ban beyond the host itself (its ignoreip, Redis)


def _path(jail: str) -> str:
    return os.path.join(state_dir(), "jails", f"{parse_jail(jail)}.json")


def save(backend: str, spec: JailSpec, *, bans: Iterable[str] = (), keeps: Sequence[Keep] = ()) -> None:
    """Written atomically (temporary file, then rename) so a reader never sees half a file."""
    path = _path(spec.jail)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as out:
        json.dump({"backend": backend, "jail": spec.jail, "params": spec.to_params(), "bans": sorted(bans),
                   "keep": [[str(k.net), k.why, k.listed] for k in keeps]}, out)
    os.replace(tmp, path)


def forget(jail: str) -> None:
    try:
        os.unlink(_path(jail))
    except FileNotFoundError:
        pass


def _parse(data: Any) -> JailState:
    bans = data.get("bans", [])
    if not isinstance(bans, list) or not all(isinstance(b, str) for b in bans):
        raise ValueError("bans is not a list of addresses")
    keeps = tuple(Keep(ipaddress.ip_network(net), str(why)[:200], bool(listed)) for net, why, listed in data.get("keep", []))
    return JailState(data["backend"], JailSpec.from_params(data["jail"], data["params"]), frozenset(bans), keeps)


def load(jail: str) -> JailState:
    """The jail's state; an unreadable file (truncated, edited, another version's) counts as absent,
    said in one line: the next ban or start writes it anew."""
    path = _path(jail)
    try:
        with open(path) as f:
            return _parse(json.load(f))
    except FileNotFoundError:
        raise InputError(f"f2bext enforces no jail named {jail!r} here (no state in {state_dir()})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError and InputError are ValueErrors
        log.warning("the state of jail %s in %s is unreadable (%s): taken as absent", jail, path,
                    f"{type(e).__name__}: {e}"[:200])
        raise InputError(f"f2bext enforces no jail named {jail!r} here (its state in {path} is unreadable)") from None


def load_all() -> list[JailState]:
    """Every jail with a readable state (an unreadable one is said and left out, as an absent one)."""
    folder = os.path.join(state_dir(), "jails")
    try:
        names = sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        try:
            found.append(load(name))
        except InputError:
            continue
    return found


class JailLock:
    """Serialises every change to one jail's kernel objects: between threads of this process
    (reentrant) and between processes (an flock on <state dir>/locks/<jail>.lock), so that a rebuild
    never loads a list of bans that a ban made meanwhile has made out of date."""

    def __init__(self, jail: str) -> None:
        self.jail = parse_jail(jail)
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: Optional[int] = None

    def __enter__(self) -> "JailLock":
        self._threads.acquire()
        try:
            if self._depth == 0:
                self._lock_file()
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _lock_file(self) -> None:
        deadline, pause = 0.0, 0.002
        while True:
            if self._fd is None:
                path = os.path.join(state_dir(), "locks", f"{self.jail}.lock")
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                deadline = deadline or time.monotonic() + LOCK_WAIT
                if time.monotonic() > deadline:
                    raise KernelError(f"jail {self.jail} stayed locked by another f2bext for {LOCK_WAIT:.0f} s",
                                      os.path.join(state_dir(), "locks", f"{self.jail}.lock")) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            # A file still linked is the one the path names (nothing renames lock files): one fstat,
            # no walk of the path, on every ban.
            if os.fstat(self._fd).st_nlink:
                return
            # Someone removed the file (or the state directory) since we opened it: a lock on it
            # excludes nobody who opens the path now.
            os.close(self._fd)
            self._fd = None
