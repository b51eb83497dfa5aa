"""The held-VIP record (sidecar/net/held.py): a killed master's VIP is removed by the next run
before its configuration is validated, a live agent's record is never touched, and a neutral
start leaves what it finds."""

from __future__ import annotations

import json
import signal
import sys
import time

from sidecar.lab import Lab
from sidecar.lab.scenario import agent_env

from .conftest import vip_holders, wait_for
from .test_faults import log_of


def _kill_master(lab: Lab) -> list[dict[str, object]]:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    records = list((lab.dir / "a-state" / "held").glob("*.json"))
    assert len(records) == 1, records
    doc = json.loads(records[0].read_text())
    lab.stop_agent("a", sig=signal.SIGKILL)
    assert vip_holders(lab) == ["a"], "a SIGKILLed agent leaves its VIP"
    return list(doc["held"])


def test_killed_masters_vip_is_removed_before_validation(lab: Lab) -> None:
    held = _kill_master(lab)
    assert [entry[1:] for entry in held] == [["eth0", "172.16.0.1", 16]]
    # a broken configuration: validation fails (exit 2), but the dead run's VIP is gone first
    proc = lab.start_agent("a", CARP_ADVSKEW="many")
    assert proc.wait(10) == 2
    assert vip_holders(lab) == []
    assert "removed stale VIP 172.16.0.1 from eth0 (left by an earlier run)" in log_of(lab, "a")
    assert not list((lab.dir / "a-state" / "held").glob("*.json")), "the dead run's record"


def test_restart_after_sigkill_logs_the_removal_and_keeps_a_new_record(lab: Lab) -> None:
    _kill_master(lab)
    lab.start_agent("a")  # no preempt: stays BACKUP until master-down (~3 s)
    wait_for(lambda: vip_holders(lab) == [], 3, "the stale VIP removed")
    wait_for(lambda: "Removed stale VIP 172.16.0.1 from eth0 (left by an earlier run)"
             in log_of(lab, "a"), 5, "the removal logged by the new run")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER again")
    records = list((lab.dir / "a-state" / "held").glob("*.json"))
    assert len(records) == 1 and "172.16.0.1" in records[0].read_text()
    lab.stop_agent("a")  # a clean stop releases the VIP and deletes its record
    assert vip_holders(lab) == []
    assert not list((lab.dir / "a-state" / "held").glob("*.json"))


def test_a_live_agents_record_is_left_alone(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    state = str(lab.dir / "a-state")
    # a second agent on the same host and state directory (another VHID, bad config)
    env = agent_env(lab.dir, "a", "172.16.0.11", CARP_VHID="2", CARP_ADDR="172.16.0.2",
                    CARP_STATE_DIR=state, CARP_ADVSKEW="many")
    proc = lab.topo.start("a", [sys.executable, "-m", "sidecar.tools.cli", "run"],
                          log=lab.dir / "second.log", env=env)
    assert proc.wait(10) == 2
    time.sleep(0.2)
    assert vip_holders(lab) == ["a"]
    assert len(list((lab.dir / "a-state" / "held").glob("*.json"))) == 1


def test_a_neutral_start_leaves_the_killed_runs_vip(lab: Lab) -> None:
    _kill_master(lab)
    lab.start_agent("a", CARP_NEUTRAL="true")
    wait_for(lambda: "Neutral start: leaving VIP 172.16.0.1" in log_of(lab, "a"), 10,
             "the neutral start")
    assert vip_holders(lab) == ["a"]
    assert "Removed stale VIP" not in log_of(lab, "a").split("Neutral start")[0][-2000:]
