"""The shipped jails and fail2ban's mail macros on a real fail2ban-server in the lab: each jail reads
its service's log lines, bans, and the ban is checked on real traffic.

The shipped jails read where their distribution says (Debian 13: the journal); jail.local here points
them at a file, as an admin would: `backend = polling` and `logpath`."""

import os
import subprocess
import time

import pytest

from f2bext import lab

# A port of each service the lab listens on, beside its own SMTP listeners (25, 465, 587).
SSH, IMAP, IMAPS, POP3, SIEVE, OTHER = 22, 143, 993, 110, 4190, 2525


def stamp() -> str:
    return time.strftime("%b %d %H:%M:%S")


def sshd_lines(ip):
    """OpenSSH 9.8's sshd-session (the lines f2bext-sshd adds to the stock filter) and sshd."""
    return [f"{stamp()} host sshd-session[{1300 + n}]: Failed password for invalid user admin from {ip} "
            f"port {40030 + n} ssh2" if n % 2 else
            f"{stamp()} host sshd[{1300 + n}]: Invalid user admin{n} from {ip} port {40030 + n}" for n in range(5)]


def dovecot_lines(ip):
    """Dovecot 2.3.21/2.4's "Login aborted" (the lines f2bext-dovecot adds) and an older "Aborted login"."""
    return [f"{stamp()} mail dovecot[{990 + n}]: imap-login: Login aborted: Connection closed (auth failed, "
            f"{n + 1} attempts in 14 secs) (auth_failed): user=<jose>, method=PLAIN, rip={ip}, "
            f"lip={lab.SERVER4}, TLS, session=<8oNSumM3A8mK/8{n}a>" for n in range(4)] + \
           [f"{stamp()} mail dovecot: pop3-login: Aborted login (auth failed, 1 attempts in 17 secs): user=<admin>, "
            f"method=PLAIN, rip={ip}, lip={lab.SERVER4}, session=<eGg3gk0UWgAly9Zo>"]


def postfix_lines(ip):
    return [f"{stamp()} mail postfix/smtpd[{8730 + n}]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 "
            f"<relay{n}@example.org>: Relay access denied; from=<bot@example.com> to=<relay{n}@example.org> "
            f"proto=ESMTP helo=<example.com>" for n in range(5)]


# jail: (its log lines, the attacker's address, the server's, ports it refuses, a port it leaves open)
SERVICE_JAILS = {
    "f2bext-sshd": (sshd_lines, lab.ATTACKER6, lab.SERVER6, (SSH,), 25),
    "f2bext-dovecot": (dovecot_lines, lab.ATTACKER4, lab.SERVER4, (IMAP, IMAPS, POP3, SIEVE, 587), 25),
    "f2bext-postfix": (postfix_lines, lab.ATTACKER4, lab.SERVER4, (25, 465, 587), IMAP),
}


def read_as_file(logpath):
    """What an admin writes in jail.local to point a shipped jail at a log file."""
    open(logpath, "a").close()
    return {"enabled": "true", "backend": "polling", "logpath": logpath}


def append(path, lines):
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def f2bext_holds(hosts, jail, address):
    kind = "v6" if ":" in address else "v4"
    return address in hosts.server.nft("list", "set", "inet", "f2bext", f"{jail}-{kind}", check=False)


UDP_ECHO = """import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(data, peer)
"""
UDP_ASK = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
s.recv(512)
"""


@pytest.fixture
def udp_answers(hosts):
    """udp_answers(ns) -> True when a UDP echo on the server (port 5353) answers ns."""
    echo = hosts.server.popen([lab.PYTHON, "-c", UDP_ECHO, "5353"], stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    yield lambda ns: ns.run([lab.PYTHON, "-c", UDP_ASK, lab.SERVER4, "5353"], check=False).returncode == 0
    echo.kill()
    echo.wait()


@pytest.fixture
def services(listen):
    """Listeners on the services' ports no lab listener has."""
    return listen((SSH, IMAP, IMAPS, POP3, SIEVE, OTHER))


@pytest.mark.parametrize("jail", sorted(SERVICE_JAILS))
def test_shipped_service_jail_bans_from_its_services_log_lines(hosts, workdir, f2b, reach, services, jail):
    lines, attacker, server, refused, still_open = SERVICE_JAILS[jail]
    logpath = os.path.join(workdir, f"{jail}.log")
    f2b.jails = {jail: read_as_file(logpath)}
    f2b.start()
    for port in (*refused, still_open):
        assert reach(hosts.attacker, server, port), f"port {port} refused before any ban"
    append(logpath, lines(attacker))
    f2b.wait(lambda: attacker in f2b.banned(jail), f"{jail} to ban {attacker}")
    assert f2bext_holds(hosts, jail, attacker)
    for port in refused:
        f2b.wait(lambda: not reach(hosts.attacker, server, port), f"port {port} refused", timeout=5)
        assert reach(hosts.bystander, server, port), f"the bystander lost port {port}"
    assert reach(hosts.attacker, server, still_open), f"{jail} bans port {still_open}, which it does not name"


def test_shipped_postfix_sasl_jail_bans_password_guessing_over_smtp(hosts, workdir, f2b, reach, services):
    f2b.jails = {"f2bext-postfix-sasl": read_as_file(f2b.maillog)}
    f2b.start()
    lab.tool(hosts.attacker, workdir, "fail-logins", lab.SERVER4, "587", "5", check=True)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("f2bext-postfix-sasl"), "the SASL ban")
    for port in (25, 465, 587, IMAP, POP3):
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still open to the attacker"
    assert reach(hosts.attacker, lab.SERVER4, SSH) and reach(hosts.bystander, lab.SERVER4, IMAP)


def test_shipped_recidive_jail_bans_every_port_and_protocol_after_five_bans_elsewhere(
        hosts, workdir, f2b, reach, services, udp_answers):
    f2b.jails = {"postfix": dict(lab.DEFAULT_JAIL),
                 "f2bext-recidive": read_as_file(os.path.join(workdir, "fail2ban.log"))}
    f2b.start()
    assert udp_answers(hosts.attacker)
    for _ in range(5):  # fail2ban's own "[postfix] Ban ADDR" lines are what recidive counts
        f2b.client("set", "postfix", "banip", lab.ATTACKER4)
        f2b.client("set", "postfix", "unbanip", lab.ATTACKER4)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("f2bext-recidive"), "the recidive ban")
    assert f2b.banned("postfix") == []
    assert f2bext_holds(hosts, "f2bext-recidive", lab.ATTACKER4)
    for port in (25, SSH, IMAP, OTHER):
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still open to the repeat offender"
    assert not udp_answers(hosts.attacker), "UDP still answers the repeat offender"
    assert reach(hosts.bystander, lab.SERVER4, OTHER) and udp_answers(hosts.bystander)
    log = open(os.path.join(workdir, "fail2ban.log")).read()
    assert log.count(f"[f2bext-recidive] Ban {lab.ATTACKER4}") == 1


@pytest.mark.parametrize("macro", ["action_mw", "action_mwl"])
def test_mail_macros_ban_through_f2bext_and_mail_the_admin(hosts, workdir, f2b, reach, macro):
    f2b.jails["postfix"].update(action=f"%({macro})s", destemail="admin@example.org", sender="fail2ban@example.com")
    f2b.start()
    lab.tool(hosts.attacker, workdir, "fail-logins", lab.SERVER4, "587", "3", check=True)
    f2b.wait(lambda: lab.ATTACKER4 in f2b.banned("postfix"), "the ban")
    for port in lab.SMTP_PORTS:
        assert not reach(hosts.attacker, lab.SERVER4, port), f"port {port} still open to the attacker"
    assert reach(hosts.bystander, lab.SERVER4, 25)
    f2b.wait(lambda: [m for m in lab.sent_mail(workdir) if f"banned {lab.ATTACKER4}" in m], "the ban's mail")
    mail, = [m for m in lab.sent_mail(workdir) if f"banned {lab.ATTACKER4}" in m]
    assert mail.startswith("sendmail -f fail2ban@example.com admin@example.org\n"), mail[:200]
    assert "\nTo: admin@example.org\n" in mail and "whois: the lab asks no one" in mail
    if macro == "action_mwl":  # the log lines of the address that made the ban
        assert f"unknown[{lab.ATTACKER4}]: SASL LOGIN authentication failed" in mail
