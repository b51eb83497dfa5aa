"""VRRP at run time, the pieces without a network: the send port's frames (decoded by scapy as
the independent reader), `watch` on VRRP frames, the status view, the reload plan, the
per-instance info series. The real exchange with keepalived is tests/integration/
test_vrrp_interop.py."""

from __future__ import annotations

import asyncio
import dataclasses
from ipaddress import IPv4Address, ip_interface

from prometheus_client import CollectorRegistry
from scapy.layers.inet import IP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRP, VRRPv3

from sidecar.config.runconfig import Vhid
from sidecar.config.values import auth
from sidecar.core.actions import Params, SendAdvert
from sidecar.core.vrrp import advert_for, vrrp_frame
from sidecar.net.channel import Channel
from sidecar.runtime.instance import session_config
from sidecar.runtime.reload import plan
from sidecar.runtime.sendport import SendPort
from sidecar.serve.metrics import InstanceMetrics, Metrics
from sidecar.tools.statusview import render
from sidecar.tools.watch import Key, Watch

from .test_reload_plan import config

MAC = bytes.fromhex("02aabbccdd01")
SRC = IPv4Address("10.0.0.2")
VIPS = (ip_interface("10.0.0.100/24"), ip_interface("10.0.0.101/24"))


def vhid(protocol: str = "vrrp3", password: bytes = b"", **kw: object) -> Vhid:
    return Vhid(vhid=7, vips=VIPS, auth=auth(password, VIPS), interface="eth0",  # type: ignore[arg-type]
                protocol=protocol, **kw)  # type: ignore[arg-type]


class Wire:
    """What a channel's packet socket would have put on the link."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


def sent(s: Vhid, handover: bool = False) -> bytes:
    loop = asyncio.new_event_loop()
    try:
        channel = Channel("eth0", loop)
        wire = Wire()
        channel.send = wire.send  # type: ignore[method-assign]
        channel.attached = dataclasses.make_dataclass("A", ["mac"])(MAC)  # type: ignore[assignment]
        params = session_config(s, SRC).params
        port = SendPort(s, SRC, channel, lambda: None, lambda: params)
        assert port.advert(SendAdvert(1, 0, 5, handover=handover)).ok
        return wire.frames[0]
    finally:
        loop.close()


def test_the_send_port_sends_vrrp3_to_the_group_mac_from_our_mac_ttl_255() -> None:
    frame = Ether(sent(vhid(priority=200, advert_int=0.2)))
    assert frame.dst == "01:00:5e:00:00:12" and frame.src == "02:aa:bb:cc:dd:01"
    ip, v = frame[IP], VRRPv3(bytes(frame[IP].payload))
    assert (ip.dst, ip.src, ip.ttl, ip.proto) == ("224.0.0.18", "10.0.0.2", 255, 112)
    assert (v.version, v.vrid, v.priority, v.adv, v.ipcount) == (3, 7, 200, 20, 2)
    payload = bytes(ip.payload)
    assert payload[8:16] == b"".join(v.ip.packed for v in VIPS)
    zeroed = payload[:6] + b"\0\0" + payload[8:]  # scapy's sum with v3's pseudo-header
    assert in4_chksum(112, ip, zeroed) == v.chksum


def test_a_handover_is_priority_0_and_v2_carries_the_password() -> None:
    v = VRRPv3(bytes(Ether(sent(vhid(), handover=True))[IP].payload))
    assert v.priority == 0
    v2 = VRRP(bytes(Ether(sent(vhid("vrrp2", b"secret", priority=90)))[IP].payload))
    assert (v2.version, v2.priority, v2.authtype, v2.adv) == (2, 90, 1, 1)
    assert v2.auth1.to_bytes(4, "big") + v2.auth2.to_bytes(4, "big") == b"secret\0\0"


def test_session_config_gives_the_core_vrrp_params_and_expect() -> None:
    cfg = session_config(vhid("vrrp3", priority=120, advert_int=0.5), SRC)
    assert (cfg.params.protocol, cfg.params.priority, cfg.params.advert_int_cs) == ("vrrp3", 120, 50)
    assert cfg.expect.protocol == "vrrp3" and cfg.expect.vips == tuple(v.ip for v in VIPS)
    carp = session_config(Vhid(vhid=1, vips=VIPS, auth=auth(b"pw", VIPS), interface="eth0"), SRC)
    assert carp.params.protocol == "carp" and carp.expect.protocol == "carp"


def vrrp_packet(version: int, priority: int, src: str, password: bytes = b"") -> bytes:
    params = Params(advbase=1, advskew=0, protocol=f"vrrp{version}", priority=max(priority, 1),
                    advert_int_cs=100)
    packet = advert_for(params, SendAdvert(1, 0, 1, handover=priority == 0), vrid=7,
                        vips=[v.ip for v in VIPS], password=password, src=IPv4Address(src))
    return vrrp_frame(packet, src_mac=MAC)


def test_watch_decodes_vrrp_with_priority_interval_resign_and_v2_password() -> None:
    w = Watch({7: Key(b"secret", VIPS[0].ip)})
    ok = w.frame(1.0, vrrp_packet(2, 150, "10.0.0.1", b"secret"))
    bad = w.frame(1.1, vrrp_packet(2, 100, "10.0.0.3", b"other"))
    assert ok is not None and bad is not None and (ok.auth, bad.auth) == ("ok", "bad")
    assert "VRRPv2 vrid 7   priority 150 interval 1s first" in Watch.line(ok)
    v3 = Watch({})
    v3.frame(5.0, vrrp_packet(3, 100, "10.0.0.2"))
    resign = v3.frame(5.5, vrrp_packet(3, 0, "10.0.0.2"))
    assert resign is not None and resign.auth == "none"
    assert "priority 0   (resign)" in Watch.line(resign)
    text = v3.summary(5.6)
    assert "p100/1s" in text and "none (VRRPv3); resigned (priority 0)" in text
    assert w.undecodable == 0


def test_status_view_names_the_protocol_and_vrrp_settings() -> None:
    doc = {"state": "BACKUP", "vhid": 7, "interface": "eth0", "protocol": "vrrp3",
           "priority": 150, "advert_int": 0.2, "preempt": True, "master_down_interval": 0.66}
    text = render(doc, now=0)
    assert "  protocol:     VRRPv3, priority 150, advert_int 0.2 s, preempt on" in text
    assert "within the skew time on a graceful stop" in text
    carp = render({"state": "MASTER", "vhid": 1, "advbase": 1, "advskew": 0, "protocol": "carp",
                   "master_down_interval": 3.0}, now=0)
    assert "protocol" not in carp and "at once on a graceful stop or demote (bow-out)" in carp


def test_reload_replaces_on_a_protocol_change_and_takes_priority_live() -> None:
    old = vhid("vrrp3", priority=100)
    p = plan(config(old), config(vhid("vrrp2")))
    assert p.replaced and not p.updated
    new = vhid("vrrp3", priority=200, advert_int=0.5)
    p = plan(config(old), config(new))
    assert p.updated == [(old, new)] and not p.replaced


def test_instance_info_carries_the_protocol_and_goes_with_the_instance() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, "test", process_metrics=False)
    im = InstanceMetrics(m, 7, "eth0", ["10.0.0.100"], protocol="vrrp2")
    labels = {"group": "vhid7", "vhid": "7", "interface": "eth0"}
    assert registry.get_sample_value("carp_instance_info", {**labels, "protocol": "vrrp2"}) == 1
    im.remove()
    assert registry.get_sample_value("carp_instance_info", {**labels, "protocol": "vrrp2"}) is None


def test_the_address_owner_never_adds_or_removes_its_addresses() -> None:
    from sidecar.runtime.vips import OwnedVips, address_owner, backend_for

    owner, other = vhid(priority=255), vhid(priority=254)
    assert address_owner(owner) and not address_owner(other)
    assert not address_owner(Vhid(vhid=1, vips=VIPS, auth=auth(b"pw", VIPS), interface="eth0"))
    m = InstanceMetrics(Metrics(CollectorRegistry(), "t", process_metrics=False), 7, "eth0", [],
                        protocol="vrrp3")
    backend = backend_for(owner, None, m, lambda: 2, lambda _: {})  # type: ignore[arg-type]
    assert isinstance(backend, OwnedVips)
    # its start straight to MASTER has a series of its own (VRRP instances only)
    from sidecar.core.machine import Reason, State
    assert (State.INIT, State.MASTER, Reason.STARTUP, True) in m.transitions
