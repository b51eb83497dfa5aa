"""Two carp-sidecar nodes with real Apache on a bridge: the classic recipe's failover."""

from __future__ import annotations

import signal
import time

from sidecar.lab import Lab

from .conftest import dump_on_failure, metric, status, transitions, vip_holders, wait_for


def start_pair(lab: Lab, preempt: bool = True) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true" if preempt else "false")
    lab.start_agent("b", CARP_ADVSKEW="100")
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 15, "node-a serving the VIP")


def test_one_master_lower_advskew_holds_vip_and_serves_client(lab: Lab) -> None:
    start_pair(lab)
    time.sleep(1.5)
    assert status(lab, "a")["state"] == "MASTER", dump_on_failure(lab)
    assert status(lab, "b")["state"] == "BACKUP"
    assert vip_holders(lab) == ["a"]
    assert lab.get("client", "http://172.16.0.1/") == "node-a"
    # the VIP carries the classic eth0:0 label
    assert "eth0:0" in lab.topo["a"].run("ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert metric(lab, "a", "carp_vip_present") == 1 and metric(lab, "b", "carp_vip_present") == 0


def test_unplug_master_backup_serves_and_preempt_returns(lab: Lab) -> None:
    start_pair(lab, preempt=True)
    lab.topo.unplug("a")
    wait_for(lambda: lab.client_sees() == "node-b", 10, "node-b serving after unplug")
    assert vip_holders(lab) == ["b"]
    assert status(lab, "a")["state"] == "BACKUP"  # link down: a dropped the VIP itself
    lab.topo.plug("a")
    wait_for(lambda: lab.client_sees() == "node-a", 10, "node-a back after plug")
    wait_for(lambda: vip_holders(lab) == ["a"], 3, "VIP on node-a only")
    assert status(lab, "a")["last_transition"]["reason"] == "preempt"  # type: ignore[index]


def test_unplug_master_without_preempt_backup_stays_master(lab: Lab) -> None:
    start_pair(lab, preempt=False)
    lab.topo.unplug("a")
    wait_for(lambda: lab.client_sees() == "node-b", 10, "node-b serving after unplug")
    lab.topo.plug("a")
    time.sleep(5)
    assert lab.client_sees() == "node-b" and vip_holders(lab) == ["b"]
    assert status(lab, "a")["state"] == "BACKUP"


def test_sigkill_master_backup_takes_over_and_restart_removes_stale_vip(lab: Lab) -> None:
    start_pair(lab)
    lab.stop_agent("a", sig=signal.SIGKILL)  # no chance to clean up: the VIP stays behind
    assert "a" in vip_holders(lab)
    wait_for(lambda: lab.state("b") == "MASTER", 6, "node-b MASTER after SIGKILL")
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: "Removed stale VIP" in (lab.dir / "a.log").read_text(), 5, "stale VIP removal")
    wait_for(lambda: lab.state("a") == "MASTER", 6, "node-a preempts back")
    wait_for(lambda: vip_holders(lab) == ["a"], 3, "VIP on node-a only")
    wait_for(lambda: lab.client_sees() == "node-a", 5, "client back on node-a")


def test_sigterm_master_hands_over_at_once_and_exits_zero(lab: Lab) -> None:
    start_pair(lab)
    time.sleep(1)
    began = time.time()
    assert lab.stop_agent("a") == 0
    elapsed = time.time() - began
    wait_for(lambda: lab.client_sees() == "node-b", 3, "node-b serving")
    assert elapsed < 1.5, f"SIGTERM took {elapsed:.2f} s"
    assert vip_holders(lab) == ["b"]
    took = next(line["t"] for line in lab.probe_lines if line["body"] == "node-b") - began
    assert took < 3.0, f"handover took {took:.2f} s: no faster than the dead timer"
    assert status(lab, "b")["last_transition"]["reason"] == "handover"  # type: ignore[index]
    assert metric(lab, "b", "carp_handovers_received_total") == 1
    assert transitions(lab, "b") == ["BACKUP", "MASTER"]
    assert not (lab.dir / "a.sock").exists()  # the control socket went with the agent
