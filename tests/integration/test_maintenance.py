"""Operator intent survives restarts: persistent maintenance, the maintenance file, preempt delay."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time

import pytest

from sidecar.lab import Lab

from .conftest import metric, status, transitions, vip_holders, wait_for


def control(lab: Lab, verb: str, node: str = "a") -> str:
    return lab.topo[node].run(sys.executable, "-m", "sidecar.tools.cli", verb, "--socket",
                              str(lab.dir / f"{node}.sock")).stdout


def start_pair(lab: Lab, **a_env: str) -> None:
    lab.start_agent("a", CARP_PREEMPT="true", **a_env)
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_demoted_master_restarted_stays_demoted_until_promoted(lab: Lab, sig: int) -> None:
    start_pair(lab)
    assert "maintenance=on" in control(lab, "demote")
    wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b MASTER after demote")
    record = json.loads((lab.dir / "a-state" / "eth0-vhid1.json").read_text())
    assert record["maintenance"] is True
    since = status(lab, "a")["maintenance_since"]
    lab.stop_agent("a", sig)
    before = len(transitions(lab, "a"))  # the log is appended to
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: lab.state("a") == "BACKUP", 8, "node-a back")
    st = status(lab, "a")
    assert st["maintenance"] is True and st["maintenance_since"] == since
    assert metric(lab, "a", "carp_maintenance") == 1
    assert metric(lab, "a", "carp_maintenance_since_seconds") == pytest.approx(record["since"])
    assert "Starting in maintenance (demoted by operator since" in (lab.dir / "a.log").read_text()
    time.sleep(4.5)  # past master-down, with a worse master to preempt: it must not
    assert vip_holders(lab) == ["b"] and transitions(lab, "a")[before:] == ["BACKUP"]
    assert "maintenance=off" in control(lab, "promote")
    wait_for(lambda: vip_holders(lab) == ["a"], 5, "node-a preempts after promote")
    assert json.loads((lab.dir / "a-state" / "eth0-vhid1.json").read_text())["maintenance"] is False
    lab.stop_agent("a")
    lab.start_agent("a", CARP_PREEMPT="true")  # promoted is remembered too
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER after a restart")


def test_maintenance_file_demotes_and_undemotes_a_running_master(lab: Lab) -> None:
    flag = lab.dir / "maintenance"
    start_pair(lab, CARP_MAINTENANCE_FILE=str(flag))
    flag.touch()
    took = wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b MASTER after the file appeared")
    print(f"\nmaintenance file: the VIP left node-a {took:.2f} s after the file appeared")
    assert took < 1.5, took  # noticed within a second (polled every 0.5 s) + handover
    st = status(lab, "a")
    assert st["maintenance"] is True and st["maintenance_by"] == ["file"]
    assert metric(lab, "a", "carp_maintenance_since_seconds") == pytest.approx(
        flag.stat().st_mtime)
    assert not (lab.dir / "a-state" / "eth0-vhid1.json").exists()  # the file is its own record
    flag.unlink()
    wait_for(lambda: vip_holders(lab) == ["a"], 5, "node-a back after the file went")
    assert metric(lab, "a", "carp_maintenance") == 0


def test_node_started_with_the_maintenance_file_never_takes_the_vip(lab: Lab) -> None:
    flag = lab.dir / "maintenance"
    flag.touch()
    lab.start_agent("a", CARP_MAINTENANCE_FILE=str(flag))
    wait_for(lambda: lab.state("a") == "BACKUP", 8, "node-a up")
    time.sleep(4)  # a lone node past master-down: still no VIP
    assert vip_holders(lab) == [] and status(lab, "a")["demoted"] is True


def test_preempt_delay_lets_the_working_master_keep_the_vip_that_long(lab: Lab) -> None:
    start_pair(lab, CARP_PREEMPT_DELAY="5")
    lab.stop_agent("a")
    wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b MASTER")
    started = time.monotonic()
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PREEMPT_DELAY="5")
    wait_for(lambda: vip_holders(lab) == ["a"], 12, "node-a preempts after the delay")
    waited = time.monotonic() - started
    print(f"\npreempt delay 5 s: node-a took the VIP {waited:.2f} s after it was started")
    # 5 s from the agent's start, plus the interpreter's start-up (< 1 s here)
    assert 5.0 <= waited < 6.5, waited
    assert status(lab, "a")["last_transition"]["reason"] == "preempt"


def test_preempt_delay_does_not_delay_a_lone_node(lab: Lab) -> None:
    started = time.monotonic()
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PREEMPT_DELAY="30")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "lone node-a MASTER")
    assert time.monotonic() - started < 5.0  # master-down 3 s (+ start-up), not 30 s


@pytest.mark.parametrize("content", [b'{"maintenance": tr', b"", b'{"maintenance": "yes", "since": 1}'],
                         ids=["truncated", "empty", "wrong-type"])
def test_unreadable_state_record_stops_the_start_with_one_line(lab: Lab, content: bytes) -> None:
    state = lab.dir / "a-state"
    state.mkdir(mode=0o700)
    (state / "eth0-vhid1.json").write_bytes(content)
    proc = lab.start_agent("a")
    assert proc.wait(15) == 2
    lines = [ln for ln in (lab.dir / "a.log").read_text().splitlines() if ln.strip()]
    assert len(lines) == 1 and "CARP_STATE_DIR" in lines[0] and "eth0-vhid1.json" in lines[0], lines
    lab.agents.pop("a")


def test_demote_that_cannot_be_recorded_says_so_and_still_demotes(lab: Lab) -> None:
    start_pair(lab)
    state = lab.dir / "a-state"
    shutil.rmtree(state)  # the records and the held-VIP record (sidecar/net/held.py)
    state.write_text("a file where the directory was\n")  # a broken volume, a full disk...
    reply = control(lab, "demote")
    assert "maintenance=on" in reply and "NOT KEPT ACROSS RESTARTS" in reply, reply
    wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b MASTER: demoted all the same")
    assert "Cannot record maintenance" in (lab.dir / "a.log").read_text()
