"""VRRPv3 over IPv6 (RFC 5798 §5.1.2) in a mixed group with Debian's keepalived 2.2.7.

One module-scoped lab: nodes a and b and a client on one bridge, DAD off inside the namespaces
(their link-local addresses, the advert sources, are usable at once), the client on
2001:db8::/64 with the VIP. advert_int 0.1 s keeps the file short. Every test starts its own
keepalived (own config, pid files, log; foreground, VRRP only) and agent; the fixture stops both
and removes the VIP afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address

import pytest

from sidecar.lab import Lab
from sidecar.lab.netns import require_root_and_tools, stop_process

from .conftest import metric, status
from .test_restart import restart, restarted
from .test_vrrp_interop import KEEPALIVED, RUNS, Keepalived, cli, logs, took

VIP6 = "2001:db8::1"
LL6 = "fe80::9"  # a link-local VIP listed first (RFC 5798 §5.2.9; keepalived's configs)
ADDR6 = {"a": "2001:db8::11", "b": "2001:db8::12"}  # unicast_src_ip / CARP_SRCIP
CLIENT6 = "2001:db8::100/64"
VRID = 9
ADVERT_INT = 0.1
why = require_root_and_tools([KEEPALIVED, "curl", "/usr/sbin/apache2"])
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


@dataclass
class Group6:
    lab: Lab
    keepalived: list[Keepalived] = field(default_factory=list)

    def start_keepalived(self, node: str, *, priority: int = 100, unicast: bool = False,
                         vips: tuple[str, ...] = (VIP6,)) -> Keepalived:
        base = self.lab.dir / f"ka6-{node}-{next(RUNS)}"
        conf = base.with_suffix(".conf")
        conf.write_text("\n".join([
            "global_defs {", f"  router_id node6_{node}", "}",
            "vrrp_instance VI_1 {", "  state BACKUP", "  interface eth0",
            f"  virtual_router_id {VRID}", "  version 3", f"  priority {priority}",
            f"  advert_int {ADVERT_INT:g}", "  virtual_ipaddress {",
            *(f"    {v}/64 dev eth0" for v in vips), "  }",
            *(unicast_lines(node) if unicast else []), "}", ""]))
        log = base.with_suffix(".log")
        cmd = [KEEPALIVED, "-n", "-l", "-D", "-f", str(conf), "-p", f"{base}.pid",
               "-r", f"{base}.vrrp.pid", "-c", f"{base}.check.pid", "--vrrp"]
        ka = Keepalived(node, log, self.lab.topo.start(node, cmd, log=log))
        self.keepalived.append(ka)
        return ka

    def start_ours(self, node: str, *, priority: int = 100, unicast: bool = False,
                   vips: tuple[str, ...] = (VIP6,)) -> None:
        peers = {"CARP_SRCIP": ADDR6[node], "CARP_PEERS": ADDR6[other(node)]} if unicast \
            else {"CARP_SRCIP": ""}
        self.lab.start_agent(node, CARP_PROTOCOL="vrrp3", CARP_PRIORITY=str(priority),
                             CARP_ADVERT_INT=f"{ADVERT_INT:g}", CARP_VHID=str(VRID),
                             CARP_ADDR=",".join(f"{v}/64" for v in vips), CARP_PASS="",
                             CARP_IF_ALIAS="", **peers)

    def clear(self) -> None:
        for node in list(self.lab.agents):
            self.lab.stop_agent(node)
        for ka in self.keepalived:
            stop_process(ka.proc)
        self.keepalived.clear()
        for node in ("a", "b"):
            self.lab.topo.plug(node)
            for vip in (f"{VIP6}/64", f"{LL6}/64", "172.16.0.1/16"):  # (the pair's IPv4)
                self.lab.topo[node].run("ip", "addr", "del", vip, "dev", "eth0", check=False)


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def unicast_lines(node: str) -> list[str]:
    return [f"  unicast_src_ip {ADDR6[node]}", "  unicast_peer {", f"    {ADDR6[other(node)]}",
            "  }"]


def sh(lab: Lab, node: str, *cmd: str) -> str:
    return lab.topo[node].run(*cmd, check=False).stdout


def link_local(lab: Lab, node: str) -> IPv6Address:
    """The interface's own link-local address (a link-local VIP is not it)."""
    out = sh(lab, node, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
    return next(a for line in out.splitlines()
                if (a := IPv6Address(line.split()[3].split("/")[0])) != IPv6Address(LL6))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        for node in ("a", "b", "client"):  # only inside the lab's namespaces
            lab.topo[node].run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                               "net.ipv6.conf.default.accept_dad=0",
                               "net.ipv6.conf.eth0.accept_dad=0")
            lab.topo[node].run("ip", "link", "set", "eth0", "down")  # link-local anew, no DAD
            lab.topo[node].run("ip", "link", "set", "eth0", "up")
        lab.topo["client"].run("ip", "addr", "add", CLIENT6, "dev", "eth0", "nodad")
        for node, address in ADDR6.items():
            lab.topo[node].run("ip", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
        lab.start_apache("a")  # Listen 80: IPv6 too; the page names the node
        lab.start_apache("b")
        yield lab


@pytest.fixture
def group(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Group6]:
    g, failed = Group6(lab), request.session.testsfailed
    try:
        yield g
    finally:
        if request.session.testsfailed > failed:
            print(logs(g))  # type: ignore[arg-type]
        g.clear()


def holders(g: Group6, vip: str = VIP6) -> list[str]:
    return [n for n in ("a", "b")
            if f"inet6 {vip}/64" in sh(g.lab, n, "ip", "-6", "addr", "show", "dev", "eth0")]


def client_reaches(g: Group6, node: str) -> bool:
    """The client's HTTP request to the VIP is answered by ``node``'s Apache: its neighbour
    entry for the VIP follows the move (the new master's unsolicited NAs)."""
    return g.lab.get("client", f"http://[{VIP6}]/") == f"node-{node}"


def our_state(g: Group6, node: str) -> str | None:
    return g.lab.state(node)


def drops(g: Group6, node: str) -> float:
    reasons = ("addresses", "bad_checksum", "bad_version", "bad_ttl", "short", "wrong_group",
               "bad_ip_header", "not_carp", "not_a_peer", "other_vhid", "bad_type")
    return sum(metric(g.lab, node, "carp_adverts_dropped_total", reason=r) for r in reasons)


def test_keepalived_master_our_backup_cable_pull_both_ways_and_its_resign(group: Group6
                                                                       ) -> None:
    lab = group.lab
    ka = group.start_keepalived("a", priority=150)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    group.start_ours("b", priority=100)
    took(lambda: metric(lab, "b", "carp_adverts_received_total") >= 3, 10, "its adverts")
    st = status(lab, "b")
    assert (st["state"], st["protocol"]) == ("BACKUP", "vrrp3")
    peer = str(link_local(lab, "a"))  # keepalived's source: its link-local address
    assert st["peers"][peer]["priority"] == 150  # type: ignore[index]
    assert metric(lab, "b", "carp_peer_priority", peer=peer) == 150
    shown = cli(lab, "b", "status", CARP_CONTROL_SOCKET=str(lab.dir / "b.sock")).stdout
    assert "  protocol:     VRRPv3, priority 100, advert_int 0.1 s, preempt on" in shown, shown
    assert holders(group) == ["a"] and drops(group, "b") == 0, logs(group)  # type: ignore
    took(lambda: client_reaches(group, "a"), 5, "the client reaches a")
    lab.topo.unplug("a")
    pulled = took(lambda: "b" in holders(group), 3, "our takeover")
    took(lambda: client_reaches(group, "b"), 5, "the client reaches b")
    lab.topo.plug("a")
    took(lambda: holders(group) == ["a"], 5, "keepalived preempts back (priority 150)")
    took(lambda: our_state(group, "b") == "BACKUP", 3, "our BACKUP")
    took(lambda: client_reaches(group, "a"), 5, "the client reaches a again")
    time.sleep(0.3)
    ka.proc.send_signal(signal.SIGTERM)  # keepalived resigns: priority 0
    resigned = took(lambda: "b" in holders(group), 2, "our takeover on its resign")
    took(lambda: client_reaches(group, "b"), 5, "the client reaches b after the resign")
    print(f"v6 0.1 s: cable pull {pulled:.2f} s, resign {resigned:.2f} s")
    assert resigned < 0.3, f"{resigned:.2f} s: a master-down wait, not the resign skew"


def test_our_master_keepalived_backup_cable_pull_both_ways_and_our_resign(group: Group6
                                                                       ) -> None:
    lab = group.lab
    group.start_ours("a", priority=150)
    took(lambda: our_state(group, "a") == "MASTER", 10, "our MASTER")
    ka = group.start_keepalived("b", priority=100)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    time.sleep(0.5)
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)  # type: ignore
    took(lambda: client_reaches(group, "a"), 5, "the client reaches a")
    # an in-place restart: the keeper's IPv6 adverts hold keepalived in BACKUP meanwhile
    before = status(lab, "a")["agent"]["started"]  # type: ignore[index]
    assert restart(lab, "a").startswith("ok: restarting in place")
    assert restarted(lab, "a", before)["state"] == "MASTER"
    assert metric(lab, "a", "carp_restarts_total", kind="in_place", result="resumed") == 1
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)  # type: ignore
    # another link-local address, the old one gone: ours advertise from it (no CARP_SRCIP)
    old = link_local(lab, "a")
    lab.topo["a"].run("ip", "addr", "add", "fe80::a:99/64", "dev", "eth0", "nodad")
    lab.topo["a"].run("ip", "addr", "del", f"{old}/64", "dev", "eth0")
    time.sleep(0.6)
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)  # type: ignore
    lab.topo.unplug("a")
    took(lambda: "b" in holders(group), 3, "keepalived takes over")
    took(lambda: client_reaches(group, "b"), 5, "the client reaches b")
    lab.topo.plug("a")
    took(lambda: holders(group) == ["a"], 5, "we preempt back (priority 150)")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP again")
    took(lambda: client_reaches(group, "a"), 5, "the client reaches a again")
    sock = {"CARP_CONTROL_SOCKET": str(lab.dir / "a.sock")}
    assert cli(lab, "a", "demote", **sock).returncode == 0  # maintenance: a resign too
    took(lambda: holders(group) == ["b"], 2, "keepalived takes over on our demotion")
    assert cli(lab, "a", "promote", **sock).returncode == 0
    took(lambda: holders(group) == ["a"], 5, "we preempt back once promoted")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP again")
    time.sleep(0.3)
    lab.agents["a"].send_signal(signal.SIGTERM)
    resigned = took(lambda: "b" in holders(group), 2, "keepalived takes over on our resign")
    assert ka.said("Backup received priority 0 advertisement"), logs(group)  # type: ignore
    took(lambda: client_reaches(group, "b"), 5, "the client reaches b after our resign")
    assert resigned < 0.3, f"{resigned:.2f} s: a master-down wait, not the resign skew"


def block_vrrp6(lab: Lab, node: str, blocked: bool = True) -> None:
    """Drop IPv6 next header 112 to and from ``node`` at the lab's switch (a partition of the
    VRRP group only)."""
    port, table = lab.topo[node].port, f"vrrp6block_{lab.topo[node].port}"
    if blocked:
        rules = (f"table bridge {table} {{\n chain forward {{\n"
                 "  type filter hook forward priority 0;\n"
                 f'  iifname "{port}" ip6 nexthdr 112 drop\n'
                 f'  oifname "{port}" ip6 nexthdr 112 drop\n }}\n}}\n')
        subprocess.run(["ip", "netns", "exec", lab.topo.switch, "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True, timeout=30)
    else:
        subprocess.run(["ip", "netns", "exec", lab.topo.switch, "nft", "delete", "table",
                        "bridge", table], check=True, capture_output=True, timeout=30)


def partitioned_then_healed(g: Group6) -> list[str]:
    """Both MASTER while VRRP is blocked between them, then one: who holds the VIP."""
    block_vrrp6(g.lab, "a")
    try:
        took(lambda: holders(g) == ["a", "b"], 10, "both MASTER while partitioned")
    finally:
        block_vrrp6(g.lab, "a", False)
    took(lambda: len(holders(g)) == 1, 5, "one master after healing")
    time.sleep(0.3)  # and it stays that way
    return holders(g)


def test_equal_priorities_the_higher_link_local_wins_either_way(group: Group6) -> None:
    lab = group.lab
    high = max(("a", "b"), key=lambda n: int(link_local(lab, n)))  # veth MACs are random
    low = "b" if high == "a" else "a"
    ka = group.start_keepalived(low, priority=100)
    group.start_ours(high, priority=100)
    assert partitioned_then_healed(group) == [high], logs(group)  # type: ignore[arg-type]
    assert ka.state() == "BACKUP" and our_state(group, high) == "MASTER"
    took(lambda: client_reaches(group, high), 5, f"the client reaches {high}")
    group.clear()
    group.start_ours(low, priority=100)
    ka = group.start_keepalived(high, priority=100)
    assert partitioned_then_healed(group) == [high], logs(group)  # type: ignore[arg-type]
    assert ka.state() == "MASTER" and our_state(group, low) == "BACKUP"
    # keepalived announced when the partition made it MASTER, possibly before ours did, and
    # does not announce again when ours yields: the client's entry may name ours until NUD
    lab.topo["client"].run("ip", "-6", "neigh", "flush", "dev", "eth0")
    took(lambda: client_reaches(group, high), 5, f"the client reaches {high}")


def test_unicast_peers_both_ways(group: Group6) -> None:
    """keepalived's unicast_src_ip/unicast_peer and our CARP_SRCIP/CARP_PEERS, IPv6."""
    lab = group.lab
    group.start_ours("a", priority=150, unicast=True)
    took(lambda: our_state(group, "a") == "MASTER", 10, "our MASTER")
    ka = group.start_keepalived("b", priority=100, unicast=True)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    time.sleep(0.5)
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)  # type: ignore
    assert drops(group, "a") == 0 and metric(lab, "a", "carp_adverts_received_total") == 0
    took(lambda: client_reaches(group, "a"), 5, "the client reaches a")
    # in place: the keeper's unicast adverts (its IPv6 socket) hold keepalived in BACKUP
    before = status(lab, "a")["agent"]["started"]  # type: ignore[index]
    assert restart(lab, "a").startswith("ok: restarting in place")
    assert restarted(lab, "a", before)["state"] == "MASTER"
    time.sleep(0.3)
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)  # type: ignore
    # ours BACKUP: keepalived's unicast adverts (from its unicast_src_ip) are heard, no drop
    sock = {"CARP_CONTROL_SOCKET": str(lab.dir / "a.sock")}
    assert cli(lab, "a", "demote", **sock).returncode == 0
    took(lambda: holders(group) == ["b"], 2, "keepalived takes over on our demotion")
    took(lambda: metric(lab, "a", "carp_adverts_received_total") >= 3, 2, "its adverts")
    assert drops(group, "a") == 0 and our_state(group, "a") == "BACKUP", logs(group)  # type: ignore
    assert status(lab, "a")["peers"][ADDR6["b"]]["priority"] == 100  # type: ignore[index]
    assert cli(lab, "a", "promote", **sock).returncode == 0
    took(lambda: holders(group) == ["a"], 5, "we preempt back once promoted")
    lab.topo.unplug("a")
    took(lambda: "b" in holders(group), 3, "keepalived takes over")
    took(lambda: client_reaches(group, "b"), 5, "the client reaches b")
    lab.topo.plug("a")
    took(lambda: holders(group) == ["a"], 5, "we preempt back (priority 150)")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP again")
    took(lambda: client_reaches(group, "a"), 5, "the client reaches a again")
    lab.agents["a"].send_signal(signal.SIGTERM)
    took(lambda: "b" in holders(group), 2, "keepalived takes over on our resign")
    assert ka.said("Backup received priority 0 advertisement"), logs(group)  # type: ignore
    assert not ka.said("Expected"), logs(group)  # keepalived's unicast/multicast mismatch


def test_watch_decodes_ipv6_adverts(group: Group6) -> None:
    lab = group.lab
    group.start_keepalived("a", priority=120)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    out = cli(lab, "b", "watch", "-i", "eth0", "-c", "3").stdout
    assert f"{link_local(lab, 'a')} " in out and f"VRRPv3 vrid {VRID} " in out, out
    assert "priority 120" in out, out


def test_a_link_local_vip_first_as_keepalived_lists_it(group: Group6) -> None:
    """keepalived's usual IPv6 list, fe80::9 first: one group (no "addresses" drop either
    side), ours adds it with link scope as MASTER, keeps it over an in-place restart, still
    advertises from the interface's own link-local, and removes it on its resign."""
    lab, both = group.lab, (LL6, VIP6)
    group.start_ours("a", priority=150, vips=both)
    took(lambda: our_state(group, "a") == "MASTER", 10, "our MASTER")
    ka = group.start_keepalived("b", priority=100, vips=both)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    own = str(link_local(lab, "a"))
    shown = sh(lab, "a", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
    assert f"inet6 {LL6}/64 scope link" in shown, shown
    assert own != LL6 and status(lab, "a")["srcip"] == own  # never the VIP (keepalived's rule)
    time.sleep(0.3)
    assert holders(group, LL6) == ["a"] and ka.states() == ["BACKUP"], logs(group)  # type: ignore
    assert not ka.said("not present in MASTER advert"), logs(group)  # type: ignore[arg-type]
    took(lambda: lab.get("client", f"http://[{LL6}%25eth0]/") == "node-a", 5, "client to fe80::9")
    before = status(lab, "a")["agent"]["started"]  # type: ignore[index]
    assert restart(lab, "a").startswith("ok: restarting in place")
    assert restarted(lab, "a", before)["srcip"] == own  # fe80::9 was there: not taken
    assert holders(group, LL6) == ["a"] and ka.states() == ["BACKUP"], logs(group)  # type: ignore
    assert drops(group, "a") == 0
    lab.agents["a"].send_signal(signal.SIGTERM)
    took(lambda: holders(group, LL6) == ["b"], 2, "keepalived takes fe80::9 on our resign")
    took(lambda: lab.get("client", f"http://[{LL6}%25eth0]/") == "node-b", 5, "client to b")
    assert not ka.said("not present in MASTER advert"), logs(group)  # type: ignore[arg-type]


def test_one_vrid_two_families_beside_keepalived_s_pair(group: Group6) -> None:
    """keepalived's IPv4 and IPv6 instances of VRID 9 on eth0, and ours: two instances, each
    routed its family's adverts, labelled apart in the metrics, both kept MASTER over an
    in-place restart (the record and the keeper key them by family), both handed over."""
    lab, four = group.lab, "172.16.0.1"
    base = lab.dir / f"ka6-pair-{next(RUNS)}"
    conf = base.with_suffix(".conf")
    conf.write_text("\n".join([
        *(line for family, vips in (("VI_1", (f"{LL6}/64", f"{VIP6}/64")), ("VI_4", (
            f"{four}/16",))) for line in (
            f"vrrp_instance {family} {{", "  state BACKUP", "  interface eth0",
            f"  virtual_router_id {VRID}", "  version 3", "  priority 100",
            f"  advert_int {ADVERT_INT:g}", "  virtual_ipaddress {",
            *(f"    {v} dev eth0" for v in vips), "  }", "}")), ""]))
    toml = lab.dir / "pair.toml"
    toml.write_text('interface = "eth0"\nprotocol = "vrrp3"\npriority = 150\n'
                    f"advert_int = {ADVERT_INT}\n"
                    f'[[vhid]]\nvhid = {VRID}\naddr = ["{four}/16"]\n'
                    f'[[vhid]]\nvhid = {VRID}\naddr = ["{LL6}/64", "{VIP6}/64"]\n')
    lab.start_agent("a", CARP_CONFIG=str(toml), CARP_VHID="", CARP_PASS="", CARP_ADDR="",
                    CARP_SRCIP="", CARP_IF_ALIAS="")

    def ours() -> list[str]:
        st = lab.status("a") or {}
        return [i["state"] for i in st.get("instances", [])]

    took(lambda: ours() == ["MASTER", "MASTER"], 10, "both of ours MASTER")
    log = base.with_suffix(".log")
    cmd = [KEEPALIVED, "-n", "-l", "-D", "-f", str(conf), "-p", f"{base}.pid",
           "-r", f"{base}.vrrp.pid", "-c", f"{base}.check.pid", "--vrrp"]
    ka = Keepalived("b", log, lab.topo.start("b", cmd, log=log))
    group.keepalived.append(ka)
    took(lambda: ka.said("(VI_4) Entering BACKUP") and ka.state() == "BACKUP", 5, "its BACKUPs")
    time.sleep(0.3)
    v4 = {"group": f"vhid{VRID}-{four}", "vhid": str(VRID)}
    v6 = {"group": f"vhid{VRID}-{LL6}", "vhid": str(VRID)}
    for labels in (v4, v6):  # a series each (the default groups differ)
        assert metric(lab, "a", "carp_is_master", **labels) == 1
        assert metric(lab, "a", "carp_adverts_sent_total", **labels) > 0
    assert holders(group) == ["a"] and holders(group, LL6) == ["a"], logs(group)  # type: ignore
    assert f"inet {four}/16" in sh(lab, "a", "ip", "-4", "addr", "show", "dev", "eth0")
    assert drops(group, "a") == 0 and not ka.said("Entering MASTER"), logs(group)  # type: ignore
    before = status(lab, "a")["agent"]["started"]  # type: ignore[index]
    assert restart(lab, "a").startswith("ok: restarting in place")
    took(lambda: (lab.status("a") or {}).get("agent", {}).get("started") not in (None, before)
         and ours() == ["MASTER", "MASTER"], 15, "the new image resumes both as MASTER")
    assert not ka.said("Entering MASTER"), logs(group)  # type: ignore[arg-type]
    assert metric(lab, "a", "carp_restarts_total", kind="in_place", result="resumed") == 1
    lab.agents["a"].send_signal(signal.SIGTERM)
    took(lambda: ka.said("(VI_1) Entering MASTER") and ka.said("(VI_4) Entering MASTER"), 2,
         "keepalived takes both on our resign")
    took(lambda: holders(group) == ["b"], 2, "the IPv6 VIPs on b")
