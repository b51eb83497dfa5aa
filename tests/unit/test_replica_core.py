"""The replicated paths' pure rules (sidecar.core.replica): freshness, epochs, conflicts and
the master's confirmations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core import replica
from sidecar.core.replica import (
    LIVENESS,
    Confirmations,
    Freshness,
    accepts,
    fresh,
    is_conflict,
    next_epoch,
)


def caught_up_at(t: float, gen: int = 1) -> Freshness:
    """A replica connected at ``t``, told ``gen``, pulled at once: matching from ``t``."""
    f = Freshness()
    f.connected(t, master_epoch=3)
    f.master_gen(t, gen)
    assert f.run_started(t) == gen
    f.run_succeeded(t, gen)
    return f


# ---- Freshness ----
def test_lag_is_none_before_the_first_catch_up() -> None:
    f = Freshness()
    assert f.lag(0.0) is None and not f.caught_up and not f.needs_run
    f.connected(1.0, master_epoch=2)
    assert f.master_epoch == 2 and f.lag(1.0) is None and not f.needs_run
    f.master_gen(1.0, 7)
    assert f.needs_run and f.lag(1.5) is None
    assert f.run_started(1.5) == 7 and f.running
    f.run_failed(2.0)
    assert not f.running and f.lag(2.0) is None and not f.caught_up and f.needs_run


def test_lag_is_zero_while_matching_and_alive() -> None:
    f = caught_up_at(10.0)
    assert f.caught_up and f.matching and not f.needs_run
    assert f.lag(10.0) == 0.0 and f.lag(10.0 + LIVENESS) == 0.0
    for t in (11.0, 12.0, 13.0, 14.0):
        f.heartbeat(t)
        assert f.lag(t + 0.5) == 0.0


def test_a_silent_channel_lags_from_its_last_line() -> None:
    f = caught_up_at(10.0)
    f.heartbeat(11.0)
    assert f.lag(11.0 + LIVENESS) == 0.0
    assert f.lag(20.0) == pytest.approx(9.0)  # known matching until its last PING at 11


def test_a_disconnect_lags_from_the_last_line() -> None:
    f = caught_up_at(10.0)
    f.heartbeat(12.0)
    f.disconnected(12.5)
    assert not f.matching and not f.needs_run
    assert f.lag(13.0) == pytest.approx(1.0)
    assert f.lag(30.0) == pytest.approx(18.0)


def test_a_new_generation_starts_the_lag_at_its_announcement() -> None:
    f = caught_up_at(10.0, gen=1)
    f.master_gen(15.0, 2)
    assert f.needs_run and not f.matching
    assert f.lag(15.5) == pytest.approx(0.5)
    assert f.run_started(15.5) == 2
    f.heartbeat(16.0)  # alive, but not matching: no progress
    assert f.lag(16.2) == pytest.approx(1.2)
    f.run_succeeded(16.2, 2)
    assert f.lag(16.2) == 0.0 and not f.needs_run


def test_a_run_overtaken_by_a_later_generation_matched_until_that_one() -> None:
    f = caught_up_at(10.0, gen=1)
    f.master_gen(20.0, 2)
    assert f.run_started(20.0) == 2
    f.master_gen(20.4, 3)  # the master moved on during the run
    f.master_gen(20.6, 4)
    f.run_succeeded(21.0, 2)
    assert f.synced_generation == 2 and f.needs_run
    assert f.lag(21.0) == pytest.approx(0.6)  # matched gen 2 until 3 was announced at 20.4
    assert f.run_started(21.0) == 4
    f.run_succeeded(21.3, 4)
    assert f.lag(21.3) == 0.0


def test_an_older_or_repeated_generation_changes_nothing() -> None:
    f = caught_up_at(10.0, gen=5)
    f.master_gen(11.0, 5)
    f.master_gen(12.0, 3)
    assert f.master_generation == 5 and f.matching and f.lag(12.0) == 0.0


def test_a_reconnection_needs_a_pull_before_matching_again() -> None:
    f = caught_up_at(10.0, gen=5)
    f.heartbeat(11.0)
    f.disconnected(11.5)
    f.connected(14.0, master_epoch=4)  # perhaps another master: its numbers are its own
    assert f.master_epoch == 4 and f.caught_up and not f.matching
    f.master_gen(14.0, 2)
    assert f.needs_run and f.lag(14.5) == pytest.approx(3.5)
    f.run_succeeded(14.8, 2)  # not started on this connection: ignored
    assert f.lag(14.8) == pytest.approx(3.8)
    assert f.run_started(15.0) == 2
    f.run_succeeded(15.5, 2)
    assert f.lag(15.5) == 0.0


def test_a_run_from_the_previous_connection_does_not_count() -> None:
    f = caught_up_at(10.0, gen=1)
    f.master_gen(12.0, 2)
    f.run_started(12.0)
    f.disconnected(12.5)
    f.connected(13.0, master_epoch=3)
    f.master_gen(13.0, 9)
    f.run_succeeded(13.5, 2)  # the old run finished after the reconnection
    assert not f.running and f.synced_generation is None and f.needs_run
    assert f.lag(13.5) == pytest.approx(1.5)


def test_a_success_after_the_channel_died_counts_up_to_the_last_line() -> None:
    f = caught_up_at(10.0, gen=1)
    f.master_gen(11.0, 2)
    f.run_started(11.0)
    f.run_succeeded(11.0 + LIVENESS + 5, 2)  # no line since 11: matching only known until then
    assert f.lag(11.0 + LIVENESS + 5) == pytest.approx(LIVENESS + 5)


def test_run_started_needs_a_generation() -> None:
    with pytest.raises(ValueError):
        Freshness().run_started(0.0)


def test_the_first_catch_up_of_an_empty_path() -> None:
    f = caught_up_at(0.0, gen=0)
    assert f.caught_up and f.lag(1.0) == 0.0


events = st.lists(st.tuples(
    st.sampled_from(["connect", "disconnect", "gen", "ping", "start", "ok", "fail", "wait"]),
    st.floats(0.01, 5.0), st.integers(0, 6)), max_size=40)  # one event at a time


@settings(max_examples=300, deadline=None)
@given(events)
def test_freshness_invariants(steps: list[tuple[str, float, int]]) -> None:
    """Whatever happens: lag is None exactly until a run of the current connection succeeded,
    never negative, 0 only while matching (or at the moment it stopped), and never shrinks without news."""
    f, now, succeeded = Freshness(), 0.0, False
    for kind, dt, n in steps:
        before = f.lag(now)
        now += dt
        after = f.lag(now)
        if before is not None and after is not None and before > 0:
            assert after >= before  # time alone never makes a replica fresher
        if kind == "connect":
            f.connected(now, n)
        elif kind == "disconnect":
            f.disconnected(now)
        elif kind == "gen":
            f.master_gen(now, n)
        elif kind == "ping":
            f.heartbeat(now)
        elif kind == "start" and f.needs_run and not f.running:
            started = f.run_started(now)
            assert started == f.master_generation
        elif kind == "ok" and f.running:
            run_gen = f._run_gen
            f.run_succeeded(now, run_gen if run_gen is not None else 0)
            succeeded = succeeded or run_gen is not None
        elif kind == "fail":
            f.run_failed(now)
        lag = f.lag(now)
        assert (lag is None) == (not succeeded) == (not f.caught_up)
        assert lag is None or lag >= 0.0
        if lag == 0.0 and not f.matching:
            assert f._matched_at == now  # it stopped matching just now
        if f.needs_run:
            assert not f.matching


# ---- group rules ----
def test_fresh_needs_every_path_caught_up_and_within_the_lag() -> None:
    assert fresh([], 5.0)
    assert fresh([0.0, 5.0], 5.0)
    assert not fresh([0.0, 5.01], 5.0)
    assert not fresh([0.0, None], 5.0)


@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_epoch_rules(own: int, other: int) -> None:
    assert accepts(other, own) == (other >= own)
    new = next_epoch(own, other)
    assert new > own and new > other and new == max(own, other) + 1
    assert accepts(new, own) and accepts(new, other)  # a takeover's data is taken everywhere


def test_a_conflict_is_anything_not_exactly_agreed() -> None:
    assert not is_conflict((10, 1_000), (10, 1_000))
    assert is_conflict((10, 1_000), None)  # never agreed: written here only
    assert is_conflict((10, 1_001), (10, 1_000))  # rewritten with the same size
    assert is_conflict((11, 1_000), (10, 1_000))


# ---- Confirmations ----
def test_nothing_is_agreed_without_backups() -> None:
    c = Confirmations(gen=0, at=100.0)
    c.changed(1, ["a"], at=101.0)
    assert c.agreed() == ([], None) and c.first_full() is None and c.pending == {"a"}


def test_a_file_is_agreed_once_every_backup_confirmed_its_generation() -> None:
    c = Confirmations(gen=0, at=100.0)
    c.connected("b1")
    c.connected("b2")
    c.changed(1, ["a", "b"], at=101.0)
    c.changed(2, ["b", "c"], at=102.0)
    c.confirm("b1", 2)
    assert c.agreed() == ([], None)  # b2 has not confirmed anything
    c.confirm("b2", 1)
    assert c.agreed() == (["a"], 101.0)  # b's last change is generation 2
    assert c.agreed() == ([], 101.0)  # each once
    c.confirm("b2", 2)
    assert c.agreed() == (["b", "c"], 102.0)
    assert c.pending == frozenset()


def test_confirmations_only_grow() -> None:
    c = Confirmations()
    c.connected(1)
    c.changed(1, ["a"], at=1.0)
    c.confirm(1, 1)
    c.confirm(1, 0)  # a late line for an older run
    assert c.agreed_generation() == 1 and c.agreed() == (["a"], 1.0)


def test_a_disconnected_backup_holds_nothing_back_and_a_new_one_does() -> None:
    c = Confirmations()
    c.connected("b1")
    c.connected("b2")
    c.changed(1, ["a"], at=1.0)
    c.confirm("b1", 1)
    c.forget("b2")
    assert c.clients == {"b1"} and c.agreed() == (["a"], 1.0)
    c.connected("b3")
    c.changed(2, ["x"], at=2.0)
    c.confirm("b1", 2)
    assert c.agreed() == ([], None)
    c.confirm("b3", 2)
    assert c.agreed() == (["x"], 2.0)


def test_the_cutoff_is_the_agreed_generation_s_time() -> None:
    c = Confirmations(gen=4, at=50.0)
    c.connected("b")
    c.changed(5, ["a"], at=51.0)
    c.changed(6, ["a"], at=52.0)  # a changed again: pending at 6
    c.confirm("b", 5)
    assert c.agreed() == ([], 51.0)
    c.confirm("b", 9)  # above anything assigned: the latest time
    assert c.agreed() == (["a"], 52.0)


def test_first_full_once_when_all_confirmed() -> None:
    c = Confirmations(gen=3, at=10.0)
    c.connected("b1")
    c.connected("b2")
    c.confirm("b1", 3)
    assert c.first_full() is None
    c.confirm("b2", 3)
    assert c.first_full() == 10.0
    assert c.first_full() is None
    c.forget("b2")
    c.connected("b2")
    c.confirm("b2", 3)
    assert c.first_full() is None  # once per mastership


def test_first_full_waits_for_the_first_backup() -> None:
    c = Confirmations(gen=0, at=10.0)
    assert c.first_full() is None
    c.connected("b")
    c.changed(1, ["a"], at=11.0)
    c.confirm("b", 1)
    assert c.first_full() == 11.0 and c.pending == {"a"}


ops = st.lists(st.one_of(
    st.tuples(st.just("change"), st.sets(st.sampled_from("abcdef"), max_size=3)),
    st.tuples(st.just("connect"), st.integers(0, 2)),
    st.tuples(st.just("confirm"), st.integers(0, 2)),
    st.tuples(st.just("forget"), st.integers(0, 2)),
    st.tuples(st.just("agreed"), st.none())), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_confirmations_agree_only_what_every_backup_holds(steps: list[tuple[str, object]]) -> None:
    """A model: each file's last change, each connected backup's confirmed generation.
    agreed() never returns a file some connected backup may lack, and returns each one it
    can (at the latest on the next call)."""
    c = Confirmations(gen=0, at=0.0)
    gen, last_change, held = 0, {}, {}  # held: client -> confirmed generation or None
    joined: dict[object, int] = {}  # the generation a backup heard first, when it connected
    for kind, arg in steps:
        if kind == "change":
            gen += 1
            c.changed(gen, sorted(arg), at=float(gen))  # type: ignore[arg-type]
            last_change.update({rel: gen for rel in arg})  # type: ignore[union-attr]
        elif kind == "connect":
            c.connected(arg)  # type: ignore[arg-type]
            if arg not in held:
                held[arg], joined[arg] = None, gen
        elif kind == "confirm" and arg in held:
            g = max(gen - (arg == 1), joined[arg])  # backup 1 runs a generation behind
            c.confirm(arg, g)  # type: ignore[arg-type]
            held[arg] = max(held[arg] or 0, g)
        elif kind == "forget":
            c.forget(arg)  # type: ignore[arg-type]
            held.pop(arg, None)
            joined.pop(arg, None)
        elif kind == "agreed":
            rels, cutoff = c.agreed()
            complete = held and all(g is not None for g in held.values())
            floor = min(g for g in held.values() if g is not None) if complete else None
            for rel in rels:
                assert floor is not None and last_change.pop(rel) <= floor
            if floor is not None:
                assert cutoff == float(floor)  # every generation had its time
                assert all(g > floor for g in last_change.values())
            else:
                assert rels == [] and cutoff is None
        assert c.pending == set(last_change)


def test_the_pending_files_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A master whose backup is away forgets the changed files past the bound, and walks the
    tree again once all have confirmed."""
    monkeypatch.setattr(replica, "MAX_PENDING", 3)
    c = Confirmations()
    c.connected("b")
    c.confirm("b", 0)
    assert c.first_full() == 0.0
    c.forget("b")
    c.changed(1, ["a", "b", "c"], at=1.0)
    assert c.pending == {"a", "b", "c"}
    c.changed(2, ["d"], at=2.0)
    assert c.pending == frozenset()
    c.connected("b")
    c.changed(3, ["e"], at=3.0)
    c.confirm("b", 3)
    assert c.agreed() == (["e"], 3.0) and c.first_full() == 3.0 and c.first_full() is None


def test_the_generation_times_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "MAX_TIMES", 3)
    c = Confirmations()
    for g in range(1, 4):  # no backup: only the latest time is kept
        c.changed(g, [f"f{g}"], at=float(g))
    assert c._times == {3: 3.0}
    c.connected("b")
    for g in range(4, 9):
        c.changed(g, [f"f{g}"], at=float(g))
    assert list(c._times) == [6, 7, 8]
    c.confirm("b", 4)  # a stuck backup's old generation: its time is gone, nothing agreed
    assert c.agreed() == ([], None)
    c.confirm("b", 7)
    assert c.agreed() == ([f"f{g}" for g in range(1, 8)], 7.0)


def test_the_lag_at_contact_is_what_the_replica_missed_when_the_master_went_silent() -> None:
    from sidecar.core.replica import Freshness

    f = Freshness()
    assert f.lag_at_contact() is None  # never caught up
    f.connected(0.0, 1)
    f.master_gen(0.0, 1)
    f.run_succeeded(0.5, f.run_started(0.1))
    f.heartbeat(1.0)
    assert f.lag_at_contact() == 0.0 and f.lag(1.0) == 0.0
    assert f.lag(10.0) == 9.0 and f.lag_at_contact() == 0.0  # silence is not lag
    f.master_gen(11.0, 2)  # the master moved on; no pull before it fell silent
    f.heartbeat(12.5)
    assert f.lag_at_contact() == 1.5
