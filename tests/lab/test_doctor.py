"""`f2bext doctor` on live labs: each cause of a leaking ban produced the way it happens in life,
with real fail2ban-server, stock actions and ours, and the finding asserted by kind and evidence. How it
reads fail2ban's notices and action kinds, which needs no lab, is tests/unit/test_doctor_reading.py."""

import json
import os
import subprocess
import time

import pytest

from f2bext import doctor, lab
from f2bext.lab.netns import Netns, wire


def run_doctor(hosts, workdir, *args):
    result = lab.f2bext_cmd(hosts.server, workdir, "doctor", "--json", *args)
    report = json.loads(result.stdout[result.stdout.index("{"):])
    return result.returncode, report, {f["code"]: f for f in report["findings"]}


def start(f2b, **jail):
    f2b.jails["postfix"].update(jail)
    f2b.start()


def fail_logins(hosts, workdir, server=lab.SERVER4, port=587):
    lab.tool(hosts.attacker, workdir, "fail-logins", server, str(port), "4", check=True)


def test_a_host_where_every_ban_holds_gets_one_ok_line(hosts, workdir, f2b, reach):
    start(f2b)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    for server in (lab.SERVER4, lab.SERVER6):  # the doctor's word checked against traffic
        for port in lab.SMTP_PORTS:
            assert not reach(hosts.attacker, server, port), f"{server} port {port} reachable: a ban leaks"
        assert reach(hosts.bystander, server, 25)
    result = lab.f2bext_cmd(hosts.server, workdir, "doctor")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith("F2BEXT DOCTOR OK - ") and "banned=2" in result.stdout


@pytest.mark.parametrize("backend", ["ipset-nft", "ipset-legacy"])
def test_a_healthy_ipset_host_without_fleet_sharing_is_ok(hosts, workdir, f2b, backend):
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    result = lab.f2bext_cmd(hosts.server, workdir, "doctor", variant=lab.BACKENDS[backend][1])
    assert result.returncode == doctor.OK, result.stdout
    assert result.stdout.startswith("F2BEXT DOCTOR OK - ") and "banned=2" in result.stdout


def test_an_accept_a_script_put_above_the_stock_jump_is_quoted_with_its_position(hosts, workdir, f2b):
    start(f2b, banaction="iptables-multiport")
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    hosts.server.run(["iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "25", "-j", "ACCEPT"])
    code, report, found = run_doctor(hosts, workdir)
    assert code == doctor.CRITICAL
    assert found["shadowed"]["evidence"] == "-A INPUT -p tcp -m tcp --dport 25 -j ACCEPT"
    assert "rule 1" in found["shadowed"]["message"] and "iptables -I INPUT 1" in found["shadowed"]["fix"]
    # the attacker keeps coming: fail2ban says "already banned", and the doctor names the cause
    # fail2ban says NOTICE only 3 s after the ban (DEBUG before): knock until it does.
    def knock():
        fail_logins(hosts, workdir, port=25)
        return "already banned" in open(os.path.join(workdir, "fail2ban.log")).read()
    f2b.wait(knock, "a notice", timeout=30, step=0.5)
    code, report, found = run_doctor(hosts, workdir)
    assert found["already-banned"]["severity"] == "CRITICAL" and "shadowed" in found["already-banned"]["evidence"]
    assert report["summary"].startswith("F2BEXT DOCTOR CRITICAL - ") and "| jails=1 banned=1" in report["summary"]


def test_a_restored_ruleset_that_lost_the_stock_bans_is_not_enforced(hosts, workdir, f2b):
    start(f2b, banaction="nftables-multiport")
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    hosts.server.nft("flush", "ruleset")
    code, _, found = run_doctor(hosts, workdir)
    assert code == doctor.CRITICAL
    assert found["not-enforced"]["evidence"] == lab.ATTACKER4 and "hook-missing" in found
    assert "fail2ban-client restart postfix" in found["not-enforced"]["fix"]


@pytest.mark.parametrize("socket_given", [False, True])
def test_fix_repairs_what_f2bext_owns_and_a_second_run_is_clean(hosts, workdir, f2b, reach, socket_given):
    start(f2b, banaction="f2bext-nftables")  # the .conf twin: no watchdog to heal it first
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.wait(lambda: not lab.twin_drainer_alive(workdir), "the drainer to end", timeout=30)
    hosts.server.nft("flush", "ruleset")
    assert reach(hosts.attacker, lab.SERVER4, 25)
    code, _, found = run_doctor(hosts, workdir)
    assert code == doctor.CRITICAL and found["not-enforced"]["owned"]
    env, args = lab.lab_env(workdir), ["--fix"]
    if socket_given:  # fail2ban on a socket of its own, named on the command line: the fix asks that one
        args += ["--socket", env.pop("F2BEXT_FAIL2BAN_SOCKET")]
        env["F2BEXT_FAIL2BAN_SOCKET"] = os.path.join(workdir, "no-fail2ban-here.sock")
    result = hosts.server.run([lab.PYTHON, "-m", "f2bext", "doctor", *args], check=False, env=env)
    assert "fixed: repaired jail postfix (nftables, 1 bans)" in result.stdout and result.returncode == 0, result.stdout
    assert not reach(hosts.attacker, lab.SERVER4, 25)
    assert lab.f2bext_cmd(hosts.server, workdir, "doctor").returncode == 0


def test_a_port_left_out_of_the_jail_shows_as_banned_traffic_on_other_ports(hosts, workdir, f2b, held_session):
    start(f2b, banaction="iptables-multiport", port="smtp")
    held = held_session(f2b.maillog, port=587)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    time.sleep(1.5)  # a window longer than the client's 1 s patience
    assert held.client() == "open" and held.established()  # the stock ban does not cover 587: the session lives
    code, _, found = run_doctor(hosts, workdir)
    assert "tcp/587" in found["ports-uncovered"]["message"] and "587" in found["ports-uncovered"]["fix"]


def test_a_held_session_behind_an_established_accept_is_alive_after_a_stock_ban(hosts, workdir, f2b, held_session):
    start(f2b, banaction="iptables-multiport")
    f2b.client("set", "postfix", "banip", "198.51.100.99")  # stock actions create their jump at the first ban
    lab.apply_seed_firewall(hosts.server, on_top=True)  # then the admin's script puts the seed's accepts on top
    held = held_session(f2b.maillog)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    time.sleep(1.5)  # a window longer than the client's 1 s patience
    code, _, found = run_doctor(hosts, workdir)
    assert code == doctor.CRITICAL and held.client() == "open" and held.established()
    assert lab.ATTACKER4 in found["sessions-alive"]["evidence"] and "tcp/25" in found["sessions-alive"]["evidence"]
    assert "shadowed-held-sessions" in found
    assert found["sessions-alive"]["fix"] == f"f2bext kill {lab.ATTACKER4}"


def test_an_ipv6_attacker_against_an_ipv4_only_stock_action(hosts, workdir, f2b):
    start(f2b, banaction="iptables-ipset-proto4")
    fail_logins(hosts, workdir, server=lab.SERVER6)
    f2b.wait(lambda: lab.ATTACKER6 in f2b.banned("postfix"), "the IPv6 ban")
    code, _, found = run_doctor(hosts, workdir)
    assert code == doctor.CRITICAL and "ipv6-uncovered" in found
    assert lab.ATTACKER6 in found["not-enforced"]["evidence"]


def second_link(hosts):
    """A second wire from the attacker straight to the server (a second NIC, a VPN): the server's eth1,
    192.0.2.1 (TEST-NET-1). The server answers the attacker over eth0, its route to 203.0.113.0/24."""
    wire(hosts.server, "eth1", hosts.attacker, "eth1")
    hosts.server.add_address("eth1", "192.0.2.1/24")
    hosts.attacker.add_address("eth1", "192.0.2.7/24")
    for ns in (hosts.server, hosts.attacker):
        ns.run(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth1.rp_filter=0"])
    return "192.0.2.1"


def test_a_ban_tied_to_one_interface_lets_traffic_through_another(hosts, workdir, f2b, reach):
    other = second_link(hosts)
    # The admin tied the jail's rule to eth0 (pre-rule; `<sp>` is fail2ban's space).
    start(f2b, action='iptables-multiport[name=postfix, port="smtp,ssmtp,submission", pre-rule="-i eth0<sp>"]')
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    assert not reach(hosts.attacker, lab.SERVER4, 25), "the ban holds on eth0"
    assert reach(hosts.attacker, other, 25, source=lab.ATTACKER4), "the banned address gets in through eth1"
    code, report, found = run_doctor(hosts, workdir)
    tied = found["interface-tied"]
    assert code == doctor.CRITICAL and tied["severity"] == "CRITICAL"
    assert tied["evidence"].startswith("-A INPUT -i eth0 ") and tied["evidence"].endswith("-j f2b-postfix")
    assert "only on eth0" in tied["message"] and "arriving on eth1" in tied["message"]
    assert report["perfdata"]["leaking"] >= 1


def test_a_restored_save_that_brings_back_a_lifted_ban_is_stale_a_warning(hosts, workdir, f2b, reach):
    start(f2b, banaction="iptables-multiport")
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    saved = hosts.server.run(["iptables-save"]).stdout  # the admin's save, taken while the ban stood
    f2b.client("set", "postfix", "unbanip", lab.ATTACKER4)
    assert reach(hosts.attacker, lab.SERVER4, 25)
    hosts.server.run(["iptables-restore"], input=saved)  # restored later: a reboot, a firewall script
    assert not reach(hosts.attacker, lab.SERVER4, 25), "the lifted ban is back in the kernel"
    code, report, found = run_doctor(hosts, workdir)
    assert code == doctor.WARNING and report["status"] == "WARNING" and list(found) == ["stale"]
    assert found["stale"]["evidence"] == f"{lab.ATTACKER4}/32" and report["perfdata"]["warning"] == 1
    plain = lab.f2bext_cmd(hosts.server, workdir, "doctor")
    assert plain.returncode == doctor.WARNING and plain.stdout.startswith("F2BEXT DOCTOR WARNING - postfix: ")
    assert found["stale"]["fix"].startswith("fail2ban-client restart postfix")
    f2b.client("restart", "postfix")
    f2b.wait(lambda: "postfix" in f2b.client("status", check=False).stdout, "postfix restarted")
    assert reach(hosts.attacker, lab.SERVER4, 25)
    assert lab.f2bext_cmd(hosts.server, workdir, "doctor").returncode == doctor.OK


INTERNAL4 = "192.0.2.30"  # a mail host behind the server, published through its port 25


@pytest.fixture
def published(hosts, workdir):
    """A real mail host on a second network behind the server, reached by DNAT on the server's port 25."""
    inner = Netns.create("int", hosts.tag)
    hosts.extra.append(inner)
    wire(hosts.server, "eth1", inner, "eth0")
    hosts.server.add_address("eth1", "192.0.2.1/24")
    inner.add_address("eth0", f"{INTERNAL4}/24")
    inner.run(["ip", "route", "add", "default", "via", "192.0.2.1"])
    hosts.server.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    proc = inner.popen([lab.PYTHON, "-m", "f2bext.lab.tools", "serve", "--log", os.path.join(workdir, "inner.log"),
                        "--ports", "25"], env=lab.lab_env(workdir), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    hosts.server.run(["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "25", "-j", "DNAT",
                      "--to-destination", f"{INTERNAL4}:25"])
    yield inner
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("banaction", ["iptables-multiport", "f2bext-nftables.py"])
def test_a_dnat_published_service_bypasses_an_input_only_ban(hosts, workdir, f2b, published, reach, banaction):
    start(f2b, banaction=banaction)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    assert not reach(hosts.attacker, lab.SERVER4, 587), "the ban does not hold on the server's own port"
    assert reach(hosts.attacker, lab.SERVER4, 25), "the DNAT'd port is not reached: no bypass to find"
    with open(os.path.join(workdir, "inner.log")) as log:
        assert f"connect from unknown[{lab.ATTACKER4}] port 25" in log.read()  # the banned address got in
    code, _, found = run_doctor(hosts, workdir)
    assert code == doctor.CRITICAL and "DNAT" in found["dnat-bypass"]["evidence"]


def test_prom_file_is_written_whole(hosts, workdir, f2b, tmp_path):
    start(f2b)
    prom = tmp_path / "f2bext.prom"
    assert lab.f2bext_cmd(hosts.server, workdir, "doctor", "--prom", str(prom)).returncode == 0
    text = prom.read_text()
    assert "f2bext_doctor_status 0" in text and 'f2bext_jail_banned{jail="postfix"} 0' in text
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".f2bext-doctor-")]


def test_doctor_run_by_an_unprivileged_user_says_it_needs_root(hosts, workdir, f2b):
    start(f2b)  # fail2ban is there: the only thing missing is root
    # The command imported as root (CI's checkout may be unreadable to others), then run as nobody.
    as_nobody = ("import os, sys; from f2bext import cli, doctor; os.setgroups([]); os.setgid(65534); "
                 "os.setuid(65534); sys.exit(cli.main(['doctor']))")
    result = hosts.server.run([lab.PYTHON, "-c", as_nobody], check=False, env=lab.lab_env(workdir))
    assert (result.returncode, result.stdout) == (doctor.UNKNOWN, "F2BEXT DOCTOR UNKNOWN - must run as root to read "
                                                  "the firewall, conntrack and fail2ban's socket\n"), result.stderr


def test_doctor_without_fail2ban_is_unknown(hosts, workdir):
    result = lab.f2bext_cmd(hosts.server, workdir, "doctor")
    assert result.returncode == doctor.UNKNOWN and result.stdout.startswith("F2BEXT DOCTOR UNKNOWN - ")


def test_doctor_json_without_fail2ban_is_json_saying_unknown(hosts, workdir):
    result = lab.f2bext_cmd(hosts.server, workdir, "doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == doctor.UNKNOWN and report["status"] == "UNKNOWN"
    assert report["summary"].startswith("F2BEXT DOCTOR UNKNOWN - ") and report["findings"] == []


def path_without(workdir, *tools):
    """A PATH of the lab's programs and the system's, less the named tools."""
    env = lab.lab_env(workdir)
    folder = os.path.join(workdir, "path-without")
    os.makedirs(folder, exist_ok=True)
    for directory in env["PATH"].split(os.pathsep):
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            target = os.path.join(folder, name)
            if name not in tools and not os.path.lexists(target):
                os.symlink(os.path.join(directory, name), target)
    env["PATH"] = folder
    return env


def test_doctor_without_the_ipset_tool_is_unknown_not_unenforced(hosts, workdir, f2b):
    f2b.jails["postfix"].update(banaction="iptables-ipset-proto6")
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    fine = lab.f2bext_cmd(hosts.server, workdir, "doctor", "--json")
    assert fine.returncode == doctor.OK, fine.stdout
    result = hosts.server.run([lab.PYTHON, "-m", "f2bext", "doctor", "--json"], check=False,
                              env=path_without(workdir, "ipset"))
    report = json.loads(result.stdout)
    found = {f["code"]: f for f in report["findings"]}
    assert result.returncode == doctor.UNKNOWN == 3, result.stdout + result.stderr
    assert set(found) == {"unreadable"} and report["status"] == "UNKNOWN"
    assert "ipset f2b-postfix" in found["unreadable"]["message"]
    assert "ipset is not installed" in found["unreadable"]["evidence"]
