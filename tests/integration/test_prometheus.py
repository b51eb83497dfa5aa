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

from sidecar.lab import VIP, Lab, agent_env
from sidecar.lab.blackbox import available, scrape_config, start_blackbox

from .conftest import dump_on_failure, metric, wait_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "grafana"))
from dashboard import ANNOTATION, QUERIES, SYNC_PANELS  # noqa: E402


def start_prometheus(lab: Lab, targets: tuple[str, ...] = ("172.16.0.11:9655",
                                                           "172.16.0.12:9655")) -> None:
    conf = lab.dir / "prometheus.yml"
    conf.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{ROOT}/grafana/alerts/carp.rules.yml"]
scrape_configs:
  - job_name: carp-sidecar
    static_configs:
      - targets: {json.dumps(list(targets))}
{scrape_config(VIP, "vhid1-172.16.0.1")}""")
    if available() and not (lab.dir / "blackbox.yml").exists():
        start_blackbox(lab.topo, lab.dir)  # the client's view, for the dashboard's panels
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
    return (expr.replace("$group", ".*").replace("$instance", ".*").replace("$vhid", ".*")
            .replace("$__rate_interval", "1m").replace("$__range", "5m"))


def test_prometheus_sees_failover_and_split_brain(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    drained = lab.dir / "b-maintenance"
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_MAINTENANCE_FILE=str(drained))
    start_prometheus(lab)
    wait_for(lambda: "Ready" in (lab.get("client", "http://127.0.0.1:9090/-/ready") or ""), 20,
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

    # no replicated path here: the sync panels have no series (tests/integration/test_sync*)
    for title, expr in [*((t, e) for t, qs in QUERIES.items() if t not in SYNC_PANELS
                          for e, _ in qs),
                        ("annotation: transitions", ANNOTATION)]:
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


def test_flapping_counts_cable_pulls_never_demote_promote_cycles(lab: Lab) -> None:
    """CarpFlappingMaster, with a real Prometheus evaluating the shipped rules: three planned
    drains (demote, handover, promote, preempt back) leave it silent; three cable pulls of
    the master fire it."""
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    start_prometheus(lab)
    wait_for(lambda: "Ready" in (lab.get("client", "http://127.0.0.1:9090/-/ready") or ""), 20,
             "Prometheus ready")
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    cli = [sys.executable, "-m", "sidecar.tools.cli"]
    sock = ["--socket", str(lab.dir / "a.sock")]
    for _ in range(3):
        lab.topo["a"].run(*cli, "demote", *sock)
        wait_for(lambda: lab.state("b") == "MASTER", 5, "node-b MASTER")
        lab.topo["a"].run(*cli, "promote", *sock)
        wait_for(lambda: lab.state("a") == "MASTER", 5, "node-a preempts")
    wait_for(lambda: query(lab, 'sum(carp_transitions_total{reason="maintenance"})')
             and query(lab, 'sum(carp_transitions_total{reason="maintenance"})')[0]["value"][1]
             == "3", 10, "Prometheus to have scraped the three drains")
    time.sleep(3)  # evaluations after the last scrape
    planned = query(lab, 'sum(carp_transitions_total{planned="false"})')
    assert planned and planned[0]["value"][1] == "0", planned
    assert not firing(lab, "CarpFlappingMaster")

    for pull in range(3):
        lab.topo.unplug("a")
        wait_for(lambda: lab.state("b") == "MASTER", 10, f"node-b MASTER (pull {pull + 1})")
        lab.topo.plug("a")
        wait_for(lambda: lab.state("a") == "MASTER", 10, f"node-a back (pull {pull + 1})")
    try:
        wait_for(lambda: firing(lab, "CarpFlappingMaster"), 30, "CarpFlappingMaster firing")
    except TimeoutError:
        rule = 'sum by (group, vhid) (increase(carp_transitions_total{planned="false"}[15m]))'
        raise AssertionError(f"not firing: {query(lab, rule)}; series "
                             f"{query(lab, 'carp_transitions_total > 0')}") from None
    unplanned = {r["metric"]["reason"]: float(r["value"][1]) for r in query(
        lab, 'sum by (reason) (carp_transitions_total{planned="false"}) > 0')}
    assert unplanned == {"master_down": 3}, unplanned
    failovers = query(lab, "sum(carp_failover_duration_seconds_count)")
    assert failovers and float(failovers[0]["value"][1]) >= 3  # the pulls (and handovers)


def test_two_clusters_that_both_use_vhid_1_are_no_split_brain(lab: Lab) -> None:
    """Two independent clusters on separate links, both VHID 1 (everyone's default), scraped
    by one Prometheus: each has one master, and the rules and panels keep them apart by the
    group label (by default the VHID and the first VIP)."""
    lab.topo.add_second_network({"a": "10.9.0.11/24", "b": "10.9.0.12/24"})
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    for node, src, skew in (("a", "10.9.0.11", "100"), ("b", "10.9.0.12", "0")):
        env = agent_env(lab.dir, f"{node}2", src, CARP_INTERFACE="eth1", CARP_ADDR="10.9.0.1/24",
                        CARP_IF_ALIAS="eth1:0", CARP_ADVSKEW=skew, CARP_PASS="other-cluster",
                        CARP_METRICS_LISTEN=f"172.16.0.1{'1' if node == 'a' else '2'}:9656")
        lab.topo.start(node, [sys.executable, "-m", "sidecar.tools.cli", "run"],
                       log=lab.dir / f"{node}2.log", env=env)
    start_prometheus(lab, ("172.16.0.11:9655", "172.16.0.12:9655", "172.16.0.11:9656",
                           "172.16.0.12:9656"))
    wait_for(lambda: "Ready" in (lab.get("client", "http://127.0.0.1:9090/-/ready") or ""), 20,
             "Prometheus ready")
    wait_for(lambda: len(query(lab, "carp_is_master == 1")) == 2, 20,
             "two masters scraped, one per cluster")
    by_vhid = query(lab, "sum by (vhid) (carp_is_master)")
    assert [r["value"][1] for r in by_vhid] == ["2"]  # what a rule by vhid alone would see
    by_group = {r["metric"]["group"]: r["value"][1]
                for r in query(lab, "sum by (group, vhid) (carp_is_master)")}
    assert by_group == {"vhid1-172.16.0.1": "1", "vhid1-10.9.0.1": "1"}, by_group
    masters = {r["metric"]["group"]: r["metric"]["instance"]
               for r in query(lab, "carp_is_master == 1")}
    assert masters == {"vhid1-172.16.0.1": "172.16.0.11:9655",
                       "vhid1-10.9.0.1": "172.16.0.12:9656"}, masters
    time.sleep(14)  # past CarpSplitBrain's 10 s
    assert not firing(lab, "CarpSplitBrain") and not firing(lab, "CarpNoMaster")
    panel = QUERIES["Masters per VHID (must be 1)"][0][0]
    assert {r["value"][1] for r in query(lab, concrete(panel))} == {"1"}
