"""Log lines that cried wolf (issue 34, defect 6): what a normal start, handover and preempt
write is INFO; WARNING and ERROR stay for what needs a person. Each test failed before its fix."""

from __future__ import annotations

import re

from sidecar.lab import ADDRESSES, Lab

from .conftest import dump_on_failure, metric, vip_holders, wait_for

A, B = ADDRESSES["a"].split("/")[0], ADDRESSES["b"].split("/")[0]


def lines(lab: Lab, node: str, words: str) -> list[str]:
    """The log lines of ``node`` that contain ``words``, with their level: "[INFO] ..."."""
    text = (lab.dir / f"{node}.log").read_text()
    return [m.group(0) for m in re.finditer(r"\[[A-Z]+\] [^\n]*", text) if words in m.group(0)]


def test_classic_downscript_failing_at_start_is_info_a_failure_dropping_the_vip_is_error(
        lab: Lab) -> None:
    # the classic recipe without `|| true`: `ip addr del` of an address not there exits 2, and
    # ucarp's start runs the downscript (BACKUP) before the VIP was ever up. Once the VIP is
    # held, this downscript removes it and then fails (exit 7): that failure is real.
    up, down = lab.dir / "up.sh", lab.dir / "down.sh"
    up.write_text('#!/bin/sh\nexec ip addr add "$2"/16 dev "$1" label "$1":0\n')
    down.write_text('#!/bin/sh\nip addr del "$2"/16 dev "$1" || exit $?\nexit 7\n')
    for p in (up, down):
        p.chmod(0o755)
    lab.start_agent("a", CARP_UPSCRIPT=str(up), CARP_DOWNSCRIPT=str(down))
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER with the VIP")
    at_start = lines(lab, "a", "exited with status")
    assert len(at_start) == 1 and at_start[0].startswith(f"[INFO] Script [{down}] exited with "
                                                          "status 2 (the VIP was not up"), \
        dump_on_failure(lab)
    assert metric(lab, "a", "carp_script_runs_total", script="down", result="failed") == 1
    assert lab.stop_agent("a") == 0
    assert vip_holders(lab) == []
    at_stop = lines(lab, "a", "exited with status")[1:]
    assert at_stop == [f"[ERROR] Script [{down}] exited with status 7"], dump_on_failure(lab)
    # a lone master: nobody took over, and it says so
    assert [ln.split(" within")[0] for ln in lines(lab, "a", "successor")] == [
        "[WARNING] No successor heard"], dump_on_failure(lab)


def test_handover_and_preempt_are_info_and_a_stopping_master_names_its_successor(
        lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 5, "node-b BACKUP")
    assert lab.stop_agent("a") == 0  # bow-out: node-b takes over at once
    wait_for(lambda: vip_holders(lab) == ["b"], 3, "node-b MASTER")
    assert lines(lab, "a", "Handed over") == [f"[INFO] Handed over to {B}"], dump_on_failure(lab)
    wait_for(lambda: lines(lab, "b", "Former master"), 4, "node-b: node-a silent")
    assert lines(lab, "b", "Former master") == [
        f"[INFO] Former master {A} stopped advertising (bowed out, as planned): "
        "re-announcing VIP 172.16.0.1"], dump_on_failure(lab)
    lab.start_agent("a", CARP_PREEMPT="true")  # preempts node-b back, the plan again
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER again")
    wait_for(lambda: lines(lab, "a", "Former master"), 5, "node-a: node-b silent")
    assert lines(lab, "a", "Former master") == [
        f"[INFO] Former master {B} stopped advertising (preempted, as planned): "
        "re-announcing VIP 172.16.0.1"], dump_on_failure(lab)
    assert not lines(lab, "a", "[ERROR]") and not lines(lab, "b", "[ERROR]")
