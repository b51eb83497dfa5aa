"""Signals (README "Signals"): none that can be caught ends the agent without its down path;
USR1 and USR2 mean what they mean to ucarp; HUP reloads (as `ucarp`: exits, see test_reload)."""

from __future__ import annotations

import signal
import time

import pytest

from sidecar.lab import Lab

from .conftest import dump_on_failure, vip_holders, wait_for
from .test_faults import log_of

FAST = {"CARP_ADVBASE": "0", "CARP_ADVSKEW": "40"}  # a lone node is MASTER within a second
STOPPING = ["SIGTERM", "SIGINT", "SIGQUIT", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO",
            "SIGPWR", "SIGXCPU", "SIGSTKFLT", "SIGRTMIN", "SIGRTMAX"]


def test_every_signal_that_would_end_the_agent_runs_its_down_path(lab: Lab) -> None:
    results = {}
    for name in STOPPING:
        proc = lab.start_agent("a", **FAST)
        wait_for(lambda: vip_holders(lab) == ["a"], 8, f"MASTER before {name}")
        proc.send_signal(getattr(signal, name))
        try:
            proc.wait(8)
        except Exception:
            pytest.fail(f"{name}: the agent did not stop\n{dump_on_failure(lab)}")
        lab.agents.pop("a")
        results[name] = (proc.returncode, vip_holders(lab))
    assert results == {name: (0, []) for name in STOPPING}, results
    assert log_of(lab, "a").count("stopping (a master hands over first)") == len(STOPPING)


def test_ignored_and_informational_signals_leave_the_master_in_place(lab: Lab) -> None:
    proc = lab.start_agent("a", **FAST)
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "MASTER")
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1, signal.SIGWINCH, signal.SIGURG,
                signal.SIGCHLD, signal.SIGCONT):
        proc.send_signal(sig)
    time.sleep(1)
    assert proc.poll() is None and vip_holders(lab) == ["a"]
    assert "MASTER on eth0 id 1" in log_of(lab, "a")  # USR1: ucarp's status line


def test_sigusr2_steps_down_at_once_and_a_preferred_node_comes_back(lab: Lab) -> None:
    """ucarp: go BACKUP, run the downscript, pause 3 s, listen again (with preempt it may
    come back). Ours also bows out, so the backup takes over at once. It used to kill the
    agent with its VIP up."""
    a = lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    a.send_signal(signal.SIGUSR2)
    moved = wait_for(lambda: vip_holders(lab) == ["b"], 2, "node-b takes over at once")
    assert moved < 1.0, moved  # the bow-out, not node-b's 3.4 s master-down interval
    assert a.poll() is None and lab.state("a") == "BACKUP"
    text = log_of(lab, "a")
    assert "Caught signal (USR2) considering going down" in text
    time.sleep(1.5)
    assert vip_holders(lab) == ["b"]  # still paused
    back = wait_for(lambda: vip_holders(lab) == ["a"], 4, "node-a preempts after the pause")
    assert back > 0.5, back
    from .conftest import metric

    assert metric(lab, "a", "carp_transitions_total", **{"from": "MASTER", "to": "BACKUP"},
                  reason="step_down") == 1
