"""Firewall backends behind one small interface."""

from __future__ import annotations

from ..errors import InputError
from .base import Backend, Finding

BACKENDS = ("nftables", "ipset")


def get_backend(name: str, owner: bool = False) -> Backend:
    """The backend object for a name given by a user or a state file; `owner`: nftables' table owned
    by this process (f2bext-nftables.py in fail2ban-server)."""
    if name == "nftables":
        from .nft import NftBackend
        return NftBackend(owner=owner)
    if name == "ipset":
        from .ipset import IpsetBackend
        return IpsetBackend()
    raise InputError(f"unknown backend {name[:20]!r}: use {', '.join(BACKENDS)}")


__all__ = ["Backend", "Finding", "get_backend", "BACKENDS"]
