"""Faults, round 4: signals and stalls (README "Signals", "Fault behaviour"). Real-time signals
other than SIGRTMIN and SIGRTMAX left the master running (the handler failed naming them), and
glibc's 32 and 33 ended it without its down path; a signal that followed a stop turned a clean
exit into status 129 or a traceback; a frozen backup thawed into a takeover and back. Each test
failed before its fix."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sidecar.lab import Lab
from sidecar.lab.holders import HolderSampler
from sidecar.runtime import signals
from sidecar.runtime.signals import Meaning

from .conftest import dump_on_failure, metric, transitions, vip_holders, wait_for
from .test_faults import log_of

FAST = {"CARP_ADVBASE": "0", "CARP_ADVSKEW": "40"}  # a lone node is MASTER within a second
RTMIN = signal.SIGRTMIN
# 35, 37 (SIGRTMIN+3: systemd's stop signal in containers), 40, 50 and SIGRTMAX-1
REAL_TIME = [RTMIN + 1, RTMIN + 3, RTMIN + 6, RTMIN + 16, signal.SIGRTMAX - 1]


def clean_exit(lab: Lab, node: str, proc: object, what: str) -> None:
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    try:
        proc.wait(8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: the agent did not stop\n{dump_on_failure(lab)}")
    lab.agents.pop(node)
    text = log_of(lab, node)
    assert proc.returncode == 0, (what, proc.returncode, text[-3000:])
    assert "Traceback" not in text and "Exception ignored" not in text, (what, text[-3000:])


def test_real_time_signals_hand_over_as_sigterm_does(lab: Lab) -> None:
    """Each one: bow-out (node-b takes over at once, not after its master-down interval), VIP
    released, exit 0, the signal named in the log."""
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["b"], 10, "node-b MASTER")
    for n, sig in enumerate(REAL_TIME, 1):
        proc = lab.start_agent("a", CARP_PREEMPT="true")
        wait_for(lambda: vip_holders(lab) == ["a"], 8, f"node-a MASTER before {sig}")
        proc.send_signal(sig)
        moved = wait_for(lambda: vip_holders(lab) == ["b"], 2.5, f"node-b takes over on {sig}")
        clean_exit(lab, "a", proc, signals.name(sig))
        assert moved < 1.5, (sig, moved)  # the bow-out; node-b's master-down is 3.4 s
        assert metric(lab, "b", "carp_handovers_received_total") == n, sig
    text = log_of(lab, "a")
    for sig in REAL_TIME:
        assert f"Received {signals.name(sig)}: stopping (a master hands over first)" in text
    assert "Received SIGRTMIN+3: stopping" in text


def test_every_signal_number_during_a_stop_leaves_it_to_finish(lab: Lab) -> None:
    """SIGTERM, then every number from 1 to SIGRTMAX that does not freeze or end a process by
    its nature: the stop ends as it would alone (VIP released, exit 0); each handled one is
    logged and ignored, none starts a reload or kills the agent."""
    proc = lab.start_agent("a", **FAST)
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "MASTER")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    later = [sig for sig in range(1, signal.SIGRTMAX + 1) if sig != signal.SIGTERM
             and signals.meaning(sig, as_ucarp=False) not in (Meaning.FREEZES, Meaning.ENDS)]
    for sig in later:
        os.kill(proc.pid, sig)
    clean_exit(lab, "a", proc, "every signal during a stop")
    assert vip_holders(lab) == []
    text = log_of(lab, "a")
    ignored = [sig for sig in later if sig in signals.handled(as_ucarp=False)]
    missing = [signals.name(sig) for sig in ignored
               if f"Received {signals.name(sig)} while stopping: ignored" not in text]
    assert not missing, (missing, text[-3000:])
    assert "reloading" not in text and "Configuration reloaded" not in text


def test_glibc_reserved_numbers_leave_the_master_in_place(lab: Lab) -> None:
    """32 and 33 have no name (`kill -l`) and glibc refuses handlers for them: their default
    ended the agent with its VIP up (status 160, 161)."""
    proc = lab.start_agent("a", **FAST)
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "MASTER")
    for sig in signals.reserved():
        os.kill(proc.pid, sig)
    time.sleep(1)
    assert proc.poll() is None and vip_holders(lab) == ["a"], proc.returncode
    assert lab.stop_agent("a") == 0 and vip_holders(lab) == []


# ---- a stop interrupted by another signal ----
AFTER = [signal.SIGHUP, signal.SIGHUP, signal.SIGUSR2, signal.SIGHUP, RTMIN + 3, signal.SIGHUP,
         signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP]
DELAYS = [0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.01]


def test_a_stop_ends_with_status_0_whatever_signal_follows(lab: Lab) -> None:
    """SIGTERM, then SIGHUP (and others) 0-40 ms later, to a backup (its stop is at once) and
    to a master handing over: exit 0, no traceback, the down path done. It ended with status
    129 (SIGHUP's default, back after the loop closed) or `Event loop is closed` (the reload
    it had started)."""
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["b"], 10, "node-b MASTER")
    for i, (sig, delay) in enumerate(zip(AFTER, DELAYS, strict=True)):
        master = i % 3 == 2
        proc = lab.start_agent("a", CARP_PREEMPT="true", CARP_ADVSKEW="0" if master else "200")
        if master:
            wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
        else:
            wait_for(lambda: lab.state("a") == "BACKUP", 8, "node-a BACKUP")
        proc.send_signal(signal.SIGTERM)
        time.sleep(delay)
        proc.send_signal(sig)
        clean_exit(lab, "a", proc, f"{signals.name(sig)} {delay * 1000:.0f} ms after SIGTERM")
        assert "Exiting" in log_of(lab, "a").rsplit("Using [eth0]", 1)[-1]
        wait_for(lambda: vip_holders(lab) == ["b"], 2, "node-b holds the VIP")


def test_a_reload_under_way_ends_before_the_agent_exits(lab: Lab) -> None:
    """SIGHUP, then SIGTERM while the reload's child still validates (it takes ~0.3 s): the
    stop waits for it. The loop closed under it (`Event loop is closed`, or the reload lost)."""
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["b"], 10, "node-b MASTER")
    for delay in (0.0, 0.05, 0.1):
        proc = lab.start_agent("a", CARP_ADVSKEW="200")
        wait_for(lambda: lab.state("a") == "BACKUP", 8, "node-a BACKUP")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_of(lab, "a").rsplit("Using [eth0]", 1)[-1].count(
            "Received SIGHUP: reloading") == 1, 2, "the reload under way")
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        clean_exit(lab, "a", proc, f"SIGTERM {delay * 1000:.0f} ms into a reload")
        run = log_of(lab, "a").rsplit("Using [eth0]", 1)[-1]
        assert "Configuration reloaded" in run, run
        assert run.index("Configuration reloaded") < run.index("Exiting"), run


# ---- a frozen backup ----
def test_a_frozen_backup_thaws_without_a_takeover(lab: Lab) -> None:
    """SIGSTOP for 5 s (a VM snapshot, `docker pause`), then SIGCONT, twice: node-b reads the
    adverts queued meanwhile before its master-down timer acts. It went MASTER and back within
    a millisecond, counting a `master_down` each time (three fire CarpFlappingMaster)."""
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    b = lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    with HolderSampler(lab) as sampler:
        for freeze in (5, 6.5):
            time.sleep(1.2)
            b.send_signal(signal.SIGSTOP)
            time.sleep(freeze)
            b.send_signal(signal.SIGCONT)
        time.sleep(2)
    assert transitions(lab, "b") == ["BACKUP"], dump_on_failure(lab)
    assert metric(lab, "b", "carp_transitions_total", reason="master_down") == 0
    assert metric(lab, "b", "carp_adverts_sent_total") == 0
    assert vip_holders(lab) == ["a"] and max(n for _, n in sampler.samples) == 1
    assert log_of(lab, "b").count("The agent stood still") == 2


def test_a_backup_frozen_through_a_handover_takes_over_as_it_thaws(lab: Lab) -> None:
    """node-a stops while node-b is frozen: node-b reads node-a's bow-out among the queued
    adverts and takes over at once on its thaw, as a handover."""
    a = lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    b = lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    time.sleep(1.2)
    b.send_signal(signal.SIGSTOP)
    time.sleep(0.5)
    a.send_signal(signal.SIGTERM)
    clean_exit(lab, "a", a, "node-a")
    time.sleep(3)
    b.send_signal(signal.SIGCONT)
    took = wait_for(lambda: vip_holders(lab) == ["b"], 2, "node-b takes over on its thaw")
    assert took < 0.5, took
    assert transitions(lab, "b") == ["BACKUP", "MASTER"]
    assert metric(lab, "b", "carp_transitions_total", reason="handover") == 1
