"""`f2bext doctor` on a live lab with the real firewall manager (firewalld, ufw). Detection and advice on
rulesets captured from them, which need no lab, are tests/unit/test_doctor_manager_advice.py."""

import json

from f2bext import lab
from f2bext.lab import managers as lm

UFW_ESTABLISHED = "-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"


def doctor_report(hosts, workdir, argv_wrap=lambda argv: argv):
    done = hosts.server.run(argv_wrap([lab.PYTHON, "-m", "f2bext", "doctor", "--json"]), check=False,
                            env=lab.lab_env(workdir, "nft"))
    return {f["code"]: f for f in json.loads(done.stdout[done.stdout.index("{"):])["findings"]}


def test_doctor_on_a_real_firewalld_names_its_zone_and_advises_the_nftables_action(host_kept_out, hosts, workdir):
    """On firewalld's iptables backend, which flushes iptables in every version (1.3 and 2.3)."""
    fwd = lm.Firewalld(hosts.server, workdir, "iptables")
    fwd.start()
    f2b = lab.Fail2banLab(hosts, workdir, backend="ipset-nft")
    try:
        f2b.start()
        f2b.client("set", "postfix", "banip", lab.ATTACKER4)
        d = doctor_report(hosts, workdir)["firewalld-flush"]
        assert "firewalld (iptables backend, zone public)" in d["message"] and "f2bext-nftables.py" in d["fix"]
    finally:
        f2b.stop()
        fwd.stop()


def test_doctor_on_a_real_ufw_finds_the_established_accept_ahead_of_the_ufw_action(host_kept_out, hosts, workdir,
                                                                                    monkeypatch):
    ufw = lm.Ufw(hosts.server, workdir)
    ufw.start()
    monkeypatch.setenv("TESTSTATE", "1")
    f2b = lab.Fail2banLab(hosts, workdir, jails={"postfix": dict(lab.DEFAULT_JAIL, banaction="ufw")})
    f2b.server_argv = lm.in_mounts(ufw.binds, ["fail2ban-server"])
    try:
        f2b.start()
        f2b.client("set", "postfix", "banip", lab.ATTACKER4)
        lab.Fail2banLab.wait(lambda: lab.ATTACKER4 in ufw.run("status").stdout, "the ufw action's rule")
        found = doctor_report(hosts, workdir, lambda argv: lm.in_mounts(ufw.binds, argv))
        assert found["ufw-established"]["severity"] == "CRITICAL"
        assert found["ufw-established"]["evidence"] == UFW_ESTABLISHED and "not-enforced" not in found
    finally:
        f2b.stop()
