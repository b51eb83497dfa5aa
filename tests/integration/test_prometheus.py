"""A real Prometheus in the client namespace scrapes two agents through a failover and a split
brain: every dashboard query returns data, transitions are exact, the split-brain alert fires
and resolves."""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from sidecar.lab import Lab

from .conftest import dump_on_failure, metric, wait_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "grafana"))
from dashboard import QUERIES  # noqa: E402


def start_prometheus(lab: Lab) -> None:
    conf = lab.dir / "prometheus.yml"
    conf.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{ROOT}/grafana/alerts/carp.rules.yml"]
scrape_configs:
  - job_name: carp-sidecar
    static_configs:
      - targets: ["172.16.0.11:9655", "172.16.0.12:9655"]
""")
    lab.topo.start("client", ["prometheus", f"--config.file={conf}",
                              f"--storage.tsdb.path={lab.dir / 'tsdb'}",
                              "--web.listen-address=127.0.0.1:9090"],
                   log=lab.dir / "prometheus.log")


def api(lab: Lab, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:9090/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    text = lab.get("client", url)
    assert text, f"no answer from Prometheus for {path}"
    doc = json.loads(text)
    assert doc["status"] == "success", doc
    return doc["data"]


def query(lab: Lab, expr: str) -> list[dict[str, Any]]:
    return list(api(lab, "query", query=expr)["result"])


def firing(lab: Lab, name: str) -> bool:
    return any(a["labels"]["alertname"] == name and a["state"] == "firing"
               for a in api(lab, "alerts")["alerts"])


def concrete(expr: str) -> str:
    return (expr.replace("$instance", ".*").replace("$vhid", ".*")
            .replace("$__rate_interval", "1m"))


def test_prometheus_sees_failover_and_split_brain(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    drained = lab.dir / "b-maintenance"
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_MAINTENANCE_FILE=str(drained))
    start_prometheus(lab)
    wait_for(lambda: lab.get("client", "http://127.0.0.1:9090/-/ready") is not None, 20,
             "Prometheus ready")
    wait_for(lambda: len(query(lab, 'up{job="carp-sidecar"} == 1')) == 2, 20, "both targets up")
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    # failover and return
    lab.topo.unplug("a")
    wait_for(lambda: lab.state("b") == "MASTER", 10, "node-b MASTER")
    lab.topo.plug("a")
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER again")
    drained.touch()  # node-b in maintenance: the "Maintenance since" panel has a node to show
    time.sleep(4)  # a few scrapes after the last transition

    for title, expr in ((t, e) for t, qs in QUERIES.items() for e, _ in qs):
        result = query(lab, concrete(expr))
        assert result, f"dashboard panel {title!r} has no data: {concrete(expr)}"

    seen = {
        (r["metric"]["instance"].split(":")[0], r["metric"]["from"], r["metric"]["to"],
         r["metric"]["reason"]): float(r["value"][1])
        for r in query(lab, "carp_transitions_total > 0")
    }
    assert seen == {
        ("172.16.0.11", "INIT", "BACKUP", "startup"): 1,
        ("172.16.0.11", "BACKUP", "MASTER", "master_down"): 1,
        ("172.16.0.11", "MASTER", "BACKUP", "link_down"): 1,
        ("172.16.0.11", "BACKUP", "MASTER", "preempt"): 1,
        ("172.16.0.12", "INIT", "BACKUP", "startup"): 1,
        ("172.16.0.12", "BACKUP", "MASTER", "master_down"): 1,
        ("172.16.0.12", "MASTER", "BACKUP", "preferred_master"): 1,
    }, dump_on_failure(lab)
    assert not firing(lab, "CarpSplitBrain") and not firing(lab, "CarpFlappingMaster")

    drained.unlink()
    wait_for(lambda: metric(lab, "b", "carp_maintenance") == 0, 5, "node-b out of maintenance")

    # split brain: the switch drops CARP to and from node-b; scrapes still pass
    lab.topo.block_carp("b")
    wait_for(lambda: lab.state("b") == "MASTER", 10, "node-b MASTER too")
    wait_for(lambda: firing(lab, "CarpSplitBrain"), 40, "CarpSplitBrain firing")
    lab.topo.block_carp("b", False)
    wait_for(lambda: lab.state("b") == "BACKUP", 10, "node-b steps down")
    wait_for(lambda: not firing(lab, "CarpSplitBrain"), 30, "CarpSplitBrain resolved")
    assert query(lab, "sum by (vhid) (carp_is_master)")[0]["value"][1] == "1"
