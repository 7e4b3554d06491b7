"""What f2bext leans on inside fail2ban (f2bext/fail2ban/internals.py, the hooks fail2ban calls on
EnforcingAction, the control socket's markers), checked on the installed fail2ban's own objects: a
fail2ban that changes any of it fails here, by name, and not in a jail that silently loses its bans.
Pure: a database in tmp_path."""

import inspect
import os
import sqlite3
import tempfile
import threading

import pytest
from hypothesis import given, strategies as st

from fail2ban.server.action import ActionBase
from fail2ban.server.actions import Actions
from fail2ban.server.database import Fail2BanDb
from fail2ban.server.ipdns import DNSUtils, IPAddr
from fail2ban.server.jail import Jail
from fail2ban.server.mytime import MyTime
from fail2ban.server.ticket import BanTicket
from fail2ban.protocol import CSPROTO
from fail2ban.version import version

from f2bext import f2bsocket
from f2bext.addr import parse_single, single_text, sort_singles
from f2bext.fail2ban import EnforcingAction, internals

from fuzzing import fuzz

JAIL = "f2bext-internals"
BANTIME = 600


class Probe(ActionBase):
    """The smallest Python action fail2ban accepts."""

    def start(self): pass

    def stop(self): pass

    def ban(self, aInfo): pass

    def unban(self, aInfo): pass


@pytest.fixture
def jail(tmp_path):
    db = Fail2BanDb(str(tmp_path / "fail2ban.sqlite3"))
    jail = Jail(JAIL, backend="polling", db=db)
    jail.actions.setBanTime(BANTIME)
    db.addJail(jail)
    yield jail
    db.close()


def ban(jail, ip, age, bantime):
    """A ban fail2ban made `age` seconds ago, in its database as fail2ban writes it."""
    ticket = BanTicket(ip, MyTime.time() - age)
    ticket.setBanTime(bantime)
    jail.database.addBan(jail, ticket)


def restorable(jail):
    """The addresses f2bext loads ahead of fail2ban's restore."""
    singles, rest = internals.restorable(jail, lambda version, address: True)
    return sorted([single_text(v, a) for v, found in singles.items() for a in found] + rest)


def restored_by_fail2ban(jail):
    """The addresses fail2ban's own restoreCurrentBans puts back (it queues them for the jail's actions)."""
    jail.restoreCurrentBans()
    out = []
    while ticket := jail.getFailTicket():
        out.append(str(ticket.getID()))
    return sorted(out)


def test_the_installed_fail2ban_is_one_internals_py_was_checked_against():
    # A new series may move any of what follows: check internals.py against its source, then add it here.
    assert version.split(".")[:2] in (["1", "0"], ["1", "1"]), f"fail2ban {version}: check f2bext/fail2ban/internals.py"


def test_an_action_finds_its_jail_and_logger_where_actionbase_keeps_them(jail):
    probe = Probe(jail, "probe")
    assert internals.jail_of(probe) is jail and probe._jail is jail
    assert probe._logSys.name == "fail2ban.Probe"  # EnforcingAction replaces it with fail2ban.f2bext's


def test_the_database_lock_connection_and_bips_table_are_where_the_restore_reads_them(jail):
    db = jail.database
    assert isinstance(db._db, sqlite3.Connection)
    with db._lock:
        assert db._lock.acquire(blocking=False)  # reentrant: fail2ban's own methods take it again inside
        db._lock.release()
        columns = {row[1] for row in db._db.execute("PRAGMA table_info(bips)")}
    assert {"ip", "jail", "timeofban", "bantime"} <= columns
    ban(jail, "192.0.2.1", 10, BANTIME)
    with db._lock:
        query = internals.RESTORABLE.format(since="")
        args = {"jail": JAIL, "now": MyTime.time(), "cap": 0, "jailbantime": BANTIME}
        assert db._db.execute(query, args).fetchall() == [("192.0.2.1",)]


@pytest.mark.parametrize("increment", [False, True])
def test_restorable_are_the_ones_fail2ban_restores(jail, increment):
    if increment:
        jail.setBanTimeExtra("increment", "true")
        jail.setBanTimeExtra("maxtime", "2000")
    assert bool(jail.getBanTimeExtra("increment")) is increment
    jail.filter.addIgnoreIP("192.0.2.4")
    ban(jail, "192.0.2.1", 10, BANTIME)  # current
    ban(jail, "192.0.2.2", 700, BANTIME)  # expired
    ban(jail, "192.0.2.3", 100, -1)  # persistent, capped at the jail's maximum
    ban(jail, "192.0.2.4", 10, BANTIME)  # in ignoreip since
    ban(jail, "2001:db8::5", 50, 3000)  # longer than the jail's bantime
    ban(jail, "192.0.2.6", 1000, 3000)  # older than bantime: current only with bantime.increment
    ban(jail, "192.0.2.7", 2500, 3000)  # beyond bantime.maxtime
    ours = restorable(jail)
    assert ours == sorted(["192.0.2.1", "192.0.2.3", "2001:db8::5"] + (["192.0.2.6"] if increment else []))
    assert ours == restored_by_fail2ban(jail)


@fuzz(200)
@given(st.lists(st.tuples(st.integers(-100, 4000), st.sampled_from([-1, -2, 0, 1, 300, 600, 1999, 2000, 2001, 5000])),
                min_size=1, max_size=12),
       st.booleans(), st.sampled_from([None, 1000, 2000]), st.sampled_from([BANTIME, -1]))
def test_restorable_chosen_by_sqlite_are_the_ones_fail2bans_restore_chooses(rows, increment, maxtime, bantime_of_jail):
    """Ages (negative: a time of ban ahead of the clock) and ban times round every edge of the jail's
    bantime (600, or for ever) and maximum; -2 is a database upgraded from before ban times."""
    with tempfile.TemporaryDirectory() as folder:
        db = Fail2BanDb(os.path.join(folder, "fail2ban.sqlite3"))
        try:
            jail = Jail(JAIL, backend="polling", db=db)
            jail.actions.setBanTime(bantime_of_jail)
            if increment:
                jail.setBanTimeExtra("increment", "true")
            if maxtime:
                jail.setBanTimeExtra("maxtime", str(maxtime))
            db.addJail(jail)
            MyTime.setTime(1_000_000.0)
            for i, (age, bantime) in enumerate(rows):
                ban(jail, f"192.0.2.{i + 10}", age, bantime)
            assert restorable(jail) == restored_by_fail2ban(jail)
        finally:
            MyTime.setTime(None)
            db.close()


IGNORES = ["addresses", "self", "host name", "command"]


def ignore_also(jail, ignore):
    """What else fail2ban ignores, by kind: this host's own addresses (its cache of them set by
    hand: the caller unsets it), a host name in ignoreip, an ignorecommand; "addresses" adds nothing."""
    if ignore == "self":
        DNSUtils.CACHE_nameToIp.set(DNSUtils._getSelfIPs_key, {IPAddr("198.51.100.50"), IPAddr("2001:db8:5::5")})
    if ignore == "host name":
        jail.filter.addIgnoreIP("localhost")
    if ignore == "command":
        jail.filter.ignoreCommand = "test <ip> = 198.51.100.30"


@pytest.mark.parametrize("ignore", IGNORES)
def test_restorable_skip_what_fail2bans_ignore_check_skips(jail, ignore):
    """By integers for addresses, networks and this host's own addresses; a host name or an
    ignorecommand leaves every row to fail2ban's own check."""
    jail.filter.addIgnoreIP("192.0.2.0/28")
    jail.filter.addIgnoreIP("2001:db8:1::/48")
    jail.filter.addIgnoreIP("::ffff:198.51.100.9")  # fail2ban takes it as IPv4
    ignore_also(jail, ignore)
    texts = ["192.0.2.1", "192.0.2.15", "192.0.2.16", "2001:db8:1::9", "2001:db8:2::9", "198.51.100.9",
             "198.51.100.30", "198.51.100.50", "2001:db8:5::5", "2001:DB8:1::8", "::ffff:192.0.2.2", "203.0.113.0/24"]
    try:
        for ip in texts:
            ban(jail, ip, 10, BANTIME)
        ours = restorable(jail)
        assert ours == restored_by_fail2ban(jail)
        assert ("198.51.100.50" in ours) is (ignore != "self") and ("198.51.100.30" in ours) is (ignore != "command")
    finally:
        DNSUtils.CACHE_nameToIp.unset(DNSUtils._getSelfIPs_key)


@pytest.mark.parametrize("ignore", IGNORES)
def test_the_ban_paths_ignore_check_answers_as_fail2bans_and_says_when_to_ask_again(jail, ignore):
    """The check a ban makes (internals.ignore_check, by integers) says what Filter.inIgnoreIPList
    says of every text; ignore_inputs changes with each thing the answer rests on."""
    jail.filter.addIgnoreIP("192.0.2.0/28")
    jail.filter.addIgnoreIP("::ffff:198.51.100.9")
    before = internals.ignore_inputs(jail)
    ignore_also(jail, ignore)
    if ignore == "addresses":
        jail.filter.addIgnoreIP("2001:db8:1::/48")
    texts = ["192.0.2.1", "192.0.2.16", "2001:db8:1::9", "2001:db8:2::9", "198.51.100.9", "198.51.100.30",
             "198.51.100.50", "2001:db8:5::5", "127.0.0.1", "::1", "192.0.2.0/28", "203.0.113.0/24"]
    try:
        assert internals.ignore_inputs(jail) != before
        check = internals.ignore_check(jail)
        ours = {t for t in texts if check(t, parse_single(t))}
        assert ours == {t for t in texts if jail.filter.inIgnoreIPList(t, log_ignore=False)}
        assert ("198.51.100.50" in ours) is (ignore == "self") and ("198.51.100.30" in ours) is (ignore == "command")
        assert ("2001:db8:1::9" in ours) is (ignore == "addresses")
    finally:
        DNSUtils.CACHE_nameToIp.unset(DNSUtils._getSelfIPs_key)


def test_ignore_inputs_read_the_self_addresses_without_keeping_them_cached(jail):
    """Asked at every ban, DNSUtils.getSelfIPs would renew its own cache entry each time, and this
    host's addresses would never be resolved again."""
    own = {IPAddr("198.51.100.50")}
    DNSUtils.CACHE_nameToIp.set(DNSUtils._getSelfIPs_key, own)
    try:
        assert internals.ignore_inputs(jail)[-1] is own
        DNSUtils.CACHE_nameToIp.unset(DNSUtils._getSelfIPs_key)  # expired
        assert internals.ignore_inputs(jail)[-1] is None
        assert DNSUtils.CACHE_nameToIp.get(DNSUtils._getSelfIPs_key) is None
    finally:
        DNSUtils.CACHE_nameToIp.unset(DNSUtils._getSelfIPs_key)


def test_fail2bans_restore_waits_while_the_action_holds_the_database(jail):
    ban(jail, "192.0.2.1", 10, BANTIME)
    done = threading.Event()
    with internals.restore_waits(jail):
        worker = threading.Thread(target=lambda: (restored_by_fail2ban(jail), done.set()))
        worker.start()
        assert not done.wait(0.5)
    worker.join(10)
    assert done.is_set()


def test_what_the_action_reads_from_its_jail_is_there(jail):
    jail.filter.addIgnoreIP("192.0.2.0/24")
    assert all(hasattr(entry, "isValid") for entry in jail.filter.getIgnoreIP())
    assert jail.filter.inIgnoreIPList("192.0.2.9", log_ignore=False)
    assert jail.getMaxBanTime() == BANTIME and jail.actions.getBanTime() == BANTIME
    assert list(jail.actions.getBanList()) == []
    assert {"ip", "db", "ifexists"} <= set(inspect.signature(jail.actions.removeBannedIP).parameters)


def test_the_ban_information_holds_what_the_action_reads(jail):
    info = Actions.ActionInfo(BanTicket("192.0.2.1", 1000.0), jail)
    assert (info["ip"], info["restored"], info["time"], info["failures"]) == ("192.0.2.1", 0, 1000.0, 0)
    assert int(info["bantime"]) == BANTIME


@given(st.lists(st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=4).map(lambda a: f"{a}/24"),
                          st.ip_addresses(v=6).map(lambda a: f"{a}/64"), st.sampled_from(["host.example", "a b"])),
                max_size=8))
@fuzz(200)
def test_banned_texts_are_the_texts_of_fail2bans_ban_list(texts):
    jail = Jail(JAIL, backend="polling")
    for ip in texts:
        jail.actions.banManager.addBanTicket(BanTicket(ip, MyTime.time()))
    assert internals.banned_texts(jail) == {str(ip) for ip in jail.actions.getBanList()}


BAN_LIST_ENTRIES = st.one_of(
    st.ip_addresses().map(str), st.ip_addresses(v=4).map(lambda a: f"{a}/24"),
    st.ip_addresses(v=6).map(lambda a: f"{a}/64"), st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["host.example", "a b", "127.0.0.1", "0.0.0.0", "0.1.2.3", "169.254.1.1", "224.0.0.1",
                     "::", "::1", "::192.0.2.1", "fe80::1", "ff02::1", "192.0.2.1/32", "2001:db8::1/128"]))


@given(st.lists(BAN_LIST_ENTRIES, max_size=12))
@fuzz(300)
def test_banned_singles_are_fail2bans_ban_list_as_parse_single_reads_its_texts(texts):
    """Read off fail2ban's IPAddr keys with no text made: each integer is the (version, integer)
    parse_single reads from the key's text; every other key is its text, which parse_single leaves."""
    jail = Jail(JAIL, backend="polling")
    for ip in texts:
        jail.actions.banManager.addBanTicket(BanTicket(ip, MyTime.time()))
    singles, rest = internals.banned_singles(jail)
    listed = [str(ip) for ip in jail.actions.getBanList()]
    assert sorted([single_text(v, a) for v, found in singles.items() for a in found] + rest) == sorted(listed)
    assert all(parse_single(single_text(v, a)) == (v, a) for v, found in singles.items() for a in found)
    assert all(parse_single(text) is None for text in rest)


@given(st.lists(BAN_LIST_ENTRIES, max_size=10), st.lists(BAN_LIST_ENTRIES, max_size=6), st.integers(0, 2**32))
@fuzz(300)
def test_a_restored_ban_comes_off_the_preload_as_its_text_would(preloaded, restored, salt):
    """take() reads the ticket's IPAddr with no text made, and answers as its text would by the
    preload's pending texts: single addresses, networks, host names, and singles the guard sent the
    long way (kept as text). Text asked directly answers the same."""
    from f2bext.fail2ban.preload import Preloaded
    by_key, by_text = Preloaded(), Preloaded()
    # The guard's answer for an address, as deterministic as the guard's: some go the long way.
    loaded = sort_singles(preloaded, lambda version, value: hash((salt, version, value)) % 10 < 7)
    by_key.load(*loaded)
    by_text.load(*loaded)
    for text in restored:
        ip = BanTicket(text, MyTime.time()).getIP()  # what fail2ban hands ban() as aInfo["ip"]
        ip = ip if salt % 3 else IPAddr(str(ip), IPAddr.CIDR_RAW)  # or raw, as a `usedns = raw` jail has it
        before = by_key.pending_texts()
        assert by_key.take(ip) is by_text.take(str(ip)) is (str(ip) in before), text
        assert by_key.pending_texts() == by_text.pending_texts() == before - {str(ip)}


@given(st.lists(st.tuples(BAN_LIST_ENTRIES, st.sampled_from(["banned", "preloaded", "both", "refused"])),
                max_size=12))
@fuzz(200)
def test_held_bans_are_the_held_texts_the_guard_allows_parsed(entries):
    """held_bans() reads integers where it can; what it holds is what held_text() says, each parsed
    and checked in full (ignoreip: 192.0.2.0/24, 2001:db8::/32), the refused ones left out."""
    from f2bext.addr import parse_target
    from f2bext.errors import InputError
    jail = Jail(JAIL, backend="polling")
    jail.filter.addIgnoreIP("192.0.2.0/24")
    jail.filter.addIgnoreIP("2001:db8::/32")
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as run:
        act, _kernel = counting_action(jail, mp, run)
        preload = []
        for text, where in entries:
            if where != "preloaded":
                jail.actions.banManager.addBanTicket(BanTicket(text, MyTime.time()))
            if where in ("preloaded", "both"):
                preload.append(str(IPAddr(text)))  # as fail2ban's database holds it
            if where == "refused":
                act._refused.add(str(IPAddr(text)))
        act._preloaded.load(*sort_singles(preload, lambda version, address: True))
        expected = set()
        check = act.guard()
        for text in act.held_text():
            try:
                net = parse_target(text)
            except InputError:
                continue
            if check.refusal(net) is None:
                expected.add(net)
        bans = act.held_bans()
        assert sorted(bans.all(), key=str) == sorted(expected, key=str)
        assert all(check.clear(v, a) for v, found in bans.singles.items() for a in found)


def test_current_bans_are_the_tickets_fail2ban_holds_with_their_ban_times(jail):
    """What a fleet server publishes again after a failover (fleets.Fleets.own)."""
    start = MyTime.time()
    jail.actions.addBannedIP("192.0.2.1")
    forever = BanTicket("192.0.2.2", start)
    forever.setBanTime(-1)
    jail.actions.banManager.addBanTicket(forever)
    got = sorted(internals.current_bans(jail))
    assert [(ip, bantime) for ip, _, bantime in got] == [("192.0.2.1", BANTIME), ("192.0.2.2", -1)]
    assert all(abs(t - start) < 5 for _, t, _ in got)


def test_fail2ban_still_calls_the_hooks_enforcing_action_answers():
    source = inspect.getsource(Actions)
    for hook in ("consistencyCheck", "clearAllParams", ".reload(", ".flush(", "banEpoch"):
        assert hook in source, f"fail2ban's Actions no longer uses {hook}"
        assert hasattr(EnforcingAction, hook.strip(".(")), hook


def test_the_control_socket_markers_f2bsocket_copies_are_fail2bans():
    assert (f2bsocket.END, f2bsocket.CLOSE) == (CSPROTO.END, CSPROTO.CLOSE)


def test_ban_count_is_the_number_of_tickets_getbanlist_lists(jail):
    for ip in ("192.0.2.1", "192.0.2.2", "2001:db8::3"):
        jail.actions.addBannedIP(ip)
    assert internals.ban_count(jail) == len(jail.actions.getBanList()) == 3


class CountingBackend:
    """The kernel's side of the watchdog's count (IpsetBackend.entries), and the repairs it is asked for."""
    name = "ipset"

    def __init__(self):
        self.entries_held, self.repairs = 0, []

    def entries(self, spec):
        return self.entries_held

    def repair(self, spec, held):
        self.repairs.append(sorted(map(str, held)))


def counting_action(jail, monkeypatch, state_dir):
    """f2bext-ipset.py on the jail, its kernel a CountingBackend: (the action, the kernel)."""
    from f2bext.fail2ban import action as action_module
    monkeypatch.setenv("F2BEXT_STATE_DIR", str(state_dir))
    kernel = CountingBackend()
    monkeypatch.setattr(action_module, "shared_backend", lambda name, owner=False: kernel)

    class Action(EnforcingAction):
        backend_name = "ipset"

    return Action(jail, "f2bext-ipset.py"), kernel


@pytest.fixture
def counted(jail, monkeypatch, tmp_path):
    return counting_action(jail, monkeypatch, tmp_path / "run")


def test_the_watchdogs_count_lists_no_ban_while_the_kernel_agrees_and_repairs_when_it_does_not(jail, monkeypatch,
                                                                                                counted):
    """At 1,000,000 bans, the texts of fail2ban's list built each second held the GIL for a second."""
    act, kernel = counted
    for ip in ("203.0.113.1", "203.0.113.2", "2001:db8::3"):
        jail.actions.addBannedIP(ip)
    act._refused.add("203.0.113.2")  # f2bext refused it: fail2ban lists it, the kernel does not hold it
    kernel.entries_held = 2
    listed = jail.actions.banManager.getBanList
    monkeypatch.setattr(jail.actions.banManager, "getBanList", lambda *a, **k: pytest.fail("the count listed the bans"))
    for _ in range(3):
        act.resync()
    assert kernel.repairs == []
    monkeypatch.setattr(jail.actions.banManager, "getBanList", listed)
    kernel.entries_held = 5  # a restore of saved sets brought back two lifted bans
    act.resync()
    assert kernel.repairs == []  # once may be a ban between fail2ban's list and the kernel
    act.resync()
    assert kernel.repairs == [["2001:db8::3/128", "203.0.113.1/32"]]


def test_the_watchdogs_count_waits_while_fail2ban_restores_what_start_loaded(jail, monkeypatch, counted):
    """Mid-restore a ban is in fail2ban's list and still in the preload (ban() takes it off after
    fail2ban logs it): the counts differ by one, and comparing the texts each time slowed fail2ban's
    restore of 1,000,000 bans by half."""
    act, kernel = counted
    act._preloaded.load(*sort_singles(["203.0.113.1", "203.0.113.2"], lambda version, address: True))
    jail.actions.addBannedIP("203.0.113.1")  # restored by fail2ban, not yet taken off the preload
    kernel.entries_held = 2
    monkeypatch.setattr(kernel, "entries", lambda spec: pytest.fail("the count read the kernel mid-restore"))
    monkeypatch.setattr(jail.actions.banManager, "getBanList", lambda *a, **k: pytest.fail("the count listed the bans"))
    for _ in range(3):
        act.resync()
    assert kernel.repairs == []

