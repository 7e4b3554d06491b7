"""The session killer cuts a burst of bans in one pass per jail and scope, in the order asked."""

from f2bext.addr import parse_target
from f2bext.fail2ban.killer import _batches
from f2bext.spec import JailSpec


def test_queued_bans_are_cut_together_per_jail_and_scope_in_order():
    postfix, dovecot = JailSpec.from_params("postfix", {}), JailSpec.from_params("dovecot", {"port": "143"})
    first, second = object(), object()
    a, b, c, d = (parse_target(x) for x in ("192.0.2.1", "2001:db8::1", "192.0.2.2", "198.51.100.9"))
    batches = _batches([(first, a, postfix), (second, b, dovecot), (first, c, postfix), (first, d, dovecot)])
    assert batches == [((first, postfix), [a, c]), ((second, dovecot), [b]), ((first, dovecot), [d])]
