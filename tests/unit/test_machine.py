"""One test per row of machine.py's transition table, then scenario and property tests."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.machine import (
    AddVip,
    Conflict,
    DropVip,
    Machine,
    Params,
    Reason,
    SendAdvert,
    SendGarp,
    State,
    Stopped,
    Transition,
    le_order,
)

from .sim import Sim, node

PEER = IPv4Address("10.0.0.2")
ME = IPv4Address("10.0.0.1")


def machine(**kw: object) -> Machine:
    return Machine(Params(own_ip=ME, **kw), rng=lambda: 0xDEAD)  # type: ignore[arg-type]


def master(**kw: object) -> Machine:
    m = machine(**kw)
    m.start(0.0)
    m.timer_expired(m.next_deadline() or 0)
    assert m.state is State.MASTER
    return m


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


# ---- INIT ----
def test_init_start_goes_backup_drops_vip_and_arms_master_down() -> None:
    m = machine()
    actions = m.start(10.0)
    assert actions == [Transition(State.INIT, State.BACKUP, Reason.STARTUP), DropVip()]
    assert m.state is State.BACKUP and m.next_deadline() == pytest.approx(13.0)


def test_init_start_neutral_does_not_run_downscript() -> None:
    assert kinds(machine(neutral=True).start(0.0)) == ["Transition"]


def test_init_ignores_adverts() -> None:
    m = machine()
    assert m.advert_received(0.0, PEER, 1, 0, 5) == [] and m.state is State.INIT


# ---- BACKUP ----
def test_backup_master_down_timer_becomes_master() -> None:
    m = machine(advskew=10)
    m.start(0.0)
    assert m.next_deadline() == pytest.approx(3 + 10 * 1_000_000 // 256 / 1e6)
    assert m.timer_expired(3.0) == []  # not yet: 3.039062 s with skew 10
    actions = m.timer_expired(3.1)
    assert kinds(actions) == ["Transition", "AddVip", "SendGarp", "SendAdvert"]
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.MASTER_DOWN)
    assert m.next_deadline() == pytest.approx(3.1 + 1.039062)


def test_backup_master_down_uses_deadratio_on_advbase_only() -> None:
    m = machine(advbase=2, advskew=128, deadratio=5)
    m.start(0.0)
    assert m.next_deadline() == pytest.approx(10.5)


def test_backup_preempts_worse_master_when_preempt_enabled() -> None:
    m = machine(advskew=0, preempt=True)
    m.start(0.0)
    actions = m.advert_received(1.0, PEER, 1, 10, 7)
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.PREEMPT, PEER)
    assert AddVip() in actions


def test_backup_within_preempt_delay_preempts_when_the_delay_ends() -> None:
    m = machine(advskew=0, preempt=True, preempt_delay=5.0)
    m.start(0.0)
    assert m.advert_received(1.0, PEER, 1, 10, 7) == []
    assert m.state is State.BACKUP and m.next_deadline() == pytest.approx(4.0)  # master-down first
    assert m.advert_received(3.0, PEER, 1, 10, 8) == []
    assert m.next_deadline() == pytest.approx(5.0)  # the delay ends before the master would time out
    assert m.timer_expired(4.99) == []
    actions = m.timer_expired(5.0)
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.PREEMPT, PEER)


def test_backup_after_preempt_delay_preempts_on_the_advert() -> None:
    m = machine(advskew=0, preempt=True, preempt_delay=5.0)
    m.start(0.0)
    assert m.advert_received(5.0, PEER, 1, 10, 7)[0].reason is Reason.PREEMPT  # type: ignore[union-attr]


def test_backup_within_preempt_delay_without_master_takes_over_at_master_down() -> None:
    m = machine(preempt=True, preempt_delay=30.0)
    m.start(0.0)
    assert m.timer_expired(3.0)[0] == Transition(State.BACKUP, State.MASTER, Reason.MASTER_DOWN)


def test_backup_within_preempt_delay_still_takes_over_a_bow_out() -> None:
    m = machine(advskew=0, preempt=True, preempt_delay=30.0)
    m.start(0.0)
    assert m.advert_received(1.0, PEER, 255, 255, 7)[0].reason is Reason.HANDOVER  # type: ignore[union-attr]


def test_link_back_restarts_the_preempt_delay() -> None:
    m = machine(advskew=0, preempt=True, preempt_delay=5.0)
    m.start(0.0)
    m.link_changed(10.0, up=False)
    m.link_changed(20.0, up=True)
    assert m.advert_received(21.0, PEER, 1, 10, 7) == []
    assert m.advert_received(25.0, PEER, 1, 10, 8)[0].reason is Reason.PREEMPT  # type: ignore[union-attr]


def test_demoted_backup_does_not_preempt_when_the_delay_ends() -> None:
    m = machine(advskew=0, preempt=True, preempt_delay=2.0)
    m.start(0.0)
    m.advert_received(1.0, PEER, 1, 10, 7)
    m.set_maintenance(1.5, True)
    assert m.timer_expired(2.0) == [] and m.state is State.BACKUP


def test_negative_preempt_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="preempt_delay"):
        Params(preempt_delay=-1)


def test_backup_does_not_preempt_without_preempt() -> None:
    m = machine(advskew=0)
    m.start(0.0)
    assert m.advert_received(1.0, PEER, 1, 10, 7) == []
    assert m.state is State.BACKUP and m.next_deadline() == pytest.approx(4.0)


def test_backup_does_not_preempt_equal_master_even_with_preempt() -> None:
    m = machine(preempt=True)
    m.start(0.0)
    assert m.advert_received(1.0, IPv4Address("10.0.0.200"), 1, 0, 7) == []


def test_backup_rearms_master_down_on_each_advert() -> None:
    m = machine()
    m.start(0.0)
    m.advert_received(2.5, PEER, 1, 0, 1)
    assert m.next_deadline() == pytest.approx(5.5)


def test_backup_takes_over_from_master_that_would_time_out() -> None:
    m = machine()  # master-down key (3 s, 0) < (4 s, 0)
    m.start(0.0)
    actions = m.advert_received(1.0, PEER, 4, 0, 7)
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.MASTER_TIMEOUT, PEER)


def test_backup_takes_over_at_once_on_bow_out_advert_with_zero_skew() -> None:
    m = machine()
    m.start(0.0)
    actions = m.advert_received(1.0, PEER, 255, 255, 7)
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.HANDOVER, PEER)


def test_backup_takes_over_on_bow_out_after_a_skew_proportional_delay() -> None:
    m = machine(advskew=64)  # 0.25 s of skew -> 31.25 ms of handover delay
    m.start(0.0)
    assert m.advert_received(1.0, PEER, 255, 255, 7) == []
    assert m.next_deadline() == pytest.approx(1.03125)
    actions = m.timer_expired(1.03125)
    assert actions[0] == Transition(State.BACKUP, State.MASTER, Reason.HANDOVER)


# ---- MASTER ----
def test_master_advert_timer_sends_advert_and_rearms() -> None:
    m = master(advskew=10)
    t = m.next_deadline() or 0
    actions = m.timer_expired(t)
    assert kinds(actions) == ["SendAdvert"]
    assert m.next_deadline() == pytest.approx(t + 1.039062)


def test_master_steps_down_for_more_frequent_master() -> None:
    m = master(advskew=10)
    actions = m.advert_received(5.0, PEER, 1, 0, 9)
    assert kinds(actions) == ["SendAdvert", "DropVip", "Transition"]
    assert actions[2] == Transition(State.MASTER, State.BACKUP, Reason.PREFERRED_MASTER, PEER)
    assert m.next_deadline() == pytest.approx(5.0 + 3.039062)


def test_master_equal_interval_tie_break_is_little_endian() -> None:
    # docs/protocol.md §5, from a capture: 172.16.0.10 vs 172.16.1.9 -> 172.16.1.9 stays MASTER
    low_numeric = Machine(Params(own_ip=IPv4Address("172.16.0.10")), rng=lambda: 1)
    low_numeric.start(0)
    low_numeric.timer_expired(3)
    actions = low_numeric.advert_received(4, IPv4Address("172.16.1.9"), 1, 0, 1)
    assert low_numeric.state is State.BACKUP and DropVip() in actions
    high_numeric = Machine(Params(own_ip=IPv4Address("172.16.1.9")), rng=lambda: 1)
    high_numeric.start(0)
    high_numeric.timer_expired(3)
    actions = high_numeric.advert_received(4.5, IPv4Address("172.16.0.10"), 1, 0, 1)
    assert high_numeric.state is State.MASTER and actions == [
        Conflict(IPv4Address("172.16.0.10"), announce=True), SendGarp()]
    assert le_order(IPv4Address("172.16.1.9")) < le_order(IPv4Address("172.16.0.10"))


def test_master_reasserts_against_worse_master_with_garp_now_and_later() -> None:
    m = master(advskew=0)
    assert m.advert_received(3.5, PEER, 1, 50, 9) == [SendGarp()]
    first = m.timer_expired(m.next_deadline() or 0)
    second = m.timer_expired(m.next_deadline() or 0)
    assert kinds(first) == ["SendAdvert"] and kinds(second) == ["SendAdvert", "SendGarp"]


def test_master_takeover_sends_second_garp_with_second_advert() -> None:
    m = master(garp_repeat=3)
    sent = [kinds(m.timer_expired(m.next_deadline() or 0)) for _ in range(5)]
    assert sent == [["SendAdvert"], ["SendAdvert", "SendGarp"], ["SendAdvert", "SendGarp"],
                    ["SendAdvert"], ["SendAdvert"]]


def test_crossing_advert_right_after_takeover_is_not_a_conflict() -> None:
    # preemption: the old master's last advert crosses our first one (within one interval)
    m = master()  # MASTER at t=3
    assert m.advert_received(3.01, PEER, 1, 50, 9) == [SendGarp()]
    assert m.advert_received(4.0, PEER, 1, 50, 9) == []  # GARPs limited to one per interval


def test_master_still_hearing_worse_master_after_an_interval_counts_conflicts() -> None:
    m = master()
    assert m.advert_received(4.5, PEER, 1, 50, 9) == [Conflict(PEER, announce=True), SendGarp()]
    # more of the same within the interval: counted, but no GARP and no log line
    assert m.advert_received(4.6, PEER, 1, 50, 9) == [Conflict(PEER, announce=False)]
    assert m.advert_received(5.6, PEER, 1, 50, 9) == [Conflict(PEER, announce=True), SendGarp()]


def test_replayed_adverts_at_line_rate_cost_one_garp_per_interval() -> None:
    m = master()
    garps = 0
    for i in range(10_000):  # 1000 per second for 10 s, from made-up sources
        src = IPv4Address(0x0A000000 + 2 + i)  # all "worse": our key wins on skew
        garps += kinds(m.advert_received(4.0 + i / 1000, src, 1, 50, 9)).count("SendGarp")
        m.timer_expired(4.0 + i / 1000)
    assert m.state is State.MASTER and 9 <= garps <= 11 + 2  # plus the periodic takeover GARPs


def test_reannounce_only_as_master_and_at_most_once_per_interval() -> None:
    b = machine()
    b.start(0)
    assert b.reannounce(1.0) == []
    m = master()
    assert m.reannounce(5.0) == [SendGarp()]
    assert m.reannounce(5.5) == []
    assert m.reannounce(6.01) == [SendGarp()]


# ---- link ----
def test_interface_gone_is_link_down_even_with_ignoreifstate() -> None:
    m = master(ignoreifstate=True)
    assert m.link_changed(4.0, up=False) == []  # carrier: ignored
    actions = m.link_changed(4.0, up=False, force=True)  # the interface itself: never ignored
    assert actions == [DropVip(), Transition(State.MASTER, State.BACKUP, Reason.LINK_DOWN)]
    assert m.next_deadline() is None
    m.link_changed(9.0, up=True, force=True)
    assert m.next_deadline() == pytest.approx(12.0)  # back in one master-down interval


def test_link_down_master_drops_vip_and_stops_timers() -> None:
    m = master()
    actions = m.link_changed(4.0, up=False)
    assert actions == [DropVip(), Transition(State.MASTER, State.BACKUP, Reason.LINK_DOWN)]
    assert m.next_deadline() is None
    assert m.advert_received(5.0, PEER, 1, 100, 1) == []


def test_link_up_rearms_master_down() -> None:
    m = master()
    m.link_changed(4.0, up=False)
    assert m.link_changed(20.0, up=True) == []
    assert m.state is State.BACKUP and m.next_deadline() == pytest.approx(23.0)


def test_link_down_ignored_with_ignoreifstate() -> None:
    m = master(ignoreifstate=True)
    assert m.link_changed(4.0, up=False) == [] and m.state is State.MASTER


# ---- cannot advertise (source address gone, sends failing) ----
LEFT_FOR_CANNOT_ADVERTISE = [DropVip(),
                             Transition(State.MASTER, State.BACKUP, Reason.CANNOT_ADVERTISE)]


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("skew", [0, 100])
def test_master_that_cannot_advertise_keeps_the_vip_for_its_master_down_interval_then_leaves(
        ignore: bool, skew: int) -> None:
    m = master(ignoreifstate=ignore, advskew=skew)  # MASTER since 3 + skew/256
    grace_end = 4.2 + 3 + skew / 256  # its master-down interval, as the backups compute it
    assert m.set_can_advertise(4.2, False) == [] and m.state is State.MASTER
    assert m.next_deadline() == pytest.approx(grace_end)  # no advert meanwhile: it cannot
    assert m.timer_expired(grace_end - 0.001) == []
    assert m.timer_expired(grace_end) == LEFT_FOR_CANNOT_ADVERTISE
    assert m.next_deadline() is None  # a node that cannot advertise never takes over


def test_grace_runs_from_the_last_advert_that_left_and_may_be_over_at_once() -> None:
    m = master()  # its adverts left at 3.0 and 4.0; 5.0, 6.0 and 7.0 failed (a full queue)
    assert m.set_can_advertise(7.0, False, last_sent=4.0) == LEFT_FOR_CANNOT_ADVERTISE
    m = master()
    assert m.set_can_advertise(5.5, False, last_sent=4.0) == []  # unroutable at 5.0
    assert m.next_deadline() == pytest.approx(7.0)


def test_master_in_grace_yields_to_any_master_it_hears_without_advert_or_timers() -> None:
    for skew, remote_skew, reason in ((0, 100, Reason.CANNOT_ADVERTISE),
                                      (50, 0, Reason.PREFERRED_MASTER)):
        m = master(advskew=skew)
        m.set_can_advertise(4.2, False)
        actions = m.advert_received(5.0, PEER, 1, remote_skew, 7)
        assert actions == [DropVip(), Transition(State.MASTER, State.BACKUP, reason, PEER)]
        assert m.next_deadline() is None


def test_master_in_grace_keeps_the_vip_over_a_bow_out() -> None:
    m = master()
    m.set_can_advertise(4.2, False)
    assert kinds(m.advert_received(5.0, PEER, 255, 255, 7)) == ["Conflict", "SendGarp"]  # as ever
    assert m.state is State.MASTER and m.next_deadline() == pytest.approx(7.2)


def test_master_whose_address_returns_in_grace_resumes_advertising_without_a_transition() -> None:
    m = master()  # its advert is due at 4.0
    m.set_can_advertise(3.5, False)
    assert m.set_can_advertise(3.8, True) == []  # not due yet: on time, at 4.0
    assert m.state is State.MASTER and m.next_deadline() == pytest.approx(4.0)
    m.set_can_advertise(3.9, False)
    assert kinds(m.set_can_advertise(4.6, True)) == ["SendAdvert"]  # missed one: now
    assert m.state is State.MASTER and m.next_deadline() == pytest.approx(5.6)


def test_master_with_a_flapping_address_never_drops_the_vip() -> None:
    m, timed = master(), []
    t = 3.0
    while t < 23.0:  # deleted and re-added every 300 ms for 20 s
        timed += [(t, a) for a in m.set_can_advertise(t, not m.can_advertise)]
        for _ in range(3):
            t = round(t + 0.1, 6)
            deadline = m.next_deadline()
            if deadline is not None and deadline <= t:
                timed += [(t, a) for a in m.timer_expired(t)]
    assert m.state is State.MASTER
    assert not [a for _, a in timed if isinstance(a, (DropVip, Transition))]
    sent = [3.0] + [t for t, a in timed if isinstance(a, SendAdvert)]
    # an advert missed while the address is gone goes out when it is back: the backups
    # never wait longer than an advert interval and one flap, far below their master-down
    assert max(b - a for a, b in itertools.pairwise(sent)) <= 1.0 + 0.3 + 1e-6


def test_master_demoted_stepped_down_or_stopped_in_grace_leaves_at_once_silently() -> None:
    for leave, reason in ((lambda m: m.set_maintenance(5.0, True), Reason.MAINTENANCE),
                          (lambda m: m.set_healthy(5.0, False), Reason.UNHEALTHY),
                          (lambda m: m.step_down(5.0), Reason.STEP_DOWN)):
        m = master()
        m.set_can_advertise(4.2, False)
        assert leave(m) == [DropVip(), Transition(State.MASTER, State.BACKUP, reason)]
        assert m.next_deadline() is None
    m = master()
    m.set_can_advertise(4.2, False)
    assert kinds(m.stop(5.0)) == ["DropVip", "Transition", "Stopped"]
    assert m.next_deadline() is None


def test_master_in_grace_loses_its_link_and_leaves_at_once() -> None:
    m = master()
    m.set_can_advertise(4.2, False)
    assert m.link_changed(5.0, up=False) == [
        DropVip(), Transition(State.MASTER, State.BACKUP, Reason.LINK_DOWN)]
    assert m.next_deadline() is None
    assert m.set_can_advertise(6.0, True) == [] and m.next_deadline() is None  # link still down


def test_after_its_grace_a_node_takes_part_again_once_it_can_advertise() -> None:
    m = master()
    m.set_can_advertise(4.2, False)
    m.timer_expired(7.2)
    assert m.state is State.BACKUP
    assert m.advert_received(8.0, PEER, 1, 100, 1) == []  # a backup that cannot advertise
    assert m.set_can_advertise(9.0, True) == [] and m.next_deadline() == pytest.approx(12.0)


def test_backup_that_cannot_advertise_neither_times_out_nor_preempts() -> None:
    m = machine(preempt=True)
    m.start(0.0)
    assert m.set_can_advertise(1.0, False) == []
    assert m.next_deadline() is None
    # it hears a worse master on its packet socket: no preemption without a way to advertise
    assert m.advert_received(2.0, PEER, 1, 100, 1) == [] and m.state is State.BACKUP
    assert m.set_can_advertise(5.0, True) == []
    assert m.next_deadline() == pytest.approx(8.0)
    assert kinds(m.advert_received(6.0, PEER, 1, 100, 1))[:2] == ["Transition", "AddVip"]


def test_link_up_while_unable_to_advertise_arms_nothing() -> None:
    m = master()
    m.link_changed(4.0, up=False)
    m.set_can_advertise(4.5, False)
    assert m.link_changed(5.0, up=True) == [] and m.next_deadline() is None
    m.set_can_advertise(6.0, True)
    assert m.next_deadline() == pytest.approx(9.0)


def test_start_unable_to_advertise_arms_nothing_and_stop_of_a_stopping_master_finishes() -> None:
    m = machine()
    m.set_can_advertise(0.0, False)
    m.start(0.0)
    assert m.next_deadline() is None
    m2 = master()
    m2.stop(5.0)
    assert kinds(m2.set_can_advertise(5.1, False)) == ["DropVip", "Transition", "Stopped"]


# ---- demotion ----
def test_demoted_master_bows_out_and_drops_vip() -> None:
    m = master()
    actions = m.set_maintenance(5.0, True)
    assert isinstance(actions[0], SendAdvert) and actions[0].handover
    assert (actions[0].advbase, actions[0].advskew) == (255, 255)
    assert actions[1:] == [DropVip(), Transition(State.MASTER, State.BACKUP, Reason.MAINTENANCE)]


def test_a_master_demoted_by_its_health_says_so_and_that_is_unplanned() -> None:
    from sidecar.core.actions import planned

    m = master()
    actions = m.set_healthy(5.0, False)
    assert actions[1:] == [DropVip(), Transition(State.MASTER, State.BACKUP, Reason.UNHEALTHY)]
    assert not planned(State.BACKUP, Reason.UNHEALTHY)
    m2 = master()
    m2.set_healthy(5.0, False)
    assert m2.set_maintenance(6.0, True) == []  # already out: no second move
    both = master()
    both.set_healthy(1.0, True)
    moved = both.set_maintenance(5.0, True)
    assert isinstance(moved[-1], Transition) and moved[-1].reason is Reason.MAINTENANCE


def test_planned_moves_are_the_operators_and_what_follows_them() -> None:
    from sidecar.core.actions import planned

    unplanned = {(to, r) for to in State for r in Reason if not planned(to, r)}
    assert unplanned == {(State.MASTER, Reason.MASTER_DOWN), (State.MASTER, Reason.MASTER_TIMEOUT),
                         (State.BACKUP, Reason.UNHEALTHY)}


def test_demoted_backup_never_takes_the_vip() -> None:
    m = machine(preempt=True)
    m.start(0.0)
    m.set_maintenance(0.5, True)
    assert m.timer_expired(10.0) == [] and m.state is State.BACKUP
    assert m.advert_received(11.0, PEER, 1, 200, 1) == []
    assert m.advert_received(11.5, PEER, 255, 255, 1) == []
    m.set_maintenance(12.0, False)
    assert m.advert_received(12.5, PEER, 1, 200, 1)[0].reason is Reason.PREEMPT  # type: ignore[union-attr]


# ---- stop ----
def test_stop_master_bows_out_and_keeps_the_vip_until_a_successor_speaks() -> None:
    m = master()
    actions = m.stop(6.0)
    assert kinds(actions) == ["SendAdvert"] and actions[0].handover  # type: ignore[union-attr]
    assert m.state is State.MASTER and m.stopping
    assert m.next_deadline() == pytest.approx(6.8)  # no periodic adverts, only the wait
    assert m.advert_received(6.05, PEER, 1, 100, 7) == [
        DropVip(), Transition(State.MASTER, State.INIT, Reason.STOP), Stopped()]
    assert m.next_deadline() is None and m.state is State.INIT


def test_stop_master_without_successor_drops_the_vip_after_the_wait() -> None:
    m = master()
    m.stop(6.0)
    assert m.timer_expired(6.5) == []
    assert kinds(m.timer_expired(6.8)) == ["DropVip", "Transition", "Stopped"]


def test_stop_master_whose_link_is_down_finishes_at_once() -> None:
    m = master()
    m.stop(6.0)
    assert kinds(m.link_changed(6.1, up=False)) == ["DropVip", "Transition", "Stopped"]


def test_unhealthy_service_and_maintenance_both_demote() -> None:
    m = master()
    assert kinds(m.set_healthy(5.0, False)) == ["SendAdvert", "DropVip", "Transition"]
    m.set_maintenance(6.0, True)
    m.set_healthy(7.0, True)
    assert m.demoted and m.timer_expired(20.0) == []  # still in maintenance
    m.set_maintenance(21.0, False)
    assert not m.demoted


def test_stop_backup_sends_nothing_and_is_stopped_at_once() -> None:
    m = machine()
    m.start(0.0)
    assert m.stop(1.0) == [Transition(State.BACKUP, State.INIT, Reason.STOP), Stopped()]


# ---- counter (docs/protocol.md §2) ----
def test_counter_random_until_peer_heard_then_peer_plus_one() -> None:
    values = iter([111, 222, 333])
    m = Machine(Params(own_ip=ME), rng=lambda: next(values))
    m.start(0.0)
    a = m.timer_expired(3.0)
    assert [x.counter for x in a if isinstance(x, SendAdvert)] == [111]
    assert [x.counter for x in m.timer_expired(4.0) if isinstance(x, SendAdvert)] == [222]
    m.advert_received(4.5, PEER, 1, 50, 2**64 - 1)
    assert [x.counter for x in m.timer_expired(5.0) if isinstance(x, SendAdvert)] == [0]


# ---- scenarios of the classic recipe ----
def recipe_pair(b_skew: int = 0) -> tuple[Sim, object, object]:
    a = node("a", "172.16.0.11", preempt=True)
    b = node("b", "172.16.0.12", advskew=b_skew)
    return Sim(a, b), a, b


def test_scenario_master_silent_backup_takes_over_after_exactly_master_down() -> None:
    sim, a, b = recipe_pair(b_skew=100)
    sim.start()
    sim.run_until(10.0)
    assert sim.masters() == ["a"]
    a.connected = False  # type: ignore[attr-defined]
    last = max(t for t, _ in a.adverts if t <= 10.0)  # type: ignore[attr-defined]
    sim.run_until(20.0)
    took = [t for t, tr in b.transitions if tr.new is State.MASTER]  # type: ignore[attr-defined]
    assert took and took[0] - last == pytest.approx(3 + 100 / 256, abs=1e-6)


def first(n: object, to: State, after: float) -> float:
    return min(t for t, tr in n.transitions if tr.new is to and t > after)  # type: ignore[attr-defined]


@pytest.mark.parametrize("b_skew", [0, 100])
@pytest.mark.parametrize("after_advert", [0.0, 0.2, 0.5, 0.9])
def test_scenario_master_without_its_address_holds_until_the_backup_takes_over(
        b_skew: int, after_advert: float) -> None:
    """The master's grace ends a master-down interval after its last advert, when the backup
    takes over (same skew: exactly then, whenever the address went); never two holders, a gap
    of the difference of their skews at most."""
    sim, a, b = recipe_pair(b_skew=b_skew)
    sim.start()
    sim.run_until(10.0)
    last = max(t for t, _ in a.adverts)  # type: ignore[attr-defined]
    sim.run_until(last + after_advert)
    sim.do(a, a.machine.set_can_advertise(sim.now, False, last))  # type: ignore[attr-defined]
    samples = []
    while sim.now < last + 8:
        sim.run_for(0.001)
        samples.append(a.holds_vip + b.holds_vip)  # type: ignore[attr-defined]
    took, left = first(b, State.MASTER, last), first(a, State.BACKUP, last)
    assert took == pytest.approx(last + 3 + b_skew / 256)  # the backup's own rule, unchanged
    assert left == pytest.approx(last + 3)  # its grace, as b computes it with a's skew
    assert took - left <= b_skew / 256 + 1e-9 and max(samples) == 1
    if b_skew == 0:
        assert left == pytest.approx(took) and min(samples) == 1  # no moment without a holder
    assert a.transitions[-1][1].reason is Reason.CANNOT_ADVERTISE  # type: ignore[attr-defined]


def test_scenario_flapping_master_address_keeps_one_holder_and_the_backup_quiet() -> None:
    sim, a, b = recipe_pair(b_skew=100)
    sim.start()
    sim.run_until(10.0)
    samples = []
    for _ in range(67):  # deleted and re-added every 300 ms for 20 s
        ok, last = not a.machine.can_advertise, a.adverts[-1][0]  # type: ignore[attr-defined]
        sim.do(a, a.machine.set_can_advertise(sim.now, ok, last))  # type: ignore[attr-defined]
        for _ in range(30):
            sim.run_for(0.01)
            samples.append((a.holds_vip, b.holds_vip))  # type: ignore[attr-defined]
    assert set(samples) == {(True, False)}
    assert [tr.new for _, tr in b.transitions] == [State.BACKUP]  # type: ignore[attr-defined]


def test_scenario_master_back_with_preempt_retakes() -> None:
    sim, a, b = recipe_pair(b_skew=100)
    sim.start()
    sim.run_until(10.0)
    sim.do(a, a.machine.link_changed(sim.now, up=False))  # type: ignore[attr-defined]
    a.connected = False  # type: ignore[attr-defined]
    sim.run_until(20.0)
    assert sim.masters() == ["b"]
    a.connected = True  # type: ignore[attr-defined]
    sim.do(a, a.machine.link_changed(sim.now, up=True))  # type: ignore[attr-defined]
    sim.run_until(22.0)
    assert sim.masters() == ["a"] and b.holds_vip is False  # type: ignore[attr-defined]


def test_scenario_master_back_without_preempt_stays_backup() -> None:
    a = node("a", "172.16.0.11")  # no preempt
    b = node("b", "172.16.0.12", advskew=100)
    sim = Sim(a, b)
    sim.start()
    sim.run_until(10.0)
    sim.do(a, a.machine.link_changed(sim.now, up=False))
    a.connected = False
    sim.run_until(20.0)
    a.connected = True
    sim.do(a, a.machine.link_changed(sim.now, up=True))
    sim.run_until(60.0)
    assert sim.masters() == ["b"] and not a.holds_vip


def test_scenario_healed_partition_resolved_by_address_tie_break() -> None:
    sim, a, b = recipe_pair(b_skew=0)  # the recipe exactly: same advbase, no advskew
    sim.start()
    sim.run_until(10.0)
    a.connected = b.connected = False  # type: ignore[attr-defined]
    sim.run_until(20.0)
    assert sorted(sim.masters()) == ["a", "b"]
    a.connected = b.connected = True  # type: ignore[attr-defined]
    sim.run_until(23.0)
    # little-endian order: .11 < .12 so a (172.16.0.11) wins, as x86 ucarp decides
    assert sim.masters() == ["a"]


def test_scenario_graceful_stop_hands_over_with_one_transition_among_three() -> None:
    a = node("a", "10.0.0.1")
    b = node("b", "10.0.0.2", advskew=20)
    c = node("c", "10.0.0.3", advskew=40)
    sim = Sim(a, b, c)
    sim.start(a)
    sim.run_until(3.5)
    sim.start(b, c)
    sim.run_until(10.0)
    assert sim.masters() == ["a"]
    stopped_at = sim.now
    sim.do(a, a.machine.stop(sim.now))
    assert a.holds_vip  # still answering while the successor is chosen
    sim.run_until(20.0)
    assert sim.masters() == ["b"] and not a.holds_vip and a.state is State.INIT
    b_up = [t for t, tr in b.transitions if tr.new is State.MASTER]
    assert b_up[0] - stopped_at == pytest.approx(20 / 256 / 8, abs=1e-6)
    # a let the VIP go the moment b's first advert arrived: no instant without a holder
    assert a.transitions[-1] == (b_up[0], Transition(State.MASTER, State.INIT, Reason.STOP))
    assert [tr.new for _, tr in c.transitions] == [State.BACKUP]  # c never flapped


# ---- properties ----
events = st.lists(
    st.tuples(
        st.floats(0.0, 5.0),
        st.sampled_from(["timer", "advert", "link", "demote", "stop", "start"]),
        st.integers(0, 255), st.integers(0, 255), st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(events, st.integers(0, 255), st.booleans(), st.booleans())
def test_vip_held_only_in_master_and_one_timer_at_most(
    evs: list[tuple[float, str, int, int, bool]], skew: int, preempt: bool, ignoreif: bool
) -> None:
    m = Machine(Params(own_ip=ME, advskew=skew, preempt=preempt, ignoreifstate=ignoreif),
                rng=lambda: 7)
    holds, now = False, 0.0
    for dt, kind, base, askew, flag in evs:
        now += dt
        if kind == "timer":
            actions = m.timer_expired(now)
        elif kind == "advert":
            actions = m.advert_received(now, PEER, base, askew, base * askew)
        elif kind == "link":
            actions = m.link_changed(now, flag)
        elif kind == "demote":
            actions = m.set_maintenance(now, flag)
        elif kind == "stop":
            actions = m.stop(now)
        else:
            actions = m.start(now)
        for a in actions:
            if isinstance(a, AddVip):
                holds = True
            elif isinstance(a, DropVip):
                holds = False
        assert holds == (m.state is State.MASTER)
        assert m._advert_at is None or m._master_down_at is None
        if m.state is State.MASTER and not m.stopping:
            assert m._advert_at is not None
        if m.demoted and not m.stopping:
            assert m.state is not State.MASTER


# ---- neutral start ----
def test_neutral_start_leaves_the_vip_until_a_master_is_heard() -> None:
    m = machine(neutral=True)
    assert DropVip() not in m.start(0.0)
    assert m.advert_received(1.0, PEER, 1, 0, 7) == [DropVip()]
    assert m.advert_received(2.0, PEER, 1, 0, 8) == []  # once


def test_neutral_start_without_a_master_keeps_the_vip_by_becoming_master() -> None:
    m = machine(neutral=True)
    m.start(0.0)
    actions = m.timer_expired(3.0)
    assert DropVip() not in actions and AddVip() in actions
    m2 = machine(neutral=True, advskew=0, preempt=True)
    m2.start(0.0)
    assert DropVip() not in m2.advert_received(1.0, PEER, 1, 100, 7)  # preempts instead


# ---- sub-second mode's dead timer; strict counters ----
def test_advbase_0_ucarp_dead_timer_is_the_own_skew_alone() -> None:
    m = machine(advbase=0, advskew=26)
    m.start(0.0)
    assert m.next_deadline() == pytest.approx(26 / 256, abs=1e-5)


def test_vrrp3_dead_timer_follows_the_masters_advertised_interval() -> None:
    m = machine(advbase=0, advskew=26, vrrp3_dead_timer=True)
    m.start(0.0)
    assert m.next_deadline() == pytest.approx(3 * 26 / 256 + 26 / 256, abs=1e-5)  # none heard yet
    assert m.advert_received(1.0, PEER, 0, 20, 7) == []
    assert m.next_deadline() == pytest.approx(1.0 + 3 * 20 / 256 + 26 / 256, abs=1e-5)
    m.advert_received(1.05, PEER, 255, 255, 8)  # a bow-out says nothing of the interval
    assert m.master_down_interval_us == 3 * skew(20) + skew(26)


def skew(advskew: int) -> int:
    return advskew * 1_000_000 // 256


def test_strict_node_never_adopts_a_peers_counter() -> None:
    m = master(strict=True)
    first = m.timer_expired(m.next_deadline() or 0)[0]
    m.advert_received(5.0, PEER, 1, 100, 10**12)  # a worse master's huge counter
    after = m.timer_expired(m.next_deadline() or 0)[0]
    assert isinstance(first, SendAdvert) and isinstance(after, SendAdvert)
    assert after.counter == first.counter + 1
    plain = master()
    plain.advert_received(5.0, PEER, 1, 100, 10**12)
    adopted = plain.timer_expired(plain.next_deadline() or 0)[0]
    assert isinstance(adopted, SendAdvert) and adopted.counter == 10**12 + 1


# ---- step down (SIGUSR2) ----
def test_step_down_bows_out_and_stays_out_for_the_pause_then_may_preempt_back() -> None:
    m = master(preempt=True)
    actions = m.step_down(10.0)
    assert actions[0] == SendAdvert(255, 255, actions[0].counter, handover=True)  # type: ignore[union-attr]
    assert actions[1:] == [DropVip(), Transition(State.MASTER, State.BACKUP, Reason.STEP_DOWN)]
    # the backup took over on the bow-out; we hear it during the pause: no preemption yet
    assert m.advert_received(10.5, PEER, 1, 100, 1) == [] and m.state is State.BACKUP
    assert m.advert_received(11.0, PEER, 255, 255, 2) == []  # not even a handover
    assert m.next_deadline() is not None and m.next_deadline() >= 13.0  # type: ignore[operator]
    # after the pause, preempt works as usual
    assert kinds(m.advert_received(13.5, PEER, 1, 100, 3))[:2] == ["Transition", "AddVip"]


def test_step_down_without_preempt_stays_backup_and_a_backup_ignores_it() -> None:
    m = master()
    m.step_down(10.0)
    m.advert_received(10.5, PEER, 1, 100, 1)
    m.advert_received(14.0, PEER, 1, 100, 2)
    assert m.state is State.BACKUP
    b = machine()
    b.start(0.0)
    assert b.step_down(1.0) == [] and b.next_deadline() == pytest.approx(3.0)


def test_step_down_of_a_lone_master_comes_back_after_the_pause_at_master_down() -> None:
    m = master()
    m.step_down(10.0)
    assert m.next_deadline() == pytest.approx(13.0)
    assert kinds(m.timer_expired(13.0))[:2] == ["Transition", "AddVip"]


def test_grace_of_a_new_mastership_runs_from_its_takeover_not_an_earlier_send() -> None:
    m = master()  # MASTER since 3.0; the session's last send time is from an earlier mastership
    assert m.set_can_advertise(3.5, False, last_sent=-100.0) == []
    assert m.state is State.MASTER and m.next_deadline() == pytest.approx(6.0)


def test_a_step_down_in_grace_keeps_its_pause_when_the_address_returns() -> None:
    m = master(advbase=0, advskew=50)
    t0 = m.next_deadline() or 0.0
    m.timer_expired(t0)
    m.set_can_advertise(t0 + 0.05, False)  # in grace
    m.step_down(t0 + 0.15)
    assert m.state is State.BACKUP
    m.set_can_advertise(t0 + 0.2, True)  # the address is back: master-down armed, after the pause
    assert (m.next_deadline() or 0.0) >= t0 + 0.15 + 3.0
