"""The per-VHID session (sidecar.core.session) as a specification: real packets through the
codec, a clock we move, no sockets. What test_machine.py is to the machine, this is to the
rules around it: replays, bad keys, claims, stale holders, sends that fail, one timer."""

from __future__ import annotations

import errno
import itertools

from sidecar.core import outputs as out
from sidecar.core import session as core
from sidecar.core.auth import carp_key
from sidecar.core.machine import SendAdvert, SendGarp, State, Transition
from sidecar.core.protocol import Advert, DropReason, build_ip_packet
from tests.unit.session_sim import GROUP, KEY, VIP, Net, node, transitions

MAC = bytes.fromhex("020000000099")


def pair(**kw: object) -> tuple[Net, object, object]:
    a, b = node("a", "10.0.0.1", **kw), node("b", "10.0.0.2", advskew=100, **kw)
    net = Net(a, b)
    net.start()
    return net, a, b


# ---- election over real packets ----
def test_two_sessions_elect_the_lower_skew_and_the_backup_accepts_its_adverts() -> None:
    net, a, b = pair()
    net.run(10)
    assert net.masters(a, b) == ["a"]
    accepted = b.of(out.Accepted)
    assert accepted and all(x.peer == a.ip and x.advskew == 0 for x in accepted)
    assert not b.of(out.Dropped)
    # the backup's peer table knows the master; the series follow it at each sweep
    assert set(b.session.peers.valid_peers()) == {"10.0.0.1"} and b.of(out.PeersSwept)


def test_notify_states_follow_startup_then_the_election() -> None:
    net, a, b = pair()
    net.run(10)
    assert [(n.state, n.reason) for n in a.of(out.Notify)] == [
        ("BACKUP", "startup"), ("MASTER", "master_down")]
    assert [(n.state, n.reason) for n in b.of(out.Notify)] == [("BACKUP", "startup")]


def test_an_advert_with_another_key_is_dropped_remembered_and_never_obeyed() -> None:
    net, a, b = pair()
    net.run(10)
    forged = build_ip_packet(Advert(vhid=1, advbase=1, advskew=0, counter=1), key=carp_key("x"),
                             vip=VIP, src=b.ip, dst=GROUP)
    before = a.state
    net.deliver(a, forged)
    dropped = a.of(out.Dropped)[-1]
    assert dropped.error.reason is DropReason.BAD_HMAC and dropped.src == b.ip.packed
    assert a.state is before
    assert "10.0.0.2" in a.session.peers._peers and "10.0.0.2" not in a.session.peers.valid_peers()


# ---- strict mode ----
def test_strict_replays_are_dropped_and_a_peer_stuck_behind_is_reported_once_then_back() -> None:
    net, a, b = pair(strict=True)
    net.run(10)
    packet = a.sent[-1][1]
    net.deliver(b, packet)  # the same bytes again: a replay
    assert b.of(out.Dropped)[-1].error.reason is DropReason.REPLAY
    # a restarts 1 h behind and without its mark: every advert is "old" to b
    a.wall[0] -= 3600
    a.session = node("a", "10.0.0.1", wall=a.wall[0], strict=True).session
    a.mark = None
    net.start(a)
    net.run(20)
    behind = b.of(out.PeerCounterBehind)
    assert len(behind) == 1 and behind[0].peer == a.ip
    assert behind[0].stuck_for >= b.session.machine.master_down_interval_us / 1e6
    assert not b.of(out.PeerCounterBack)
    a.wall[0] += 7200  # its clock corrected past the old counters: accepted again
    a.session = node("a", "10.0.0.1", wall=a.wall[0], strict=True, preempt=True).session
    net.start(a)  # preempt: b is master by now, and a backup sends nothing
    net.run(30)
    assert [x.peer for x in b.of(out.PeerCounterBack)] == [a.ip]


def test_strict_counters_start_above_the_kept_mark_even_with_the_clock_behind() -> None:
    a = node("a", "10.0.0.1", strict=True, wall=1.0e9)
    a.mark = int(2.0e9 * 1e6)  # written by a run whose clock was far ahead
    net = Net(a)
    net.start()
    net.run(5)
    counters = [o.counter for o in a.of(SendAdvert)]
    assert counters and counters[0] > int(2.0e9 * 1e6)
    assert a.mark is not None and a.mark >= counters[-1] + core.COUNTER_RESERVE // 2


def test_strict_reserves_again_before_an_advert_passes_half_the_reservation() -> None:
    a = node("a", "10.0.0.1", strict=True)
    net = Net(a)
    net.start()
    net.run(4)
    first = a.mark
    assert first is not None
    a.session.counters.reserved = a.of(SendAdvert)[-1].counter + core.COUNTER_RESERVE // 2 + 1
    net.run(6)
    reserves = [o for o in a.of(out.ReserveCounters)][1:]
    assert reserves, "the advert past half the reservation asked for a new one first"
    kinds = [type(o) for _, o in a.outputs]
    at = kinds.index(out.ReserveCounters, 1)
    assert kinds[at + 1] is SendAdvert  # before the advert, not after


# ---- who else claims the VIP ----
def test_a_former_master_falling_silent_makes_the_new_master_reannounce() -> None:
    a = node("a", "10.0.0.1", advskew=100)
    b = node("b", "10.0.0.2", preempt=True)
    net = Net(a, b)
    net.start(a)
    net.run(10)
    net.start(b)  # b preempts; a, a backup now, stops advertising: its ARP entries are stale
    net.run(20)
    assert net.masters(a, b) == ["b"]
    silent = b.of(out.FormerMasterSilent)
    assert len(silent) == 1 and silent[0].peers == ["10.0.0.1"]
    assert silent[0].gave_way == "preempted"  # the plan: b's log says so at INFO, not WARNING
    at = b.times(out.FormerMasterSilent)[0]
    assert at in b.times(SendGarp)  # the re-announce goes with it


def test_a_former_master_gave_way_when_it_bowed_out_or_we_preempted_it_only() -> None:
    from sidecar.core.machine import Reason
    from sidecar.core.peers import PeerTable

    peers = PeerTable(8, 10.0)
    peers.heard(1.0, 1.0, "10.0.0.1", 255, 255, True)  # a bow-out: a handover
    peers.heard(1.0, 1.0, "10.0.0.2", 1, 0, True)  # an ordinary advert, then nothing
    assert core.gave_way(peers, ["10.0.0.1"], Reason.HANDOVER) == "bowed out"
    assert core.gave_way(peers, ["10.0.0.2"], Reason.PREEMPT) == "preempted"
    # a master that fell silent while we were master too (a split brain ending, a crash)
    assert core.gave_way(peers, ["10.0.0.2"], Reason.MASTER_DOWN) is None
    assert core.gave_way(peers, ["10.0.0.1", "10.0.0.2"], Reason.HANDOVER) is None
    assert core.gave_way(peers, ["10.0.0.9"], None) is None  # expired meanwhile


def test_arp_claims_are_answered_with_backoff() -> None:
    net, a, b = pair()
    net.run(10)
    net.do(a, a.session.arp(net.now, MAC))
    net.now += 0.01
    net.do(a, a.session.arp(net.now, MAC))
    claims = a.of(out.ClaimSeen)
    assert [c.reannounced for c in claims] == [True, False]
    assert b.session.arp(net.now, MAC) == []  # a backup does not answer


def test_after_a_takeover_the_vips_are_probed_and_a_stale_holder_reported_once_a_minute() -> None:
    a = node("a", "10.0.0.1", probe_interval=10.0)
    net = Net(a)
    net.start()
    net.run(8)
    took_over = next(t for t, o in a.outputs if isinstance(o, Transition) and o.new is State.MASTER)
    probes = a.times(out.SendProbe)
    assert probes and abs(probes[0] - (took_over + core.PROBE_AFTER_TAKEOVER)) < 1e-6
    assert len(probes) == 1  # the next one a probe interval later (jitter aside)
    net.do(a, a.session.na(probes[0] + 0.5, MAC))  # just after the NS probe: its answer
    net.do(a, a.session.na(probes[0] + 0.6, MAC))
    assert [h.report for h in a.of(out.StaleHolder)] == [True, False]
    assert a.session.stale_holders(probes[0] + 1) == [MAC]
    assert a.session.stale_holders(probes[0] + core.STALE_LOG_BACKOFF + 1) == []
    net.do(a, a.session.na(probes[0] + 3, MAC))  # long after the probe: another announcer
    assert a.of(out.ClaimSeen)[-1].kind == "na"


MAC_B = bytes.fromhex("020000000002")


def test_a_probe_answered_while_another_master_advertises_is_a_handover_not_a_stale_holder(
        ) -> None:
    net, a, b = pair(probe_interval=1.0)
    net.run(10)
    forged_b = build_ip_packet(Advert(vhid=1, advbase=1, advskew=100, counter=5), key=KEY,
                               vip=VIP, src=b.ip, dst=GROUP)  # b still believes it is master
    net.deliver(a, forged_b)
    net.do(a, a.session.arp(net.now, MAC_B, probe_reply=True))
    net.do(a, a.session.na(net.now, MAC_B))  # (the IPv6 probe's answer, if one just went out)
    assert not a.of(out.StaleHolder) and a.session.stale_holders(net.now) == []
    # 2.5 of b's advert intervals without a word: b has stopped advertising; an answer now
    # comes from a host that still has the VIP
    net.now += 2.5 * (1 + 100 / 256) + 0.01
    net.do(a, a.session.arp(net.now, MAC_B, probe_reply=True))
    assert [h.report for h in a.of(out.StaleHolder)] == [True]


def test_an_advert_with_another_key_does_not_excuse_a_stale_holder() -> None:
    net, a, b = pair(probe_interval=1.0)
    net.run(10)
    other_key = build_ip_packet(Advert(vhid=1, advbase=1, advskew=100, counter=5),
                                key=carp_key("x"), vip=VIP, src=b.ip, dst=GROUP)
    net.deliver(a, other_key)
    net.do(a, a.session.arp(net.now, MAC_B, probe_reply=True))
    assert [h.report for h in a.of(out.StaleHolder)] == [True]


def test_a_frozen_master_resumed_reports_the_node_it_takes_the_vip_back_from_as_no_stale_holder(
        ) -> None:
    """SIGSTOP, SIGCONT: node-b took over meanwhile; on resume the loop reads node-b's queued
    adverts, then node-a's overdue timer sends its advert and a probe, which node-b's kernel
    answers before node-b has heard the advert and dropped the VIP."""
    net, a, b = pair(preempt=True, probe_interval=1.0)
    net.run(10)
    net.nodes.remove(a)  # frozen: no timers, nothing read (the kernel queues it)
    frozen_at = net.now
    net.run(15)
    assert b.state is State.MASTER
    net.nodes.insert(0, a)
    for _, packet in [(t, p) for t, p in b.sent if t > frozen_at]:
        net.deliver(a, packet)
    net.do(a, a.session.timer(net.now))
    assert a.times(out.SendProbe)[-1] == net.now
    net.do(a, a.session.arp(net.now, MAC_B, probe_reply=True))
    assert net.masters(a, b) == ["a"]
    assert not a.of(out.StaleHolder)
    net.run(net.now + 5)  # node-b is silent (BACKUP) now: were it to answer, it would be stale
    net.do(a, a.session.arp(net.now, MAC_B, probe_reply=True))
    assert [h.report for h in a.of(out.StaleHolder)] == [True]


# ---- can our adverts leave? ----
def test_a_full_queue_makes_a_master_leave_after_three_failures_and_come_back() -> None:
    net, a, b = pair()
    net.run(10)
    b.connected = False
    a.send_errno = errno.ENOBUFS
    net.run(11.5)
    assert a.state is State.MASTER  # one or two failures are not a fault
    net.run(13)
    left = [t for t, o in a.outputs if isinstance(o, out.AdvertisableChanged)]
    assert a.of(out.AdvertisableChanged)[0] == out.AdvertisableChanged(False,
                                                                         "sends fail: refused")
    assert len([t for t in a.times(SendAdvert) if 10 < t <= left[0]]) == 3
    assert transitions(a)[-1] == ("BACKUP", "cannot_advertise")
    assert [n.state for n in a.of(out.Notify)][-1] == "FAULT"
    a.send_errno = 0
    net.run(20)  # the send check finds it works again: back in the election
    assert a.session.machine.can_advertise and a.state is State.MASTER


def test_a_cleared_send_fault_needs_a_new_run_of_failures_before_the_next() -> None:
    net, a, b = pair()
    net.run(10)
    b.connected = False
    a.send_errno = errno.ENOBUFS
    net.run(14)
    assert transitions(a)[-1] == ("BACKUP", "cannot_advertise")
    a.send_errno = 0
    net.run(15)  # the send check clears it: back in the election, a takes over ~3 s later
    assert a.state is State.BACKUP and a.session.machine.can_advertise
    before = len(transitions(a))
    a.send_errno = errno.ENOBUFS  # the first advert of the new mastership fails, once
    net.run(net.now + 3.5)
    a.send_errno = 0
    net.run(net.now + 5)
    assert transitions(a)[before:] == [("MASTER", "master_down")]


def test_an_unroutable_send_is_a_fault_at_once_and_the_master_leaves_when_its_backup_takes_over(
        ) -> None:
    net, a, b = pair()
    net.run(10)
    b.connected = False  # neither hears the other: a leaves by its grace alone
    a.send_errno, a.route_error = errno.ENETUNREACH, "sends fail: refused"
    net.run(11.1)
    assert a.of(out.AdvertisableChanged)[-1] == out.AdvertisableChanged(
        False, "sends fail: refused", grace=10 + 3 - 11)  # its last advert left at 10
    assert a.state is State.MASTER and a.session.notify_state() == "MASTER"
    net.run(12.999)
    assert a.state is State.MASTER
    net.run(13)
    assert a.state is State.BACKUP and a.times(Transition)[-1] == 13.0
    assert transitions(a)[-1] == ("BACKUP", "cannot_advertise")
    assert a.of(out.Notify)[-1].state == "FAULT"


def test_the_source_address_flapping_on_a_master_keeps_one_holder_and_no_transitions() -> None:
    net, a, b = pair()
    net.run(10.05)
    for _ in range(67):  # deleted and re-added every 300 ms for 20 s
        net.do(a, a.session.set_source(net.now, present=not a.session.link.source_present))
        net.run(net.now + 0.3)
        assert net.masters(a, b) == ["a"]
    assert transitions(a) == [("BACKUP", "startup"), ("MASTER", "master_down")]
    assert transitions(b) == [("BACKUP", "startup")]
    assert [n.state for n in a.of(out.Notify)] == ["BACKUP", "MASTER"]  # no notify either


def test_unicast_backup_without_a_route_never_takes_over() -> None:
    a = node("a", "10.0.0.1", peers=("10.0.0.2",))
    b = node("b", "10.0.0.2", advskew=100, peers=("10.0.0.1",))
    net = Net(a, b)
    net.start()
    net.run(10)
    assert net.masters(a, b) == ["a"]
    b.route_error = "sends fail: no route (to 10.0.0.1)"
    net.run(12)
    a.connected = False
    net.run(30)
    assert b.state is State.BACKUP and "no route" in str(b.session.cannot_advertise_reason())
    checks = b.times(out.CheckSending)
    assert len(checks) >= 25 and all(abs((y - x) - 1.0) < 1e-6 for x, y in itertools.pairwise(checks))


def test_the_source_address_missing_is_a_fault_with_its_reason() -> None:
    net, a, _b = pair()
    net.run(10)
    net.do(a, a.session.set_source(net.now, present=False))
    assert a.session.cannot_advertise_reason() == "source address 10.0.0.1 is not on eth0"
    net.run(13.0)  # its grace: until a master-down interval after its last advert (at 10)
    assert a.state is State.BACKUP and transitions(a)[-1] == ("BACKUP", "cannot_advertise")
    net.do(a, a.session.set_source(net.now, present=True))
    assert a.session.cannot_advertise_reason() is None and a.session.machine.can_advertise


def test_the_interface_gone_is_a_fault_and_its_return_waits_for_the_source_address() -> None:
    net, a, _b = pair()
    net.run(10)
    net.do(a, a.session.set_link(net.now, present=False, running=False, reattached=False))
    assert a.state is State.BACKUP and a.of(out.Notify)[-1].state == "FAULT"
    net.do(a, a.session.set_link(net.now, present=True, running=True, reattached=True))
    assert not a.session.machine.can_advertise  # a new interface has no address yet
    net.do(a, a.session.set_source(net.now, present=True))
    assert a.session.machine.can_advertise


# ---- the one timer ----
def test_a_lone_multicast_master_wakes_only_for_its_adverts() -> None:
    a = node("a", "10.0.0.1")
    net = Net(a)
    net.start()
    net.run(5)
    wakes = []
    for _ in range(20):
        t = a.session.next_deadline()
        assert t is not None
        wakes.append(t)
        net.now = t
        net.do(a, a.session.timer(t))
    gaps = {round(y - x, 6) for x, y in itertools.pairwise(wakes)}
    assert gaps == {1.0}  # advbase 1: no sweep, probe, refresh or send-check wake-ups


def test_garp_refresh_only_while_master() -> None:
    a, b = node("a", "10.0.0.1", garp_refresh=5.0), node("b", "10.0.0.2", advskew=100,
                                                             garp_refresh=5.0)
    net = Net(a, b)
    net.start()
    net.run(31)
    assert b.state is State.BACKUP and not [t for t in b.times(SendGarp)]
    refreshes = [t for t in a.times(SendGarp) if t > 10]
    assert len(refreshes) >= 4 and all(abs((y - x) - 5.0) < 1e-6
                                       for x, y in itertools.pairwise(refreshes))


# ---- health, maintenance, operator ----
def test_maintenance_hands_over_and_reports_its_source() -> None:
    net, a, b = pair()
    net.run(10)
    net.do(a, a.session.set_maintenance(net.now, "operator", 1.8e9))
    assert a.of(out.MaintenanceChanged) == [out.MaintenanceChanged("operator", 1.8e9, False)]
    net.run(15)
    assert net.masters(a, b) == ["b"]
    assert a.session.set_maintenance(net.now, "operator", 1.9e9) == []  # already on: no change
    net.do(a, a.session.set_maintenance(net.now, "operator", None))
    assert a.session.maintenance_since() is None


def test_maintenance_before_start_is_reported_as_starting_in_it() -> None:
    a = node("a", "10.0.0.1")
    outputs = a.session.set_maintenance(0.0, "file", 1.7e9)
    assert outputs == [out.MaintenanceChanged("file", 1.7e9, True)]


def test_an_unhealthy_check_demotes_and_dropping_it_restores() -> None:
    net, a, b = pair()
    net.run(10)
    net.do(a, a.session.set_check(net.now, "service", False, "refused"))
    assert a.of(out.HealthChanged)[-1] == out.HealthChanged(False, "refused", report=True)
    net.run(15)
    assert net.masters(a, b) == ["b"] and a.of(out.Notify)[-1].state == "FAULT"
    net.do(a, a.session.drop_check(net.now, "service"))
    assert a.session.machine.healthy and a.of(out.HealthChanged)[-1].report is False


def test_stop_sends_a_bow_out_and_the_backup_takes_over_at_once() -> None:
    net, a, b = pair()
    net.run(10)
    net.do(a, a.session.stop(net.now))
    assert a.of(SendAdvert)[-1].handover
    net.run(net.now + 0.1)
    assert b.state is State.MASTER and transitions(b)[-1] == ("MASTER", "handover")
    assert b.of(out.Accepted)[-1].handover


def test_step_down_is_reported_only_by_a_master() -> None:
    net, a, b = pair()
    net.run(10)
    assert [type(o) for o in b.session.step_down(net.now)] == []
    outputs = a.session.step_down(net.now)
    assert isinstance(outputs[0], out.SteppingDown)


def test_a_takeover_says_when_the_old_master_was_last_heard() -> None:
    """What carp_failover_duration_seconds measures from: the old master's last advert."""
    net, a, b = pair()
    net.run(10)
    last = max(t for t, o in b.outputs if isinstance(o, out.Accepted))
    a.connected = False
    net.run(20)
    took = b.of(out.TookOver)
    assert len(took) == 1 and took[0].reason == "master_down" and took[0].heard_at == last
    at = next(t for t, o in b.outputs if isinstance(o, Transition) and o.new is State.MASTER)
    assert 3.0 < at - last < 3.5  # the master-down interval: 3 s + advskew 100/256
    assert not a.of(out.TookOver)  # a's own first takeover heard no master before it


def test_a_handover_is_measured_from_the_bow_out() -> None:
    net, a, b = pair()
    net.run(10)
    net.do(a, a.session.stop(net.now))
    net.run(net.now + 0.5)
    took = b.of(out.TookOver)
    assert [t.reason for t in took] == ["handover"] and took[0].heard_at == 10.0


def test_the_first_takeover_of_a_cluster_moves_nothing_and_is_planned() -> None:
    """Nobody held the VIP: a node alone (or the cluster starting) takes over by timeout,
    and that is not what CarpFlappingMaster counts; a master that falls silent later is."""
    net, a, b = pair()
    net.run(10)
    first = next(o for o in a.of(Transition) if o.new is State.MASTER)
    assert first.reason.value == "master_down" and first.planned is True
    a.connected = False
    net.run(20)
    takeover = next(o for o in b.of(Transition) if o.new is State.MASTER)
    assert takeover.reason.value == "master_down" and takeover.planned is False
    net.do(b, b.session.set_maintenance(net.now, "operator", 1.8e9))
    left = [o for o in b.of(Transition) if o.old is State.MASTER]
    assert [(o.reason.value, o.planned) for o in left] == [("maintenance", True)]


def test_a_master_preempted_then_abandoned_at_once_counts_the_takeover_as_unplanned() -> None:
    """The preempting advert is heard while still MASTER; if the preferred node dies before
    its next one, the takeover that follows is still an unplanned move."""
    a, b = node("a", "10.0.0.1", advskew=100), node("b", "10.0.0.2", preempt=True)
    net = Net(a, b)
    net.start(a)
    net.run(10)
    net.start(b)
    while b.state is not State.MASTER:  # b preempts on a's next advert and advertises once
        net.run(net.now + 0.01)
    assert a.state is State.BACKUP  # a heard that one advert as MASTER, and stepped down
    b.connected = False  # dead before its second
    net.run(net.now + 10)
    takeover = [o for o in a.of(Transition) if o.new is State.MASTER][-1]
    assert takeover.reason.value == "master_down" and takeover.planned is False
