"""Mixed groups with Debian's real ucarp 1.5.2, either way round."""

from __future__ import annotations

import re
import time

from sidecar.lab import Lab

from .conftest import (
    dump_on_failure,
    metric,
    start_ucarp,
    status,
    transitions,
    vip_holders,
    wait_for,
)


def ucarp_states(lab: Lab, node: str) -> list[str]:
    return re.findall(r"Switching to state: (\w+)", (lab.dir / f"{node}.log").read_text())


def test_ucarp_master_and_sidecar_backup_fail_over_and_back(lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    start_ucarp(lab, "a", advskew=0, preempt=True)
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "ucarp MASTER with the VIP")
    lab.start_agent("b", CARP_ADVSKEW="100")
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 5, "client on the ucarp node")
    wait_for(lambda: metric(lab, "b", "carp_adverts_received_total") >= 2, 5, "adverts from ucarp")
    assert status(lab, "b")["state"] == "BACKUP"
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="bad_hmac") == 0
    lab.topo.unplug("a")
    wait_for(lambda: lab.client_sees() == "node-b", 10, "sidecar takes over from ucarp")
    lab.topo.plug("a")
    wait_for(lambda: lab.client_sees() == "node-a", 15, "ucarp preempts back")
    wait_for(lambda: vip_holders(lab) == ["a"], 5, "VIP only on the ucarp node")
    assert status(lab, "b")["state"] == "BACKUP", dump_on_failure(lab)


def test_sidecar_master_and_ucarp_backup_fail_over_and_back(lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "sidecar MASTER")
    start_ucarp(lab, "b", advskew=100)
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 5, "client on the sidecar node")
    time.sleep(2)
    assert ucarp_states(lab, "b") == ["BACKUP"], dump_on_failure(lab)
    lab.topo.unplug("a")
    wait_for(lambda: lab.client_sees() == "node-b", 10, "ucarp takes over")
    lab.topo.plug("a")
    wait_for(lambda: lab.client_sees() == "node-a", 15, "sidecar preempts back")
    wait_for(lambda: vip_holders(lab) == ["a"], 5, "VIP only on the sidecar node")
    assert ucarp_states(lab, "b")[-1] == "BACKUP"


def test_sidecar_graceful_stop_hands_over_to_ucarp_at_once(lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "sidecar MASTER")
    start_ucarp(lab, "b", advskew=100)
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 5, "client on the sidecar node")
    time.sleep(1.5)
    began = time.time()
    assert lab.stop_agent("a") == 0
    wait_for(lambda: lab.client_sees() == "node-b", 5, "ucarp takes over")
    took = next(line["t"] for line in lab.probe_lines if line["body"] == "node-b") - began
    assert took < 2.5, f"ucarp took {took:.2f} s: the bow-out advert did not hand over"
    assert "going to time out" in (lab.dir / "b.log").read_text()


def test_mixed_pair_keeps_one_master_for_60_s_without_spurious_transitions(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "sidecar MASTER")
    start_ucarp(lab, "b", advskew=100, preempt=True)
    time.sleep(60)
    assert vip_holders(lab) == ["a"]
    assert transitions(lab, "a") == ["BACKUP", "MASTER"]
    assert ucarp_states(lab, "b") == ["BACKUP"]
    assert metric(lab, "a", "carp_conflicts_total") == 0
    assert metric(lab, "a", "carp_adverts_sent_total") >= 60
    assert sum(metric(lab, "a", "carp_adverts_dropped_total", reason=r)
               for r in ("bad_hmac", "bad_checksum", "bad_ttl", "bad_version")) == 0


def healed_partition(lab: Lab, sidecar: str, ucarp: str) -> str:
    """Equal advbase/advskew, no preempt (the recipe's backup): both become MASTER while CARP is
    blocked between them; after healing, ucarp's address tie-break picks one. The sources are
    172.16.0.10 (on a) and 172.16.1.9 (on b): numerically .0.10 is lower, but x86 ucarp compares
    the raw little-endian s_addr, where 172.16.1.9 is lower and wins (docs/protocol.md §5)."""
    sources = {"a": "172.16.0.10", "b": "172.16.1.9"}
    for node, ip in sources.items():
        lab.topo[node].run("ip", "addr", "add", f"{ip}/16", "dev", "eth0")
    lab.start_agent(sidecar, CARP_SRCIP=sources[sidecar])
    start_ucarp(lab, ucarp, advskew=0, src=sources[ucarp])
    lab.topo.block_carp(ucarp)
    wait_for(lambda: vip_holders(lab) == ["a", "b"], 10, "both MASTER while partitioned")
    lab.topo.block_carp(ucarp, False)
    wait_for(lambda: len(vip_holders(lab)) == 1, 10, "one master after healing")
    time.sleep(3)  # and it stays that way
    holders = vip_holders(lab)
    assert len(holders) == 1, dump_on_failure(lab)
    return holders[0]


def test_healed_partition_ucarp_and_sidecar_agree_sidecar_wins_by_address(lab: Lab) -> None:
    assert healed_partition(lab, sidecar="b", ucarp="a") == "b"  # 172.16.1.9 wins
    assert ucarp_states(lab, "a")[-1] == "BACKUP" and lab.state("b") == "MASTER"


def test_healed_partition_ucarp_and_sidecar_agree_ucarp_wins_by_address(lab: Lab) -> None:
    assert healed_partition(lab, sidecar="a", ucarp="b") == "b"  # 172.16.1.9 wins
    assert lab.state("a") == "BACKUP" and ucarp_states(lab, "b")[-1] == "MASTER"
