"""Changes to a table another process owns. f2bext-nftables.py's table belongs to fail2ban-server
(`flags owner`): the kernel refuses every other process's change to it. The command line asks the
owner instead, through fail2ban's socket: `banip`/`unbanip` for bans, the action's `heal` for a
repair. Called without the jail's lock: the owner takes it."""

from __future__ import annotations

import json
from typing import Optional, Sequence

from .addr import Network, to_text
from .errors import KernelError

# A property only f2bext's Python actions have: a .conf twin's action has none, so a jail it runs
# cannot be asked (its ban would come back to this command line).
OWNER_PROPERTY = "table_owner"


def table_owner() -> str:
    """Who owns f2bext-nftables' table, in words ("fail2ban-server (pid 812)"); "" when no one does."""
    from .backends.nft import FAMILY, TABLE, describe_owner
    from .kernel import nftgen
    return describe_owner(nftgen.read_table(FAMILY, TABLE))


def owning_action(jail: str, sock: Optional[str] = None) -> Optional[str]:
    """The jail's f2bext Python action in the running fail2ban, if it owns the table; else None."""
    from .f2bsocket import Fail2banSocket
    try:
        with Fail2banSocket(sock, timeout=5.0) as f2b:
            for act in f2b.send(["get", jail, "actions"]):
                try:
                    if f2b.send(["get", jail, "action", act, OWNER_PROPERTY]):
                        return str(act)
                except OSError:
                    continue  # not ours: fail2ban's answer to an unknown property is an error
    except OSError:
        pass  # no fail2ban answers, or it runs no such jail
    return None


def _refused(jail: str, owner: str, what: str) -> KernelError:
    return KernelError(f"cannot {what}: table inet f2bext belongs to {owner}, and jail {jail} is not one of its "
                       "f2bext-nftables.py jails. A .conf jail cannot share that table: use f2bext-nftables.py "
                       "for it too, or set owner = no on the .py jails")


def relay_bans(op: str, jail: str, nets: Sequence[Network], owner: str, sock: Optional[str] = None) -> str:
    """Ban or unban (`op`) through the owner: fail2ban records them as its own."""
    from .f2bsocket import Fail2banSocket
    act = owning_action(jail, sock)
    if act is None:
        raise _refused(jail, owner, f"{op} in jail {jail}")
    command = "banip" if op == "ban" else "unbanip"
    try:
        with Fail2banSocket(sock, timeout=30.0) as f2b:
            f2b.send(["set", jail, command, *(to_text(n) for n in nets)])
    except OSError as e:
        raise KernelError(f"fail2ban did not {op} in jail {jail}", str(e)) from None
    return f"{op}ned {', '.join(to_text(n) for n in nets)} in jail {jail} through fail2ban ({owner} owns the table)"


def relay_heal(jail: str, owner: str, why: str, sock: Optional[str] = None) -> bool:
    """Ask the owner to repair the jail if the kernel no longer enforces it; True when it did."""
    from .f2bsocket import Fail2banSocket
    act = owning_action(jail, sock)
    if act is None:
        raise _refused(jail, owner, f"repair jail {jail}")
    try:
        with Fail2banSocket(sock, timeout=120.0) as f2b:
            return bool(f2b.send(["set", jail, "action", act, "heal", json.dumps({"why": why})]))
    except OSError as e:
        raise KernelError(f"fail2ban did not repair jail {jail}", str(e)) from None
