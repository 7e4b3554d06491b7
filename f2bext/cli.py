"""The `f2bext` command: ban, unban, verify, repair, kill, and the start/stop/flush steps the .conf
actions call. Exit codes: 0 fine, 1 warning or kernel refusal, 2 broken or bad input; the doctor's 3 is
UNKNOWN (something could not be read), as monitoring plugins say."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from . import relay, state, twins
from .addr import Network, parse_target, parse_targets, to_text
from .backends import BACKENDS, Finding, get_backend
from .errors import InputError, KernelError
from .guard import IGNOREIP, Guard, Keep, parse_list
from .severity import Severity, worst
from .spec import PARAMETERS, JailSpec, parse_jail

log = logging.getLogger("f2bext")

SPEC_OPTIONS = tuple(p for p in PARAMETERS if p != "name")  # `name` is the stock actions' alias, not ours
VERIFY_WORDS = {Severity.OK: "ok", Severity.WARNING: "warning", Severity.CRITICAL: "broken"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        raise InputError(message)


def _add_spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, help="firewall backend (default: the jail's, else nftables)")
    p.add_argument("--jail", required=True, help="jail name (letters, digits, '-', '_'; at most 23)")
    p.add_argument("--port", help="ports: numbers, /etc/services names, ranges a:b or a-b")
    p.add_argument("--protocol", help="tcp, udp, sctp, a list of them, or all")
    p.add_argument("--type", help="multiport or allports")
    p.add_argument("--blocktype", help="reject or drop")
    p.add_argument("--hooks", help="input, forward or input,forward")
    p.add_argument("--chain", help="fail2ban's chain: INPUT, FORWARD or DOCKER-USER")
    p.add_argument("--kill", help="conntrack,sockets (default), conntrack, sockets or none")
    _add_ignoreip(p)


def _add_ignoreip(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignoreip", help="the jail's ignoreip (addresses, CIDRs, host names): never banned, nor any "
                                      "network overlapping them")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="f2bext", description="fail2ban bans that hold: set-based bans, verified and repaired.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (("ban", "ban addresses in a jail"), ("unban", "lift bans in a jail")):
        p = sub.add_parser(name, help=text)
        _add_spec_options(p)
        p.add_argument("addresses", nargs="+", metavar="ADDR", help="IPv4/IPv6 address or CIDR")
    for name, text in (("start", "create a jail's sets and hooks"), ("stop", "remove a jail's objects"),
                       ("flush", "lift every ban of a jail"),
                       ("drain", "what a .conf action's fast bans leave to do: guard, check, record, cut sessions")):
        _add_spec_options(sub.add_parser(name, help=text))
    for name, text in (("verify", "check that each jail's bans are enforced (0 ok, 1 warning, 2 broken)"),
                       ("repair", "rebuild whatever verify finds broken")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--jail", help="only this jail (default: every jail f2bext enforces)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("-q", "--quiet", action="store_true", help="no output, exit code only")
        _add_ignoreip(p)
    p = sub.add_parser("kill", help="cut the live sessions of addresses (conntrack entries and sockets)")
    p.add_argument("--port", help="only sessions to these local ports (default: all)")
    p.add_argument("--protocol", default="tcp,udp,sctp", help="protocols (default: tcp,udp,sctp)")
    p.add_argument("addresses", nargs="+", metavar="ADDR")
    p = sub.add_parser("doctor", help="say why banned addresses still get through (exit 0 OK, 1 WARNING, 2 CRITICAL, "
                                      "3 UNKNOWN, as monitoring plugins do)")
    p.add_argument("--socket", help="fail2ban's control socket (default: $F2BEXT_FAIL2BAN_SOCKET or "
                                    "/var/run/fail2ban/fail2ban.sock)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--fix", action="store_true", help="repair what f2bext owns, then check again")
    p.add_argument("--prom", metavar="FILE", help="also write node_exporter textfile metrics to FILE")
    p = sub.add_parser("demo", help="run the namespace lab demo with a real fail2ban-server")
    p.add_argument("--keep", action="store_true", help="leave the lab up until Enter is pressed")
    sub.add_parser("cleanup", help="remove namespaces a killed lab or test left behind")
    return parser


def _spec_from_args(args: argparse.Namespace) -> tuple[str, JailSpec, Optional[state.JailState]]:
    """Options given on the command line win; a jail f2bext already enforces supplies the rest."""
    jail = parse_jail(args.jail)
    given = {k: getattr(args, k) for k in SPEC_OPTIONS if getattr(args, k) is not None}
    try:
        known: Optional[state.JailState] = state.load(jail)
    except InputError:
        known = None
    params = dict(known.spec.to_params()) if known else {}
    if "chain" in given:
        params.pop("hooks", None)
    params.update(given)
    backend = args.backend or (known.backend if known else "nftables")
    return backend, JailSpec.from_params(jail, params), known


def _keeps(given: Optional[str], known: Sequence[Keep] = ()) -> list[Keep]:
    """What the jail must never ban beyond the host itself: the ignoreip given on the command line (the
    .conf actions pass the jail's), else the one recorded with the jail, and the rest recorded (a
    share's Redis)."""
    if given is None:
        return list(known)
    if given == "<ignoreip>":  # the .conf action of a jail that sets no ignoreip: fail2ban leaves the tag
        given = ""
    others = [k for k in known if not (k.listed and k.why == IGNOREIP)]
    return list(dict.fromkeys(parse_list(given, IGNOREIP) + others))


def _fail2ban_banned(jail: str, check: Guard, sock: Optional[str] = None) -> Optional[list[Network]]:
    """The jail's banned list from a running fail2ban-server, less what f2bext refuses to ban (guard.py),
    the ignoreip fail2ban holds now included; [] when no fail2ban listens, None when one does but its
    answer could not be read (`set JAIL banip` runs a .conf action from the very thread that answers)."""
    from .f2bsocket import Fail2banSocket
    try:
        f2b = Fail2banSocket(sock, timeout=3.0)
    except (FileNotFoundError, ConnectionRefusedError):
        return []
    except OSError as e:
        log.debug("fail2ban's socket: %s", e)
        return None
    try:
        with f2b:
            listed = [str(ip) for ip in f2b.send(["get", jail, "banip"])]
            ignored = [str(i) for i in f2b.send(["get", jail, "ignoreip"])]
    except (OSError, InputError, ValueError) as e:
        log.debug("fail2ban's banned list of jail %s: %s", jail, e)
        return None
    banned = _parsed(listed)
    ignore = []
    for text in ignored:
        try:
            ignore += parse_list(text, IGNOREIP)
        except InputError:
            continue  # fail2ban's word for its own list: a name that does not resolve here is no address
    also = Guard(ignore)
    return [net for net in check.allowed(banned) if also.refusal(net) is None]


def _parsed(texts) -> list[Network]:
    """Addresses as fail2ban or a record holds them; one f2bext cannot ban costs that one only."""
    nets = []
    for text in texts:
        try:
            nets.append(parse_target(text))
        except InputError:
            continue
    return nets


def _recorded(known: Optional[state.JailState], check: Guard) -> list[Network]:
    """The bans this command line recorded in the jail's state, less what f2bext refuses to ban."""
    return check.allowed(_parsed(known.bans if known else ()))


def _lockouts(backend, spec: JailSpec, check: Guard) -> list[Finding]:
    """Bans the kernel enforces that must never be: an address that became the host's own (a failover
    address moved here), a new gateway, an ignoreip added since."""
    found = []
    for remote in (False, True):
        for net in backend.banned(spec, remote=remote):
            why = check.refusal(net)
            if why:
                found.append(Finding(spec.jail, Severity.CRITICAL, "lockout", f"the kernel enforces a ban of {to_text(net)}: {why}"))
    return found


def _fleet_unban(jail: str, nets: list[Network]) -> list[str]:
    """When the jail shares its bans, lift them on every server, through the running fail2ban."""
    from .f2bsocket import Fail2banSocket
    done = []
    try:
        with Fail2banSocket(timeout=5.0) as f2b:
            for act in f2b.send(["get", jail, "actions"]):
                if str(act).startswith("f2bext") and f2b.send(["get", jail, "action", act, "share"]):
                    for net in nets:
                        done.append(f2b.send(["set", jail, "action", act, "fleet_unban",
                                              json.dumps({"ip": to_text(net)})]))
    except OSError:
        pass  # no fail2ban here, or the jail does not share: the local unban is all there is
    return done


def _keep(backend, spec: JailSpec, known: Optional[state.JailState], banned: Optional[list[Network]],
          check: Guard) -> list[Network]:
    """What a rebuild of the jail loads: what the kernel holds, the bans this command line recorded,
    and fail2ban's banned list, less what f2bext refuses to ban. It never shrinks on a failed read:
    without fail2ban's list, the rest."""
    kept = set(check.allowed(backend.banned(spec))) | set(_recorded(known, check))
    if banned is None:
        log.warning("cannot read the banned list of jail %s from fail2ban: the rebuild keeps the %d bans "
                    "the kernel and f2bext's record hold", spec.jail, len(kept))
    return sorted(kept | set(banned or ()), key=str)


def _held(backend, spec: JailSpec, known: Optional[state.JailState], check: Guard) -> Callable[[], list[Network]]:
    return lambda: _keep(backend, spec, known, _fail2ban_banned(spec.jail, check), check)


def _report(findings: list[Finding], jails: Sequence[str], args: argparse.Namespace) -> int:
    code = worst(f.severity for f in findings)
    if args.quiet:
        return int(code)
    if args.json:
        print(json.dumps({"status": VERIFY_WORDS[code], "jails": list(jails),
                          "findings": [dict(f._asdict(), severity=VERIFY_WORDS[f.severity]) for f in findings]}, indent=2))
    elif not findings:
        print(f"OK: {len(jails)} jail(s) enforced as configured" + (f" ({', '.join(jails)})" if jails else ""))
    else:
        for f in findings:
            print(f"{VERIFY_WORDS[f.severity].upper()} [{f.jail}] {f.message}" + (f"\n    evidence: {f.evidence}" if f.evidence else ""))
    return int(code)


def _reread(entry: state.JailState) -> state.JailState:
    """The jail's state as it stands now, under its lock (bans recorded since the first read)."""
    try:
        return state.load(entry.spec.jail)
    except InputError:
        return entry


def _owner_of(entry: state.JailState) -> str:
    """Who owns the jail's table when it is not this process ("" for ipset, or a table no one owns)."""
    return relay.table_owner() if entry.backend == "nftables" else ""


def _known_jails(jail: Optional[str]) -> list[state.JailState]:
    return state.load_all() if jail is None else [state.load(jail)]  # "" is a bad name, not "every jail"


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="f2bext: %(message)s")
    cmd = args.command
    if cmd == "drain":
        twins.drain(parse_jail(args.jail), _drainer(args))
        return 0
    if cmd in ("ban", "unban", "start", "stop", "flush"):
        nets = parse_targets(args.addresses) if cmd in ("ban", "unban") else []
        backend_name, spec, known = _spec_from_args(args)  # validated before anything is asked
        owner = relay.table_owner() if cmd in ("ban", "unban") and backend_name == "nftables" else ""
        if owner:  # another process owns the table: ask it, through fail2ban
            if cmd == "ban":
                Guard(_keeps(args.ignoreip, known.keeps if known else ())).refuse(nets)
            print(relay.relay_bans(cmd, spec.jail, nets, owner))
            for line in _fleet_unban(spec.jail, nets) if cmd == "unban" else ():
                print(line)
            return 0
        # Held from the state's read to its write: a rebuild elsewhere must not load a list this
        # change outdates, nor another change of the jail rewrite its record meanwhile.
        with state.JailLock(parse_jail(args.jail)):
            backend_name, spec, known = _spec_from_args(args)
            known_keeps = known.keeps if known else ()
            # Only banning needs the names in an ignoreip resolved.
            keeps = _keeps(args.ignoreip, known_keeps) if cmd in ("ban", "start") else list(known_keeps)
            backend = get_backend(backend_name)
            recorded = set(known.bans) if known else set()
            if cmd == "ban":
                check = Guard(keeps)
                check.refuse(nets)
                backend.ban(spec, nets, _held(backend, spec, known, check))
                state.save(backend.name, spec, bans=recorded | {to_text(n) for n in nets}, keeps=keeps)
            elif cmd == "unban":
                gone = set(nets)
                twins.forget(spec.jail, nets)
                if os.path.exists(os.path.join(state.state_dir(), "jails", f"{spec.jail}.json")):
                    held = _held(backend, spec, known, Guard(keeps))
                    backend.unban(spec, nets, lambda: [n for n in held() if n not in gone])
                if known:
                    state.save(backend.name, spec, bans=recorded - {to_text(n) for n in nets}, keeps=keeps)
            elif cmd == "start":
                check = Guard(keeps)
                banned = _fail2ban_banned(spec.jail, check)
                held = banned if banned is not None else _keep(backend, spec, known, None, check)
                backend.start(spec, held)
                state.save(backend.name, spec, bans={to_text(n) for n in held}, keeps=keeps)
                twins.write_guard(spec.jail, keeps)
            elif cmd == "flush":
                twins.forget(spec.jail)
                backend.flush(spec)
                if known:
                    state.save(backend.name, spec, keeps=keeps)
            else:
                twins.forget(spec.jail)
                backend.stop(spec)
                state.forget(spec.jail)
        if cmd == "ban" and spec.kill:
            from .sessions import kill_sessions
            for problem in kill_sessions(nets, spec.protocols, spec.ports, spec.kill).problems:
                log.warning("%s", problem)
        if cmd == "unban":
            for line in _fleet_unban(spec.jail, nets):  # through fail2ban, which takes the jail's lock
                print(line)
        return 0
    if cmd in ("verify", "repair"):
        known_jails = _known_jails(args.jail)
        findings: list[Finding] = []
        for entry in known_jails:
            backend = get_backend(entry.backend)
            owner = _owner_of(entry)
            if cmd == "repair" and owner:  # without the jail's lock: the owner takes it
                relay.relay_heal(entry.spec.jail, owner, "f2bext repair")
            with state.JailLock(entry.spec.jail):
                check = Guard(_keeps(args.ignoreip, entry.keeps))
                found = backend.verify([entry.spec]) or _lockouts(backend, entry.spec, check)
                if cmd == "repair" and found and not owner:
                    backend.repair(entry.spec, _held(backend, entry.spec, _reread(entry), check)())
                    found = backend.verify([entry.spec]) or _lockouts(backend, entry.spec, check)
            findings += found
        return _report(findings, [e.spec.jail for e in known_jails], args)
    if cmd == "kill":
        from .sessions import kill_sessions
        from .spec import parse_ports, parse_protocols
        protocols = parse_protocols(args.protocol)
        ports = parse_ports(args.port, protocols) if args.port else ()
        nets = parse_targets(args.addresses)
        report = kill_sessions(nets, protocols, ports, frozenset(("conntrack", "sockets")))
        print(f"cut {report.conntrack} conntrack entries and {report.sockets} sockets")
        for problem in report.problems:
            print(f"warning: {problem}", file=sys.stderr)
        return 1 if report.problems else 0
    if cmd == "doctor":
        return run_doctor(args)
    if cmd == "demo":
        from .lab.demo import run_demo
        return run_demo(keep=args.keep)
    if cmd == "cleanup":
        from .lab.netns import remove_stale
        for name in remove_stale():
            print(f"removed namespace {name}")
        return 0
    raise AssertionError(cmd)


def _drainer(args: argparse.Namespace) -> twins.Batch:
    """One batch of a .conf action's fast bans, as `f2bext ban` would have followed each add: the full
    guard (a refused ban is lifted); with `save`, the jail's check and repair and the record; the
    session cut after."""
    from .sessions import kill_sessions
    backend_name, spec, known = _spec_from_args(args)  # once: the record is read again only to save
    backend, keeps = get_backend(backend_name), _keeps(args.ignoreip, known.keeps if known else ())
    unsaved: set[Network] = set()

    def batch(events: twins.Events, save: bool) -> Optional[Callable[[], None]]:
        if not os.path.exists(os.path.join(state.state_dir(), "jails", f"{spec.jail}.json")):
            return None  # the jail stopped since: nothing of it is to be made again
        check = Guard(keeps)
        nets = list(dict.fromkeys(n for n, _ in events))
        refused = [n for n in nets if check.refusal(n)]
        allowed = [n for n in nets if n not in refused]
        held = _held(backend, spec, known, check)
        unsaved.difference_update(twins.lifted(spec.jail))
        unsaved.update(allowed)
        if refused:
            backend.unban(spec, refused, lambda: [n for n in held() if n not in refused])
        for net in refused:
            log.warning("jail %s: lifted the ban of %s: %s", spec.jail, to_text(net), check.refusal(net))
        if save:
            # Added again, then the jail checked (and rebuilt if broken): a rebuild since the shell's
            # add may have left them out. Once a save: at 100,000 bans a check lists the ruleset (10 ms).
            if unsaved:
                backend.ban(spec, sorted(unsaved, key=str), held)
            now = _reread(known) if known else None
            bans = (set(now.bans) if now else set()) - {to_text(n) for n in refused}
            state.save(backend.name, spec, bans=bans | {to_text(n) for n in unsaved}, keeps=keeps)
            unsaved.clear()
            twins.write_guard(spec.jail, keeps)
        cut = [n for n, restored in events if not restored and n in allowed]
        if not cut or not spec.kill:
            return None

        def after() -> None:
            for problem in kill_sessions(cut, spec.protocols, spec.ports, spec.kill).problems:
                log.warning("%s", problem)
        return after
    return batch


def run_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    if os.geteuid() != 0:
        print(doctor.render_unknown("must run as root to read the firewall, conntrack and fail2ban's socket",
                                    args.json))
        return int(doctor.UNKNOWN)
    try:
        snap = doctor.collect(args.socket)
    except OSError as e:
        print(doctor.render_unknown(f"cannot reach fail2ban ({e}); is fail2ban-server running?", args.json))
        return int(doctor.UNKNOWN)
    findings = doctor.diagnose(snap)
    if args.fix and any(d.owned for d in findings):
        print(render_fixes(snap, findings, args.socket))
        snap = doctor.collect(args.socket)
        findings = doctor.diagnose(snap)
    print(doctor.to_json(snap, findings) if args.json else doctor.render(snap, findings))
    if args.prom:
        doctor.write_prom(args.prom, snap, findings)
    return int(doctor.overall(findings))


def render_fixes(snap, findings, sock: Optional[str] = None) -> str:
    """Repair every jail f2bext owns that a finding names; say what was done."""
    from .sessions import kill_sessions
    done = []
    for jail in sorted({d.jail for d in findings if d.owned}):
        entry = state.load(jail)
        backend = get_backend(entry.backend)
        owner = _owner_of(entry)
        if owner:
            healed = relay.relay_heal(jail, owner, "f2bext doctor --fix", sock)
            done.append(f"jail {jail}: {owner} owns its table and "
                        + ("repaired it" if healed else "found nothing to repair in it"))
            continue
        with state.JailLock(jail):  # fail2ban's list read anew under the lock: the snapshot is out of date
            check = Guard(entry.keeps)
            # As `f2bext repair` does: what the kernel and the record hold too, so a fix never shrinks.
            held = _keep(backend, entry.spec, _reread(entry), _fail2ban_banned(jail, check, sock), check)
            backend.repair(entry.spec, held)
        done.append(f"repaired jail {jail} ({entry.backend}, {len(held)} bans)")
        if any(d.jail == jail and d.code == "sessions-alive" for d in findings):
            report = kill_sessions(held, entry.spec.protocols, entry.spec.ports, frozenset(("conntrack", "sockets")))
            done.append(f"cut {report.conntrack} conntrack entries and {report.sockets} sockets in jail {jail}")
    return "\n".join(f"fixed: {line}" for line in done)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except InputError as e:
        print(f"f2bext: error: {e}", file=sys.stderr)
        return 2
    except KernelError as e:
        print(f"f2bext: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
