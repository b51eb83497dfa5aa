"""A restart without a move, as the pure core sees it (Session.start with a Resume): a MASTER
the previous process left goes on advertising at its rhythm without touching the VIP, and is an
ordinary master from then on; anything else starts as always. Real packets through the codec
(tests/unit/session_sim.py), a clock we move."""

from __future__ import annotations

import itertools
import logging
from ipaddress import IPv4Address, ip_interface
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.config.runconfig import Vhid
from sidecar.config.values import auth
from sidecar.core import outputs as out
from sidecar.core.machine import (
    AddVip,
    DropVip,
    Reason,
    Resume,
    Resumed,
    SendAdvert,
    SendGarp,
    State,
    Transition,
)
from sidecar.core.session import PROBE_AFTER_TAKEOVER
from sidecar.runtime.reporter import Reporter
from sidecar.serve.metrics import InstanceMetrics, Metrics
from tests.unit.session_sim import Net, Node, node, transitions

MOVES = (AddVip, DropVip, SendGarp, Transition, out.Notify)  # what a resume must not do


def master_and_backup(**kw: Any) -> tuple[Net, Node, Node]:
    """a MASTER (advskew 0), b its BACKUP (advskew 100), settled."""
    a, b = node("a", "10.0.0.1", **kw), node("b", "10.0.0.2", advskew=100, **kw)
    net = Net(a, b)
    net.start()
    net.run(10)
    assert net.masters(a, b) == ["a"]
    return net, a, b


def restart(net: Net, n: Node, resume: Resume | None, at: float | None = None,
            **kw: Any) -> list[Any]:
    """The agent of ``n`` replaced by a new process at ``at``: a fresh session (as the new
    process builds it: strict's mark kept first), started with ``resume``. Its outputs."""
    old = n.session
    if at is not None:
        net.now = at
    n.session = node(n.name, str(n.ip), wall=n.wall[0], **kw).session
    assert n.session is not old
    first = len(n.outputs)
    if n.session.config.params.strict:
        net.do(n, [out.ReserveCounters(n.session.counters.keep(n.mark))])
    net.do(n, n.session.start(net.now, present=True, running=True, resume=resume))
    return [o for _, o in n.outputs[first:]]


def since(n: Node, t: float) -> list[Any]:
    return [o for at, o in n.outputs if at >= t]


def lone(**kw: Any) -> Node:
    return node("a", "10.0.0.1", **kw)


# ---- the resumed master ----
def test_a_resumed_master_advertises_at_the_given_time_and_never_touches_the_vip() -> None:
    a = lone()
    todo = a.session.start(100.0, present=True, running=True,
                           resume=Resume(master=True, next_advert=100.4, master_since=1.7e9))
    assert todo == [Resumed(State.MASTER, 1.7e9)]  # no AddVip, GARP, transition, notify
    assert a.state is State.MASTER and a.session.notify_state() == "MASTER"
    assert a.session.next_deadline() == pytest.approx(100.4)
    net = Net(a)
    net.now = 100.0
    net.run(105.0)
    assert a.times(SendAdvert) == pytest.approx([100.4, 101.4, 102.4, 103.4, 104.4])
    assert not [o for _, o in a.outputs if isinstance(o, MOVES)]


def test_a_resume_due_now_or_unknown_advertises_at_once_and_never_waits_past_its_interval() -> None:
    for next_advert in (None, 99.0, 100.0):
        todo = lone().session.start(100.0, True, True, Resume(True, next_advert))
        assert [type(o) for o in todo] == [Resumed, SendAdvert]
    late = lone()
    late.session.start(100.0, True, True, Resume(True, next_advert=150.0))
    assert late.session.next_deadline() == pytest.approx(101.0)  # its own advert interval


def test_a_better_peers_advert_makes_a_resumed_master_leave_as_usual() -> None:
    net, a, b = master_and_backup()
    # b is the one that restarts here: it was MASTER (say, a was away); now a advertises
    todo = restart(net, b, Resume(True, net.now + 0.2), advskew=100)
    assert [type(o) for o in todo] == [Resumed]
    net.run(net.now + 3)
    assert b.state is State.BACKUP
    assert transitions(b)[-1] == ("BACKUP", "preferred_master")
    left = since(b, net.now - 3)
    assert any(isinstance(o, DropVip) for o in left)
    assert [(n.state, n.reason) for n in b.of(out.Notify)][-1] == ("BACKUP", "preferred_master")
    assert net.masters(a, b) == ["a"]


def test_a_resumed_master_is_a_master_for_the_stale_holder_probe_and_claims() -> None:
    a = lone(probe_interval=5.0)
    a.session.start(0.0, True, True, Resume(True, 0.5))
    net = Net(a)
    net.run(PROBE_AFTER_TAKEOVER + 0.01)
    assert a.times(out.SendProbe) == pytest.approx([PROBE_AFTER_TAKEOVER])
    net.do(a, a.session.arp(net.now, bytes.fromhex("020000000099"), probe_reply=True))
    assert a.of(out.StaleHolder) and a.of(SendGarp)  # answered like any master's


@pytest.mark.parametrize("why", ["link down", "cannot advertise", "not master", "no interface"])
def test_a_resume_that_cannot_go_on_is_a_normal_start(why: str) -> None:
    a = lone()
    present, running, resume = True, True, Resume(master=True, next_advert=0.5)
    if why == "link down":
        running = False
    elif why == "cannot advertise":
        a.session.set_source(0.0, False)  # its source address is not on the interface
    elif why == "not master":
        resume = Resume(master=False, next_advert=None)
    else:
        present, running = False, False
    todo = a.session.start(0.0, present, running, resume)
    assert not any(isinstance(o, Resumed) for o in todo)
    assert todo[0] == Transition(State.INIT, State.BACKUP, Reason.STARTUP, planned=True)
    assert DropVip() in todo and a.state is State.BACKUP


def test_ignoreifstate_resumes_with_the_carrier_down() -> None:
    a = lone(ignoreifstate=True)
    assert Resumed(State.MASTER) in a.session.start(0.0, True, False, Resume(True, 0.5))


@pytest.mark.parametrize("demote", ["maintenance", "unhealthy"])
def test_a_master_demoted_during_the_restart_bows_out_at_once(demote: str) -> None:
    a = lone()
    if demote == "maintenance":
        a.session.set_maintenance(0.0, "operator", 1.7e9)
    else:
        a.session.set_check(0.0, "web", False, "connection refused")
    todo = a.session.start(0.0, True, True, Resume(True, 0.5))
    kinds = [type(o) for o in todo]
    assert kinds[:4] == [Resumed, SendAdvert, DropVip, Transition]
    bow_out = todo[1]
    assert isinstance(bow_out, SendAdvert) and bow_out.handover
    assert todo[3].reason is Reason(demote) and a.state is State.BACKUP
    # the notify script was told MASTER by the old process: it hears the change now
    state = "BACKUP" if demote == "maintenance" else "FAULT"  # unhealthy: cannot serve
    assert [(n.state, n.reason) for n in todo if isinstance(n, out.Notify)] == [(state, demote)]


# ---- counters ----
def test_counters_go_on_above_the_last_one_the_previous_process_sent() -> None:
    a = lone()
    todo = a.session.start(0.0, True, True, Resume(True, None, counter=123_456))
    assert [o.counter for o in todo if isinstance(o, SendAdvert)] == [123_457]


def test_strict_counters_go_on_above_the_last_one_sent_even_with_the_clock_behind() -> None:
    net, a, b = master_and_backup(strict=True)
    last = a.of(SendAdvert)[-1].counter
    a.wall[0] -= 3600  # the new process's clock is an hour behind, and it has no mark
    a.mark = None
    restart(net, a, Resume(True, net.now + 0.5, counter=last), at=net.now + 0.1,
            strict=True)
    net.run(net.now + 5)
    sent = [o.counter for o in since(a, net.now - 5) if isinstance(o, SendAdvert)]
    assert sent and sent[0] > last and sent == sorted(sent)
    assert not b.of(out.Dropped)  # not one replay: b accepts every advert
    assert transitions(b) == [("BACKUP", "startup")]


# ---- two nodes ----
@pytest.mark.parametrize("away", [0.3, 2.0])
def test_the_backup_never_leaves_backup_while_the_master_restarts(away: float) -> None:
    """The master's process is replaced ``away`` s after its last advert (the new one resumes
    with the advert that was due): the backup hears no gap worth a takeover."""
    net, a, b = master_and_backup()
    net.run(a.session.machine.next_deadline() or 0.0)  # up to its next advert, just sent
    last_sent, counter = a.times(SendAdvert)[-1], a.of(SendAdvert)[-1].counter
    assert last_sent == net.now
    heard_before = len(b.of(out.Accepted))
    at = last_sent + away
    todo = restart(net, a, Resume(True, last_sent + 1.0, counter=counter), at=at)
    assert [type(o) for o in todo] == ([Resumed] if away < 1.0 else [Resumed, SendAdvert])
    net.run(net.now + 30)
    assert transitions(b) == [("BACKUP", "startup")]  # never left BACKUP
    assert b.state is State.BACKUP and a.state is State.MASTER
    assert not [o for o in since(a, at) if isinstance(o, MOVES)]
    heard = b.times(out.Accepted)[heard_before - 1:]
    gaps = [y - x for x, y in itertools.pairwise(heard)]
    assert max(gaps) == pytest.approx(max(1.0, away))  # one interval, or what the restart took
    assert len(heard) - 1 >= 30


# ---- the reporter ----
def reporter() -> tuple[Reporter, CollectorRegistry]:
    vips = (ip_interface("10.0.0.100/24"),)
    s = Vhid(vhid=1, vips=vips, auth=auth(b"pw", vips), interface="eth0")  # type: ignore[arg-type]
    r = CollectorRegistry()
    m = InstanceMetrics(Metrics(r, "0", process_metrics=False), 1, "eth0", ["10.0.0.100"])
    return Reporter(s, IPv4Address("10.0.0.1"), m, several=False), r


def test_the_reporter_sets_the_state_counts_no_transition_and_says_resumed(
        caplog: pytest.LogCaptureFixture) -> None:
    rep, r = reporter()
    a = lone()
    with caplog.at_level(logging.INFO, logger="carp-sidecar"):
        rep.event(Resumed(State.MASTER, 1.7e9), a.session, 0.0)
    labels = {"group": "vhid1", "vhid": "1", "interface": "eth0"}
    assert r.get_sample_value("carp_state_code", labels) == 2
    assert r.get_sample_value("carp_is_master", labels) == 1
    assert sum(s.value for f in r.collect() if f.name == "carp_transitions"
               for s in f.samples if s.name == "carp_transitions_total") == 0
    assert r.get_sample_value("carp_last_transition_timestamp_seconds", labels) == 0
    assert "Resumed as MASTER on eth0 id 1 (VIP kept)" in caplog.messages
    assert rep.master_since == 1.7e9
    assert rep.last_transition is not None and rep.last_transition["reason"] == "resumed"


# ---- seen: the restart series, /status's agent block, `carp-sidecar status` ----
def test_restart_series_exist_at_zero_carry_the_old_counts_and_count_on() -> None:
    import time

    from sidecar.serve.metrics import RESTART_KINDS, RESTART_RESULTS, RestartMetrics

    r = CollectorRegistry()
    before = time.time()
    rm = RestartMetrics(r, {"in_place/resumed": 3, "on_stop/afresh": 1, "bogus/x": 9})
    value = r.get_sample_value
    for kind in RESTART_KINDS:
        for result in RESTART_RESULTS:
            expected = {("in_place", "resumed"): 3, ("on_stop", "afresh"): 1}.get((kind, result), 0)
            assert value("carp_restarts_total", {"kind": kind, "result": result}) == expected
    rm.count("in_place", "resumed")
    rm.count("in_place", "refused")
    assert value("carp_restarts_total", {"kind": "in_place", "result": "resumed"}) == 4
    assert rm.counts()["in_place/refused"] == 1 and len(rm.counts()) == 8
    assert rm.total == 5  # resumed and afresh: the refused one restarted nothing
    with pytest.raises(ValueError):
        rm.count("in_place", "maybe")
    started = value("carp_agent_start_time_seconds")
    assert started is not None and before <= started <= time.time()


def test_status_agent_block_has_the_documented_keys() -> None:
    import os

    from sidecar.runtime.status import agent_status

    block = agent_status("1.4.0", 1.8e9, 3, restart_on_stop_until=1.8e9 + 300,
                         last_restart={"kind": "in_place", "from_version": "1.3.0",
                                       "seconds": 0.42})
    assert block == {"version": "1.4.0", "started": 1.8e9, "pid": os.getpid(), "restarts": 3,
                     "restart_on_stop_until": 1.8e9 + 300,
                     "last_restart": {"kind": "in_place", "from_version": "1.3.0",
                                      "seconds": 0.42}}


def test_carp_sidecar_status_shows_the_agent_line_and_tolerates_older_agents() -> None:
    from sidecar.tools.statusview import render

    inst = {"vhid": 1, "interface": "eth0", "state": "MASTER", "vips": ["10.0.0.100/24"]}
    started = 1_796_440_202.0  # 2026-12-05 03:10:02 UTC
    agent = {"version": "1.4.0", "started": started, "pid": 1, "restarts": 3,
             "restart_on_stop_until": started + 298, "last_restart": None}
    lines = render({**inst, "agent": agent}, now=started + 60).splitlines()
    assert lines[-1] == ("agent: version 1.4.0, up since 2026-12-05 03:10:02 UTC (pid 1), "
                         "3 restarts; keeps the VIP on the next stop until 03:15:00")
    assert lines[0].startswith("vhid 1 on eth0: MASTER")  # first, as `| head -1` expects
    later = render({**inst, "agent": {**agent, "restarts": 1, "last_restart": {
        "kind": "in_place", "from_version": "1.3.0", "seconds": 0.42}}}, now=started + 400)
    assert later.splitlines()[-1].endswith(  # the intent expired: not shown
        "1 restart (last in place from 1.3.0 in 0.42 s)")
    assert render(inst, now=started).splitlines()[0].startswith("vhid 1 on eth0")  # no block
    assert render({**inst, "agent": {}}, now=started).splitlines()[-1] == "agent: version ?"
