"""The pure pieces of faults round 3: the packet filter's IPv6 branch, the probe frames (decoded
by scapy, an independent decoder), strict mode's kept counter mark."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from sidecar.core.session import COUNTER_RESERVE
from sidecar.net.announce import build_arp_probe, build_ns_probe, build_unsolicited_na
from sidecar.net.packet import carp_and_arp_filter
from sidecar.runtime.maintenance import MaintenanceStore, StateError

MAC = bytes.fromhex("020000000001")
OTHER = bytes.fromhex("020000000002")
VIP4 = IPv4Address("172.16.0.1")
VIP6 = IPv6Address("2001:db8::1")


def run_bpf(prog: list[tuple[int, int, int, int]], frame: bytes) -> int:
    """A classic BPF interpreter for the instructions the filter uses (ld/ldh/ldb abs, jeq, ret)."""
    a, pc = 0, 0
    while True:
        op, jt, jf, k = prog[pc]
        if op == 0x06:
            return k
        if op in (0x20, 0x28, 0x30):
            size = {0x20: 4, 0x28: 2, 0x30: 1}[op]
            if k + size > len(frame):
                return 0
            a = int.from_bytes(frame[k:k + size], "big")
            pc += 1
        elif op == 0x15:
            pc += 1 + (jt if a == k else jf)
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def carp_frame() -> bytes:
    ip = bytes([0x45, 0x10, 0, 56, 0, 0, 0x40, 0, 255, 112]) + bytes(10)
    return b"\x01\x00\x5e\x00\x00\x12" + MAC + b"\x08\x00" + ip + bytes(36)


def garp_from(vip: IPv4Address) -> bytes:
    from sidecar.net.announce import build_garp

    return build_garp(OTHER, vip)


@pytest.mark.parametrize("nd", [False, True])
@pytest.mark.parametrize("count", [0, 1, 3, 65])
def test_filter_passes_carp_arp_of_our_vips_and_na_only_when_asked(nd: bool, count: int) -> None:
    vips = [IPv4Address(int(VIP4) + i) for i in range(count)]
    prog = carp_and_arp_filter(vips, neighbour_adverts=nd)
    assert run_bpf(prog, carp_frame()) == 0xFFFF
    for vip in vips[:3]:
        assert run_bpf(prog, garp_from(vip)) == 0xFFFF
    stranger = run_bpf(prog, garp_from(IPv4Address("10.9.9.9")))
    assert stranger == (0xFFFF if count > 64 else 0)  # beyond 64 VIPs, every ARP passes
    na = build_unsolicited_na(OTHER, VIP6)
    assert run_bpf(prog, na) == (0xFFFF if nd else 0)
    assert run_bpf(prog, build_ns_probe(OTHER, VIP6)) == 0  # a solicitation is not an answer
    udp = carp_frame()[:23] + b"\x11" + carp_frame()[24:]
    assert run_bpf(prog, udp) == 0


def test_arp_probe_is_rfc5227s() -> None:
    from scapy.layers.l2 import ARP, Ether

    frame = Ether(build_arp_probe(MAC, VIP4))
    arp = frame[ARP]
    assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == "02:00:00:00:00:01"
    assert (arp.op, arp.psrc, arp.pdst, arp.hwdst) == (1, "0.0.0.0", str(VIP4), "00:00:00:00:00:00")


def test_ns_probe_is_a_dad_solicitation_with_a_valid_checksum() -> None:
    from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
    from scapy.layers.l2 import Ether

    raw = build_ns_probe(MAC, VIP6)
    frame = Ether(raw)
    assert frame.dst == "33:33:ff:00:00:01"
    assert frame[IPv6].src == "::" and frame[IPv6].dst == "ff02::1:ff00:1" and frame[IPv6].hlim == 255
    ns = frame[ICMPv6ND_NS]
    assert ns.tgt == str(VIP6) and not ns.payload  # DAD: no source link-layer option
    ns.cksum = None  # scapy computes it afresh: the same frame, byte for byte
    assert bytes(frame) == raw


def test_counter_mark_round_trip_and_reservation(tmp_path: Path) -> None:
    store = MaintenanceStore(tmp_path)
    assert store.counter_mark("eth0/vhid1") is None
    store.reserve_counter("eth0/vhid1", 1234 + COUNTER_RESERVE)
    assert store.counter_mark("eth0/vhid1") == 1234 + COUNTER_RESERVE
    assert (tmp_path / "eth0-vhid1.counter").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", [b"", b"{", b'{"reserved": "12"}', b'{"reserved": -1}',
                                     json.dumps({"reserved": 1 << 64}).encode(), b"[]"])
def test_unreadable_counter_mark_is_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "eth0-vhid1.counter").write_bytes(content)
    with pytest.raises(StateError, match=r"eth0-vhid1\.counter is not a counter record"):
        MaintenanceStore(tmp_path).counter_mark("eth0/vhid1")


def _instance():  # type: ignore[no-untyped-def]
    import asyncio

    from prometheus_client import CollectorRegistry

    from sidecar.config.settings import load
    from sidecar.net.channel import Channel
    from sidecar.net.netlink import Netlink
    from sidecar.runtime.instance import Instance
    from sidecar.serve.metrics import Metrics

    env = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "geheim",
           "CARP_ADDR": "172.16.0.1/16", "CARP_METRICS_LISTEN": "off"}
    loop = asyncio.new_event_loop()
    channel = Channel("eth0", loop)
    settings = load(env).runtime().instances[0]
    instance = Instance(settings, IPv4Address("172.16.0.250"), channel, Netlink(),
                        Metrics(CollectorRegistry(), "t", process_metrics=False), loop)
    channel.send = lambda frame: None  # type: ignore[method-assign]  # adverts leave (no socket)
    instance._do(instance.session.start(loop.time(), present=True, running=True))
    instance._do(instance.session.timer(loop.time() + 10))
    return instance, channel, loop


@pytest.mark.parametrize(("error", "fails_before_fault"), [(105, 3), (101, 1)])  # ENOBUFS, ENETUNREACH
def test_a_master_cannot_advertise_for_unroutable_sends_at_once_and_for_transient_ones_after_a_run(
        error: int, fails_before_fault: int) -> None:
    from sidecar.core.machine import State

    instance, channel, loop = _instance()
    try:
        assert instance.machine.state is State.MASTER

        def refuse(frame: bytes) -> None:
            raise OSError(error, "refused")

        channel.send = refuse  # type: ignore[method-assign]  # the kernel's answer, on demand
        for n in range(1, fails_before_fault + 1):
            assert instance.machine.state is State.MASTER, n
            instance._do(instance.session.timer(loop.time() + 10 + n * 2))
        assert not instance.machine.can_advertise
        assert instance.status()["cannot_advertise_reason"] == "sends fail: refused"
        # it keeps the VIP until its backups would take over (round 4), then leaves
        instance._do(instance.session.timer(loop.time() + 30))
        assert instance.machine.state is State.BACKUP
    finally:
        instance.close()
        loop.close()


# ---- strict mode's replay rule (pure) ----
def test_replay_guard_accepts_only_increasing_counters_per_peer() -> None:
    from sidecar.core.peers import ReplayGuard

    g = ReplayGuard(stuck_after=3.0)
    assert g.check("a", 10, 0.0).accepted and g.check("a", 11, 1.0).accepted
    assert not g.check("a", 11, 2.0).accepted and not g.check("a", 5, 2.1).accepted
    assert g.check("b", 1, 2.2).accepted  # each peer has its own counter
    assert g.check("a", 12, 2.3).accepted  # a real successor is never held back


def test_replay_guard_reports_a_peer_stuck_behind_once_and_its_recovery() -> None:
    from sidecar.core.peers import ReplayGuard

    g = ReplayGuard(stuck_after=3.0)
    g.check("a", 1_000_000, 0.0)
    # the peer restarted with its clock an hour behind: every advert is a "replay"
    verdicts = [g.check("a", 1000 + n, 1.0 + n) for n in range(6)]
    assert not any(v.accepted for v in verdicts)
    stuck = [v.stuck_for for v in verdicts if v.stuck_for is not None]
    assert stuck == [3.0] and g.stuck == {"a"}  # once, after a master-down interval
    assert all(v.last == 1_000_000 for v in verdicts)  # never lowered
    back = g.check("a", 1_000_001, 9.0)  # its agent got its mark back / this one restarted
    assert back.accepted and back.recovered and not g.stuck
    # a short run of replays (a recorded advert replayed) is dropped, not reported
    g.check("a", 5, 10.0)
    assert g.check("a", 6, 11.0).stuck_for is None
