"""CARP_VMAC, keepalived's use_vmac, with Debian's real keepalived 2.2.7 (issue 35).

One module-scoped lab (nodes a 172.16.0.11, b 172.16.0.12 and a client on one bridge), a tiny
HTTP server on each node saying which node answered. The client's neighbour entry for the VIP
is the virtual MAC 00:00:5e:00:01:07 before a failover; it is then pinned (permanent), so the
client can only reach the new master if that one answers on the same MAC: no ARP relearning.
The nodes' eth0 have arp_announce=2, as docs/keepalived.md asks for use_vmac either way.
Every test starts its own keepalived/agent and the fixture stops them and clears what is left.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.lab import VIP, Lab
from sidecar.lab.netns import require_root_and_tools, stop_process

from .conftest import metric
from .test_vrrp_interop import KEEPALIVED, Keepalived, cli, keepalived_conf, took

VRID = 7
VMAC = "00:00:5e:00:01:07"
VIP6, VRID6, VMAC6 = "2001:db8::1", 9, "00:00:5e:00:02:09"  # an IPv6 instance's (RFC 5798)
RUNS = itertools.count(1)
why = require_root_and_tools([KEEPALIVED])
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


class Vlab:
    def __init__(self, lab: Lab) -> None:
        self.lab, self.keepalived = lab, list[Keepalived]()

    def start_keepalived(self, node: str, priority: int, ipv6: bool = False,
                         xmit_base: bool = False) -> Keepalived:
        base = self.lab.dir / f"ka-{node}-{next(RUNS)}"
        conf = keepalived_conf(node, version=3, priority=priority, advert_int=0.2,
                               unicast=False, password="", nopreempt=False, track=None)
        # use_vmac, and the VIP on the macvlan (a "dev eth0" would keep it on the base)
        conf = conf.replace("  interface eth0\n", "  interface eth0\n  use_vmac\n"
                            + "  vmac_xmit_base\n" * xmit_base)
        vip = f"{VIP6}/64" if ipv6 else f"{VIP}/16"
        if ipv6:
            conf = conf.replace(f"virtual_router_id {VRID}", f"virtual_router_id {VRID6}")
        base.with_suffix(".conf").write_text(conf.replace(f"{VIP}/16 dev eth0", vip))
        log = base.with_suffix(".log")
        cmd = [KEEPALIVED, "-n", "-l", "-D", "-f", str(base.with_suffix(".conf")), "-p",
               f"{base}.pid", "-r", f"{base}.vrrp.pid", "-c", f"{base}.check.pid", "--vrrp"]
        ka = Keepalived(node, log, self.lab.topo.start(node, cmd, log=log))
        self.keepalived.append(ka)
        return ka

    def start_ours(self, node: str, priority: int, vmac: str = "true",
                   **extra: str) -> subprocess.Popen[bytes]:
        env = {"CARP_PROTOCOL": "vrrp3", "CARP_PRIORITY": str(priority), "CARP_VMAC": vmac,
               "CARP_ADVERT_INT": "0.2", "CARP_VHID": str(VRID), "CARP_PASS": "",
               "CARP_IF_ALIAS": ""}
        return self.lab.start_agent(node, **{**env, **extra})

    def ip(self, node: str, *args: str) -> str:
        return self.lab.topo[node].run("ip", *args, check=False).stdout

    def link(self, node: str, name: str) -> dict[str, object] | None:
        out = self.ip(node, "-j", "-d", "link", "show", "dev", name)
        return json.loads(out)[0] if out.strip() else None

    def vip_on(self, node: str, vip: str = VIP) -> list[str]:
        """The interfaces of ``node`` holding the VIP."""
        out = self.ip(node, "-j", "addr", "show")
        return [i["ifname"] for i in json.loads(out or "[]")
                if any(a.get("local") == vip for a in i.get("addr_info", []))]

    def who(self, vip: str = VIP) -> str | None:
        host = f"[{vip}]" if ":" in vip else vip
        r = self.lab.topo["client"].run("curl", "-s", "-m", "0.5", f"http://{host}:8000/who",
                                        check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def client_mac(self, vip: str = VIP) -> str | None:
        out = self.ip("client", "-j", "neigh", "show", vip, "dev", "eth0")
        entries = json.loads(out or "[]")
        return str(entries[0].get("lladdr")) if entries else None

    def clear(self) -> None:
        for node in list(self.lab.agents):
            self.lab.stop_agent(node, sig=signal.SIGKILL)
        for ka in self.keepalived:  # killed: its graceful exit takes a second; what it
            stop_process(ka.proc, sig=signal.SIGKILL)  # leaves is cleared below
        for node in ("a", "b"):
            self.ip(node, "link", "set", "eth0", "up")
            self.lab.topo[node].run("nft", "delete", "table", "inet", "keepalived", check=False)
            self.lab.topo[node].run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_ignore=0",
                                    "net.ipv4.conf.eth0.arp_filter=0")  # a killed keepalived's
        self.keepalived.clear()
        self.ip("client", "neigh", "flush", "dev", "eth0")
        for node in ("a", "b"):
            self.lab.topo.plug(node)
            self.ip(node, "addr", "del", f"{VIP}/16", "dev", "eth0")
            for name in ("vrrp.7", "vm7", "vrrp.9", "olda", "vm8"):
                self.ip(node, "link", "del", name)
            for log in [*self.lab.dir.glob(f"{node}.log"), *self.lab.dir.glob(f"ka-{node}-*")]:
                log.unlink()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        for node in ("a", "b"):  # who answers on the VIP
            # docs/keepalived.md: the node's own ARP requests must not name the VIP (from
            # the base's MAC, they would repoint the client's entry): what an operator sets
            lab.topo[node].run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=2")
            www = lab.dir / f"www-{node}"
            www.mkdir()
            (www / "who").write_text(node)
            lab.topo.start(node, [sys.executable, "-m", "http.server", "8000", "--bind",
                                  "::", "--directory", str(www)])  # IPv4 too
        for node in ("a", "b", "client"):  # link-locals usable at once (the IPv6 adverts')
            lab.topo[node].run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                               "net.ipv6.conf.default.accept_dad=0",
                               "net.ipv6.conf.eth0.accept_dad=0")
            lab.topo[node].run("ip", "link", "set", "eth0", "down")
            lab.topo[node].run("ip", "link", "set", "eth0", "up")
        lab.topo["client"].run("ip", "addr", "add", "2001:db8::100/64", "dev", "eth0", "nodad")
        yield lab


@pytest.fixture
def v(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Vlab]:
    g, failed = Vlab(lab), request.session.testsfailed
    try:
        yield g
    finally:
        if request.session.testsfailed > failed:
            for p in sorted(lab.dir.glob("*.log")):
                print(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}")
        g.clear()


def learn_then_pin(v: Vlab, node: str, vip: str = VIP, mac: str = VMAC) -> None:
    """The client learns the VIP's MAC by ARP/ND (the virtual one), then keeps it for good."""
    v.ip("client", "neigh", "flush", "dev", "eth0")
    took(lambda: v.who(vip) == node, 5, f"the client reaches {node}")
    assert v.client_mac(vip) == mac
    v.ip("client", "neigh", "replace", vip, "lladdr", mac, "dev", "eth0", "nud", "permanent")


def assert_our_macvlan(v: Vlab, node: str, name: str = "vrrp.7", mac: str = VMAC) -> None:
    link = v.link(node, name)
    assert link is not None, f"no {name} on {node}"
    info = link["linkinfo"]
    assert (link["address"], link["link"], info["info_kind"], info["info_data"]["mode"]) == (
        mac, "eth0", "macvlan", "private"), link


def base_sysctl(v: Vlab, node: str, key: str) -> str:
    return v.lab.topo[node].run("cat", f"/proc/sys/net/ipv4/conf/eth0/{key}").stdout.strip()


def test_keepalived_master_our_backup_cable_pull_both_ways_same_mac(v: Vlab) -> None:
    v.start_keepalived("a", priority=150)
    took(lambda: v.vip_on("a") == ["vrrp.7"], 10, "keepalived MASTER, VIP on its vrrp.7")
    v.start_ours("b", priority=100)
    took(lambda: (st := v.lab.status("b")) and st["state"] == "BACKUP", 10, "our BACKUP")
    assert v.lab.status("b")["vmac"] == {"interface": "vrrp.7", "mac": VMAC, "present": True}
    assert metric(v.lab, "b", "carp_vmac_info", vmac="vrrp.7", mac=VMAC) == 1
    assert_our_macvlan(v, "b")
    assert v.vip_on("b") == []
    learn_then_pin(v, "a")
    v.lab.topo.unplug("a")  # keepalived's cable: we take over on the same MAC
    took(lambda: v.who() == "b", 5, "the client reaches us, with no ARP")
    assert v.vip_on("b") == ["vrrp.7"] and v.client_mac() == VMAC
    v.lab.topo.plug("a")  # keepalived preempts back (150 > 100)
    took(lambda: v.who() == "a", 5, "the client reaches keepalived again, with no ARP")
    took(lambda: v.vip_on("b") == [], 3, "our VIP released")


def test_our_master_keepalived_backup_cable_pull_both_ways_then_stop(v: Vlab) -> None:
    v.start_ours("a", priority=150)
    took(lambda: v.vip_on("a") == ["vrrp.7"], 10, "our MASTER, VIP on vrrp.7")
    assert_our_macvlan(v, "a")
    ka = v.start_keepalived("b", priority=100)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    learn_then_pin(v, "a")
    v.lab.topo.unplug("a")  # our cable: keepalived takes over on the same MAC
    took(lambda: v.who() == "b", 5, "the client reaches keepalived, with no ARP")
    v.lab.topo.plug("a")  # we preempt back
    took(lambda: v.who() == "a", 5, "the client reaches us again, with no ARP")
    assert ka.states() == ["BACKUP", "MASTER", "BACKUP"]
    assert v.lab.stop_agent("a") == 0  # a graceful stop: resign, and the macvlan goes
    assert v.link("a", "vrrp.7") is None
    took(lambda: v.who() == "b", 3, "keepalived after our resign, with no ARP")


def test_ours_alone_crash_adopts_restarts_keep_base_loss_recreates_stop_removes(v: Vlab
                                                                               ) -> None:
    from sidecar.serve.control import send_command

    lab = v.lab
    v.start_ours("a", priority=100, vmac="vm7", CARP_ADVERT_INT="0.1")
    took(lambda: v.vip_on("a") == ["vm7"], 10, "MASTER, VIP on vm7")
    lab.stop_agent("a", sig=signal.SIGKILL)  # a crash leaves the macvlan and its VIP
    index = v.link("a", "vm7")["ifindex"]  # type: ignore[index]
    v.start_ours("a", priority=100, vmac="vm7", CARP_ADVERT_INT="0.1")
    took(lambda: (st := lab.status("a")) and st["state"] == "MASTER", 10, "MASTER again")
    assert "Adopted the macvlan vm7" in (lab.dir / "a.log").read_text()
    assert v.link("a", "vm7")["ifindex"] == index and v.vip_on("a") == ["vm7"]  # type: ignore[index]
    started = lab.status("a")["agent"]["started"]
    reply = send_command(lab.dir / "a.sock", "restart", timeout=30)
    assert reply.startswith("ok: restarting in place"), reply
    took(lambda: (st := lab.status("a")) and st["agent"]["started"] != started
         and st["state"] == "MASTER", 20, "the new image MASTER")
    assert v.link("a", "vm7")["ifindex"] == index and v.vip_on("a") == ["vm7"]  # type: ignore[index]
    saved = lab.dir / "a-state" / "vmac-base.eth0.json"  # the base's values before: kept
    assert json.loads(saved.read_text()) == {"ipv4/conf/eth0/arp_ignore": "0",
                                             "ipv4/conf/eth0/arp_filter": "0"}
    armed = cli(lab, "a", "restart", "--on-stop", "--within", "60", "--socket",
                str(lab.dir / "a.sock"))
    assert armed.returncode == 0, armed.stderr
    assert lab.stop_agent("a") == 0  # a stop for a restart: the macvlan and the VIP stay
    assert v.link("a", "vm7")["ifindex"] == index and v.vip_on("a") == ["vm7"]  # type: ignore[index]
    v.start_ours("a", priority=100, vmac="vm7", CARP_ADVERT_INT="0.1")
    took(lambda: "Resumed as MASTER" in (lab.dir / "a.log").read_text(), 10, "resumed")
    assert v.link("a", "vm7")["ifindex"] == index and v.vip_on("a") == ["vm7"]  # type: ignore[index]
    v.ip("a", "link", "del", "vm7")  # by hand: back at once, the VIP on it
    took(lambda: v.vip_on("a") == ["vm7"], 5, "vm7 created again, the VIP back on it")
    lab.topo.remove_interface("a")  # the base goes: the kernel deletes the macvlan with it
    took(lambda: v.link("a", "vm7") is None, 3, "vm7 gone with eth0")
    lab.topo.recreate_interface("a")
    took(lambda: v.vip_on("a") == ["vm7"], 10, "vm7 created again, the VIP back on it")
    assert_our_macvlan(v, "a", "vm7")
    assert lab.stop_agent("a") == 0
    assert v.link("a", "vm7") is None and v.vip_on("a") == []
    assert [base_sysctl(v, "a", k) for k in ("arp_ignore", "arp_filter")] == ["0", "0"]
    assert not saved.exists()


def test_a_foreign_interface_of_that_name_refuses_the_start(v: Vlab) -> None:
    v.ip("a", "link", "add", "vrrp.9", "type", "veth", "peer", "name", "x9")
    proc = v.start_ours("a", priority=100, CARP_VHID="9")
    assert proc.wait(20) == 2
    log = Path(v.lab.dir / "a.log").read_text()
    assert "CARP_VMAC: an interface named vrrp.9 exists and is not this instance's macvlan" in log
    assert v.link("a", "vrrp.9") is not None  # not ours: left alone
    v.lab.agents.pop("a")


def test_ipv6_keepalived_master_our_backup_cable_pull_both_ways_same_mac(v: Vlab) -> None:
    """An IPv6 instance's virtual MAC 00:00:5e:00:02:VRID; the client's entry for the VIP is
    learnt by ND, then pinned."""
    v.start_keepalived("a", priority=150, ipv6=True)
    took(lambda: v.vip_on("a", VIP6) == ["vrrp.9"], 10, "keepalived MASTER, VIP on vrrp.9")
    v.start_ours("b", priority=100, CARP_VHID=str(VRID6), CARP_ADDR=f"{VIP6}/64",
                 CARP_SRCIP="")
    took(lambda: (st := v.lab.status("b")) and st["state"] == "BACKUP", 10, "our BACKUP")
    assert_our_macvlan(v, "b", "vrrp.9", VMAC6)
    learn_then_pin(v, "a", VIP6, VMAC6)
    v.lab.topo.unplug("a")
    took(lambda: v.who(VIP6) == "b", 5, "the client reaches us, with no ND")
    assert v.vip_on("b", VIP6) == ["vrrp.9"] and v.client_mac(VIP6) == VMAC6
    v.lab.topo.plug("a")
    took(lambda: v.who(VIP6) == "a", 5, "the client reaches keepalived again, with no ND")


def test_vmac_xmit_base_adverts_from_the_base_arp_from_the_virtual_mac(v: Vlab) -> None:
    """keepalived's vmac_xmit_base either side: our adverts leave from eth0's own MAC (and
    keepalived, the same, hears them), the VIP still answers on the virtual MAC."""
    v.start_ours("a", priority=150, CARP_VMAC_XMIT_BASE="true")
    took(lambda: v.vip_on("a") == ["vrrp.7"], 10, "our MASTER, VIP on vrrp.7")
    ka = v.start_keepalived("b", priority=100, xmit_base=True)
    eth0 = v.link("a", "eth0")["address"]  # type: ignore[index]
    dump = v.lab.topo["client"].run("timeout", "2", "tcpdump", "-l", "-e", "-n", "-c", "3", "-i",
                                    "eth0", "ip proto 112", check=False, timeout=10).stdout
    assert dump.count(f"{eth0} > 01:00:5e:00:00:12") == 3, dump
    learn_then_pin(v, "a")
    assert ka.states() == ["BACKUP"]
    assert v.lab.stop_agent("a") == 0  # our resign: keepalived takes over on the same MAC
    took(lambda: v.who() == "b", 3, "keepalived after our resign, with no ARP")


def test_a_reload_renaming_or_dropping_the_vmac_replaces_the_instance(v: Vlab) -> None:
    lab, conf = v.lab, v.lab.dir / "vmac.toml"
    table = ('[[vhid]]\nvhid = 7\naddr = ["172.16.0.1/16"]\nprotocol = "vrrp3"\n'
             'advert_int = 0.1\n')
    conf.write_text(table + "vmac = true\n")
    lab.start_agent("a", CARP_CONFIG=str(conf), **{k: "" for k in (
        "CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS", "CARP_SRCIP")})
    took(lambda: v.vip_on("a") == ["vrrp.7"], 10, "MASTER, VIP on vrrp.7")
    v.ip("a", "link", "add", "vm8", "type", "veth", "peer", "name", "x8")  # not a macvlan
    conf.write_text(table + 'vmac = "vm8"\n')
    refused = cli(lab, "a", "reload", "--socket", str(lab.dir / "a.sock"))
    assert "CARP_VMAC: an interface named vm8 exists" in refused.stdout + refused.stderr, (
        refused.stdout + refused.stderr)
    assert v.vip_on("a") == ["vrrp.7"] and lab.status("a")["state"] == "MASTER"  # unchanged
    v.ip("a", "link", "del", "vm8")
    for given, on in (('vmac = "vm7"\n', "vm7"), ("", "eth0")):
        conf.write_text(table + given)
        reply = cli(lab, "a", "reload", "--socket", str(lab.dir / "a.sock"))
        assert reply.returncode == 0, reply.stdout + reply.stderr
        took(lambda on=on: v.vip_on("a") == [on], 10, f"the VIP on {on}")
    assert v.link("a", "vrrp.7") is None and v.link("a", "vm7") is None


def test_a_start_failing_part_way_leaves_no_macvlan_and_the_base_as_it_was(v: Vlab) -> None:
    """Review 1 and 3: a macvlan with the virtual MAC under another name refuses the start in
    one line naming it; a start failing after an instance made its macvlan deletes it and puts
    the base's sysctls back."""
    v.ip("a", "link", "add", "olda", "link", "eth0", "address", VMAC, "type", "macvlan",
         "mode", "private")
    proc = v.start_ours("a", priority=100)
    assert proc.wait(20) == 2
    assert "CARP_VMAC: the macvlan olda on eth0 already has the virtual MAC" in (
        v.lab.dir / "a.log").read_text()
    assert v.link("a", "vrrp.7") is None
    v.lab.agents.pop("a")
    v.ip("a", "link", "del", "olda")
    v.ip("a", "link", "add", "vm8", "type", "veth", "peer", "name", "x8")  # not a macvlan
    conf = v.lab.dir / "two.toml"
    conf.write_text("".join(
        f'[[vhid]]\nvhid = {n}\naddr = ["172.16.0.{n}/16"]\nprotocol = "vrrp3"\nvmac = {m}\n'
        for n, m in ((7, "true"), (8, '"vm8"'))))
    proc = v.lab.start_agent("a", CARP_CONFIG=str(conf), **{k: "" for k in (
        "CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS", "CARP_SRCIP")})
    assert proc.wait(20) == 2
    assert "CARP_VMAC: an interface named vm8 exists" in (v.lab.dir / "a.log").read_text()
    v.lab.agents.pop("a")
    assert v.link("a", "vrrp.7") is None  # vhid 7 made it: gone again
    assert base_sysctl(v, "a", "arp_ignore") == "0"
    v.ip("a", "link", "del", "vm8")


def test_a_crash_s_macvlan_under_a_dropped_vmac_is_swept(v: Vlab) -> None:
    """Review 9: the next start has no CARP_VMAC; the dead run's macvlan (this VRID's
    virtual MAC on this base) still holds the VIP (no held-VIP record: CARP_STATE_DIR=off):
    it is deleted, the VIP goes on eth0."""
    v.start_ours("a", priority=100, vmac="vm7", CARP_ADVERT_INT="0.1", CARP_STATE_DIR="off")
    took(lambda: v.vip_on("a") == ["vm7"], 10, "MASTER, VIP on vm7")
    v.lab.stop_agent("a", sig=signal.SIGKILL)
    v.start_ours("a", priority=100, vmac="", CARP_ADVERT_INT="0.1", CARP_STATE_DIR="off")
    took(lambda: v.vip_on("a") == ["eth0"], 10, "the VIP on eth0 only")
    assert v.link("a", "vm7") is None
    assert "left under a CARP_VMAC changed or dropped since: deleted" in (
        v.lab.dir / "a.log").read_text()


def test_two_macvlans_on_one_base_the_last_one_out_puts_it_back(v: Vlab) -> None:
    """Review 10: the base's count: a reload removing one instance leaves the base at 1 for
    the other; its stop puts the values before back and clears CARP_STATE_DIR's copy."""
    lab, conf = v.lab, v.lab.dir / "two.toml"
    table = ('[[vhid]]\nvhid = {n}\naddr = ["172.16.0.{n}/16"]\nprotocol = "vrrp3"\n'
             'advert_int = 0.1\nvmac = {m}\n')
    conf.write_text(table.format(n=7, m="true") + table.format(n=8, m='"vm8"'))
    lab.start_agent("a", CARP_CONFIG=str(conf), **{k: "" for k in (
        "CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS", "CARP_SRCIP")})
    took(lambda: v.vip_on("a", "172.16.0.7") == ["vrrp.7"]
         and v.vip_on("a", "172.16.0.8") == ["vm8"], 10,
         "both MASTER, each VIP on its macvlan")
    assert [base_sysctl(v, "a", k) for k in ("arp_ignore", "arp_filter")] == ["1", "1"]
    conf.write_text(table.format(n=7, m="true"))
    reply = cli(lab, "a", "reload", "--socket", str(lab.dir / "a.sock"))
    assert reply.returncode == 0, reply.stdout + reply.stderr
    took(lambda: v.link("a", "vm8") is None, 5, "vm8 gone with its instance")
    assert [base_sysctl(v, "a", k) for k in ("arp_ignore", "arp_filter")] == ["1", "1"]
    assert lab.stop_agent("a") == 0
    assert v.link("a", "vrrp.7") is None
    assert [base_sysctl(v, "a", k) for k in ("arp_ignore", "arp_filter")] == ["0", "0"]
    assert not (lab.dir / "a-state" / "vmac-base.eth0.json").exists()
