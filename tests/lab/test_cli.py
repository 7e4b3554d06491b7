"""The f2bext command against a real kernel, on every backend."""

import pytest

from f2bext import lab

BAD_INPUT = [
    ["ban", "--jail", "postfix", "203.0.113.300"],
    ["ban", "--jail", "postfix", "203.0.113.7", "$(reboot)"],
    ["ban", "--jail", "post;fix", "203.0.113.7"],
    ["ban", "--jail", "postfix", "--port", "25,smtpx", "203.0.113.7"],
    ["ban", "--jail", "postfix", "--protocol", "icmp", "203.0.113.7"],
    ["ban", "--jail", "postfix", "--type", "someports", "203.0.113.7"],
    ["ban", "--jail", "postfix", "--frobnicate", "203.0.113.7"],
    ["ban", "--jail", "postfix", "127.0.0.1"],
    ["unban", "--jail", "postfix", "::/0"],
    ["ban", "--backend", "pf", "--jail", "postfix", "203.0.113.7"],
    ["kill", "not-an-address"],
    ["ban", "--jail", "postfix", lab.SERVER4],  # the host's own address
    ["ban", "--jail", "postfix", "198.51.100.0/24"],  # a network holding it
    ["ban", "--jail", "postfix", "2001:db8::/64"],
    ["repair", "--jail", "nosuchjail"],
    ["verify", "--jail", ""],
]


def backend_name(backend):
    return "nftables" if backend == "nftables" else "ipset"


@pytest.mark.parametrize("argv", BAD_INPUT, ids=lambda a: " ".join(a)[:40])
def test_bad_input_is_one_clear_line_and_changes_nothing(hosts, workdir, backend, fw, argv):
    lab.apply_seed_firewall(hosts.server, fw.variant)
    lab.f2bext_cmd(hosts.server, workdir, "ban", "--backend", backend_name(backend), "--jail", "postfix", "--port",
                   "smtp", lab.ATTACKER6, check=True, variant=fw.variant)
    before = fw.snapshot()
    result = lab.f2bext_cmd(hosts.server, workdir, *argv, variant=fw.variant)
    assert result.returncode == 2
    assert result.stderr.startswith("f2bext: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert fw.snapshot() == before


def test_command_line_ban_verify_repair_cycle(hosts, workdir, backend, fw):
    def run(*args):
        return lab.f2bext_cmd(hosts.server, workdir, *args, variant=fw.variant)

    assert run("ban", "--backend", backend_name(backend), "--jail", "postfix", "--port", "smtp,submission",
               lab.ATTACKER4, "203.0.113.64/28").returncode == 0
    assert run("verify").returncode == 0
    fw.unhook("postfix")
    broken = run("verify", "--jail", "postfix")
    assert broken.returncode == 2 and "BROKEN [postfix]" in broken.stdout
    assert run("repair").returncode == 0
    assert run("verify", "--json").returncode == 0
    assert fw.holds("postfix", lab.ATTACKER4)
    assert run("unban", "--jail", "postfix", lab.ATTACKER4).returncode == 0
    assert not fw.holds("postfix", lab.ATTACKER4)
    assert run("stop", "--jail", "postfix").returncode == 0
    assert fw.rules("postfix") == []


def test_every_jail_option_fail2ban_can_give_is_an_option_of_the_command():
    from f2bext import cli, spec
    options = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["ban"]._actions}
    assert set(cli.SPEC_OPTIONS) == set(spec.PARAMETERS) - {"name"} and set(cli.SPEC_OPTIONS) <= options
