"""The namespace lab of the demo and the tests: a server with SMTP listeners behind the seed's firewall,
an attacker, a bystander, and a real fail2ban-server whose jail uses our action (this module). Beside it:
netns.py (the namespaces), tools.py (the programs run inside them), docker.py and managers.py (a real
dockerd, real firewalld and ufw in the server's namespace) and demo.py (`f2bext demo`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from .netns import Netns, wire

# Documentation addresses only (RFC 5737 / RFC 3849).
SERVER4, SERVER6 = "198.51.100.1", "2001:db8::1"
ATTACKER4, ATTACKER6 = "203.0.113.7", "2001:db8::7"
ATTACKER_NET_PEER4 = "203.0.113.77"  # a second attacker host inside 203.0.113.0/24, for CIDR bans
BYSTANDER4, BYSTANDER6 = "198.51.100.20", "2001:db8::20"
SMTP_PORTS = (25, 465, 587)
UDP_ECHO_PORT = 5353  # the server also echoes datagrams here, for jails that ban UDP


@dataclass
class Hosts:
    """Three hosts on one bridge: server, attacker, bystander."""

    tag: str
    switch: Netns
    server: Netns
    attacker: Netns
    bystander: Netns
    extra: list = field(default_factory=list)

    def all(self) -> list[Netns]:
        return [self.server, self.attacker, self.bystander, self.switch]


def build_hosts(tag: str = "") -> Hosts:
    tag = tag or secrets.token_hex(3)
    made: list[Netns] = []
    try:
        switch = Netns.create("sw", tag); made.append(switch)
        switch.run(["ip", "link", "add", "br0", "type", "bridge"])
        switch.run(["ip", "link", "set", "br0", "up"])
        hosts = {}
        plan = {
            "srv": [f"{SERVER4}/24", f"{SERVER6}/64"],
            "att": [f"{ATTACKER4}/24", f"{ATTACKER_NET_PEER4}/24", f"{ATTACKER6}/64"],
            "by": [f"{BYSTANDER4}/24", f"{BYSTANDER6}/64"],
        }
        for role, addrs in plan.items():
            ns = Netns.create(role, tag); made.append(ns)
            wire(ns, "eth0", switch, f"{role}0")
            switch.run(["ip", "link", "set", f"{role}0", "master", "br0"])
            for cidr in addrs:
                ns.add_address("eth0", cidr)
            hosts[role] = ns
        # Two subnets on one wire, reached on-link: the server holds no address in the attacker's
        # 203.0.113.0/24, so banning that whole network locks the server out of nothing.
        hosts["att"].run(["ip", "route", "add", "198.51.100.0/24", "dev", "eth0", "src", ATTACKER4])
        hosts["srv"].run(["ip", "route", "add", "203.0.113.0/24", "dev", "eth0", "src", SERVER4])
        return Hosts(tag, switch, hosts["srv"], hosts["att"], hosts["by"])
    except BaseException:
        for ns in made:
            ns.delete()
        raise


def add_server(hosts: Hosts, role: str, address4: str, address6: str) -> Netns:
    """One more server on the lab's wire (the fleet tests run three), reaching the attacker on-link."""
    ns = Netns.create(role, hosts.tag)
    hosts.extra.append(ns)
    wire(ns, "eth0", hosts.switch, f"{role}0")
    hosts.switch.run(["ip", "link", "set", f"{role}0", "master", "br0"])
    for cidr in (f"{address4}/24", f"{address6}/64"):
        ns.add_address("eth0", cidr)
    ns.run(["ip", "route", "add", "203.0.113.0/24", "dev", "eth0", "src", address4])
    return ns


@contextlib.contextmanager
def hosts_up(tag: str = "") -> Iterator[Hosts]:
    hosts = build_hosts(tag)
    try:
        yield hosts
    finally:
        for ns in hosts.all() + hosts.extra:
            ns.delete()


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3"  # Debian's interpreter: the one with fail2ban and nftables

# The seed's firewall: held sessions and the mail ports accepted ahead of everything else.
SEED_FIREWALL = [
    ["-A", "INPUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    ["-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "25,465,587", "-j", "ACCEPT"],
]


# What the lab can run a jail on: the banaction, and which iptables (F2BEXT_IPTABLES) it drives.
BACKENDS = {
    "nftables": ("f2bext-nftables.py", ""),
    "ipset-nft": ("f2bext-ipset.py", "nft"),
    "ipset-legacy": ("f2bext-ipset.py", "legacy"),
}


def iptables(family: int, variant: str = "", kind: str = "") -> str:
    """The iptables program for a family and variant: iptables-legacy-save, ip6tables, ..."""
    return ("iptables" if family == 4 else "ip6tables") + (f"-{variant}" if variant else "") + kind


def apply_seed_firewall(ns: Netns, variant: str = "", on_top: bool = False) -> None:
    """The seed's accepts; on_top puts them above everything already there, as an admin's script
    run after fail2ban would."""
    for family in (4, 6):
        for rule in (reversed(SEED_FIREWALL) if on_top else SEED_FIREWALL):
            args = ["-I", rule[1], "1", *rule[2:]] if on_top else rule
            ns.run([iptables(family, variant), "-w", *args])


# The lab's stand-ins on PATH: fail2ban's mail actions (action_mw, action_mwl) reach no one. Each mail
# is kept in WORKDIR/sent-mail, its command line first, then what fail2ban piped in.
LAB_PROGRAMS = {
    "f2bext": f'#!/bin/sh\nexec {PYTHON} -m f2bext "$@"\n',
    "sendmail": '#!/bin/sh\nset -e\nbox="$(dirname "$0")/../sent-mail"\nmkdir -p "$box"\n'
                'mail=$(mktemp "$box/.mail-XXXXXX")\n{ echo "sendmail $*"; cat; } > "$mail"\n'
                'mv "$mail" "$box/${mail##*/.}"\n',
    "whois": '#!/bin/sh\necho "whois: the lab asks no one about $*"\n',
}


def sent_mail(workdir: str) -> list[str]:
    """The mails fail2ban handed the lab's sendmail, oldest first, each as its text."""
    box = os.path.join(workdir, "sent-mail")
    names = sorted((n for n in os.listdir(box) if not n.startswith(".")),
                   key=lambda n: os.stat(os.path.join(box, n)).st_mtime_ns) if os.path.isdir(box) else []
    out = []
    for name in names:
        with open(os.path.join(box, name)) as f:
            out.append(f.read())
    return out


def twin_drainer_alive(workdir: str, jail: str = "postfix") -> bool:
    """Whether a .conf twin's `f2bext drain` runs for `jail`: it checks and repairs the jail once a
    second while bans come, and ends a second after the last, so a test that breaks the ruleset on
    purpose waits for it first."""
    try:
        with open(os.path.join(workdir, "run", "twins", jail, "drain.pid")) as f:
            pid = f.read().strip()
    except FileNotFoundError:
        return False
    return bool(pid) and os.path.exists(f"/proc/{int(pid)}")


def lab_env(workdir: str, variant: str = "") -> dict[str, str]:
    """Environment for our processes in the lab: the project importable, an `f2bext` command on PATH
    (for the .conf actions) with the stand-ins beside it, state kept in the lab."""
    bindir = os.path.join(workdir, "bin")
    for name, text in LAB_PROGRAMS.items():
        program = os.path.join(bindir, name)
        if not os.path.exists(program):
            os.makedirs(bindir, exist_ok=True)
            with open(program, "w") as f:
                f.write(text)
            os.chmod(program, 0o755)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    if os.path.isfile(os.path.join(PROJECT_ROOT, "setup.cfg")):  # a checkout; an installed f2bext needs nothing
        env["PYTHONPATH"] = PROJECT_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["F2BEXT_STATE_DIR"] = os.path.join(workdir, "run")
    env["F2BEXT_FAIL2BAN_SOCKET"] = os.path.join(workdir, "fail2ban.sock")
    env["F2BEXT_IPTABLES"] = variant
    return env


def tool(ns: Netns, workdir: str, *args: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one of the lab's tools (tools.py) inside a namespace."""
    return ns.run([PYTHON, "-m", "f2bext.lab.tools", *args], check=check, timeout=timeout, env=lab_env(workdir))


def hold(ns: Netns, workdir: str, host: str, port: int) -> str:
    """A session held open from `ns` to host:port (tools.py hold); returns its status file, which reads
    "open" until the session ends, then "ended: <why>"."""
    status = os.path.join(workdir, f"hold-{host}-{port}")
    ns.popen([PYTHON, "-m", "f2bext.lab.tools", "hold", host, str(port), status], env=lab_env(workdir))
    Fail2banLab.wait(lambda: os.path.exists(status), "the held session")
    return status


def f2bext_cmd(ns: Netns, workdir: str, *args: str, check: bool = False, variant: str = "") -> subprocess.CompletedProcess:
    return ns.run([PYTHON, "-m", "f2bext", *args], check=check, env=lab_env(workdir, variant))


def shipped_jails() -> set[str]:
    """The jails of our jail.d drop-ins (each file defines the jail of its name)."""
    folder = os.path.join(PROJECT_ROOT, "jail.d")
    return {n[:-len(".conf")] for n in os.listdir(folder) if n.endswith(".conf")} if os.path.isdir(folder) else set()


DEFAULT_JAIL = {
    "enabled": "true",
    "filter": "postfix[mode=auth]",
    "port": "smtp,ssmtp,submission",
    "banaction": "f2bext-nftables.py",
    "maxretry": "3",
    "findtime": "600",
    "bantime": "3600",
}

# fail2ban's own default action line (jail.conf's action_), with ownership turned off.
UNOWNED_ACTION = '%(banaction)s[port="%(port)s", protocol="%(protocol)s", chain="%(chain)s", owner="no"]'


class Fail2banLab:
    """A real fail2ban-server in the server namespace, with a throwaway configuration directory built
    from Debian's /etc/fail2ban plus our action.d/filter.d files and the lab's jail.local."""

    def __init__(self, hosts: Hosts, workdir: str, jails: Optional[dict[str, dict[str, str]]] = None,
                 backend: str = "nftables", ns: Optional[Netns] = None) -> None:
        self.hosts = hosts
        self.ns = ns or (hosts.server if hosts else None)  # no hosts: only write_config() is wanted
        self.workdir = workdir
        self.banaction, self.variant = BACKENDS[backend]
        self.confdir = os.path.join(workdir, "etc")
        self.maillog = os.path.join(workdir, "mail.log")
        self.jails = jails if jails is not None else {"postfix": dict(DEFAULT_JAIL, banaction=self.banaction)}
        self.server: Optional[subprocess.Popen] = None
        self.smtp: Optional[subprocess.Popen] = None
        self.server_argv = ["fail2ban-server"]  # a test may start fail2ban's server another way

    def unowned(self) -> None:
        """Leave f2bext-nftables.py's table unowned (`owner = no`) in every jail that uses it: for the
        tests that break the table from outside, to prove the heal admins get when they turn it off."""
        for opts in self.jails.values():
            if opts.get("banaction") == "f2bext-nftables.py" and "action" not in opts:
                opts["action"] = UNOWNED_ACTION

    def write_config(self) -> None:
        shutil.copytree("/etc/fail2ban", self.confdir, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if n.endswith(".local") or d.endswith("jail.d")])
        for sub in ("action.d", "filter.d", "jail.d"):
            os.makedirs(os.path.join(self.confdir, sub), exist_ok=True)
            src = os.path.join(PROJECT_ROOT, sub)
            if os.path.isdir(src):
                for name in os.listdir(src):
                    if os.path.isfile(os.path.join(src, name)):  # not a __pycache__ a Python left there
                        shutil.copy(os.path.join(src, name), os.path.join(self.confdir, sub, name))
        with open(os.path.join(self.confdir, "action.d", "sendmail-common.local"), "w") as f:
            f.write('[Init]\nmailcmd = sendmail -f "<sender>" "<dest>"\n')  # the lab's, on PATH
        with open(os.path.join(self.confdir, "fail2ban.local"), "w") as f:
            f.write("[Definition]\nloglevel = INFO\n"
                    f"logtarget = {self.workdir}/fail2ban.log\nsocket = {self.workdir}/fail2ban.sock\n"
                    f"pidfile = {self.workdir}/fail2ban.pid\ndbfile = {self.workdir}/fail2ban.sqlite3\n")
        lines = ["[DEFAULT]", "backend = polling", "ignoreself = true", "ignoreip = 127.0.0.1/8 ::1", ""]
        for name, opts in self.jails.items():
            lines.append(f"[{name}]")
            opts = dict(opts)
            opts.setdefault("logpath", self.maillog)
            # Each of the lab's jails says how it reads: a distribution's paths-*.conf may set a
            # per-jail backend (Debian 13: postfix_backend = systemd) that wins over [DEFAULT]. The
            # jails we ship say theirs, and are tested as shipped.
            if name not in shipped_jails():
                opts.setdefault("backend", "polling")
            lines += [f"{k} = {v}" for k, v in opts.items()] + [""]
        with open(os.path.join(self.confdir, "jail.local"), "w") as f:
            f.write("\n".join(lines))
        for log in (self.maillog, os.path.join(self.workdir, "fail2ban.log")):  # fail2ban refuses absent logpaths
            open(log, "a").close()

    def start(self) -> None:
        self.write_config()
        self.smtp = self.ns.popen([PYTHON, "-m", "f2bext.lab.tools", "serve", "--log", self.maillog,
                                   "--ports", ",".join(map(str, SMTP_PORTS)), "--udp", str(UDP_ECHO_PORT)],
                                            env=lab_env(self.workdir, self.variant), stdout=subprocess.PIPE, text=True)
        assert self.smtp.stdout is not None and self.smtp.stdout.readline().strip() == "ready"
        self.launch()

    def launch(self) -> None:
        """Start fail2ban-server on the written configuration (again, after a crash) and wait for its jails."""
        self.server = self.ns.popen([*self.server_argv, "-f", "-x", "-c", self.confdir],
                                              env=lab_env(self.workdir, self.variant), stdout=subprocess.DEVNULL,
                                              stderr=open(os.path.join(self.workdir, "fail2ban.stderr"), "w"))
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.client("ping", check=False).returncode == 0:
                break
            if self.server.poll() is not None:
                raise RuntimeError(f"fail2ban-server exited: {self.log_tail()}")
            time.sleep(0.2)
        else:
            raise RuntimeError(f"fail2ban-server did not answer: {self.log_tail()}")
        for jail in self.jails:
            self.wait(lambda: jail in self.client("status", check=False).stdout, f"jail {jail} up")

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["fail2ban-client", "-c", self.confdir, *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def banned(self, jail: str) -> list[str]:
        out = self.client("get", jail, "banip").stdout.split()
        return sorted(out)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(os.path.join(self.workdir, "fail2ban.log")) as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return "(no fail2ban log)"

    @staticmethod
    def wait(cond: Callable[[], bool], what: str, timeout: float = 20, step: float = 0.1) -> float:
        """Wait until cond() holds; returns the seconds it took, raises TimeoutError naming `what`."""
        start = time.time()
        while time.time() - start < timeout:
            if cond():
                return time.time() - start
            time.sleep(step)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    def stop(self) -> None:
        if self.server and self.server.poll() is None:
            self.client("stop", check=False)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.smtp and self.smtp.poll() is None:
            self.smtp.kill()
            self.smtp.wait()
