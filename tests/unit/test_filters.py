"""Our filters through fail2ban's own regex machinery (FilterReader, Filter.processLine), against the
annotated samples in tests/files/logs, in fail2ban's `# failJSON:` convention (as its samplestestcase)."""

import configparser
import datetime
import json
import os
import re
from dataclasses import dataclass

import pytest
from fail2ban.client.filterreader import FilterReader
from fail2ban.server.filter import Filter
from fail2ban.server.mytime import MyTime
from fail2ban.tests.samplestestcase import RE_WRONG_GREED
from fail2ban.version import version as fail2ban_version

from f2bext import lab

LOGS = os.path.join(os.path.dirname(__file__), "..", "files", "logs")
FILTERS = os.path.join(lab.PROJECT_ROOT, "filter.d")
# fail2ban's test clock (Aug 14 2005): sample dates without a year are read against it, as upstream.
TEST_NOW = 1124013600
TEST_NOW_STR = datetime.datetime.utcfromtimestamp(TEST_NOW).isoformat()
ANNOTATION = re.compile(r"^#+ ?(failJSON|filterOptions):(.+)$")
# A sample the stock filter misses: "stock miss: ..." on every release, "stock miss before 1.1: ..."
# on fail2ban releases before 1.1 only (1.1's own filter caught up).
STOCK_MISS = re.compile(r"stock miss(?: before (\d+)\.(\d+))?:")
FAIL2BAN_VERSION = tuple(int(n) for n in re.findall(r"\d+", fail2ban_version)[:2])

OUR_FILTERS = sorted(n[:-5] for n in os.listdir(FILTERS) if n.startswith("f2bext-") and n.endswith(".conf"))


def _extends_stock(name: str) -> bool:
    """Whether our filter builds on the stock one of its name without the prefix (`before = X.conf`);
    f2bext-recidive replaces the stock recidive instead."""
    stock = name[len("f2bext-"):] + ".conf"
    conf = configparser.ConfigParser(interpolation=None, strict=False)
    conf.read(os.path.join(FILTERS, f"{name}.conf"))
    return os.path.exists(f"/etc/fail2ban/filter.d/{stock}") and stock in conf.get("INCLUDES", "before", fallback="")


# Our filters that extend a stock one of the same name without the prefix.
EXTENDING = [n for n in OUR_FILTERS if _extends_stock(n)]


@dataclass(frozen=True)
class Sample:
    lineno: int
    line: str
    expect: dict
    options: tuple  # the filter option sets in force (a `# filterOptions:` line switches them)

    @property
    def where(self) -> str:
        return f"line {self.lineno}: {self.line!r} ({self.expect.get('desc', '')})"


def read_samples(name: str) -> list[Sample]:
    """Annotated lines of a sample log; an unannotated log line must not match, as upstream."""
    with open(os.path.join(LOGS, name), encoding="utf-8") as f:
        lines = f.read().splitlines()
    samples, options, expect = [], ({},), None
    for n, line in enumerate(lines, 1):
        m = ANNOTATION.match(line)
        if m and m.group(1) == "filterOptions":
            opts = json.loads(m.group(2))
            options = tuple(opts if isinstance(opts, list) else [opts])
        elif m:
            expect = json.loads(m.group(2))
        elif line.strip() and not line.startswith("#"):
            samples.append(Sample(n, line, expect if expect is not None else {"match": False}, options))
            expect = None
    return samples


@pytest.fixture(scope="module")
def confdir(tmp_path_factory):
    """Debian's /etc/fail2ban plus our files, as the lab builds it."""
    server = lab.Fail2banLab(None, str(tmp_path_factory.mktemp("f2b")))
    server.write_config()
    return server.confdir


@pytest.fixture(autouse=True)
def fail2ban_test_clock():
    MyTime.setTime(TEST_NOW)
    yield
    MyTime.myTime = None


def build_filter(confdir: str, name: str, options: dict) -> Filter:
    """A filter as fail2ban's samples test builds one: every regex tried, raw hosts returned."""
    flt = Filter(None)
    flt.returnRawHost = True
    flt.checkAllRegex = True
    flt.checkFindTime = False
    flt.active = True
    reader = FilterReader(name, "jail", {k: v for k, v in options.items() if not k.startswith("test.")},
                          basedir=confdir)
    assert reader.read(), f"fail2ban cannot read filter {name}"
    reader.getOptions({})
    for opt in reader.convert():
        assert opt[0] in ("set", "multi-set"), opt
        for value in (opt[3] if opt[0] == "multi-set" else [opt[3]]):
            if opt[2] == "prefregex":
                flt.prefRegex = value
            elif opt[2] == "addfailregex":
                flt.addFailRegex(value)
            elif opt[2] == "addignoreregex":
                flt.addIgnoreRegex(value)
            elif opt[2] == "maxlines":
                flt.setMaxLines(value)
            elif opt[2] == "datepattern":
                flt.setDatePattern(value)
    return flt


def failures(flt: Filter, line: str, options: dict) -> list:
    """(regex index, id, time, captures) of each failure the line yields, as fail2ban reads it."""
    if options.get("logtype") == "journal":
        found = flt.processLine(("", TEST_NOW_STR, options.get("test.prefix-line", "") + line), TEST_NOW)
    else:
        found = flt.processLine(line)
    return [r for r in found or () if r[1] is not None and not r[3].get("nofail")]


def expected_time(text: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(text, fmt).timestamp()


def test_every_filter_of_ours_has_annotated_samples():
    assert OUR_FILTERS, "no filters shipped"
    for name in OUR_FILTERS:
        assert os.path.exists(os.path.join(LOGS, name)), f"filter {name} has no sample log in tests/files/logs"
        assert any(s.expect.get("match") for s in read_samples(name)), f"{name}: no matching sample"
        assert any(not s.expect.get("match") for s in read_samples(name)), f"{name}: no non-matching sample"


@pytest.mark.parametrize("name", OUR_FILTERS)
def test_filter_matches_exactly_the_annotated_lines_with_their_captures(confdir, name):
    filters: dict[str, Filter] = {}
    used: dict[str, set] = {}  # per option set: indexes of the regexes a sample matched
    used_regexes: set = set()
    for sample in read_samples(name):
        for options in sample.options:
            key = json.dumps(options, sort_keys=True)
            if key not in filters:
                filters[key] = build_filter(confdir, name, options)
                used[key] = set()
            found = failures(filters[key], sample.line, options)
            if not sample.expect.get("match"):
                assert not found, f"{name}: matched but should not: {sample.where}"
                continue
            assert len(found) == 1, f"{name}: {len(found)} regexes matched, want 1: {sample.where}"
            index, fid, when, captured = found[0]
            used[key].add(index)
            used_regexes.add(filters[key].getFailRegex()[index])
            for k, v in sample.expect.items():
                if k in ("time", "match", "desc"):
                    continue
                got = captured.get(k, fid if k == "host" else None)
                assert got == v, f"{name}: {k} is {got!r}, want {v!r}: {sample.where}"
            if "time" in sample.expect:
                assert when == expected_time(sample.expect["time"]), f"{name}: time {when}: {sample.where}"
    # As upstream: every regex we wrote has a sample (the stock ones have theirs in fail2ban's tests).
    stock = set(build_filter(confdir, name[len("f2bext-"):], {}).getFailRegex()) if name in EXTENDING else set()
    for key, flt in filters.items():
        for index, regex in enumerate(flt.getFailRegex()):
            assert index in used[key] or regex in used_regexes or regex in stock, \
                f"{name} {key}: failregex {index} has no sample"


@pytest.mark.parametrize("name", OUR_FILTERS)
def test_filter_has_no_greedy_catch_all_before_the_host(confdir, name):
    for regex in build_filter(confdir, name, {}).getFailRegex():
        assert not RE_WRONG_GREED.search(regex), f"{name}: greedy catch-all before <HOST>: {regex}"


@pytest.mark.parametrize("name", EXTENDING)
def test_stock_filter_misses_exactly_the_lines_ours_adds(confdir, name):
    """Each sample marked "stock miss:" is missed by Debian's own filter; every other one it matches too.
    That is the evidence that the filter is needed, and that it changes nothing else."""
    stock_name = name[len("f2bext-"):]
    stock = build_filter(confdir, stock_name, {})
    ours = build_filter(confdir, name, {})
    marked = 0
    for sample in read_samples(name):
        if not sample.expect.get("match"):
            assert not failures(stock, sample.line, {}), f"stock {stock_name} matches a non-failure: {sample.where}"
            continue
        stock_found = failures(stock, sample.line, {})
        miss = STOCK_MISS.match(sample.expect.get("desc", ""))
        marked += bool(miss)
        if miss and (miss.group(1) is None or FAIL2BAN_VERSION < (int(miss.group(1)), int(miss.group(2)))):
            assert not stock_found, f"stock {stock_name} matches a line marked as its miss: {sample.where}"
        else:
            assert stock_found, f"stock {stock_name} misses a line not marked as its miss: {sample.where}"
        assert failures(ours, sample.line, {}), sample.where
    # On a release whose stock filter caught up, ours must still match everything the stock one does.
    assert marked, f"{name} extends {stock_name} but no sample shows a line the stock filter misses"
