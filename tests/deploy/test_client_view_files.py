"""The client's view in deploy/ and grafana/: Prometheus probes the VIP through the blackbox
exporter, and the dashboard shows availability, the exact last failover and the priorities."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sidecar.config.settings import load, read_env_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def panels() -> dict[str, dict[str, object]]:
    doc = json.loads((ROOT / "grafana/dashboards/carp-failover.json").read_text())
    return {p["title"]: p for p in doc["panels"] if p.get("type") != "row"}


def exprs(panel: dict[str, object]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]  # type: ignore[attr-defined]


def test_dashboard_shows_the_vip_as_the_blackbox_exporter_sees_it() -> None:
    p = panels()
    answers = p["VIP answers (blackbox probe from outside)"]
    assert answers["type"] == "state-timeline"
    assert all('probe_success{job="blackbox-vip"' in e for e in exprs(answers))
    availability = p["VIP availability (blackbox)"]
    assert availability["fieldConfig"]["defaults"]["unit"] == "percentunit"  # type: ignore[index]
    assert "avg_over_time(probe_success{" in exprs(availability)[0]


def test_dashboard_shows_the_last_failover_exactly_and_the_priorities() -> None:
    p = panels()
    last = p["Last failover (exact)"]
    assert exprs(last) == ['max by (group, vhid, reason) (carp_last_failover_duration_seconds'
                           '{group=~"$group", instance=~"$instance", vhid=~"$vhid"})']
    assert last["fieldConfig"]["defaults"]["unit"] == "s"  # type: ignore[index]
    assert "unhealthy" in str(last["description"])
    priority = exprs(p["Priority (advskew: lower wins, 255 demoted)"])
    assert any("carp_advskew{" in e for e in priority)
    assert any("carp_peer_advskew{" in e for e in priority)


def test_prometheus_probes_the_vip_with_http_2xx_labelled_as_the_agents_group(
        tmp_path: Path) -> None:
    conf = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = next(j for j in conf["scrape_configs"] if j["job_name"] == "blackbox-vip")
    assert job["metrics_path"] == "/probe" and job["params"] == {"module": ["http_2xx"]}
    (tmp_path / "pass").write_text("geheim\n")
    node = load({**read_env_file(DEPLOY / "node-a.env"),
                 "CARP_PASS_FILE": str(tmp_path / "pass")}).runtime().instances[0]
    static = job["static_configs"][0]
    assert static["targets"] == [f"http://{node.vips[0].ip}/"]
    assert static["labels"]["group"] == node.group_name  # the dashboard's $group selects it
    relabel = {r["target_label"]: r for r in job["relabel_configs"]}
    assert relabel["__address__"]["replacement"] == "127.0.0.1:9115"
    modules = yaml.safe_load((DEPLOY / "prometheus/blackbox.yml").read_text())["modules"]
    assert modules["http_2xx"]["prober"] == "http"


def test_compose_runs_the_blackbox_exporter_with_the_shipped_modules() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    bbx = compose["services"]["blackbox-exporter"]
    assert bbx["image"].startswith("docker.io/prom/blackbox-exporter:v")
    assert "./prometheus/blackbox.yml:/etc/blackbox_exporter/config.yml:ro" in bbx["volumes"]


@pytest.mark.skipif(shutil.which("prometheus-blackbox-exporter") is None,
                    reason="prometheus-blackbox-exporter missing (make deps)")
def test_the_blackbox_exporter_accepts_the_shipped_modules() -> None:
    r = subprocess.run(["prometheus-blackbox-exporter", "--config.check",
                        f"--config.file={DEPLOY / 'prometheus/blackbox.yml'}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
