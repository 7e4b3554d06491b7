"""`f2bext doctor` on Docker's DNAT, pure: the nat table Docker 20.10 wrote in the lab (`-p 8025:25`),
fed to diagnose() with our actions and the stock ones."""

from f2bext import doctor
from f2bext.spec import JailSpec

DOCKER_NAT = {
    4: """*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 192.0.2.0/24 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8025 -j DNAT --to-destination 192.0.2.2:25
COMMIT
""",
    6: """*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8025 -j DNAT --to-destination [2001:db8:d0c::242:c000:202]:25
COMMIT
""",
}
PORTS = "587,8025"


def findings(kind, params=None, spec=None):
    action = doctor.ActionInfo(kind, kind, dict({"port": PORTS}, **(params or {})))
    snap = doctor.Snapshot([doctor.JailInfo("postfix", (), (action,))], doctor.KernelInfo(iptables=DOCKER_NAT),
                           {"postfix": spec} if spec else {})
    return [d for d in doctor.diagnose(snap) if d.code == "dnat-bypass"]


def test_an_input_only_f2bext_ban_names_the_published_and_the_container_port_and_the_hooks_fix():
    found = findings("f2bext-nftables", spec=JailSpec.from_params("postfix", {"port": PORTS}))
    assert [d.message.split(" (")[0] for d in found] == ["8025 is forwarded to 192.0.2.2:25",
                                                         "8025 is forwarded to [2001:db8:d0c::242:c000:202]:25"]
    assert all(d.severity == doctor.CRITICAL and "DNAT --to-destination" in d.evidence for d in found)
    assert 'action = f2bext-nftables.py[port="587,8025", hooks="input,forward"]' in found[0].fix


def test_an_f2bext_ban_with_the_forward_hook_holds_through_docker_dnat():
    spec = JailSpec.from_params("postfix", {"port": PORTS, "hooks": "input,forward"})
    assert findings("f2bext-ipset", spec=spec) == [] and findings("f2bext-nftables", spec=spec) == []


def test_a_stock_input_ban_is_told_docker_user_with_the_container_port():
    found = findings("iptables", {"chain": "INPUT"})
    assert len(found) == 2 and "the ban sits in INPUT only" in found[0].message
    assert "add one with chain = DOCKER-USER, port = 25 (the container's port" in found[0].fix


def test_a_stock_docker_user_ban_on_the_published_port_never_matches():
    found = findings("iptables-ipset", {"chain": "DOCKER-USER"})
    assert len(found) == 2 and "sees port 25 after DNAT, not the published one" in found[0].message
    assert found[0].fix.startswith("port = 587,8025,25")
    assert findings("iptables-ipset", {"chain": "DOCKER-USER", "port": "587,8025,25"}) == []


def test_a_stock_nftables_ban_is_told_to_hook_before_dnat():
    found = findings("nftables")
    assert found and "chain_hook = prerouting, chain_priority = -150, blocktype = drop" in found[0].fix


def test_a_dnat_for_a_port_the_jail_does_not_name_is_not_reported():
    assert findings("iptables", {"chain": "INPUT", "port": "587"}) == []
