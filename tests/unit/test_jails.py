"""The shipped jail.d drop-ins, installed beside Debian's /etc/fail2ban in a throwaway directory and
read by fail2ban itself (`fail2ban-client -t` and `-d`)."""

import ast
import configparser
import os
import re
import shutil
import subprocess

import pytest
from fail2ban.client.configreader import ConfigReader

from f2bext import lab
from f2bext.spec import JailSpec, parse_jail

JAIL_D = os.path.join(lab.PROJECT_ROOT, "jail.d")
OURS = sorted(n[:-5] for n in os.listdir(JAIL_D) if n.startswith("f2bext-") and n.endswith(".conf"))
SERVICE_JAILS = ["f2bext-dovecot", "f2bext-postfix", "f2bext-postfix-sasl", "f2bext-sshd"]
ALLPORTS = {"type": "allports", "protocol": "all"}


def install(workdir: str, enable=(), ours: bool = True) -> str:
    """Debian's /etc/fail2ban, its jail.d included, plus (ours) every file we ship, as the lab builds
    it; the jails in `enable` switched on in jail.local, each reading an empty log."""
    jails = {name: {"enabled": "true", "logpath": os.path.join(workdir, f"{name}.log")} for name in enable}
    # Debian enables [sshd] on /var/log/auth.log, absent where rsyslog is not installed.
    jails["sshd"] = {"logpath": os.path.join(workdir, "auth.log")}
    server = lab.Fail2banLab(None, workdir, jails=jails)
    server.write_config()
    for name in jails:
        open(jails[name]["logpath"], "a").close()
    for name in os.listdir("/etc/fail2ban/jail.d"):
        if name.endswith(".conf"):
            shutil.copy(os.path.join("/etc/fail2ban/jail.d", name), os.path.join(server.confdir, "jail.d", name))
    if not ours:
        for sub in ("action.d", "filter.d", "jail.d"):
            for name in os.listdir(os.path.join(lab.PROJECT_ROOT, sub)):
                os.remove(os.path.join(server.confdir, sub, name))
    return server.confdir


def client(confdir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fail2ban-client", "-c", confdir, *args], capture_output=True, text=True, timeout=60)


def complaints(out: str) -> list[str]:
    """fail2ban's WARNING and ERROR lines, without the time and pid that differ between runs."""
    return [re.sub(r"^.*?\]: ", "", line) for line in out.splitlines() if re.search(r"\b(WARNING|ERROR)\b", line)]


def dump(confdir: str) -> list[list]:
    """The commands fail2ban-client would send the server (`-d`), the throwaway directory named WORKDIR."""
    result = client(confdir, "-d")
    assert result.returncode == 0, result.stderr
    workdir = os.path.dirname(confdir)
    return [ast.literal_eval(line.replace(workdir, "WORKDIR")) for line in result.stdout.splitlines()
            if line.startswith("[")]


def commands(stream: list[list], jail: str) -> list[list]:
    return [c for c in stream if len(c) > 1 and c[1] == jail]


def option(stream: list[list], jail: str, name: str):
    found = [c[3] for c in commands(stream, jail) if c[0] == "set" and c[2] == name]
    assert len(found) == 1, f"{jail}: {name} set {len(found)} times"
    return found[0]


def actions(stream: list[list], jail: str) -> list[tuple]:
    """(action name, parameters) of a jail, parameters as fail2ban hands them to a Python action."""
    return [(c[3], ast.literal_eval(c[5]) if len(c) > 5 else None)
            for c in commands(stream, jail) if c[0] == "set" and c[2] == "addaction"]


@pytest.fixture(scope="module")
def enabled(tmp_path_factory):
    """fail2ban's view of a configuration with every jail of ours enabled."""
    return dump(install(str(tmp_path_factory.mktemp("enabled")), enable=OURS))


@pytest.fixture(scope="module")
def debian(tmp_path_factory):
    """fail2ban's view of Debian's configuration alone."""
    return dump(install(str(tmp_path_factory.mktemp("debian")), ours=False))


def test_every_jail_of_ours_enabled_passes_fail2ban_client_test_without_a_complaint(tmp_path):
    baseline = client(install(str(tmp_path / "debian"), ours=False), "-t")
    assert baseline.returncode == 0, baseline.stderr
    result = client(install(str(tmp_path / "ours"), enable=OURS), "-t")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "configuration test is successful" in out
    assert not [line for line in complaints(out) if "f2bext" in line], out
    # Whatever fail2ban says of Debian's own files (1.0.2 warns about allowipv6) it says without us too.
    assert set(complaints(out)) <= set(complaints(baseline.stdout + baseline.stderr)), out


def test_installing_our_drop_ins_changes_no_stock_jail(tmp_path, debian, enabled):
    """Debian enables [sshd]: a drop-in redefining it would disable or switch it silently."""
    installed = dump(install(str(tmp_path), ours=True))
    assert installed == debian, "our files, installed and not enabled, changed what fail2ban runs"
    stock = lambda stream: [c for c in stream if not (len(c) > 1 and str(c[1]).startswith("f2bext-"))]
    assert stock(enabled) == stock(debian), "enabling our jails changed a stock jail"
    assert ["start", "sshd"] in debian and (default_banaction(), None) in actions(debian, "sshd")


def default_banaction() -> str:
    """The installed fail2ban's default banaction (Debian 12: iptables-multiport, Debian 13: nftables)."""
    reader = ConfigReader(basedir="/etc/fail2ban")
    assert reader.read("jail")
    return reader.get("DEFAULT", "banaction")


def test_every_shipped_jail_is_disabled_and_named_apart_from_the_stock_jails():
    stock = configparser.ConfigParser(interpolation=None, strict=False)
    stock.read("/etc/fail2ban/jail.conf")
    assert OURS, "no jails shipped"
    for name in OURS:
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(os.path.join(JAIL_D, f"{name}.conf"))
        assert conf.sections() == [name], f"jail.d/{name}.conf must define exactly [{name}]"
        assert not conf.defaults(), f"jail.d/{name}.conf must not touch [DEFAULT]"
        assert conf.getboolean(name, "enabled") is False, f"{name} must ship disabled"
        assert name not in stock.sections()
        assert parse_jail(name) == name  # f2bext's limit: 23 characters of [A-Za-z0-9_-]


@pytest.mark.parametrize("jail", SERVICE_JAILS)
def test_service_jail_bans_through_f2bext_with_parameters_it_accepts(enabled, jail):
    (name, params), = actions(enabled, jail)
    assert name == "f2bext-nftables"
    spec = JailSpec.from_params(jail, params)  # what the action validates when the jail starts
    assert not spec.allports and spec.protocols == ("tcp",) and spec.kill
    assert option(enabled, jail, "bantime.increment") is True
    assert int(option(enabled, jail, "maxretry")) >= 3


def test_mail_jails_cover_smtp_submissions_and_submission():
    for jail in ("f2bext-postfix", "f2bext-postfix-sasl", "f2bext-dovecot"):
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(os.path.join(JAIL_D, f"{jail}.conf"))
        ports = {p for lo, hi in JailSpec.from_params(jail, {"port": conf.get(jail, "port")}).ports
                 for p in range(lo, hi + 1)}
        assert {465, 587} <= ports, jail
        assert jail == "f2bext-dovecot" or 25 in ports, jail


def test_recidive_bans_every_port_and_does_not_count_its_own_bans(enabled):
    assert actions(enabled, "f2bext-recidive") == [("f2bext-nftables", ALLPORTS)]
    assert JailSpec.from_params("f2bext-recidive", ALLPORTS).allports
    failregex = option(enabled, "f2bext-recidive", "addfailregex")
    assert r"(?!f2bext-recidive\])" in failregex
    # It reads fail2ban's own log as a file, whatever backend [DEFAULT] names.
    assert ["add", "f2bext-recidive", "auto"] in enabled


def test_leak_jail_escalates_to_an_allports_ban_and_a_repair(enabled):
    assert actions(enabled, "f2bext-leak") == [("f2bext-nftables", ALLPORTS), ("f2bext-repair", None)]
    spec = JailSpec.from_params("f2bext-leak", ALLPORTS)
    assert spec.allports and spec.protocols == () and spec.kill == {"conntrack", "sockets"}
    assert option(enabled, "f2bext-leak", "maxretry") == 2
    assert option(enabled, "f2bext-leak", "findtime") == "10m"


def test_leak_jail_spares_the_host_the_ignore_list_and_its_own_notices(enabled):
    assert option(enabled, "f2bext-leak", "ignoreself") is True
    assert option(enabled, "f2bext-leak", "ignorecommand") == "ip -o address show to <ip> | grep -q ."
    # The lab's [DEFAULT] ignoreip reaches the jail: it does not replace the admin's list.
    assert ["set", "f2bext-leak", "addignoreip", "127.0.0.1/8", "::1"] in enabled
    assert r"(?!f2bext-leak\])" in option(enabled, "f2bext-leak", "addfailregex")
    # It reads fail2ban's own log as a file, whatever backend [DEFAULT] names.
    assert ["add", "f2bext-leak", "auto"] in enabled
