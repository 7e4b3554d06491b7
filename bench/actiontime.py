"""Per-ban action time, and verify/repair time, measured in-process on fail2ban's own objects.

Run inside a namespace (run.py does): fail2ban's Configurator reads the lab's configuration directory
and its command stream for the jail goes through a Transmitter into a Server that is never started
(no socket, no threads of its own), the way fail2ban-server builds its jails. Then the jail's action
is started and its ban() timed, one ticket at a time, as fail2ban's actions thread calls it: a fresh
address, the BanTicket added to the jail's ban manager first. With --preload, that many bans are in
the ban manager and in the kernel before the first timed ban.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dbgen  # noqa: E402
import kernel  # noqa: E402
from fail2ban.client.configurator import Configurator  # noqa: E402
from fail2ban.server.action import CommandAction  # noqa: E402
from fail2ban.server.actions import Actions  # noqa: E402
from fail2ban.server.banmanager import BanTicket  # noqa: E402
from fail2ban.server.mytime import MyTime  # noqa: E402
from fail2ban.server.server import Server  # noqa: E402
from fail2ban.server.transmitter import Transmitter  # noqa: E402

JAIL = dbgen.JAIL
IPSET_MAXELEM = 65536  # the stock ipset actions create hash:ip sets without maxelem: the kernel's default


def sample_addresses() -> list[str]:
    """Addresses for the timed bans, none of them preloaded: documentation ranges, every tenth IPv6."""
    v4 = [f"198.51.100.{i}" for i in range(2, 255)] + [f"203.0.113.{i}" for i in range(2, 255)]
    out = []
    for i in range(450):
        out.append(f"2001:db8:ffff::{i:x}" if i % 10 == 9 else v4.pop(0))
    return out


def build_jail(confdir: str) -> tuple[Any, str, Any]:
    """The jail as fail2ban-server would build it from the configuration: (jail, action name, action)."""
    conf = Configurator()
    conf.setBaseDir(confdir)
    conf.readAll()
    conf.getOptions()
    conf.convertToProtocol()
    server = Server()
    transmitter = Transmitter(server)
    for cmd in conf.getConfigStream():
        if len(cmd) > 1 and cmd[1] == JAIL and cmd[0] in ("add", "set", "multi-set"):
            transmitter.proceed(cmd)
    jail = server._Server__jails[JAIL]
    (name, action), = jail.actions._actions.items()
    return jail, name, action


def quantiles(values: list[float]) -> dict[str, Any]:
    """p50, p99 (nearest rank), mean and max of durations in seconds, as milliseconds."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(values), "p50_ms": round(statistics.median(values) * 1e3, 4), "p99_ms": round(p99 * 1e3, 4),
            "mean_ms": round(statistics.fmean(values) * 1e3, 4), "max_ms": round(ordered[-1] * 1e3, 4)}


def timed(fn: Callable[[], Any], samples: int, budget: float, least: int = 3) -> list[float]:
    """Run fn up to `samples` times, stopping once `budget` seconds are spent (after `least` runs)."""
    out: list[float] = []
    end = time.monotonic() + budget
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
        if len(out) >= least and time.monotonic() > end:
            break
    return out


def ticket(ip: str) -> BanTicket:
    t = BanTicket(ip, MyTime.time())
    t.setBanTime(dbgen.BANTIME)
    return t


def run(cmd: list[str], stdin: str = "") -> None:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {done.stderr[:500]}")


def preload_kernel(kind: str, action: Any, addrs: list[str]) -> int:
    """Put `addrs` in the kernel as the action would hold them, the fast way; returns how many fit."""
    v4 = [a for a in addrs if ":" not in a]
    v6 = [a for a in addrs if ":" in a]
    kind = kind.removesuffix(".py")
    if kind == "nftables-multiport":
        lines = [f"add element inet f2b-table {name} {{ {', '.join(chunk[i:i + 1000])} }}"
                 for name, chunk in ((f"addr-set-{JAIL}", v4), (f"addr6-set-{JAIL}", v6))
                 for i in range(0, len(chunk), 1000)]
        run(["nft", "-f", "-"], "\n".join(lines) + "\n")
    elif kind == "iptables-multiport":
        for tool, chunk, reject in (("iptables-restore", v4, "icmp-port-unreachable"),
                                    ("ip6tables-restore", v6, "icmp6-port-unreachable")):
            rules = [f"-I f2b-{JAIL} 1 -s {a} -j REJECT --reject-with {reject}" for a in chunk]
            run([tool, "-w", "--noflush"], "\n".join(["*filter", *rules, "COMMIT", ""]))
    elif kind == "iptables-ipset-proto6":
        room = IPSET_MAXELEM - 500  # leave room for the timed bans
        v4, v6 = v4[:room], v6[:room]
        lines = [f"add f2b-{JAIL} {a} timeout 0 -exist" for a in v4] + [f"add f2b-{JAIL}6 {a} timeout 0 -exist" for a in v6]
        run(["ipset", "restore"], "\n".join(lines) + "\n")
    else:  # the f2bext .conf twins: the same kernel objects as f2bext's own backend, loaded by it
        from f2bext.addr import parse_target
        from f2bext.fail2ban import shared_backend
        from f2bext.spec import JailSpec
        backend = shared_backend("nftables" if kind == "f2bext-nftables" else "ipset")
        nets = [parse_target(a) for a in addrs]
        backend.ban(JailSpec.from_params(JAIL, {"port": "smtp,ssmtp,submission"}), nets, lambda: nets)
    return len(v4) + len(v6)


def add_other_rules(n: int) -> None:
    """n iptables rules in a chain of their own (never jumped to): they only make the ruleset bigger."""
    rules = [f"-A OTHER -s 100.127.{i // 256 % 256}.{i % 256}/32 -p tcp --dport 22 -j ACCEPT" for i in range(n)]
    run(["iptables-restore", "-w", "--noflush"], "\n".join(["*filter", ":OTHER - [0:0]", *rules, "COMMIT", ""]))


def enforced(kind: str, nl: kernel.Netfilter) -> int:
    if kind.startswith("f2bext-nftables"):
        return sum(nl.set_elements(kernel.NFPROTO_INET, "f2bext", f"{JAIL}-{k}") for k in ("v4", "v6"))
    return kernel.ipset_entries([], [f"f2bext-{JAIL}", f"f2bext6-{JAIL}"])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--confdir", required=True)
    p.add_argument("--preload", type=int, default=0)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timed bans at most")
    p.add_argument("--verify", action="store_true", help="also time verify, repair and self-heal")
    p.add_argument("--other-rules", type=int, default=0,
                   help="unrelated iptables rules on the host first, as Docker or firewalld leave them")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    jail, name, action = build_jail(args.confdir)
    py = not isinstance(action, CommandAction)
    kind = name + (".py" if py else "")  # fail2ban names a Python action without its .py
    out: dict[str, Any] = {"action": kind, "preload": args.preload, "other_rules": args.other_rules}
    if args.other_rules:
        add_other_rules(args.other_rules)

    saved = saved_rules()  # the admin's rules file, before any ban
    preload = list(dbgen.addresses(args.preload))
    start = time.monotonic()
    for ip in preload:  # fail2ban's own state: the jail holds these bans
        jail.actions.banManager.addBanTicket(ticket(ip))
    action.start()  # ours loads every held ban here, in one transaction
    addrs = sample_addresses()
    warm = [addrs.pop(0), addrs.pop(8)]  # one IPv4, one IPv6: the stock actions start their IPv6 half on demand
    for ip in warm:
        t = ticket(ip)
        jail.actions.banManager.addBanTicket(t)
        action.ban(Actions.ActionInfo(t, jail))
    if preload and not py:
        out["preloaded"] = preload_kernel(kind, action, preload)
    else:
        out["preloaded"] = len(preload)
    out["preload_s"] = round(time.monotonic() - start, 2)

    # ActionInfo is built outside the timed call in fail2ban too, but building it is trivial.
    times: list[float] = []
    end = time.monotonic() + args.budget
    while addrs and len(times) < args.samples:
        t = ticket(addrs.pop(0))
        jail.actions.banManager.addBanTicket(t)
        info = Actions.ActionInfo(t, jail)
        begin = time.perf_counter()
        action.ban(info)
        times.append(time.perf_counter() - begin)
        if len(times) >= 5 and time.monotonic() > end:
            break
    out["ban"] = quantiles(times)

    if args.verify:
        out.update(verify_and_repair(kind, py, jail, action, saved))
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # daemon threads (watchdog, killer) and the namespace go with the process


def verify_and_repair(kind: str, py: bool, jail: Any, action: Any, saved: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if py:
        backend, spec = action.backend, action.spec
        out["verify"] = quantiles(timed(lambda: backend.verify([spec]), 300, 5.0))
        out["held"] = quantiles(timed(action.held, 3, 5.0, least=2))
        out["repair"] = quantiles(timed(lambda: backend.repair(spec, action.held()), 3, 10.0, least=2))
        if kind.startswith("f2bext-nftables"):
            action = unowned_twin(jail, action)
            backend, spec = action.backend, action.spec
        out["self_heal"] = self_heal(kind, backend, spec, len(jail.actions.getBanList()), saved)
    else:
        check = action._getOperation("<actioncheck>", "inet4")
        out["verify"] = quantiles(timed(lambda: action.executeCmd(check, 60), 20, 5.0))
        out["verify_what"] = "actioncheck (a shell command)"
    return out


HEAL_SAMPLES = 3


def unowned_twin(jail: Any, action: Any) -> Any:
    """The jail's action again with `owner = no`: the owned table (the default) outlives a flush of
    the ruleset whole, leaving nothing to heal. One backend serves a process, made by its first jail:
    it is dropped with the owned table, so that the twin's is made unowned."""
    from f2bext.fail2ban import action as adapter
    action.stop()
    adapter._backends.pop(action.backend_name, None)
    twin = type(action)(jail, action._name, **action.spec.to_params(), owner="no")
    twin.start()
    return twin
EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def saved_rules() -> dict[str, str]:
    """iptables-save and ip6tables-save before the jail starts, as an admin's rules file holds them
    (a filter table with no rule of ours: the namespace's own is empty until something uses it)."""
    out = {}
    for tool in ("iptables", "ip6tables"):
        text = subprocess.run([f"{tool}-save"], capture_output=True, text=True).stdout
        out[f"{tool}-restore"] = text if "*filter" in text else EMPTY_FILTER
    return out


def self_heal(kind: str, backend: Any, spec: Any, n: int, saved: dict[str, str]) -> dict[str, Any]:
    """What a firewall reload really takes away, and seconds until the watchdog has every ban back.

    `nft flush ruleset` takes everything of f2bext-nftables with `owner = no` (sets, elements, chains),
    and nothing of its owned table (the default since the owned table: 0 lost). Of f2bext-ipset
    it takes the iptables-nft rules only: the ipsets are not nf_tables objects and keep every entry,
    so that case times the rules coming back, as does `iptables-restore` of a file saved before the
    jail started; the third case also destroys the sets, as a reboot or an `ipset destroy` would,
    and times every entry coming back."""
    cases = {"flush": ("nft flush ruleset", lambda: flush(destroy=False))}
    if not kind.startswith("f2bext-nftables"):
        cases["restore"] = ("iptables-restore of a file saved before the bans", lambda: restore(saved))
        cases["flush_and_destroy"] = ("nft flush ruleset; ipset destroy (every f2bext set)",
                                      lambda: flush(destroy=True))
    out: dict[str, Any] = {}
    nl = kernel.Netfilter() if kind.startswith("f2bext-nftables") else None
    for case, (what, breaker) in cases.items():
        runs = [heal_once(kind, nl, backend, spec, n, breaker) for _ in range(HEAL_SAMPLES)]
        out[case] = {"what": what, "samples": runs,
                     "all_bans_s": statistics.median(r["all_bans_s"] for r in runs),
                     "structure_s": statistics.median(r["structure_s"] for r in runs),
                     "bans": min(r["bans"] for r in runs),
                     "lost": statistics.median(r["lost"] for r in runs)}
    return out


def flush(destroy: bool) -> float:
    """`nft flush ruleset`, and with `destroy` every f2bext ipset; when it was all done."""
    sets = [name for name in subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
            if name.startswith("f2bext")] if destroy else []
    for _ in range(5):
        run(["nft", "flush", "ruleset"])
        # Right after the flush, before the watchdog puts rules on the sets again; if it came
        # first, a set is in use again: flush once more.
        if all(subprocess.run(["ipset", "destroy", name], capture_output=True).returncode == 0 for name in sets):
            break
    return time.monotonic()


def restore(saved: dict[str, str]) -> float:
    for tool, text in saved.items():
        run([tool, "-w"], text)
    return time.monotonic()


def heal_once(kind: str, nl: Optional[kernel.Netfilter], backend: Any, spec: Any, n: int,
              breaker: Callable[[], float]) -> dict[str, Any]:
    """Break the jail; seconds until the watchdog's repair that left it whole returned. The repair is
    timed where it returns (no polling of the kernel to compete with it), then checked."""
    mended: list[float] = []
    parsing: list[float] = []  # seconds in held(): fail2ban's bans parsed, where a repair asked for them
    mend = backend.mend

    def timed_mend(spec: Any, held: Callable[[], Any]) -> None:
        def timed_held() -> Any:
            begin = time.monotonic()
            nets = held()
            parsing.append(time.monotonic() - begin)
            return nets
        mend(spec, timed_held)
        mended.append(time.monotonic())
    backend.mend = timed_mend
    try:
        start = breaker()
        lost = n - enforced(kind, nl)
        seen, whole = 0, None
        while whole is None and time.monotonic() - start < 30:
            time.sleep(0.005)
            if len(mended) > seen:
                seen = len(mended)
                if not backend.verify([spec]) and enforced(kind, nl) >= n:
                    whole = mended[seen - 1]
    finally:
        del backend.mend
    healed = {"structure_s": round((mended[0] if mended else time.monotonic()) - start, 3),
              "all_bans_s": round((whole or time.monotonic()) - start, 3),
              "repairs": len(mended), "held_s": round(sum(parsing), 3), "bans": enforced(kind, nl), "lost": lost}
    time.sleep(1.5)  # the watchdog settles before the next sample
    return healed


if __name__ == "__main__":
    sys.exit(main())
