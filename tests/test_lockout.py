"""No lockout: what must never be banned is refused on every path (fail2ban's own action, the .conf
twins and the command line, the fleet, rebuilds and verify), and the doors untrusted text comes in by
hold their shape."""

import pytest

from f2bext.errors import InputError
from f2bext.share import check_origin, redact
from f2bext.spec import parse_jail, parse_ports


# ---- the validators match whole strings --------------------------------------------------------

@pytest.mark.parametrize("check,text", [
    (check_origin, "evil\n"), (check_origin, "evil\nFAKE fail2ban line"), (parse_jail, "postfix\n"),
    (parse_ports, "25\n:26"),
])
def test_a_validator_refuses_text_with_a_trailing_newline(check, text):
    with pytest.raises(InputError):
        check(text)


@pytest.mark.parametrize("url,shown", [
    ("redis://:s3cret@192.0.2.5:6379/0", "redis://:***@192.0.2.5:6379/0"),
    ("redis://192.0.2.5:6379/0?password=s3cret", "redis://192.0.2.5:6379/0?password=***"),
    ("rediss://[2001:db8::5]:6380/0?ssl_cert_reqs=none&password=s3cret",
     "rediss://[2001:db8::5]:6380/0?ssl_cert_reqs=none&password=***"),
    ("unix:///run/redis/redis.sock?db=0&pass%77ord=s3cret", "unix:///run/redis/redis.sock?db=0&password=***"),
    ("redis://192.0.2.5:6379/0", "redis://192.0.2.5:6379/0"),
])
def test_redact_hides_every_password_redis_py_would_use(url, shown):
    assert redact(url) == shown
    assert "s3cret" not in redact(url)
