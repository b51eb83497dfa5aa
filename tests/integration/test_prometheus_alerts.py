"""Alerts that lied (issue 34, defect 9), with a real Prometheus evaluating the shipped rules:
the master's scrape failing alone is not "the VIP is down", and every agent down is an alert
(there was no series left for CarpNoMaster to count). Both failed before the fix."""

from __future__ import annotations

import time
from typing import Any

from sidecar.lab import Lab

from .conftest import dump_on_failure, wait_for
from .test_prometheus import api, query, start_prometheus


def alerts(lab: Lab, name: str) -> list[dict[str, Any]]:
    """``name``'s alerts, pending or firing."""
    return [a for a in api(lab, "alerts")["alerts"] if a["labels"]["alertname"] == name]


def test_master_unscraped_is_a_scrape_warning_and_every_agent_down_an_alert(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("a") == "MASTER" and lab.state("b") == "BACKUP", 10,
             "node-a MASTER, node-b BACKUP")
    # node-a's scrape fails (nothing listens on that port) while it serves the VIP
    start_prometheus(lab, targets=("172.16.0.11:9656", "172.16.0.12:9655"))
    wait_for(lambda: "Ready" in (lab.get("client", "http://127.0.0.1:9090/-/ready") or ""), 20,
             "Prometheus ready")
    wait_for(lambda: query(lab, 'up{instance="172.16.0.12:9655"} == 1'), 20, "node-b scraped")
    wait_for(lambda: alerts(lab, "CarpSidecarDown"), 10, "CarpSidecarDown pending for node-a")
    assert [a["labels"]["instance"] for a in alerts(lab, "CarpSidecarDown")] == [
        "172.16.0.11:9656"]
    # node-b's second scrape: its adverts heard can be counted (before, no rule can know)
    wait_for(lambda: query(lab, "increase(carp_adverts_received_total[30s]) > 0"), 10,
             "node-b's adverts counted")
    time.sleep(2)  # an evaluation or two
    end = time.monotonic() + 20  # CarpNoMaster's `for` is 15 s: it would be firing by now
    while time.monotonic() < end:
        assert not alerts(lab, "CarpNoMaster"), dump_on_failure(lab)
        time.sleep(1)
    assert lab.state("a") == "MASTER"

    lab.stop_agent("a")
    lab.stop_agent("b")  # the whole group down: no carp_is_master series any more
    wait_for(lambda: alerts(lab, "CarpAllAgentsDown"), 15, "CarpAllAgentsDown pending")
    time.sleep(2)  # one alert per group, no second one without labels
    down = alerts(lab, "CarpAllAgentsDown")
    assert [(a["labels"]["group"], a["labels"]["vhid"], a["labels"]["severity"])
            for a in down] == [("vhid1-172.16.0.1", "1", "critical")], down
    assert not alerts(lab, "CarpNoMaster")
