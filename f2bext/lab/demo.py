"""The lab demo: a real fail2ban-server bans an attacker through f2bext-nftables.py behind the seed's
firewall, and every claim is checked on live traffic. Exit 0 when every step held."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from typing import Any, Optional

from .. import lab

OPEN, REFUSED = 0, 1


class Demo:
    def __init__(self, hosts: lab.Hosts, f2b: lab.Fail2banLab) -> None:
        self.hosts, self.f2b, self.wd = hosts, f2b, f2b.workdir
        self.failures = 0

    def say(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def check(self, ok: bool, text: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {text}", flush=True)
        self.failures += not ok

    def probe(self, ns: Any, host: str, port: int) -> int:
        return lab.tool(ns, self.wd, "probe", host, str(port)).returncode

    def within(self, cond: Any, seconds: float) -> Optional[float]:
        """Seconds until cond() held, or None if it did not within `seconds`."""
        try:
            return self.f2b.wait(cond, "", timeout=seconds, step=0.05)
        except TimeoutError:
            return None

    def ban_by_failing(self, host: str, addr: str) -> Optional[float]:
        start = time.time()
        lab.tool(self.hosts.attacker, self.wd, "fail-logins", host, "587", "4", check=True)
        if self.within(lambda: addr in self.f2b.banned("postfix"), 20) is None:
            return None
        return time.time() - start

    def run(self) -> int:
        h, s4, s6 = self.hosts, lab.SERVER4, lab.SERVER6
        print("1. The server accepts mail traffic ahead of everything (the seed's firewall):")
        for rule in lab.SEED_FIREWALL:
            self.say("iptables " + " ".join(rule))
        self.check(self.probe(h.attacker, s4, 25) == OPEN, "attacker reaches port 25 before any ban")

        print("2. The attacker holds an SMTP session on port 25, then fails logins on 587:")
        held = lab.hold(h.attacker, self.wd, s4, 25)
        self.check(open(held).read() == "open", "session held open")
        took = self.ban_by_failing(s4, lab.ATTACKER4)
        self.check(took is not None, f"fail2ban banned {lab.ATTACKER4}" + (f" ({took:.1f}s after the first failure)"
                                                                          if took is not None else ""))

        print("3. The ban holds:")
        self.within(lambda: open(held).read() != "open", 5)
        self.check(open(held).read().startswith("ended"), f"held session cut: {open(held).read()}")
        for port in lab.SMTP_PORTS:
            self.check(self.probe(h.attacker, s4, port) == REFUSED, f"new connection to port {port} refused")
        self.check(self.probe(h.bystander, s4, 25) == OPEN, f"bystander {lab.BYSTANDER4} still gets through")

        print("4. IPv6: the attacker fails logins over IPv6 and is banned there too:")
        self.check(self.ban_by_failing(s6, lab.ATTACKER6) is not None, f"fail2ban banned {lab.ATTACKER6}")
        self.check(self.probe(h.attacker, s6, 465) == REFUSED, f"{lab.ATTACKER6} refused on port 465")
        self.check(self.probe(h.bystander, s6, 465) == OPEN, f"bystander {lab.BYSTANDER6} still gets through")

        print("5. A firewall reload wipes every table: nft flush ruleset, and nft delete table inet f2bext")
        h.server.nft("flush", "ruleset")
        refused = h.server.run(["nft", "delete", "table", "inet", "f2bext"], check=False)
        self.check("Operation not permitted" in refused.stderr,
                   "table inet f2bext is fail2ban-server's: the kernel lets no other process flush or delete it")
        self.check(self.probe(h.attacker, s4, 25) == REFUSED,
                   "the attacker is still refused right after it: nothing was lost, nothing to heal")
        self.check(self.probe(h.attacker, s6, 587) == REFUSED, "the IPv6 ban too")
        self.say(self.f2b.client("status", "postfix").stdout.strip().replace("\n", "\n  "))
        return 0 if self.failures == 0 else 1


def run_demo(keep: bool = False) -> int:
    """Build the lab, run the demo, and always tear it down (Ctrl-C and SIGTERM included)."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print("f2bext demo: a namespace lab with a real fail2ban-server (documentation addresses only)")
    with tempfile.TemporaryDirectory(prefix="f2bext-demo-") as wd, lab.hosts_up() as hosts:
        print(f"   server {lab.SERVER4} / {lab.SERVER6} (SMTP on 25, 465, 587), attacker {lab.ATTACKER4} / "
              f"{lab.ATTACKER6}, bystander {lab.BYSTANDER4}")
        lab.apply_seed_firewall(hosts.server)
        f2b = lab.Fail2banLab(hosts, wd)
        try:
            f2b.start()
            print("   fail2ban-server started; jail.local: [postfix] banaction = f2bext-nftables.py")
            code = Demo(hosts, f2b).run()
            if keep:
                input(f"lab up (namespaces {hosts.server.name} ...); press Enter to tear it down ")
        except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as e:
            print(f"  [FAIL] {e}\n--- fail2ban log ---\n{f2b.log_tail()}")
            code = 1
        finally:
            f2b.stop()
    print("lab removed." + (" Every step held." if code == 0 else " Some steps FAILED."))
    return code
