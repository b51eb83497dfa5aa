"""CARP_VMAC (keepalived's use_vmac) without a network: the setting's rules, keepalived's name
and MAC, the one place the frames' source MAC is chosen (adverts, GARPs: scapy decodes them),
the adoption rule, the status view, the reload plan and the import. The macvlan itself, with
a real keepalived, is tests/integration/test_vmac.py."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from sidecar.config import vmac
from sidecar.net.announce import build_garp, build_unsolicited_na
from sidecar.net.channel import Channel
from sidecar.net.vmac import Found, ours
from sidecar.runtime.reload import plan
from sidecar.runtime.sendport import SendPort
from sidecar.tools.keepalived_import import translate
from sidecar.tools.statusview import render

from .test_config_vrrp import one, refused
from .test_keepalived_import import loaded
from .test_reload_plan import config
from .test_vrrp_runtime import MAC, SRC, Wire, sent, vhid

V3 = {"CARP_PROTOCOL": "vrrp3"}
VMAC = bytes.fromhex("00005e000107")


@pytest.mark.parametrize(("given", "name"), [("true", "vrrp.7"), ("on", "vrrp.7"),
                                              ("vm7", "vm7"), ("false", None), ("", None)])
def test_true_is_keepalived_s_default_name_any_other_value_the_name(given: str,
                                                                   name: str | None) -> None:
    s = one({**V3, "CARP_VMAC": given})
    assert s.vmac_name == name
    assert s.vmac_address == (None if name is None else VMAC)


def test_keepalived_s_virtual_macs() -> None:
    assert vmac.virtual_mac(7) == VMAC and vmac.virtual_mac(255, ipv6=True).hex() == "00005e0002ff"
    assert vmac.interface_name("true", 42) == "vrrp.42" and vmac.interface_name(None, 1) is None


@pytest.mark.parametrize(("given", "line"), [
    ({"CARP_VMAC": "true", "CARP_PASS": "x"}, "CARP_VMAC: a VRRP setting (keepalived's use_vmac)"),
    ({**V3, "CARP_VMAC": "a-very-long-name0"}, "CARP_VMAC: 'a-very-long-name0' is not an "
     "interface name (at most 15 bytes"),
    ({**V3, "CARP_VMAC": "vm:7"}, "CARP_VMAC: 'vm:7' is not an interface name"),
    ({**V3, "CARP_VMAC": "eth0"}, "CARP_VMAC: eth0 is CARP_INTERFACE"),
    ({**V3, "CARP_VMAC": "true", "CARP_VIP_INTERFACE": "lo", "CARP_ADDR": "10.0.0.7/32"},
     "CARP_VMAC: the VIPs go on CARP_VIP_INTERFACE; set one or the other"),
    ({**V3, "CARP_VMAC_XMIT_BASE": "true"}, "CARP_VMAC_XMIT_BASE: needs CARP_VMAC"),
    ({**V3, "CARP_VMAC": "true", "CARP_PRIORITY": "255"}, "CARP_VMAC: the address owner's"),
    ({**V3, "CARP_VMAC": "true", "CARP_IF_ALIAS": "eth0:0"},
     "CARP_IF_ALIAS: must start with the interface name 'vrrp.7' (CARP_VMAC)"),
])
def test_refusals_are_one_line_naming_the_variable(given: dict[str, str], line: str) -> None:
    lines = refused(given)
    assert len(lines) == 1 and line in lines[0], lines


def test_an_ipv6_instance_s_virtual_mac_is_rfc_5798_s() -> None:
    s = one({**V3, "CARP_VMAC": "true", "CARP_ADDR": "2001:db8::7/64"})
    assert (s.vmac_name, s.vmac_shown) == ("vrrp.7", ("vrrp.7", "00:00:5e:00:02:07"))
    mixed = one({**V3, "CARP_VMAC": "true", "CARP_ADDR": "10.0.0.7/24,2001:db8::7/64"})
    assert mixed.vmac_shown == ("vrrp.7", "00:00:5e:00:01:07")  # an IPv4 instance


def test_toml_takes_true_or_a_name(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        'state_dir = "off"\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 5\naddr = "10.0.0.5/24"\nprotocol = "vrrp3"\n'
        'vmac = true\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 6\naddr = "10.0.0.6/24"\nprotocol = "vrrp2"\n'
        'vmac = "vm6"\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 8\naddr = "10.0.0.8/24"\nprotocol = "vrrp3"\n'
        'vmac = false\n')
    from sidecar.config.settings import load
    a, b, c = load({"CARP_CONFIG": str(tmp_path / "c.toml")}).runtime().instances
    assert (a.vmac_name, b.vmac_name, c.vmac_name) == ("vrrp.5", "vm6", None)


def test_adverts_leave_from_the_virtual_mac_else_our_own() -> None:
    assert Ether(sent(vhid(vmac="true"))).src == "00:00:5e:00:01:07"
    assert Ether(sent(vhid())).src == "02:aa:bb:cc:dd:01"
    # keepalived's vmac_xmit_base: adverts from the base, ARP/NA still from the virtual MAC
    assert Ether(sent(vhid(vmac="true", vmac_xmit_base=True))).src == "02:aa:bb:cc:dd:01"


@pytest.mark.parametrize("xmit_base", [False, True])
def test_gratuitous_arps_and_nas_from_the_virtual_mac(xmit_base: bool) -> None:
    class Sock:
        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def send_arp(self, frame: bytes) -> None:
            self.frames.append(frame)

        send_ipv6 = send_arp

    loop = asyncio.new_event_loop()
    try:
        channel, sock = Channel("eth0", loop), Sock()
        channel.attached = dataclasses.make_dataclass("A", ["mac", "sock"])(MAC, sock)  # type: ignore[assignment]
        port = SendPort(vhid(vmac="true", vmac_xmit_base=xmit_base), SRC, channel,
                        lambda: None)
        channel.send = Wire().send  # type: ignore[method-assign]
        assert port.per_vip(build_garp, build_unsolicited_na, "Gratuitous ARP")
    finally:
        loop.close()
    arps = [Ether(f) for f in sock.frames]
    assert [(f.src, f[ARP].hwsrc, f[ARP].psrc) for f in arps] == [
        ("00:00:5e:00:01:07", "00:00:5e:00:01:07", "10.0.0.100"),
        ("00:00:5e:00:01:07", "00:00:5e:00:01:07", "10.0.0.101")]


def test_only_our_own_macvlan_is_adopted() -> None:
    mine = Found(index=9, kind="macvlan", base=2, mac=VMAC, mode="private")
    assert ours(mine, 2, VMAC)
    for other in (dataclasses.replace(mine, base=3), dataclasses.replace(mine, mac=MAC),
                  dataclasses.replace(mine, mode="bridge"),
                  dataclasses.replace(mine, kind="veth", mode="")):
        assert not ours(other, 2, VMAC)


def test_status_view_shows_the_macvlan() -> None:
    doc = {"state": "MASTER", "vhid": 7, "interface": "eth0", "protocol": "vrrp3",
           "priority": 150, "advert_int": 0.2, "preempt": True, "master_down_interval": 0.66,
           "vmac": {"interface": "vrrp.7", "mac": "00:00:5e:00:01:07", "present": True}}
    assert "  vmac:         vrrp.7 (00:00:5e:00:01:07, present)" in render(doc, now=0)
    assert "vmac:" not in render({**doc, "vmac": None}, now=0)


def test_a_reload_toggling_or_renaming_the_vmac_replaces_the_instance() -> None:
    old = vhid(vmac=None)
    for new in (vhid(vmac="true"), vhid(vmac="vm7")):
        p = plan(config(old), config(new))
        assert p.replaced and not p.updated


def test_import_carries_use_vmac(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    body = ("vrrp_instance VI_{n} {{\n  interface eth0\n  virtual_router_id {n}\n  version 3\n"
            "  {vmac}\n  virtual_ipaddress {{\n    10.0.0.{n}/24\n  }}\n}}\n")
    conf.write_text(body.format(n=1, vmac="use_vmac") + body.format(
        n=2, vmac="use_vmac vm2\n  vmac_xmit_base")
                    + body.format(n=3, vmac="use_vmac vm3 02:00:00:00:00:03\n  vmac_xmit_base")
                    + body.format(n=4, vmac="use_vmac vm4 00:00:5E:00:01:04"))
    result = translate(conf)
    a, b, c, d = loaded(result.toml, tmp_path).runtime().instances
    assert [i.vmac_name for i in (a, b, c, d)] == ["vrrp.1", "vm2", None, "vm4"]
    assert (a.vmac_xmit_base, b.vmac_xmit_base, c.vmac_xmit_base) == (False, True, False)
    assert [n.split(": ", 1)[1] for n in result.notes if "vmac" in n] == [  # review 5
        "use_vmac 02:00:00:00:00:03: not carried: the keepalived peers answer for the VIP "
        "from that MAC, CARP_VMAC only from the RFC's 00:00:5e:00:0X:VRID (a failover would "
        "change the VIP's MAC); the VIPs stay on the interface: use_vmac without a MAC on "
        "every node carries it"]


def test_vmac_info_names_the_macvlan_and_goes_with_the_instance() -> None:
    from prometheus_client import CollectorRegistry

    from sidecar.serve.metrics import InstanceMetrics, Metrics

    registry = CollectorRegistry()
    m = Metrics(registry, "test", process_metrics=False)
    im = InstanceMetrics(m, 7, "eth0", ["10.0.0.100"], protocol="vrrp3",
                         vmac=("vrrp.7", "00:00:5e:00:01:07"))
    InstanceMetrics(m, 8, "eth0", ["10.0.0.101"], protocol="vrrp3")  # none without CARP_VMAC
    labels = {"group": "vhid7", "vhid": "7", "interface": "eth0", "vmac": "vrrp.7",
              "mac": "00:00:5e:00:01:07"}
    assert registry.get_sample_value("carp_vmac_info", labels) == 1
    assert sum(len(f.samples) for f in registry.collect() if f.name == "carp_vmac_info") == 1
    im.remove()
    assert registry.get_sample_value("carp_vmac_info", labels) is None


def test_the_base_s_sysctls_come_back_when_the_last_macvlan_on_it_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.net import vmac as netvmac

    for d in ("ipv4/conf/eth0", "ipv4/conf/vm7", "ipv4/conf/vm8", "ipv6/conf/vm7",
              "ipv6/conf/vm8"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "ipv4/conf/eth0/arp_ignore").write_text("0\n")
    (tmp_path / "ipv4/conf/eth0/arp_filter").write_text("1\n")
    monkeypatch.setattr(netvmac, "SYSCTL", tmp_path)
    a = netvmac.Macvlan("vm7", "eth0", VMAC, ipv6=False)
    b = netvmac.Macvlan("vm8", "eth0", bytes.fromhex("00005e000108"), ipv6=True)
    a.configure()
    b.configure()
    sysctl = {p.relative_to(tmp_path).as_posix(): p.read_text().strip()
              for p in tmp_path.rglob("*") if p.is_file()}
    assert sysctl == {  # keepalived 2.2.7's, vrrp_if_config.c
        "ipv4/conf/eth0/arp_ignore": "1", "ipv4/conf/eth0/arp_filter": "1",
        **{f"ipv4/conf/{n}/{k}": v for n in ("vm7", "vm8") for k, v in (
            ("arp_ignore", "1"), ("accept_local", "1"), ("rp_filter", "0"),
            ("promote_secondaries", "1"))},
        "ipv6/conf/vm7/disable_ipv6": "1", "ipv6/conf/vm8/disable_ipv6": "0"}
    a.release_base()
    assert (tmp_path / "ipv4/conf/eth0/arp_ignore").read_text() == "1"  # vm8 still needs it
    b.release_base()
    assert (tmp_path / "ipv4/conf/eth0/arp_ignore").read_text() == "0"
    assert (tmp_path / "ipv4/conf/eth0/arp_filter").read_text() == "1\n"  # never changed
    assert netvmac.BASES == {}


@pytest.mark.parametrize(("code", "why"), [
    (95, "the kernel has no macvlan support (module macvlan)"),
    (98, "Address already in use")])
def test_a_macvlan_the_kernel_refuses_is_one_line_naming_carp_vmac(
        code: int, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.net import vmac as netvmac

    class Refusing:
        async def link(self, *args: object, **kw: object) -> None:
            raise netvmac.NetlinkError(code, why)

    macvlan = netvmac.Macvlan("vrrp.7", "eth0", VMAC, ipv6=False)
    with pytest.raises(netvmac.VmacError) as e:
        asyncio.run(macvlan._create(Refusing(), 2))  # type: ignore[arg-type]
    assert str(e.value) == f"CARP_VMAC: cannot create the macvlan vrrp.7 on eth0: {why}"


class Msg(dict[str, object]):
    """A netlink link message as pyroute2 gives it (what net/vmac reads of it)."""

    def get_nested(self, *keys: str) -> object:
        return {"IFLA_INFO_KIND": self.get("kind", "macvlan"),
                "IFLA_MACVLAN_MODE": "private"}.get(keys[-1])


class FakeIPRoute:
    """The kernel as the review saw it: ``link add`` works, ``set up`` EADDRINUSE when
    another macvlan on the base has the MAC (``twin``)."""

    def __init__(self, twin: bool = False) -> None:
        self.links: dict[str, Msg] = {}
        if twin:
            self.links["olda"] = Msg(index=5, IFLA_IFNAME="olda", IFLA_LINK=2,
                                     IFLA_ADDRESS="00:00:5e:00:01:07")
        self.calls: list[str] = []

    async def get_links(self, ifname: str | None = None) -> object:
        from sidecar.net import vmac as netvmac

        if ifname is not None and ifname not in self.links:
            raise netvmac.NetlinkError(19, "No such device")

        async def gen() -> object:
            for name, m in self.links.items():
                if ifname in (None, name):
                    yield m
        return gen()

    async def link(self, op: str, **kw: object) -> None:
        from sidecar.net import vmac as netvmac

        self.calls.append(op)
        if op == "add":
            name = str(kw["ifname"])
            self.links[name] = Msg(index=9, IFLA_IFNAME=name, IFLA_LINK=kw["link"],
                                   IFLA_ADDRESS=kw["address"])
        elif op == "set":
            raise netvmac.NetlinkError(98, "Address already in use")
        elif op == "del":
            self.links.pop(str(kw.get("ifname")), None)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("precheck", [True, False])
def test_a_macvlan_the_kernel_will_not_bring_up_is_deleted_again_one_line(
        precheck: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 1: EADDRINUSE comes at ``set up``; the twin is named before anything is made,
    and whatever fails, nothing is left: no macvlan, no base count, the base's values back."""
    from sidecar.net import vmac as netvmac

    for d in ("ipv4/conf/eth0", "ipv4/conf/vrrp.7", "ipv6/conf/vrrp.7"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "ipv4/conf/eth0/arp_ignore").write_text("0")
    monkeypatch.setattr(netvmac, "SYSCTL", tmp_path)
    ipr = FakeIPRoute(twin=precheck)
    monkeypatch.setattr(netvmac, "AsyncIPRoute", lambda: ipr)
    if not precheck:  # the twin's check passed (a race): the kernel's refusal at set up
        monkeypatch.setattr(netvmac, "twin", lambda *a: asyncio.sleep(0, None))
    macvlan = netvmac.Macvlan("vrrp.7", "eth0", VMAC, ipv6=False)
    with pytest.raises(netvmac.VmacError) as e:
        asyncio.run(macvlan.ensure(2))
    assert str(e.value) == ("CARP_VMAC: the macvlan olda on eth0 already has the virtual MAC "
                            "00:00:5e:00:01:07 (left under an old CARP_VMAC name, or "
                            "keepalived's): delete it or stop its user" if precheck else
                            "CARP_VMAC: the macvlan vrrp.7 on eth0: Address already in use")
    assert "vrrp.7" not in ipr.links and netvmac.BASES == {}
    assert ipr.calls == ([] if precheck else ["add", "set", "del"])
    assert (tmp_path / "ipv4/conf/eth0/arp_ignore").read_text() == "0"


def test_a_macvlan_name_given_twice_is_refused_in_one_line(tmp_path: Path) -> None:
    """Review 4: one VRID on two interfaces, both keepalived's default name."""
    from sidecar.config.runconfig import ConfigError
    from sidecar.config.settings import load

    (tmp_path / "c.toml").write_text("".join(
        f'[[vhid]]\ninterface = "{i}"\nvhid = 7\naddr = "10.0.{n}.7/24"\nprotocol = "vrrp3"\n'
        'vmac = true\n' for n, i in enumerate(("eth0", "eth1"))))
    with pytest.raises(ConfigError) as e:
        load({"CARP_CONFIG": str(tmp_path / "c.toml")})
    assert str(e.value).splitlines() == [
        f"{tmp_path / 'c.toml'}: [[vhid]] #2: vmac (CARP_VMAC): vrrp.7 is already the "
        "macvlan of instance #1; name this one (keepalived's next name: vrrp1.7)"]


def test_import_names_the_macvlans_as_keepalived_does(tmp_path: Path) -> None:
    """keepalived's create_vmac_name: the second use_vmac of VRID 7 is vrrp1.7 (IPv6: vrrp6.7
    first); an explicit name given twice is not carried (keepalived refuses it)."""
    conf = tmp_path / "keepalived.conf"
    body = ("vrrp_instance VI_{n} {{\n  interface {i}\n  virtual_router_id {v}\n  version 3\n"
            "  {vmac}\n  virtual_ipaddress {{\n    {a}\n  }}\n}}\n")
    conf.write_text("".join(body.format(n=n, i=i, v=v, vmac=m, a=a) for n, i, v, m, a in (
        (1, "eth0", 7, "use_vmac", "10.0.0.7/24"), (2, "eth1", 7, "use_vmac", "10.1.0.7/24"),
        (3, "eth0", 8, "use_vmac", "2001:db8::8/64"), (4, "eth1", 8, "use_vmac", "2001:db9::8/64"),
        (5, "eth0", 9, "use_vmac vm9", "10.0.0.9/24"), (6, "eth1", 9, "use_vmac vm9",
                                                       "10.1.0.9/24"))))
    result = translate(conf)
    names = [i.vmac_name for i in loaded(result.toml, tmp_path).runtime().instances]
    assert names == ["vrrp.7", "vrrp1.7", "vrrp.8", "vrrp6.8", "vm9", None]
    assert [n.split(": ", 2)[2] for n in result.notes if "vmac" in n] == [
        "use_vmac vm9: not carried: another instance's macvlan already has that name "
        "(keepalived refuses it too)"]
    from sidecar.tools.keepalived_vmac import keepalived_name
    assert keepalived_name(8, True, {"vrrp.8", "vrrp6.8"}) == "vrrp1.8"


def test_a_reload_passes_only_the_names_of_the_instances_it_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 4: a name a kept instance holds is looked at (and refused: not its macvlan)."""
    from sidecar.net.vmac import Macvlan
    from sidecar.runtime import vmac as rtvmac

    looked: list[str] = []

    async def usable(self: Macvlan, base: int, freed: set[str]) -> None:
        looked.append(self.name)
    monkeypatch.setattr(Macvlan, "usable", usable)
    s = vhid(vmac="true")
    asyncio.run(rtvmac.check_vmac(s, 2, {"vrrp.7"}))
    assert looked == []
    asyncio.run(rtvmac.check_vmac(s, 2, {"vm8"}))
    assert looked == ["vrrp.7"]


@pytest.mark.parametrize(("kind", "index", "muted"), [
    ("macvlan", 9, True), ("macvlan", 10, False), ("veth", 9, False)])
def test_a_handing_over_master_mutes_its_own_macvlan_only(
        kind: str, index: int, muted: bool, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 7: arp_ignore=8 on the macvlan it made (by ifindex), never on a foreign
    interface that took the name since."""
    from sidecar.net import vmac as netvmac

    (tmp_path / "ipv4/conf/vm7").mkdir(parents=True)
    (tmp_path / "ipv4/conf/vm7/arp_ignore").write_text("1")
    monkeypatch.setattr(netvmac, "SYSCTL", tmp_path)
    ipr = FakeIPRoute()
    ipr.links["vm7"] = Msg(index=index, kind=kind, IFLA_IFNAME="vm7", IFLA_LINK=2,
                           IFLA_ADDRESS="00:00:5e:00:01:07")
    monkeypatch.setattr(netvmac, "AsyncIPRoute", lambda: ipr)
    asyncio.run(netvmac.Macvlan("vm7", "eth0", VMAC, ipv6=False).mute(9))
    assert (tmp_path / "ipv4/conf/vm7/arp_ignore").read_text() == ("8" if muted else "1")


def test_stop_instance_mutes_before_the_handover_then_deletes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 10: the order a graceful stop keeps: mute (by the macvlan's index), resign,
    delete."""
    from sidecar.net.vmac import Macvlan
    from sidecar.runtime import vmac as rtvmac

    order: list[str] = []

    class Inst:
        vip_ifindex = 9

        async def stop(self) -> None:
            order.append("stop")

    async def mute(self: Macvlan, index: int) -> None:
        order.append(f"mute {index}")

    async def delete(self: Macvlan) -> None:
        order.append("delete")
    monkeypatch.setattr(Macvlan, "mute", mute)
    monkeypatch.setattr(Macvlan, "delete", delete)
    inst = Inst()
    rtvmac._MACVLANS[inst] = Macvlan("vm7", "eth0", VMAC, ipv6=False)  # type: ignore[index]
    asyncio.run(rtvmac.stop_instance(inst))  # type: ignore[arg-type]
    assert order == ["mute 9", "stop", "delete"] and rtvmac.macvlan_of(inst) is None  # type: ignore[arg-type]


def test_import_drops_vmac_xmit_base_without_use_vmac(tmp_path: Path) -> None:
    """Review 6: keepalived ignores it; the TOML must still load."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 1\n"
                    "  version 3\n  vmac_xmit_base\n  virtual_ipaddress {\n    10.0.0.1/24\n"
                    "  }\n}\n")
    result = translate(conf)
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert (s.vmac_name, s.vmac_xmit_base) == (None, False)
    assert [n.split(": ", 2)[2] for n in result.notes if "vmac" in n] == [
        "vmac_xmit_base: not carried: keepalived ignores it without use_vmac"]


def test_import_warns_of_what_check_config_refuses_beside_use_vmac(tmp_path: Path) -> None:
    """state MASTER without priority is 255, a label on the base: both refused with
    CARP_VMAC by check-config; the import says so and how to mend it."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance VI_1 {\n  state MASTER\n  interface eth0\n"
                    "  virtual_router_id 7\n  use_vmac\n  virtual_ipaddress {\n"
                    "    10.0.0.100/24 dev eth0 label eth0:1\n  }\n}\n")
    notes = [n.split(": ", 2)[2] for n in translate(conf).notes if "WARNING" in n]
    assert notes == [
        "WARNING: use_vmac with priority 255 (the address owner's, or state MASTER with no "
        "priority): check-config refuses CARP_VMAC with it; give the instance a priority "
        "below 255",
        'WARNING: label eth0:1: with use_vmac the VIPs are on vrrp.7, whose labels start with '
        'its name: rename it (if_alias = "vrrp.7:1")']
    fixed = conf.read_text().replace("state MASTER", "priority 150").replace("eth0:1",
                                                                             "vrrp.7:1")
    conf.write_text(fixed)
    result = translate(conf)
    assert not [n for n in result.notes if "WARNING" in n]
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert s.vmac_name == "vrrp.7"


@pytest.mark.parametrize("state_dir", [True, False])
def test_the_base_s_values_outlive_a_restart_in_the_state_dir(
        state_dir: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 2: the next process adopts the macvlan and finds the base at 1 already; the
    values before come from CARP_STATE_DIR, and the final delete puts them back (off: they
    stay 1, as docs/keepalived.md says)."""
    from sidecar.net import vmac as netvmac

    sysctl, state = tmp_path / "sys", tmp_path / "state"
    for d in ("ipv4/conf/eth0", "ipv4/conf/vm7", "ipv6/conf/vm7"):
        (sysctl / d).mkdir(parents=True)
    (sysctl / "ipv4/conf/eth0/arp_ignore").write_text("2")
    (sysctl / "ipv4/conf/eth0/arp_filter").write_text("0")
    monkeypatch.setattr(netvmac, "SYSCTL", sysctl)
    where = state if state_dir else None
    netvmac.Macvlan("vm7", "eth0", VMAC, ipv6=False, state_dir=where).configure()
    netvmac.BASES.clear()  # the process is gone (restart in place, or on stop)
    assert (state / "vmac-base.eth0.json").exists() == state_dir
    after = netvmac.Macvlan("vm7", "eth0", VMAC, ipv6=False, state_dir=where)
    after.configure()  # adopted: the base is at 1 already
    after.release_base()  # the final graceful stop
    values = [(sysctl / f"ipv4/conf/eth0/{k}").read_text() for k in ("arp_ignore", "arp_filter")]
    assert values == (["2", "0"] if state_dir else ["1", "1"])
    assert not (state / "vmac-base.eth0.json").exists() and netvmac.BASES == {}


def test_adopting_a_muted_macvlan_answers_arp_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 10: a stop that muted it (arp_ignore=8) then died: the adopter sets 1 again."""
    from sidecar.net import vmac as netvmac

    for d in ("ipv4/conf/eth0", "ipv4/conf/vm7", "ipv6/conf/vm7"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "ipv4/conf/vm7/arp_ignore").write_text("8")
    monkeypatch.setattr(netvmac, "SYSCTL", tmp_path)
    macvlan = netvmac.Macvlan("vm7", "eth0", VMAC, ipv6=False)
    macvlan.configure()
    macvlan.release_base()
    assert (tmp_path / "ipv4/conf/vm7/arp_ignore").read_text() == "1"


@pytest.mark.parametrize("freed", [set(), {"olda"}])
def test_a_reload_s_look_first_names_a_twin_the_reload_keeps(
        freed: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 1 for a reload: refused before anything changes, unless the reload itself
    deletes that macvlan first (a rename)."""
    from sidecar.net import vmac as netvmac

    monkeypatch.setattr(netvmac, "AsyncIPRoute", lambda: FakeIPRoute(twin=True))
    look = netvmac.Macvlan("vrrp.7", "eth0", VMAC, ipv6=False).usable(2, freed)
    if freed:
        asyncio.run(look)
        return
    with pytest.raises(netvmac.VmacError, match="the macvlan olda on eth0 already has"):
        asyncio.run(look)
