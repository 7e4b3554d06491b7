"""A real Docker daemon in the lab's server namespace, a busybox container published `-p 8025:25`,
a real fail2ban-server whose jail names the published port: the ban holds for what the jail names,
through a dockerd restart and a new container, on IPv4 and IPv6; the host is left as it was."""

import json
import subprocess
import time

import pytest

from f2bext import doctor, lab
from f2bext.lab.docker import Dockerd, daemons_on_host

PUBLISHED = 8025
PORTS = f"submission,{PUBLISHED}"  # 587 on the host, 8025 published to the container
ENFORCED = ["nftables", "ipset-nft"]  # Docker drives iptables-nft; ipset-legacy would mix the two


def host_firewall():
    """This process's own ruleset (the host's, or CI's root): the lab must never change it."""
    def out(argv):
        return subprocess.run(argv, capture_output=True, text=True).stdout
    text = out(["nft", "list", "ruleset"]) + "".join(out([f"{tool}-save"]) for tool in ("iptables", "ip6tables"))
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture
def dockerd(hosts, workdir):
    """dockerd in the server namespace with one container published on 8025, started before fail2ban
    as on a real host; afterwards, nothing of it on the host."""
    before = host_firewall()
    daemon = Dockerd(hosts.server, workdir, hosts.tag)
    try:
        daemon.start()
        daemon.import_image()
        daemon.run_smtp("smtp1", PUBLISHED)
        daemon.wait_running("smtp1")
        yield daemon
    finally:
        daemon.stop()
    assert daemons_on_host() == []
    assert host_firewall() == before


@pytest.fixture(params=ENFORCED)
def backend(request):
    return request.param


def start_jail(f2b):
    """The jail.local of README's dockerised mail server: the action named with its hooks."""
    f2b.jails["postfix"].update(port=PORTS, action=f'{f2b.banaction}[port="{PORTS}", hooks="input,forward"]')
    f2b.start()


def fail_logins(hosts, workdir, server=lab.SERVER4):
    lab.tool(hosts.attacker, workdir, "fail-logins", server, "587", "4", check=True)


def read(path):
    with open(path) as f:
        return f.read()


def reached(reach, ns, server, ports=(PUBLISHED, 587)):
    return [port for port in ports if reach(ns, server, port)]


def test_the_container_is_reached_on_the_published_port_before_any_ban(hosts, dockerd, reach):
    for server in (lab.SERVER4, lab.SERVER6):
        assert reach(hosts.attacker, server, PUBLISHED), f"the container is not served on {server}"


def test_a_ban_refuses_the_published_port_and_the_host_port_and_cuts_the_held_session(
        hosts, workdir, dockerd, f2b, reach, fw):
    start_jail(f2b)
    held = lab.hold(hosts.attacker, workdir, lab.SERVER4, PUBLISHED)
    assert read(held) == "open"
    fail_logins(hosts, workdir)
    f2b.wait(lambda: fw.holds("postfix", lab.ATTACKER4), "the ban")
    f2b.wait(lambda: read(held) != "open", "the held session to the container to end")
    assert read(held).startswith("ended")
    time.sleep(1.5)  # a cut session whose next packet makes a new conntrack entry is DNAT'ed again
    assert reached(reach, hosts.attacker, lab.SERVER4) == []
    assert reached(reach, hosts.bystander, lab.SERVER4) == [PUBLISHED, 587]
    f2b.client("set", "postfix", "banip", lab.ATTACKER6)
    assert reached(reach, hosts.attacker, lab.SERVER6) == []
    assert reached(reach, hosts.bystander, lab.SERVER6) == [PUBLISHED, 587]


def test_the_ban_holds_through_a_dockerd_restart_and_a_new_container(hosts, dockerd, f2b, reach, backend):
    start_jail(f2b)
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    dockerd.restart()  # SIGTERM and start again, as `systemctl restart docker` does
    dockerd.wait_running("smtp1")
    # Docker puts its FORWARD accepts back at the head; the watchdog (one pass a second) moves ours
    # back. Generous bounds: how fast is bench/'s to measure, and a loaded CI machine is slower.
    for server in (lab.SERVER4, lab.SERVER6):
        f2b.wait(lambda: reached(reach, hosts.attacker, server) == [], f"the ban on {server} after the restart")
        f2b.wait(lambda: reach(hosts.bystander, server, PUBLISHED), f"the bystander served on {server} again")
    dockerd.remove("smtp1")
    dockerd.run_smtp("smtp2", PUBLISHED)
    dockerd.wait_running("smtp2")
    for server in (lab.SERVER4, lab.SERVER6):
        f2b.wait(lambda: reached(reach, hosts.bystander, server) == [PUBLISHED, 587], f"the new container on {server}")
        assert reached(reach, hosts.attacker, server) == []


@pytest.mark.parametrize("backend", ["ipset-nft"])
@pytest.mark.parametrize("how", ["chain", "hooks"])
def test_a_forward_only_ipset_jail_bans_the_published_port_through_a_restart(hosts, dockerd, f2b, reach, backend, how):
    """`chain = DOCKER-USER` (fail2ban's name for it, as the stock actions take it) or `hooks = forward`."""
    if how == "chain":
        f2b.jails["postfix"].update(port=str(PUBLISHED), chain="DOCKER-USER")
    else:
        f2b.jails["postfix"].update(action=f'{f2b.banaction}[port="{PUBLISHED}", hooks="forward"]')
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4, lab.ATTACKER6)
    for server in (lab.SERVER4, lab.SERVER6):
        assert not reach(hosts.attacker, server, PUBLISHED)
        assert reach(hosts.bystander, server, PUBLISHED)
    dockerd.restart()
    dockerd.wait_running("smtp1")
    # Generous bounds: the watchdog moves our rules back ahead of Docker's within a round or two, and
    # a loaded CI machine may take longer (the speed is bench/'s to measure).
    for server in (lab.SERVER4, lab.SERVER6):
        f2b.wait(lambda: not reach(hosts.attacker, server, PUBLISHED), f"the ban on {server} after the restart")
        f2b.wait(lambda: reach(hosts.bystander, server, PUBLISHED), f"the bystander served on {server} again")


def test_doctor_names_the_published_and_the_container_port_for_a_stock_input_ban(hosts, workdir, dockerd, f2b, reach):
    f2b.jails["postfix"].update(banaction="iptables-multiport", port=PORTS)
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    assert reach(hosts.attacker, lab.SERVER4, PUBLISHED), "the stock INPUT ban was expected to leak"
    result = lab.f2bext_cmd(hosts.server, workdir, "doctor", "--json")
    report = json.loads(result.stdout[result.stdout.index("{"):])
    bypass = [f for f in report["findings"] if f["code"] == "dnat-bypass"]
    address = dockerd.addresses("smtp1")[0]
    assert result.returncode == doctor.CRITICAL and bypass, result.stdout
    assert bypass[0]["message"].startswith(f"{PUBLISHED} is forwarded to {address}:25")
    assert "chain = DOCKER-USER, port = 25" in bypass[0]["fix"]


@pytest.mark.parametrize("action", [
    'iptables-multiport[name=postfix-docker, port="25", chain="DOCKER-USER"]',
    f'nftables-multiport[name=postfix, port="{PORTS}", chain_hook=prerouting, chain_priority=-150, blocktype=drop]',
])
def test_the_stock_fixes_the_doctor_gives_hold(hosts, dockerd, f2b, reach, action):
    f2b.jails["postfix"].update(port=PORTS, action=action)
    f2b.start()
    f2b.client("set", "postfix", "banip", lab.ATTACKER4)
    f2b.wait(lambda: not reach(hosts.attacker, lab.SERVER4, PUBLISHED), "the stock ban on the container")
    assert reach(hosts.bystander, lab.SERVER4, PUBLISHED)
