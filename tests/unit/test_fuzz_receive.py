"""Fuzzing the receive path: whatever arrives on the wire, nothing escapes and, unless a packet
is a valid advert, nothing changes state.

Seeds are real captures (tests/data/ucarp-1.5.2-adverts.pcap, Debian ucarp's adverts) and an
ARP announcement of the VIP; hypothesis mutates them (byte flips, truncation, extension) and
also tries pure noise. Frames go through the agent's own receive path — the interface's
channel (``Channel.ip_packet``, ``Channel.arp_frame``) dispatching to two instances — built
without sockets. The example budget is small in `make
test`; `make chaos` runs it with ``HYPOTHESIS_PROFILE=chaos`` (200,000 examples).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.config.settings import load
from sidecar.core.machine import State
from sidecar.net.announce import build_garp
from sidecar.net.channel import Channel
from sidecar.net.netlink import Netlink
from sidecar.runtime.instance import Instance
from sidecar.serve.metrics import Metrics

PCAP = Path(__file__).resolve().parents[1] / "data" / "ucarp-1.5.2-adverts.pcap"
settings.register_profile("chaos", max_examples=200_000, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("default", max_examples=1500, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pcap_frames(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    offset = 24  # global header
    while offset + 16 <= len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        yield data[offset + 16: offset + 16 + incl]
        offset += 16 + incl


SEEDS = [*pcap_frames(PCAP), build_garp(b"\x02\x00\x00\x00\x00\x09", IPv4Address("172.16.0.1"))]


@dataclass
class Receive:
    channel: Channel
    instance: Instance  # vhid 1, the capture's group
    other: Instance  # vhid 3 on the same interface

    def accepted(self) -> float:
        return self.instance.m.value("carp_adverts_received_total")


@pytest.fixture(scope="module")
def receive() -> Iterator[Receive]:
    # the capture's group: vhid 1 and 3, password geheim, VIP 172.16.0.1
    # a rotation under way (CARP_PASS_NEXT): a packet failing the key is tried with the next one
    env = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "geheim",
           "CARP_PASS_NEXT": "rotating", "CARP_ADDR": "172.16.0.1/16",
           "CARP_SRCIP": "172.16.0.250", "CARP_METRICS_LISTEN": "off"}
    loop = asyncio.new_event_loop()
    nl = Netlink()
    metrics = Metrics(CollectorRegistry(), "test", process_metrics=False)
    channel = Channel("eth0", loop)
    made = []
    for vhid, vip in ((1, "172.16.0.1/16"), (3, "172.16.0.3/16")):
        settings = load({**env, "CARP_VHID": str(vhid),
                         "CARP_ADDR": vip}).runtime().instances[0]
        instance = Instance(settings, IPv4Address("172.16.0.250"), channel, nl, metrics, loop,
                            several=True)
        channel.add(instance, instance.srcip, settings.mcast, [v.ip for v in settings.ipv4_vips])
        instance.machine.start(loop.time())
        made.append(instance)
    yield Receive(channel, *made)
    nl.close()
    loop.close()


def test_seeds_are_real_adverts_and_accepted(receive: Receive) -> None:
    assert len(SEEDS) >= 4  # three captured adverts and one ARP announcement
    before = receive.accepted()
    receive.channel.ip_packet(SEEDS[0][14:])
    assert receive.accepted() == before + 1


mutation = st.tuples(st.sampled_from(["flip", "cut", "extend", "set"]),
                     st.integers(0, 200), st.integers(0, 255))


@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=6),
       noise=st.binary(max_size=120), pure_noise=st.booleans())
def test_mutated_and_random_frames_never_escape(receive: Receive, seed: bytes,
                                                 mutations: list[tuple[str, int, int]],
                                                 noise: bytes, pure_noise: bool) -> None:
    frame = bytearray(noise if pure_noise else seed)
    for op, pos, value in mutations:
        if op == "flip" and frame:
            frame[pos % len(frame)] ^= value or 1
        elif op == "cut":
            del frame[pos % (len(frame) + 1):]
        elif op == "extend":
            frame += bytes([value]) * (pos % 40)
        elif op == "set" and frame:
            frame[pos % len(frame)] = value
    machines = (receive.instance.machine, receive.other.machine)
    before = [m.state for m in machines]
    accepted = receive.accepted()
    receive.channel.ip_packet(bytes(frame[14:]))  # as the IPv4 path sees it
    receive.channel.arp_frame(bytes(frame))  # as the ARP path sees it
    receive.channel.ip_packet(bytes(frame))  # and misaligned
    if receive.accepted() == accepted:
        assert [m.state for m in machines] == before  # nothing valid: no state change
    assert all(m.state in (State.BACKUP, State.MASTER) for m in machines)
    assert len(receive.instance.session.peers) <= 32
