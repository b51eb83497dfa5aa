"""The machine with VRRP's rules (sidecar.core.vrrp_rules), in the simulators: the pure machines
(sim.py) and whole sessions exchanging real VRRP packets (session_sim.py)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.actions import Params, Reason, SendAdvert, SendGarp, State, Transition
from sidecar.core.intervals import US
from sidecar.core.machine import Machine
from sidecar.core.outputs import Accepted, Dropped
from sidecar.core.protocol import DropReason
from tests.unit import session_sim as ss
from tests.unit.sim import Node, Sim, node

SKEW_100 = 156 / 256  # v2 Skew_Time at priority 100: (256 - 100) / 256 s
MDI_100 = 3 + SKEW_100


def vnode(name: str, ip: str, priority: int, protocol: str = "vrrp2", **kw: object) -> Node:
    return node(name, ip, protocol=protocol, priority=priority, **kw)


def reasons(n: Node) -> list[tuple[str, str]]:
    return [(t.new.name, t.reason.value) for _, t in n.transitions]


def took_over_at(n: Node) -> float:
    return next(at for at, t in reversed(n.transitions) if t.new is State.MASTER)


def test_timers_are_the_rfc_s() -> None:
    m = Machine(Params(protocol="vrrp2", priority=100), rng=lambda: 1)
    assert m.advert_interval_us == US
    assert m.handover_wait_us == 156 * US // 256
    assert m.master_down_interval_us == 3 * US + 156 * US // 256
    v3 = Machine(Params(protocol="vrrp3", priority=200, advert_int_cs=20), rng=lambda: 1)
    assert v3.advert_interval_us == 200_000
    assert v3.handover_wait_us == 56 * 200_000 // 256  # scaled by the interval in v3
    assert v3.master_down_interval_us == 600_000 + 56 * 200_000 // 256


def test_election_the_higher_priority_wins() -> None:
    a, b = vnode("a", "10.0.0.1", 100), vnode("b", "10.0.0.2", 200)
    sim = Sim(a, b)
    sim.start()
    sim.run_until(10)
    assert sim.masters() == ["b"] and b.holds_vip and not a.holds_vip
    assert took_over_at(b) == pytest.approx(3 + 56 / 256, abs=1e-6)
    assert reasons(a) == [("BACKUP", "startup")]


def test_preempt_after_the_master_down_interval_as_keepalived() -> None:
    a, b = vnode("a", "10.0.0.1", 100), vnode("b", "10.0.0.2", 200, preempt=True)
    sim = Sim(a, b)
    sim.start(a)
    sim.run_until(10)
    sim.start(b)
    sim.run_until(20)
    assert sim.masters() == ["b"]
    # b discards a's lower adverts and takes over when its master-down timer runs out
    assert took_over_at(b) == pytest.approx(10 + 3 + 56 / 256, abs=1e-6)
    assert reasons(b)[-1] == ("MASTER", "preempt")
    assert reasons(a)[-1] == ("BACKUP", "preferred_master")


def test_nopreempt_leaves_the_master_in_place() -> None:
    a, b = vnode("a", "10.0.0.1", 100), vnode("b", "10.0.0.2", 200, preempt=False)
    sim = Sim(a, b)
    sim.start(a)
    sim.run_until(10)
    sim.start(b)
    sim.run_until(40)
    assert sim.masters() == ["a"]


def test_preempt_delay_holds_back_the_preempt() -> None:
    a = vnode("a", "10.0.0.1", 100)
    b = vnode("b", "10.0.0.2", 200, preempt=True, preempt_delay=5.0)
    sim = Sim(a, b)
    sim.start(a)
    sim.run_until(10)
    sim.start(b)
    sim.run_until(14)
    assert sim.masters() == ["a"]
    sim.run_until(30)
    assert sim.masters() == ["b"] and took_over_at(b) > 15


def test_equal_priorities_the_higher_address_wins_between_masters() -> None:
    a, b = vnode("a", "10.0.0.9", 100), vnode("b", "10.0.0.10", 100)
    sim = Sim(a, b)
    a.connected = b.connected = False
    sim.start()
    sim.run_until(5)
    assert sim.masters() == ["a", "b"]
    a.connected = b.connected = True
    sim.run_until(8)
    # network byte order: 10.0.0.10 > 10.0.0.9 (ucarp's little-endian order would say so too,
    # so a pair whose last octets differ in the high byte checks it is not that one)
    assert sim.masters() == ["b"]
    assert reasons(a)[-1] == ("BACKUP", "preferred_master")
    c, d = vnode("c", "10.1.0.2", 100), vnode("d", "10.0.1.3", 100)
    sim = Sim(c, d)
    c.connected = d.connected = False
    sim.start()
    sim.run_until(5)
    c.connected = d.connected = True
    sim.run_until(8)
    assert sim.masters() == ["c"]  # 10.1.0.2 > 10.0.1.3 in network order, not in ucarp's


def test_resign_the_backup_takes_over_within_skew_time() -> None:
    a, b = vnode("a", "10.0.0.1", 200), vnode("b", "10.0.0.2", 100)
    c = vnode("c", "10.0.0.3", 50)
    sim = Sim(a, b, c)
    sim.start()
    sim.run_until(10)
    assert sim.masters() == ["a"]
    sim.do(a, a.machine.stop(sim.now))
    assert a.adverts[-1][1].handover  # priority 0 on the wire
    sim.run_until(20)
    assert sim.masters() == ["b"] and a.state is State.INIT
    assert took_over_at(b) - 10 == pytest.approx(SKEW_100, abs=1e-6)  # not master-down
    assert reasons(b)[-1] == ("MASTER", "handover")
    assert reasons(c) == [("BACKUP", "startup")]  # b's advert re-armed c: one transition


def test_a_master_hearing_priority_zero_advertises_at_once() -> None:
    m = Machine(Params(protocol="vrrp2", priority=100, own_ip=IPv4Address("10.0.0.1")),
                rng=lambda: 1)
    m.start(0.0)
    m.timer_expired(4.0)
    assert m.state is State.MASTER
    actions = m.advert_received(4.5, IPv4Address("10.0.0.2"), 255, 255, 0, priority=0,
                                interval_cs=100)
    assert [type(a) for a in actions] == [SendAdvert]
    assert m.next_deadline() == pytest.approx(5.5)  # the advert timer restarted


def test_a_master_answers_a_lower_priority_with_an_advert_once_per_interval() -> None:
    m = Machine(Params(protocol="vrrp3", priority=200, own_ip=IPv4Address("10.0.0.1")),
                rng=lambda: 1)
    m.start(0.0)
    m.timer_expired(4.0)
    lower = IPv4Address("10.0.0.2")
    first = m.advert_received(6.0, lower, 1, 0, 0, priority=100, interval_cs=100)
    assert {type(a) for a in first} >= {SendAdvert, SendGarp}
    again = m.advert_received(6.1, lower, 1, 0, 0, priority=100, interval_cs=100)
    assert not any(isinstance(a, SendAdvert) for a in again)
    assert m.state is State.MASTER


def test_v3_learns_the_master_s_interval() -> None:
    a = vnode("a", "10.0.0.1", 200, protocol="vrrp3", advert_int_cs=50)
    b = vnode("b", "10.0.0.2", 100, protocol="vrrp3", advert_int_cs=100)
    sim = Sim(a, b)
    sim.start()
    sim.run_until(10)
    assert sim.masters() == ["a"]
    learnt = 3 * 0.5 + 156 * 0.5 / 256
    assert b.machine.master_down_interval_us == 1_500_000 + 156 * 500_000 // 256  # µs, as keepalived
    last = a.adverts[-1][0]
    a.connected = False
    sim.run_until(20)
    assert took_over_at(b) - last == pytest.approx(learnt, abs=1e-6)


def test_the_owner_is_master_at_start_at_once() -> None:
    b = vnode("b", "10.0.0.2", 100)
    owner = vnode("o", "10.0.0.1", 255)
    sim = Sim(b, owner)
    sim.start(b)
    sim.run_until(10)
    sim.start(owner)
    assert owner.state is State.MASTER and owner.holds_vip
    assert owner.transitions[0][1] == Transition(State.INIT, State.MASTER, Reason.STARTUP)
    assert sim.masters() == ["o"] and reasons(b)[-1] == ("BACKUP", "preferred_master")


def test_a_demoted_master_resigns_and_a_demoted_backup_never_takes_over() -> None:
    a = vnode("a", "10.0.0.1", 200, preempt=True)
    b = vnode("b", "10.0.0.2", 100, preempt=True)
    sim = Sim(a, b)
    sim.start()
    sim.run_until(10)
    sim.do(a, a.machine.set_healthy(sim.now, False))
    assert a.adverts[-1][1].handover and not a.holds_vip
    sim.run_until(30)
    assert sim.masters() == ["b"]  # a, demoted, does not preempt b's lower priority
    assert took_over_at(b) - 10 == pytest.approx(SKEW_100, abs=1e-6)
    sim.do(a, a.machine.set_healthy(sim.now, True))
    sim.run_until(40)
    assert sim.masters() == ["a"]  # healthy again: preempts after its master-down interval
    sim.do(b, b.machine.set_healthy(sim.now, False))
    a.connected = False
    sim.run_until(60)
    assert b.state is State.BACKUP and not b.holds_vip


def test_sessions_exchange_real_vrrp_packets() -> None:
    a = ss.node("a", "10.0.0.1", protocol="vrrp2", priority=150, password=b"pw", preempt=True)
    b = ss.node("b", "10.0.0.2", protocol="vrrp2", priority=100, password=b"pw")
    net = ss.Net(a, b)
    net.start()
    net.run(10)
    assert ss.Net.masters(a, b) == ["a"]
    heard = b.of(Accepted)
    assert heard and heard[-1].priority == 150 and heard[-1].interval == 1.0
    net.do(a, a.session.stop(net.now))
    net.run(20)
    assert ss.Net.masters(a, b) == ["b"]
    assert ("MASTER", "handover") in ss.transitions(b)
    stranger = ss.node("c", "10.0.0.3", protocol="vrrp2", priority=100, password=b"other")
    net.deliver(stranger, b.sent[-1][1])
    assert [d.error.reason for d in stranger.of(Dropped)] == [DropReason.BAD_AUTH]


def test_a_vrrp_session_drops_carp_adverts_on_its_vrid() -> None:
    carp = ss.node("carp", "10.0.0.1")
    vrrp = ss.node("v", "10.0.0.2", protocol="vrrp3", priority=100)
    net = ss.Net(carp, vrrp)
    net.start()
    net.run(10)
    assert ss.Net.masters(carp, vrrp) == ["carp", "v"]  # two protocols do not elect together
    assert {d.error.reason for d in vrrp.of(Dropped)} == {DropReason.CARP}
    assert {d.error.reason for d in carp.of(Dropped)} == {DropReason.VRRP}


def test_a_unicast_v3_pair_with_sub_second_adverts() -> None:
    a = ss.node("a", "10.0.0.1", protocol="vrrp3", priority=200, advert_int_cs=10,
                peers=("10.0.0.2",))
    b = ss.node("b", "10.0.0.2", protocol="vrrp3", priority=100, advert_int_cs=10,
                peers=("10.0.0.1",))
    net = ss.Net(a, b)
    net.start()
    net.run(2)
    assert ss.Net.masters(a, b) == ["a"] and not b.of(Dropped)
    a.connected = False
    net.run(3)
    assert ss.Net.masters(a, b) == ["a", "b"]  # a cannot hear b either: both hold it
    before = net.now
    a.connected = True
    net.run(before + 0.5)
    assert ss.Net.masters(a, b) == ["a"]  # b hears the higher priority and yields


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 255)), max_size=6),
       st.integers(0, 40))
def test_mangled_vrrp_never_escapes_a_session(edits: list[tuple[int, int]], cut: int) -> None:
    a = ss.node("a", "10.0.0.1", protocol="vrrp2", priority=200)
    b = ss.node("b", "10.0.0.2", protocol="vrrp2", priority=100)
    net = ss.Net(a, b)
    net.start()
    net.run(5)
    packet = bytearray(a.sent[-1][1])
    for at, value in edits:
        packet[at % len(packet)] = value
    before = b.state
    outs = b.session.receive(net.now, bytes(packet[:max(len(packet) - cut, 0)]))
    if not any(isinstance(o, Accepted) for o in outs):
        assert b.state is before and all(isinstance(o, Dropped) for o in outs)


def test_the_owner_always_preempts_even_with_nopreempt() -> None:
    b = vnode("b", "10.0.0.2", 100)
    owner = vnode("o", "10.0.0.1", 255, preempt=False)
    sim = Sim(b, owner)
    sim.do(owner, owner.machine.set_healthy(0.0, False))
    sim.start()
    sim.run_until(10)
    assert sim.masters() == ["b"]  # an unhealthy owner starts BACKUP and stays there
    sim.do(owner, owner.machine.set_healthy(sim.now, True))
    sim.run_until(20)
    assert sim.masters() == ["o"] and reasons(owner)[-1] == ("MASTER", "preempt")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 254), st.floats(0, 8)), min_size=2, max_size=5),
       st.sampled_from(["vrrp2", "vrrp3"]))
def test_with_preempt_the_group_converges_on_a_highest_priority_node(
        spec: list[tuple[int, float]], protocol: str) -> None:
    nodes = [vnode(f"n{i}", f"10.0.0.{i + 1}", prio, protocol=protocol, preempt=True)
             for i, (prio, _) in enumerate(spec)]
    sim = Sim(*nodes)
    for at, n in sorted(((at, n) for (_, at), n in zip(spec, nodes, strict=True)),
                        key=lambda x: x[0]):
        sim.run_until(at)
        sim.start(n)
    sim.run_until(30)
    (master,) = [n for n in nodes if n.state is State.MASTER]
    assert master.machine.params.priority == max(prio for prio, _ in spec)
    assert [n.name for n in nodes if n.holds_vip] == [master.name]


def test_v3_a_discarded_lower_advert_does_not_teach_its_interval() -> None:
    m = Machine(Params(protocol="vrrp3", priority=200, preempt=True,
                       own_ip=IPv4Address("10.0.0.1")), rng=lambda: 1)
    m.start(0.0)
    m.advert_received(0.5, IPv4Address("10.0.0.3"), 1, 0, 0, priority=250, interval_cs=100)
    down = m.master_down_interval_us
    assert down == 3 * US + 56 * US // 256  # the accepted master's 1 s
    m.advert_received(0.6, IPv4Address("10.0.0.2"), 1, 0, 0, priority=100, interval_cs=10)
    assert m.master_down_interval_us == down  # discarded: 10 cs not learnt
    m.timer_expired(0.5 + down / US)
    assert m.state is State.MASTER
    m.advert_received(5.0, IPv4Address("10.0.0.2"), 1, 0, 0, priority=100, interval_cs=10)
    assert m.vrrp_master_interval_us == US  # our own, not the lower one's
    m.advert_received(6.0, IPv4Address("10.0.0.3"), 1, 0, 0, priority=250, interval_cs=50)
    assert m.state is State.BACKUP
    assert m.vrrp_master_interval_us == US // 2  # yielded to: learnt


def test_v3_the_master_interval_is_ours_again_once_master() -> None:
    m = Machine(Params(protocol="vrrp3", priority=200, own_ip=IPv4Address("10.0.0.1")),
                rng=lambda: 1)
    m.start(0.0)
    m.advert_received(0.5, IPv4Address("10.0.0.3"), 1, 0, 0, priority=250, interval_cs=20)
    assert m.vrrp_master_interval_us == US // 5
    m.timer_expired(10.0)
    assert m.state is State.MASTER
    assert m.vrrp_master_interval_us == US
