"""Fuzzing the receive path: whatever arrives on the wire, nothing escapes and, unless a packet
is a valid advert, nothing changes state.

Seeds are real captures (tests/data/ucarp-1.5.2-adverts.pcap, Debian ucarp's adverts) and an
ARP announcement of the VIP; hypothesis mutates them (byte flips, truncation, extension) and
also tries pure noise. Frames go through the agent's own handlers (``Agent._on_ip_packet``,
``Agent._on_arp``) on an agent built without sockets. The example budget is small in `make
test`; `make chaos` runs it with ``HYPOTHESIS_PROFILE=chaos`` (200,000 examples).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.agent import Agent
from sidecar.config import load
from sidecar.machine import State
from sidecar.net.garp import build_garp
from sidecar.net.netlink import Netlink

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


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    # the capture's group: vhid 1 and 3, password geheim, VIP 172.16.0.1
    settings_ = load({"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "geheim",
                      "CARP_ADDR": "172.16.0.1/16", "CARP_SRCIP": "172.16.0.250",
                      "CARP_METRICS_LISTEN": "off"})
    a = Agent(settings_, registry=CollectorRegistry())
    loop = asyncio.new_event_loop()
    a.loop = loop
    a.nl = Netlink()
    a._build_core()
    assert a.machine is not None
    a.machine.start(loop.time())
    yield a
    a.nl.close()
    loop.close()


def test_seeds_are_real_adverts_and_accepted(agent: Agent) -> None:
    assert len(SEEDS) >= 4  # three captured adverts and one ARP announcement
    received = agent.registry.get_sample_value("carp_adverts_received_total",
                                               agent.m.labels) or 0
    agent._on_ip_packet(SEEDS[0][14:])
    assert (agent.registry.get_sample_value("carp_adverts_received_total", agent.m.labels)
            or 0) == received + 1


mutation = st.tuples(st.sampled_from(["flip", "cut", "extend", "set"]),
                     st.integers(0, 200), st.integers(0, 255))


@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=6),
       noise=st.binary(max_size=120), pure_noise=st.booleans())
def test_mutated_and_random_frames_never_escape(agent: Agent, seed: bytes,
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
    assert agent.machine is not None
    before = agent.machine.state
    accepted = agent.registry.get_sample_value("carp_adverts_received_total", agent.m.labels)
    agent._on_ip_packet(bytes(frame[14:]))  # as the IPv4 path sees it
    agent._on_arp(bytes(frame))  # as the ARP path sees it
    agent._on_ip_packet(bytes(frame))  # and misaligned
    if agent.registry.get_sample_value("carp_adverts_received_total",
                                       agent.m.labels) == accepted:
        assert agent.machine.state is before  # nothing valid arrived: no state change
    assert agent.machine.state in (State.BACKUP, State.MASTER)
    assert len(agent.peer_table) <= 32
