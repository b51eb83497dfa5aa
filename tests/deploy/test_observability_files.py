"""Dashboard JSON is what its generator makes; alert rules pass promtool's checks and tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool missing (make deps installs Debian's prometheus)")


def test_committed_dashboard_is_generated() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "grafana/dashboard.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_dashboard_has_variables_and_one_target_per_query() -> None:
    sys.path.insert(0, str(ROOT / "grafana"))
    from dashboard import QUERIES

    doc = json.loads((ROOT / "grafana/dashboards/carp-failover.json").read_text())
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names == ["datasource", "group", "instance", "vhid"]
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert sorted(exprs) == sorted(e for qs in QUERIES.values() for e, _ in qs)
    for panel in doc["panels"]:
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert refs == list("ABCDEFGH"[:len(refs)]), panel["title"]


def test_dashboard_schema_matches_the_grafana_compose_pins_and_panels_map_their_values() -> None:
    sys.path.insert(0, str(ROOT / "grafana"))
    from dashboard import GRAFANA_SCHEMA

    compose = yaml.safe_load((ROOT / "deploy/compose.yml").read_text())
    pinned = compose["services"]["grafana"]["image"].rsplit(":", 1)[1]
    doc = json.loads((ROOT / "grafana/dashboards/carp-failover.json").read_text())
    assert doc["schemaVersion"] == GRAFANA_SCHEMA[pinned.rsplit(".", 1)[0]]
    panels = {p["title"]: p for p in doc["panels"] if p.get("type") != "row"}
    for title in ("State timeline", "VIP present (observed by netlink)", "Service health",
                  "Demoted / maintenance", "Master now"):
        assert panels[title]["fieldConfig"]["defaults"]["mappings"], title
    demoted = [t["expr"] for t in panels["Demoted / maintenance"]["targets"]]
    assert any("carp_demoted" in e for e in demoted) and any("carp_maintenance" in e for e in demoted)


def test_dashboard_annotates_agent_restarts_with_their_version() -> None:
    doc = json.loads((ROOT / "grafana/dashboards/carp-failover.json").read_text())
    ann = {a["name"]: a for a in doc["annotations"]["list"]}
    restarts = ann["Agent restarts / upgrades"]
    assert "changes(carp_agent_start_time_seconds" in restarts["expr"]
    assert "group_left (version) carp_build_info" in restarts["expr"]
    assert "{{version}}" in restarts["textFormat"]


@promtool
def test_the_restart_annotation_fires_when_the_start_time_moves(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "grafana"))
    from dashboard import RESTART_ANNOTATION

    expr = RESTART_ANNOTATION.replace("$instance", ".*")
    labels = 'instance="a:9655", job="carp-sidecar"'
    tests = {"rule_files": [], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [  # an in-place restart at 2m15s: same series, a new start time
            {"series": f"carp_agent_start_time_seconds{{{labels}}}", "values": "100x8 250x8"},
            {"series": f'carp_build_info{{{labels}, version="1.4.0", python="3.12"}}',
             "values": "1x16"}],
        "promql_expr_test": [
            {"expr": expr, "eval_time": "1m", "exp_samples": []},
            {"expr": expr, "eval_time": "3m", "exp_samples": [
                {"labels": f'{{{labels}, version="1.4.0"}}', "value": 1}]}]}]}
    path = tmp_path / "restart.test.yml"
    path.write_text(yaml.safe_dump(tests))
    r = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@promtool
def test_promtool_check_rules() -> None:
    r = subprocess.run(["promtool", "check", "rules", "carp.rules.yml"],
                       cwd=ROOT / "grafana/alerts", capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS: 17 rules found" in r.stdout, r.stdout + r.stderr


@promtool
def test_promtool_rule_unit_tests() -> None:
    r = subprocess.run(["promtool", "test", "rules", "carp.rules.test.yml"],
                       cwd=ROOT / "grafana/alerts", capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "grafana/alerts/carp.rules.yml").read_text())
    runbook = (ROOT / "docs/runbook.md").read_text()
    tested = (ROOT / "grafana/alerts/carp.rules.test.yml").read_text()
    for rule in rules["groups"][0]["rules"]:
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"]
        assert f"## {rule['alert']}" in runbook
        base, _, anchor = ann["runbook_url"].partition("#")
        assert base.startswith("https://") and base.endswith("/docs/runbook.md"), base
        assert anchor == rule["alert"].lower()
        assert f"alertname: {rule['alert']}" in tested


def test_runbook_base_is_one_absolute_url_and_can_be_changed(tmp_path: Path) -> None:
    script = ROOT / "grafana/alerts/runbook_base.py"
    assert subprocess.run([sys.executable, str(script), "--check"], timeout=30).returncode == 0
    copy = tmp_path / "repo"
    for f in ("grafana/alerts/runbook_base.py", "grafana/alerts/carp.rules.yml",
              "deploy/kubernetes/monitoring/prometheusrule.yaml", "grafana/alerts/carp.rules.test.yml"):
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        (copy / f).write_text((ROOT / f).read_text())
    r = subprocess.run([sys.executable, str(copy / "grafana/alerts/runbook_base.py"),
                        "https://wiki.example.org/carp/runbook"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in ("grafana/alerts/carp.rules.yml", "deploy/kubernetes/monitoring/prometheusrule.yaml"):
        text = (copy / f).read_text()
        assert text.count('"https://wiki.example.org/carp/runbook#carp') == 17, f
    r = subprocess.run([sys.executable, str(copy / "grafana/alerts/runbook_base.py"), "wiki"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "not an absolute" in r.stderr


@promtool
def test_shipped_prometheus_config_passes_promtool() -> None:
    r = subprocess.run(["promtool", "check", "config", "prometheus.yml"],
                       cwd=ROOT / "deploy/prometheus", capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
