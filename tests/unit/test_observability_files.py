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
    assert names == ["datasource", "instance", "vhid"]
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert sorted(exprs) == sorted(e for e, _ in QUERIES.values())


@promtool
def test_promtool_check_rules() -> None:
    r = subprocess.run(["promtool", "check", "rules", "carp.rules.yml"],
                       cwd=ROOT / "grafana/alerts", capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS: 8 rules found" in r.stdout, r.stdout + r.stderr


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
        assert ann["runbook_url"] == f"docs/runbook.md#{rule['alert'].lower()}"
        assert f"alertname: {rule['alert']}" in tested


@promtool
def test_example_prometheus_config_is_valid(tmp_path: Path) -> None:
    conf = (ROOT / "deploy/prometheus/prometheus.yml").read_text().replace(
        "/etc/prometheus/rules/carp.rules.yml", str(ROOT / "grafana/alerts/carp.rules.yml"))
    (tmp_path / "p.yml").write_text(conf)
    r = subprocess.run(["promtool", "check", "config", str(tmp_path / "p.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
