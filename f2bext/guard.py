"""No lockouts: never ban this host's own addresses (or a network holding one), whoever asks."""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Sequence

from .addr import Network, to_text
from .errors import InputError

_REFRESH = 5.0  # seconds; addresses change rarely, and a ban must stay cheap
_lock = threading.Lock()
_cache: tuple[float, list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]]] = (0.0, [])


def local_addresses() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]]:
    """(address, interface) for every address of this network namespace, refreshed every few seconds."""
    global _cache
    with _lock:
        if time.monotonic() - _cache[0] < _REFRESH:
            return _cache[1]
        from pyroute2 import IPRoute  # Debian's python3-pyroute2
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            found = [(ipaddress.ip_address(a.get_attr("IFA_ADDRESS")), names.get(a["index"], "?"))
                     for a in ipr.get_addr()]
        _cache = (time.monotonic(), found)
        return found


def refuse_own(nets: Sequence[Network]) -> None:
    """Raise InputError, changing nothing, if any network holds one of this host's addresses."""
    own = local_addresses()
    for net in nets:
        for addr, dev in own:
            if addr.version == net.version and addr in net:
                raise InputError(f"refusing to ban {to_text(net)}: it holds {addr}, an address of this host ({dev})")
