"""Which jails f2bext enforces, with what parameters: small JSON files under /run, so that the command
line (`f2bext verify`, `repair`) knows what each jail asks for without fail2ban's help."""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

from .errors import InputError
from .guard import Keep
from .spec import JailSpec, parse_jail


def state_dir() -> str:
    return os.environ.get("F2BEXT_STATE_DIR", "/run/f2bext")


@dataclass(frozen=True)
class JailState:
    backend: str
    spec: JailSpec
    keeps: tuple[Keep, ...] = ()  # what the jail must never ban beyond the host itself (its ignoreip, Redis)


def _path(jail: str) -> str:
    return os.path.join(state_dir(), "jails", f"{parse_jail(jail)}.json")


def save(backend: str, spec: JailSpec, keeps: Sequence[Keep] = ()) -> None:
    """Written atomically (temporary file, then rename) so a reader never sees half a file."""
    path = _path(spec.jail)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as out:
        json.dump({"backend": backend, "jail": spec.jail, "params": spec.to_params(),
                   "keep": [[str(k.net), k.why, k.listed] for k in keeps]}, out)
    os.replace(tmp, path)


def forget(jail: str) -> None:
    try:
        os.unlink(_path(jail))
    except FileNotFoundError:
        pass


def load(jail: str) -> JailState:
    try:
        with open(_path(jail)) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"f2bext enforces no jail named {jail!r} here (no state in {state_dir()})") from None
    try:
        keeps = tuple(Keep(ipaddress.ip_network(net), str(why)[:200], bool(listed))
                      for net, why, listed in data.get("keep", []))
    except (TypeError, ValueError):
        raise InputError(f"the state of jail {jail!r} in {state_dir()} is damaged (its keep list)") from None
    return JailState(data["backend"], JailSpec.from_params(data["jail"], data["params"]), keeps)


def load_all() -> list[JailState]:
    folder = os.path.join(state_dir(), "jails")
    try:
        names = sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    return [load(n) for n in names]
