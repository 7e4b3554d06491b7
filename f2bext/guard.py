"""No lockouts: what must stay reachable is never banned, whoever asks: this host's own addresses and
gateways (read from the kernel: kernel/rtnl.py), the jail's ignoreip, and the servers f2bext itself talks
to (a share's Redis). A ban is refused when it overlaps any of them, not only when it starts there."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from typing import Iterable, NamedTuple, Optional, Sequence

from .addr import Network, Spans, to_text
from .errors import InputError, KernelError
from .kernel import rtnl

IGNOREIP = "the jail's ignoreip"  # the name a jail's ignoreip goes by in refusals and in the state files
log = logging.getLogger("fail2ban.f2bext.guard")

_REFRESH = 5.0  # seconds; addresses and routes change rarely, and a ban must stay cheap
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")
_WORD = re.compile(r"[A-Za-z0-9_.:/-]{1,253}")  # what an ignoreip entry fail2ban accepts is made of


class Keep(NamedTuple):
    """Something that must stay reachable: one address of the host (`why` names it), or an entry of
    a list (`listed`, `why` names the list)."""

    net: Network
    why: str
    listed: bool = False

    def refusal(self, net: Network) -> str:
        if not self.listed:
            return f"it holds {self.net.network_address}, {self.why}"
        if net.subnet_of(self.net):  # type: ignore[arg-type]  # same version: checked by the caller
            return f"it is in {self.why}"
        return f"it overlaps {to_text(self.net)} in {self.why}"


def _interface(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return "?"  # gone since the dump


_lock = threading.Lock()
_cache: tuple[float, tuple[Keep, ...]] = (-_REFRESH, ())
_protected: dict[str, tuple[Keep, ...]] = {}


def host_keeps(fresh: bool = False) -> tuple[Keep, ...]:
    """This host's addresses and next hops, as the kernel holds them (read again every few seconds, or
    now when `fresh`)."""
    global _cache
    with _lock:
        if not fresh and time.monotonic() - _cache[0] < _REFRESH:
            return _cache[1]
        try:
            own, hops = rtnl.read_host()
        except OSError as e:
            if _cache[0] < 0:  # never read: nothing to guard with
                raise KernelError("cannot read this host's addresses and routes", str(e)) from None
            # A busy routing table (a dump interrupted again and again): the last good read, and the
            # next try a few seconds on, rather than no ban at all.
            log.warning("cannot read this host's addresses and routes (%s): guarding with the last read", e)
            _cache = (time.monotonic(), _cache[1])
            return _cache[1]
        keeps = {Keep(ipaddress.ip_network(a), f"an address of this host ({_interface(i)})") for a, i in own}
        keeps |= {Keep(ipaddress.ip_network(a), f"a gateway of this host ({_interface(i)})") for a, i in hops
                  if not any(k.net.network_address == a for k in keeps)}
        _cache = (time.monotonic(), tuple(sorted(keeps, key=lambda k: (k.net.version, k.net, k.why))))
        return _cache[1]


def protect(owner: str, keeps: Iterable[Keep]) -> None:
    """Keep these reachable in this process for as long as `owner` needs them (a share's Redis)."""
    with _lock:
        _protected[owner] = tuple(keeps)


def unprotect(owner: str) -> None:
    with _lock:
        _protected.pop(owner, None)


def protected() -> tuple[Keep, ...]:
    with _lock:
        return tuple(k for keeps in _protected.values() for k in keeps)


def resolve(host: str, why: str) -> list[Keep]:
    """Every address a host name or address text stands for, as Keeps; none when it does not resolve."""
    try:
        found = {ipaddress.ip_address(info[4][0].split("%")[0])
                 for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError, ValueError):
        return []
    return [Keep(ipaddress.ip_network(a), why) for a in sorted(found, key=lambda a: (a.version, a))]


def parse_list(text: str, why: str) -> list[Keep]:
    """An ignoreip-style list (addresses, CIDRs, host names; space or comma separated) as Keeps; a host
    name stands for every address it resolves to, as in fail2ban. InputError for anything else."""
    keeps = []
    for word in re.split(r"[\s,]+", text.strip()):
        if not word:
            continue
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            if not _WORD.fullmatch(word):
                raise InputError(f"not an address, CIDR or host name in {why}: {word[:64]!r}") from None
            if not _HOST_NAME.fullmatch(word):
                # fail2ban takes such a word (10.0.0/24, my_host) and matches nothing with it: so do
                # we, rather than refuse every ban of the jail.
                log.warning("%s: %r is not an address, CIDR or host name: left out", why, word[:64])
                continue
            keeps += [Keep(k.net, why, listed=True) for k in resolve(word, why)]
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128 and net.network_address.ipv4_mapped:
            net = ipaddress.ip_network(net.network_address.ipv4_mapped)
        keeps.append(Keep(net, why, listed=True))
    return keeps


class Guard:
    """Everything a ban must not overlap, gathered once for a batch of checks (a rebuild checks every
    held ban: a single address is one set lookup and a comparison of integers per network kept)."""

    def __init__(self, keeps: Sequence[Keep] = ()) -> None:
        self._single: dict[tuple[int, int], Keep] = {}
        self._ranges: list[tuple[int, int, int, Keep]] = []  # networks: version, first and last, as integers
        for k in list(host_keeps()) + list(protected()) + list(keeps):
            first, last = int(k.net.network_address), int(k.net.broadcast_address)
            if first == last:
                self._single.setdefault((k.net.version, first), k)
            else:
                self._ranges.append((k.net.version, first, last, k))
        self._spans = Spans([(v, a, a) for v, a in self._single] + [(v, lo, hi) for v, lo, hi, _ in self._ranges])

    def refusal(self, net: Network) -> Optional[str]:
        """Why banning `net` would lock out what must stay reachable; None when it would not."""
        version, first = net.version, int(net.network_address)
        if net.prefixlen == net.max_prefixlen:
            found = self._single.get((version, first))
            if found:
                return found.refusal(net)
            last = first
        else:
            last = int(net.broadcast_address)
            for (kept_version, address), k in self._single.items():
                if kept_version == version and first <= address <= last:
                    return k.refusal(net)
        for kept_version, low, high, k in self._ranges:
            if kept_version == version and low <= last and first <= high:
                return k.refusal(net)
        return None

    def clear(self, version: int, address: int) -> bool:
        """Whether one address (parse_single's integer) overlaps nothing kept: refusal() is None."""
        return not self._spans.covers(version, address)

    def split(self, version: int, addresses: Iterable[int]) -> tuple[list[int], list[int]]:
        """Single addresses of one IP version (integers) in two: those clear() allows, and the rest."""
        return self._spans.split(version, addresses)

    def refuse(self, nets: Sequence[Network]) -> None:
        """Raise InputError, changing nothing, if any of `nets` must not be banned."""
        for net in nets:
            why = self.refusal(net)
            if why:
                raise InputError(f"refusing to ban {to_text(net)}: {why}")

    def allowed(self, nets: Iterable[Network]) -> list[Network]:
        return [net for net in nets if self.refusal(net) is None]

