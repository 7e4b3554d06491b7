"""What the .conf twins' shell fast path needs from f2bext: the guard as shell patterns, and the spool
its bans leave for `f2bext drain`, which does off the critical path what `f2bext ban` did after the add
(the full guard, the jail's check and repair, the state record, the session kill), for many at once.

Layout under <state dir>/twins/<jail>/: `guard.sh` (a shell function, `f2bext_may_ban ADDRESS`, false
when the address matches one of the guard's glob patterns: it takes the full `f2bext ban`),
`spool/<restored>_<address>` (one empty file per fast ban), `drain.pid`."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from typing import Callable, Iterable, Optional, Sequence

from . import state
from .addr import _LOOPBACK, _NEVER, Network, parse_target
from .errors import InputError, KernelError
from .guard import Keep, host_keeps, protected
from .spec import parse_jail

log = logging.getLogger("f2bext")

LINGER = 1.0  # seconds a drainer waits for more bans before it exits: a flood keeps one process busy
POLL = 0.02
GAP = 0.05  # seconds between batches in a flood: they gather, and cost about the same for one or fifty
NICE = 10
SAVE_EVERY = 1.0  # seconds between rewrites of the state record while draining (it holds every ban)
_HEX = "0123456789abcdef"
_CAP = 64  # first octets or hextets spelled out one by one at most; beyond, every address of the family
GUARD = "guard.sh"
_PATTERN = re.compile(r"[0-9a-f.:*\[\]]+")  # what the patterns are made of: no character the shell parses


def folder(jail: str) -> str:
    return os.path.join(state.state_dir(), "twins", parse_jail(jail))


def _v4(net: ipaddress.IPv4Network) -> list[str]:
    octets = str(net.network_address).split(".")
    full, part = divmod(net.prefixlen, 8)
    if full == 4:
        return [str(net.network_address)]
    head = octets[:full]
    if not part:
        return [".".join(head + ["*"])] if head else ["*.*"]
    first = int(octets[full])
    return [".".join(head + [str(v), "*"]) for v in range(first, first + (1 << (8 - part)))]


def _hextet_globs(value: int, bits: int) -> list[str]:
    """Every way the first hextet of an address in <value>/<bits> is written (no leading zeros)."""
    if bits >= 16:
        return [f"{value:x}"]
    if bits >= 4 and value >> 12:  # a fixed, nonzero first digit: always four digits
        out = ""
        for i in range(4):
            nibble, fixed = (value >> (12 - 4 * i)) & 15, min(max(bits - 4 * i, 0), 4)
            span = range(nibble, nibble + (1 << (4 - fixed)))
            out += _HEX[nibble] if fixed == 4 else "[" + "".join(_HEX[v] for v in span) + "]"
        return [out]
    count = 1 << (16 - bits)
    return [f"{v:x}" for v in range(value, value + count)] if count <= _CAP else []


def _v6(net: ipaddress.IPv6Network) -> list[str]:
    if net.prefixlen == 128:
        return [str(net.network_address)]
    hextets = [int(h, 16) for h in net.network_address.exploded.split(":")]
    firsts = _hextet_globs(hextets[0], net.prefixlen)
    if not firsts:
        return ["*:*"]
    out = []
    for first in firsts:
        if net.prefixlen < 32 or first.startswith("["):
            out += ["::*"] if first == "0" else []
            out.append(first + ":*")
            continue
        # Whole hextets after the first, while a zero one may not be folded into "::" yet.
        text, n = first + ":", 1
        while n < min(net.prefixlen // 16, 4):
            if hextets[n] == 0:
                out.append(text + ":*")
            text += f"{hextets[n]:x}:"
            n += 1
        out += ["::*"] if first == "0" else []
        out.append(text + "*")
    return out


def guard_patterns(keeps: Iterable[Keep]) -> list[str]:
    """Shell glob patterns that every address text fail2ban could give for a kept network matches (and
    some others: those go the full way, where the guard decides exactly); loopback, link-local,
    multicast and the unspecified address included, as parse_target refuses them."""
    nets: list[Network] = [k.net for k in keeps] + list(_LOOPBACK) + [n for n, _ in _NEVER]
    nets += [ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128")]
    out: list[str] = []
    for net in nets:
        out += _v4(net) if net.version == 4 else _v6(net)  # type: ignore[arg-type]
    return list(dict.fromkeys(out))


def guard_script(patterns: Sequence[str]) -> str:
    """The guard as the shell sources it: one `case` over every pattern. A `read` loop over a file of
    patterns would cost dash a system call per byte, on every ban. True only when no pattern matches:
    a file without the function (or none) sends every ban the full way."""
    if not patterns or not all(_PATTERN.fullmatch(p) for p in patterns):
        raise ValueError(f"not guard patterns: {patterns!r}")
    return ("# f2bext: addresses the .conf fast path leaves to `f2bext ban` (twins.write_guard)\n"
            f"f2bext_may_ban() {{ case $1 in {'|'.join(patterns)}) return 1;; esac; }}\n")


def write_guard(jail: str, keeps: Iterable[Keep]) -> None:
    """The guard (this host's addresses and gateways as read now, and `keeps`) and the spool directory
    of a jail, written atomically; root only, as the shell sources the one and both drive bans."""
    base = folder(jail)
    os.makedirs(os.path.join(base, "spool"), mode=0o700, exist_ok=True)
    os.chmod(base, 0o700)
    text = guard_script(guard_patterns([*host_keeps(), *protected(), *keeps]))
    path = os.path.join(base, GUARD)
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def forget(jail: str, nets: Optional[Sequence[Network]] = None) -> None:
    """Drop the spooled fast bans of `nets` (all, when None), and tell a drainer that holds some unsaved
    (`lifted`): lifted meanwhile, they must not be recorded or added back. The caller holds the lock."""
    spool = os.path.join(folder(jail), "spool")
    if nets and os.path.exists(os.path.join(folder(jail), "drain.pid")):
        with open(os.path.join(folder(jail), "lifted"), "a") as f:
            f.write("".join(f"{n}\n" for n in nets))
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return
    gone = None if nets is None else set(nets)
    for name in names:
        if gone is None or _event(name)[0] in gone:
            _unlink(os.path.join(spool, name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _event(name: str) -> tuple[Optional[Network], bool]:
    """A spool file's address and whether fail2ban restored the ban; (None, _) for anything else."""
    restored, _, text = name.partition("_")
    try:
        return parse_target(text), restored == "1"
    except InputError:
        return None, False


def take(jail: str) -> list[tuple[Network, bool]]:
    """The fast bans spooled since the last take, each removed as it is read (a ban of the same address
    after this makes a new file). The caller holds the jail's lock."""
    spool = os.path.join(folder(jail), "spool")
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        _unlink(os.path.join(spool, name))
        net, restored = _event(name)
        if net is None:
            log.warning("jail %s: left out a spool entry that is no address: %r", jail, name[:80])
            continue
        found.append((net, restored))
    return found


def lifted(jail: str) -> set[Network]:
    """What `forget` said was lifted since the last call (then cleared). The caller holds the lock."""
    path = os.path.join(folder(jail), "lifted")
    try:
        with open(path) as f:
            lines = f.read().split()
    except FileNotFoundError:
        return set()
    _unlink(path)
    return {ipaddress.ip_network(line) for line in lines}


def _pending(jail: str) -> bool:
    try:
        return bool(os.listdir(os.path.join(folder(jail), "spool")))
    except FileNotFoundError:
        return False


Events = list[tuple[Network, bool]]
Batch = Callable[[Events, bool], Optional[Callable[[], None]]]


def _run(jail: str, batch: Batch, save: bool) -> bool:
    """One batch under the jail's lock, then what it leaves for after (the session cut) without it;
    whether there were bans in it."""
    events: Events = []
    try:
        with state.JailLock(jail):
            events = take(jail)
            after = batch(events, save)
        if after:
            after()
    except KernelError as e:  # this batch's bans stand or fell with their shell add; the next is tried anew
        log.warning("jail %s: %s", jail, e)
    return bool(events)


def drain(jail: str, batch: Batch) -> None:
    """Hand the jail's spooled bans to `batch(events, save)` until none came for LINGER seconds (`save`:
    rewrite the state record now). The shell starts a drainer when drain.pid names no live process;
    removing the file before the last look leaves no ban behind: a ban spooled after that look finds
    no drainer and starts one."""
    pidfile = os.path.join(folder(jail), "drain.pid")
    os.nice(NICE)  # background work: where the CPU is short, fail2ban's next ban goes first
    idle_until, saved, unsaved = time.monotonic() + LINGER, -SAVE_EVERY, False
    while True:
        if _pending(jail):
            now = time.monotonic()
            save = now - saved >= SAVE_EVERY
            some = _run(jail, batch, save)
            saved, unsaved = (now, False) if save else (saved, unsaved or some)
            idle_until = time.monotonic() + LINGER
            time.sleep(GAP)
            continue
        if time.monotonic() < idle_until:
            time.sleep(POLL)
            continue
        if unsaved:
            _run(jail, batch, True)
            unsaved = False
        try:
            with open(pidfile) as f:
                mine = f.read().strip() == str(os.getpid())
        except FileNotFoundError:
            mine = False
        if mine:
            _unlink(pidfile)
        if not _pending(jail):
            return
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
