"""The share URL's Sentinel form read without a Redis: what each part means, bad URLs refused with one
clear line that never shows a password; the servers' entries in f2bext:servers checked as the
untrusted input they are; the doctor's findings about sharing. Failover with real daemons is
tests/lab/test_sentinel.py."""

import json
import time

import pytest

from f2bext.doctor.render import render
from f2bext.doctor.model import KernelInfo, Share, Snapshot
from f2bext.doctor.shares import share_findings
from f2bext.errors import InputError
from f2bext.fleet import check_url, connect, redact
from f2bext.fleet.health import parse_entry

RUN_A, RUN_B = "a" * 40, "b" * 40
INSTANCE = "0123456789abcdef0123456789abcdef"


def test_the_sentinel_form_names_the_sentinels_the_master_and_both_passwords():
    url = ("redis+sentinel://f2b:s3cret@s1.example.net:26380,192.0.2.7,[2001:db8::7]:26381/mail-fleet/2"
           "?sentinel_password=s3ntinel&sentinel_username=watch")
    parsed = connect.parse_sentinel(url)
    assert parsed.sentinels == (("s1.example.net", 26380), ("192.0.2.7", 26379), ("2001:db8::7", 26381))
    assert (parsed.service, parsed.db) == ("mail-fleet", 2)
    assert parsed.master_kwargs() == {"username": "f2b", "password": "s3cret", "db": 2}
    assert parsed.sentinel_kwargs() == {"username": "watch", "password": "s3ntinel"}
    assert connect.hosts(url) == ["s1.example.net", "192.0.2.7", "2001:db8::7"]


def test_rediss_sentinel_speaks_tls_to_the_sentinels_and_the_master():
    parsed = connect.parse_sentinel("rediss+sentinel://:pw@s1/fleet?ssl_ca_certs=/etc/ssl/ca.pem&ssl_cert_reqs=required")
    tls = {"ssl": True, "ssl_ca_certs": "/etc/ssl/ca.pem", "ssl_cert_reqs": "required"}
    assert parsed.master_kwargs() == dict(password="pw", db=0, **tls)
    assert parsed.sentinel_kwargs() == tls
    assert connect.parse_sentinel("redis+sentinel://s1/fleet").tls == {}


def test_the_plain_forms_stay_as_they_are():
    for url in ("redis://:pw@192.0.2.5:6379/0", "rediss://192.0.2.5:6380/0", "unix:///run/redis/redis.sock"):
        assert check_url(url) == url and not connect.is_sentinel(url)
    assert connect.hosts("redis://:pw@192.0.2.5:6379/0") == ["192.0.2.5"] and connect.hosts("unix:///r.sock") == []


@pytest.mark.parametrize("url,why", [
    ("redis+sentinel://:s3cret@s1:26379", "name the master"),
    ("redis+sentinel://:s3cret@s1:26379/", "name the master"),
    ("redis+sentinel://:s3cret@s1:26379/fle;et", "name the master"),
    ("redis+sentinel://:s3cret@s1:26379/fleet/0/x", "only a database number"),
    ("redis+sentinel://:s3cret@s1:26379/fleet/zero", "only a database number"),
    ("redis+sentinel://:s3cret@s1:99999/fleet", "no such port"),
    ("redis+sentinel://:s3cret@s1:26379,,s2/fleet", "is not a Sentinel's HOST[:PORT]"),
    ("redis+sentinel://:s3cret@s1:26379,s$(reboot)/fleet", "is not a Sentinel's HOST[:PORT]"),
    ("redis+sentinel://:s3cret@s1:port/fleet", "is not a Sentinel's HOST[:PORT]"),
    ("redis+sentinel://:s3cret@s1/fleet?sentinel_pasword=s3cret", "unknown option 'sentinel_pasword'"),
    ("redis+sentinel://:s3cret@s1/fleet?ssl_ca_certs=/ca.pem", "unknown option 'ssl_ca_certs'"),
    ("rediss+sentinel://:s3cret@s1/fleet?ssl_cert_reqs=maybe", "none, optional or required"),
    ("redis+sentinel://:s3cret@s1/fleet#frag", "fragment"),
    ("sentinel://:s3cret@s1/fleet", "must be a redis://"),
])
def test_a_bad_sentinel_url_is_refused_in_one_line_without_its_password(url, why):
    with pytest.raises(InputError, match=why.replace("[", r"\[").replace("$", r"\$").replace("(", r"\(")) as e:
        check_url(url)
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("url,shown", [
    ("redis+sentinel://:s3cret@s1:26379,s2:26379/fleet/0?sentinel_password=s3cret",
     "redis+sentinel://:***@s1:26379,s2:26379/fleet/0?sentinel_password=***"),
    ("rediss+sentinel://f2b:s3cret@[2001:db8::7]:26379,s2/fleet", "rediss+sentinel://f2b:***@[2001:db8::7]:26379,s2/fleet"),
    ("redis+sentinel://s1/fleet?SENTINEL_PASSWORD=s3cret&db=1", "redis+sentinel://s1/fleet?SENTINEL_PASSWORD=***&db=1"),
])
def test_redact_hides_the_sentinels_password_and_the_masters(url, shown):
    assert redact(url) == shown


def entry(**kw):
    return json.dumps(dict({"origin": "b", "master": RUN_A, "address": "192.0.2.1:6379", "at": time.time()}, **kw))


@pytest.mark.parametrize("key,value", [
    (b"not-an-instance", entry()), (INSTANCE, "{"), (INSTANCE, "[1, 2]"), (INSTANCE, entry(origin="evil\nline")),
    (INSTANCE, entry(master="$(reboot)")), (INSTANCE, entry(address="a b")), (INSTANCE, entry(at="inf")),
    (INSTANCE, entry(at="soon")), (INSTANCE, "[" * 100_000), (INSTANCE, b"\xff\xfe"),
])
def test_a_servers_entry_that_is_not_one_a_server_writes_is_dropped(key, value):
    assert parse_entry(key, value, time.time()) is None


def test_a_servers_entry_reads_back_with_its_age():
    peer = parse_entry(INSTANCE.encode(), entry(at=time.time() - 12).encode(), time.time())
    assert peer["origin"] == "b" and peer["master_id"] == RUN_A and 11 < peer["age"] < 13


def status(**kw):
    now = time.time()
    return dict({"url": "redis+sentinel://:***@s1/fleet/0", "sentinel": True, "master": "192.0.2.1:6379",
                 "master_id": RUN_A, "failovers": 1, "contact": now, "sent": now, "queued": 0, "pending_since": 0,
                 "peers": [], "now": now}, **kw)


def test_the_doctor_says_which_master_a_server_follows_and_finds_nothing_wrong():
    share = Share(("postfix",), status(peers=[{"origin": "b", "master_id": RUN_A, "address": "192.0.2.1:6379",
                                               "age": 3.0, "instance": INSTANCE}]))
    assert share_findings([share]) == []
    text = render(Snapshot([], KernelInfo(), shares=[share]), [])
    assert "follows the master at 192.0.2.1:6379 (named by the Sentinels)" in text
    assert "1 other server follows it too" in text


def test_the_doctor_says_when_servers_disagree_on_the_master():
    peers = [{"origin": "b", "master_id": RUN_B, "address": "192.0.2.2:6379", "age": 3.0, "instance": INSTANCE},
             {"origin": "gone", "master_id": RUN_B, "address": "192.0.2.2:6379", "age": 3600.0, "instance": INSTANCE}]
    (found,) = share_findings([Share(("postfix",), status(peers=peers))])
    assert found.code == "share-split" and "1 other server follows another" in found.message
    assert "b follows 192.0.2.2:6379" in found.evidence and "gone" not in found.evidence


@pytest.mark.parametrize("kw,said", [
    (lambda now: {"contact": 0}, "no answer from Redis since fail2ban started"),
    (lambda now: {"contact": now - 45}, "no answer from Redis for 45 s"),
    (lambda now: {"queued": 7, "pending_since": now - 40}, "7 bans and unbans wait to be published"),
])
def test_the_doctor_says_when_sharing_is_stalled(kw, said):
    now = time.time()
    (found,) = share_findings([Share(("postfix", "sshd"), status(now=now, **kw(now)))])
    assert found.code == "share-stalled" and said in found.message and found.jail == "postfix,sshd"
