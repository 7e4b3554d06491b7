"""Property-based tests of the builders and the command line against a real kernel, in a namespace of
this module's own: whatever hypothesis draws (tests/fuzzing.py), the kernel takes the rules and lists
them back as the spec, a neighbour jail is never touched, and a refused command line changes nothing.
Deterministic, as tests/unit/test_fuzz.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil

import pytest
from hypothesis import event, example, given, strategies as st

from f2bext import cli, state
from f2bext.addr import to_text
from f2bext.backends import get_backend, ipset as ipset_mod, nft
from f2bext.lab.netns import Netns
from f2bext.spec import HOOKS, JailSpec

from fuzzing import (
    VALID_VALUES, address_text, bannable, exercised, fuzz, jail_names, junk, nets_for, outcome, port_lists,
    valid_specs,
)


def reset(ns: Netns) -> None:
    """An empty firewall: nft (iptables-nft included), legacy iptables, ipsets."""
    ns.run(["nft", "flush", "ruleset"])
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        ns.run([tool, "-w", "-F"], check=False)
    ns.run(["ipset", "destroy"], check=False)


def nft_kernel_view(ns: Netns, spec: JailSpec) -> tuple[list, set]:
    """Findings of the jail as read back from the kernel, and the elements of its sets."""
    with ns.entered():
        kernel = nft.Nft()
        seen = kernel.ruleset()
        held = set()
        for kind in nft.SET_KINDS:
            if nft.set_name(spec.jail, kind) in seen.sets:
                held |= set(kernel.elements(nft.set_name(spec.jail, kind)))
        return nft.check_jail(spec, seen), held


@fuzz(120)
@given(valid_specs(), nets_for())
def test_nft_builders_give_rules_the_kernel_takes_and_lists_back_as_the_spec(scratch, spec, nets):
    reset(scratch)
    singles = [n for n in nets if n.prefixlen == n.max_prefixlen]
    with scratch.entered():
        nft.Nft().apply(nft.build_structure(spec) + nft.build_elements("add", spec.jail, singles)
                        + nft.build_network_sets(spec.jail, nets, (4, 6)), "build")
    findings, held = nft_kernel_view(scratch, spec)
    assert findings == []
    assert held == set(singles) | set(nft.collapsed_networks(nets))


def objects_of(ns: Netns, jail: str) -> list:
    """The jail's sets (with their elements), chains and rules as the kernel lists them."""
    listing = ns.run(["nft", "-j", "list", "table", "inet", "f2bext"], check=False).stdout
    items = json.loads(listing)["nftables"] if listing.strip() else []
    return [item for item in items for kind, body in item.items()
            if kind in ("set", "chain", "rule") and nft.jail_of(body.get("name", body.get("chain", ""))) == jail]


@fuzz(60)
@given(valid_specs(jail_names.filter(lambda j: len(j) <= 15)), st.sampled_from(list(nft.SET_KINDS) + list(HOOKS)),
       nets_for(6), nets_for(6), valid_specs())
def test_rebuilding_and_removing_one_jail_leaves_a_neighbour_with_a_lookalike_name_untouched(
        scratch, spec, suffix, nets, other_nets, other):
    neighbour = JailSpec(f"{spec.jail}-{suffix}", other.ports, other.protocols, other.blocktype, other.hooks,
                         other.kill)
    reset(scratch)
    with scratch.entered():
        backend = nft.NftBackend()
        backend.start(neighbour, other_nets)
        backend.start(spec, nets)
    before = objects_of(scratch, neighbour.jail)
    with scratch.entered():
        backend.repair(spec, nets[:3])
        backend.ban(spec, nets[3:], lambda: nets[:3])
        backend.flush(spec)
        backend.stop(spec)
    assert before and objects_of(scratch, neighbour.jail) == before
    with scratch.entered():
        backend.stop(neighbour)
    assert "f2bext" not in scratch.nft("list", "ruleset")


@fuzz(40)
@given(valid_specs(), nets_for(), st.sampled_from(["nft", "legacy"]))
def test_ipset_builders_give_rules_iptables_takes_and_saves_back_as_the_spec(scratch, spec, nets, variant):
    reset(scratch)
    with scratch.entered():
        xt = ipset_mod.Xtables(variant)
        xt.restore_sets(ipset_mod.build_set_restore(spec.jail, nets, flush=True))
        for family in (4, 6):
            xt.restore_rules(family, ipset_mod.build_rules_restore(spec, family, xt.table(family)))
        sets = xt.set_headers()
        for family in (4, 6):
            assert ipset_mod.check_jail(spec, family, xt.table(family), sets) == []
        held = set(xt.members(ipset_mod.ipset_name(spec.jail, 4)) + xt.members(ipset_mod.ipset_name(spec.jail, 6)))
        assert held == set(nets)
        backend = ipset_mod.IpsetBackend(xt)
        backend.stop(spec)
        assert xt.set_headers() == {}
        for family in (4, 6):
            assert all(not rules for rules in xt.table(family).chains.values())


# ---- the command line, in-process, against the kernel -----------------------------------------------

value = junk.filter(lambda s: not s.startswith("-"))


@st.composite
def command_lines(draw):
    argv = [draw(st.sampled_from(["ban", "unban"]))]
    argv += ["--backend", draw(st.sampled_from(["nftables", "ipset"]))]
    argv += ["--jail", draw(st.one_of(jail_names, jail_names, jail_names, value))]
    for option, valid in (("--port", port_lists().map(lambda p: p[0])), ("--protocol", VALID_VALUES["protocol"]),
                          ("--type", VALID_VALUES["type"]), ("--hooks", VALID_VALUES["hooks"]),
                          ("--kill", st.just("none"))):
        if draw(st.booleans()):
            argv += [option, draw(st.one_of(valid, valid, valid, value))]
    addresses = bannable.map(to_text)
    argv += draw(st.lists(st.one_of(addresses, addresses, addresses, address_text.filter(
        lambda s: not s.startswith("-"))), min_size=1, max_size=3))
    return argv


def snapshot(ns: Netns) -> str:
    parts = [ns.nft("list", "ruleset"), ns.run(["ipset", "save"]).stdout]
    parts += [ns.run([f"{t}-save"]).stdout for t in ("iptables", "ip6tables")]
    text = "\n".join(line for part in parts for line in part.splitlines() if not line.startswith("#"))
    return re.sub(r"\[\d+:\d+\]|packets \d+ bytes \d+", "", text)


@contextlib.contextmanager
def command_env(tmp):
    saved = dict(os.environ)
    os.environ.update(F2BEXT_STATE_DIR=os.path.join(tmp, "run"), F2BEXT_FAIL2BAN_SOCKET=os.path.join(tmp, "none"),
                      F2BEXT_IPTABLES="nft")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def command_tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli"))


@exercised(at_least=6)
@fuzz(80)
@given(command_lines())
@example(["ban", "--backend", "nftables", "--jail", "postfix", "--port", "²", "203.0.113.7"])
@example(["ban", "--backend", "ipset", "--jail", "postfix\n", "203.0.113.7"])
def test_any_command_line_exits_0_or_2_a_refusal_changes_nothing_and_an_unban_builds_nothing(
        scratch, command_tmp, argv):
    reset(scratch)
    shutil.rmtree(os.path.join(command_tmp, "run"), ignore_errors=True)
    scratch.run(["ip", "addr", "replace", "198.51.100.1/24", "dev", "lo"])  # an own address to refuse
    before = snapshot(scratch)
    err = io.StringIO()
    with command_env(command_tmp), scratch.entered(), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    if code == 2:
        assert err.getvalue().startswith("f2bext: error: ") and err.getvalue().count("\n") == 1, err.getvalue()
        assert snapshot(scratch) == before
        return outcome("refused")
    assert code == 0, f"exit {code}: {err.getvalue()}"
    outcome("valid")
    event(f"{argv[0]} exit 0")
    if argv[0] == "unban":  # of a jail f2bext does not enforce here: nothing to lift, nothing to create
        assert snapshot(scratch) == before
    else:
        with command_env(command_tmp), scratch.entered():
            known = state.load(argv[4])
            assert get_backend(known.backend).verify([known.spec]) == []
