"""The sync gate (Machine.sync_behind, Session.set_sync): a backup whose replicated paths are
behind never takes the VIP from a live master, loses the race for a dead master's VIP to a
fresh backup, and still takes it when nobody else does."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import outputs as out
from sidecar.core.actions import planned
from sidecar.core.intervals import handover_delay_us, skew_us
from sidecar.core.machine import (
    SYNC_BEHIND_SKEW,
    US,
    Machine,
    Params,
    Reason,
    State,
    Transition,
)
from sidecar.serve.metrics import TRANSITIONS

from . import session_sim as ss
from .sim import Node, Sim, node

PEER = IPv4Address("10.0.0.2")
ME = IPv4Address("10.0.0.1")


def backup(behind: bool = True, **kw: object) -> Machine:
    m = Machine(Params(own_ip=ME, **kw), rng=lambda: 0xDEAD)  # type: ignore[arg-type]
    m.start(0.0)
    assert m.set_sync_behind(0.0, behind) == []
    return m


def reasons(actions: list[object]) -> list[Reason]:
    return [a.reason for a in actions if isinstance(a, Transition)]


# ---- preemption ----
def test_backup_behind_does_not_preempt_then_preempts_as_caught_up() -> None:
    m = backup(preempt=True, advskew=0)
    for t in (1.0, 2.0, 3.0, 4.0):
        assert m.advert_received(t, PEER, 1, 100, 7) == []
    assert m.state is State.BACKUP
    assert m.set_sync_behind(4.5, False) == []  # at the next advert, not at once
    actions = m.advert_received(5.0, PEER, 1, 100, 8)
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.SYNC_CAUGHT_UP, PEER)
    assert planned(State.MASTER, Reason.SYNC_CAUGHT_UP)


def test_a_preempt_never_held_keeps_its_reason() -> None:
    m = backup(behind=False, preempt=True)
    assert reasons(m.advert_received(1.0, PEER, 1, 100, 7)) == [Reason.PREEMPT]


def test_a_better_master_clears_the_held_preempt() -> None:
    m = backup(preempt=True, advskew=50)
    m.advert_received(1.0, PEER, 1, 100, 7)  # worse: held
    m.advert_received(2.0, IPv4Address("10.0.0.3"), 1, 10, 7)  # better: nothing to preempt
    m.set_sync_behind(2.5, False)
    assert reasons(m.advert_received(3.0, PEER, 1, 100, 8)) == [Reason.PREEMPT]


def test_the_preempt_delay_s_end_is_held_while_behind() -> None:
    m = backup(behind=False, preempt=True, preempt_delay=2.0)
    assert m.advert_received(1.0, PEER, 1, 100, 7) == []
    assert m.next_deadline() == pytest.approx(2.0)  # the preempt delay's end
    m.set_sync_behind(1.5, True)
    master_interval = 1 + 100 / 256
    assert m.next_deadline() == pytest.approx(1.0 + 3 * master_interval + 240 / 256)
    for t in (2.0, 3.0, 4.0):
        assert m.advert_received(t, PEER, 1, 100, 8) == []
    m.set_sync_behind(4.5, False)
    assert reasons(m.advert_received(5.0, PEER, 1, 100, 9)) == [Reason.SYNC_CAUGHT_UP]


def test_the_preempt_delay_still_counts_after_the_catch_up() -> None:
    m = backup(preempt=True, preempt_delay=10.0)
    m.advert_received(1.0, PEER, 1, 100, 7)
    m.set_sync_behind(1.5, False)
    assert m.advert_received(2.0, PEER, 1, 100, 8) == []
    m.advert_received(9.0, PEER, 1, 100, 9)
    assert m.next_deadline() == pytest.approx(10.0)
    assert reasons(m.timer_expired(10.0)) == [Reason.SYNC_CAUGHT_UP]


# ---- a live master that would time out ----
def test_behind_no_takeover_by_the_would_time_out_rule() -> None:
    m = backup(advbase=1)
    assert m.advert_received(1.0, PEER, 5, 0, 7) == []  # ucarp: "going to time out"
    assert m.state is State.BACKUP
    assert m.next_deadline() == pytest.approx(1.0 + 3 * 5 + 240 / 256)  # its next advert
    fresh = backup(behind=False, advbase=1)
    assert reasons(fresh.advert_received(1.0, PEER, 5, 0, 7)) == [Reason.MASTER_TIMEOUT]


def test_behind_a_slow_master_keeps_the_vip_in_the_simulator() -> None:
    slow, stale = node("slow", "10.0.0.1", advbase=5), node("stale", "10.0.0.2", advbase=1)
    sim = Sim(slow, stale)
    sim.start(slow)
    sim.run_for(16)
    assert sim.masters() == ["slow"]
    sim.do(stale, stale.machine.set_sync_behind(sim.now, True))
    sim.start(stale)
    heard = slow.adverts[-1][1]  # since its last advert, so it knows the master's interval
    sim.do(stale, stale.machine.advert_received(sim.now, slow.ip, 5, 0, heard.counter))
    sim.run_for(60)
    assert sim.masters() == ["slow"] and stale.transitions[-1][1].reason is Reason.STARTUP
    slow.connected = False  # it dies: the stale one takes over, a wait after its last advert
    last = slow.adverts[-1][0]
    sim.run_for(30)
    assert stale.transitions[-1][1].reason is Reason.MASTER_DOWN
    assert stale.transitions[-1][0] == pytest.approx(last + 3 * 5 + 240 / 256)


# ---- the master dead: availability wins, the freshest first ----
def test_behind_takes_over_when_the_master_is_dead_later() -> None:
    m = backup(advskew=20)
    m.advert_received(1.0, PEER, 1, 0, 7)
    assert m.next_deadline() == pytest.approx(1.0 + 3 + 240 / 256)
    assert reasons(m.timer_expired(1.0 + 3 + 240 / 256)) == [Reason.MASTER_DOWN]


def test_behind_the_wait_covers_a_slower_master_s_adverts() -> None:
    m = backup(advskew=20)
    m.advert_received(1.0, PEER, 1, 128, 7)  # every 1.5 s: 4.5 s between three of them
    assert m.next_deadline() == pytest.approx(1.0 + 3 * 1.5 + 240 / 256)


def test_a_skew_above_the_demotion_is_kept() -> None:
    m = backup(advskew=250)
    m.advert_received(1.0, PEER, 1, 0, 7)
    assert m.next_deadline() == pytest.approx(1.0 + 3 + 250 / 256)
    assert m.master_down_interval_us == 3 * US + skew_us(250)  # as configured, for status


def test_the_handover_wait_is_lengthened() -> None:
    m = backup(advskew=0)  # fresh, skew 0 would take over on the bow-out at once
    assert m.advert_received(1.0, PEER, 255, 255, 7) == []
    assert m.next_deadline() == pytest.approx(1.0 + handover_delay_us(SYNC_BEHIND_SKEW) / US)
    assert reasons(m.timer_expired(m.next_deadline() or 0)) == [Reason.HANDOVER]
    fresh = backup(behind=False, advskew=0)
    assert reasons(fresh.advert_received(1.0, PEER, 255, 255, 7)) == [Reason.HANDOVER]


def test_going_behind_and_back_re_measures_the_wait() -> None:
    m = backup(behind=False, advskew=10)
    m.advert_received(1.0, PEER, 1, 0, 7)
    assert m.next_deadline() == pytest.approx(4.0 + 10 / 256)
    m.set_sync_behind(2.0, True)
    assert m.next_deadline() == pytest.approx(4.0 + 240 / 256)
    m.set_sync_behind(2.5, False)
    assert m.next_deadline() == pytest.approx(4.0 + 10 / 256)
    m.advert_received(3.0, PEER, 255, 255, 8)  # a handover under way, then behind
    assert m.next_deadline() == pytest.approx(3.0 + handover_delay_us(10) / US)
    m.set_sync_behind(3.001, True)
    assert m.next_deadline() == pytest.approx(3.0 + handover_delay_us(240) / US)


def test_a_master_ignores_the_gate() -> None:
    m = backup(behind=False)
    m.timer_expired(m.next_deadline() or 0)
    assert m.state is State.MASTER
    assert m.set_sync_behind(5.0, True) == []
    advert = m.timer_expired(m.next_deadline() or 0)
    assert advert[0].advskew == 0  # type: ignore[union-attr]
    assert m.advert_received(7.0, PEER, 1, 100, 7) != [] and m.state is State.MASTER


def race(behind: bool) -> tuple[Sim, list[Node]]:
    m = node("master", "10.0.0.1", advskew=0)
    stale = node("stale", "10.0.0.2", advskew=10, preempt=True)
    fresh = node("fresh", "10.0.0.3", advskew=100)
    sim = Sim(m, stale, fresh)
    sim.start(m)
    sim.run_for(5)
    sim.start(stale, fresh)
    sim.do(stale, stale.machine.set_sync_behind(sim.now, behind))
    sim.run_for(10)
    m.connected = False
    sim.run_for(10)
    return sim, [m, stale, fresh]


def test_without_the_gate_the_better_skew_wins() -> None:
    sim, _ = race(behind=False)
    assert sim.masters() == ["master", "stale"]


def test_the_freshest_backup_wins_the_race() -> None:
    """A stale backup with the better skew loses a dead master's VIP to a fresh one, and
    then stays BACKUP under it."""
    sim, (_, stale, fresh) = race(behind=True)
    assert sim.masters() == ["master", "fresh"]  # the old one cannot hear it any more
    assert fresh.transitions[-1][1].reason is Reason.MASTER_DOWN
    assert stale.state is State.BACKUP
    sim.run_for(30)  # fresh is worse than stale, stale has preempt: held
    assert stale.state is State.BACKUP
    sim.do(stale, stale.machine.set_sync_behind(sim.now, False))
    sim.run_for(2)
    assert stale.state is State.MASTER
    assert stale.transitions[-1][1].reason is Reason.SYNC_CAUGHT_UP


def test_alone_and_behind_it_still_takes_over() -> None:
    n = node("only", "10.0.0.1", advskew=0)
    sim = Sim(n)
    sim.do(n, n.machine.set_sync_behind(0.0, True))
    sim.start()
    sim.run_for(10)
    assert sim.masters() == ["only"]
    assert n.transitions[-1][0] == pytest.approx(3 + 240 / 256)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 10), st.integers(0, 254), st.integers(1, 5), st.integers(0, 254),
       st.integers(1, 5), st.booleans(), st.floats(0.0, 20.0))
def test_behind_never_takes_the_vip_from_a_live_master(
        m_base: int, m_skew: int, b_base: int, b_skew: int, deadratio: int, preempt: bool,
        start_after: float) -> None:
    """Whatever the settings: a master that keeps advertising keeps the VIP."""
    m = node("master", "10.0.0.1", advbase=m_base, advskew=m_skew)
    b = node("behind", "10.0.0.2", advbase=b_base, advskew=b_skew, deadratio=deadratio,
             preempt=preempt)
    sim = Sim(m, b)
    sim.start(m)
    sim.run_for(3 * m_base + 1 + start_after)
    sim.do(b, b.machine.set_sync_behind(sim.now, True))
    sim.start(b)
    last = m.adverts[-1][1]  # the backup has heard the master once: it knows its interval
    sim.do(b, b.machine.advert_received(sim.now, m.ip, last.advbase, last.advskew, last.counter))
    sim.run_for(100)
    assert sim.masters() == ["master"]


# ---- the series and the session ----
def test_the_caught_up_preempt_has_its_series_from_start() -> None:
    assert (State.BACKUP, State.MASTER, Reason.SYNC_CAUGHT_UP) in TRANSITIONS


def test_session_set_sync_reports_changes_only() -> None:
    a = ss.node("a", "10.0.0.1", preempt=True, advskew=0)
    b = ss.node("b", "10.0.0.2", advskew=100)
    net = ss.Net(a, b)
    net.start(b)
    net.run(4.0)
    assert ss.Net.masters(a, b) == ["b"]
    assert not a.session.sync_behind
    assert a.session.set_sync(net.now, False) == []
    net.do(a, a.session.set_sync(net.now, True))
    assert a.of(out.SyncGateChanged) == [out.SyncGateChanged(True)] and a.session.sync_behind
    assert a.session.set_sync(net.now, True) == []
    net.start(a)
    net.run(30.0)
    assert ss.Net.masters(a, b) == ["b"]
    net.do(a, a.session.set_sync(net.now, False))
    assert a.of(out.SyncGateChanged) == [out.SyncGateChanged(True), out.SyncGateChanged(False)]
    net.run(32.0)
    assert ss.Net.masters(a, b) == ["a"]
    took = a.of(Transition)[-1]
    assert took.reason is Reason.SYNC_CAUGHT_UP and took.planned is True
    assert ss.transitions(b)[-1] == ("BACKUP", "preferred_master")
