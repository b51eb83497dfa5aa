"""deploy/ and the Dockerfile: lint clean, schema-valid, and loadable by our own config."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.config import load, read_env_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def test_dockerfile_is_hadolint_clean() -> None:
    r = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_runs_the_cli_with_a_healthcheck_and_sigterm() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in ('ENTRYPOINT ["carp-sidecar"]', 'CMD ["run"]', "STOPSIGNAL SIGTERM",
                 'CMD ["carp-sidecar", "healthcheck"]', "ARG BASE=docker.io/library/python:3.11-slim"):
        assert line in text


@pytest.mark.parametrize("node", ["a", "b"])
def test_node_env_files_are_valid_carp_sidecar_configs(node: str, tmp_path: Path) -> None:
    values = read_env_file(DEPLOY / f"node-{node}.env")
    (tmp_path / "pass").write_text("geheim\n")
    settings = load({**values, "CARP_PASS_FILE": str(tmp_path / "pass")}).runtime().instances[0]
    assert settings.vhid == 1 and str(settings.vips[0]) == "172.16.0.1/16"
    assert settings.preempt is (node == "a")


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose missing (make deps installs Debian's)")
@pytest.mark.parametrize("node", ["a", "b"])
def test_compose_file_passes_the_compose_schema(node: str, tmp_path: Path) -> None:
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    (work / "carp_pass").write_text("geheim\n")
    r = subprocess.run(["docker-compose", "--env-file", f"node-{node}.env", "-f", "compose.yml",
                        "config"], cwd=work, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sidecar = yaml.safe_load(r.stdout)["services"]["carp-sidecar"]
    assert sidecar["network_mode"] == "host"
    assert set(sidecar["cap_add"]) == {"NET_ADMIN", "NET_RAW"}
    assert sidecar["environment"]["CARP_SRCIP"] == f"172.16.0.1{1 if node == 'a' else 2}"


def test_kubernetes_core_manifests_validate_strictly() -> None:
    k8s = DEPLOY / "kubernetes"
    files = [str(k8s / f) for f in ("secret.yaml", "configmap.yaml", "daemonset.yaml")]
    r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *files],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("passed") == 3, r.stdout + r.stderr


def test_kubernetes_daemonset_has_host_network_and_only_the_needed_capabilities() -> None:
    ds = yaml.safe_load((DEPLOY / "kubernetes/daemonset.yaml").read_text())
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    sidecar = next(c for c in pod["containers"] if c["name"] == "carp-sidecar")
    caps = sidecar["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    cm = yaml.safe_load((DEPLOY / "kubernetes/configmap.yaml").read_text())
    mount = next(v for v in sidecar["volumeMounts"] if v["name"] == "pass")["mountPath"]
    assert cm["data"]["CARP_PASS_FILE"].startswith(mount)


def test_prometheusrule_carries_exactly_the_alert_rules() -> None:
    rule = yaml.safe_load((DEPLOY / "kubernetes/prometheusrule.yaml").read_text())
    rules = yaml.safe_load((ROOT / "grafana/alerts/carp.rules.yml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == rules


def test_podmonitor_scrapes_the_metrics_port() -> None:
    pm = yaml.safe_load((DEPLOY / "kubernetes/podmonitor.yaml").read_text())
    assert pm["kind"] == "PodMonitor"
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_systemd_unit_runs_the_agent_with_only_net_capabilities() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd/carp-sidecar@.service")
    service = unit["Service"]
    assert "carp-sidecar --env-file /etc/carp-sidecar/%i.env run" in service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["CapabilityBoundingSet"] == "CAP_NET_ADMIN CAP_NET_RAW"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_example_config_file_loads(tmp_path: Path) -> None:
    text = (DEPLOY / "carp-sidecar.toml.example").read_text()
    (tmp_path / "pass").write_text("geheim\n")
    path = tmp_path / "carp.toml"
    path.write_text(text.replace("/run/secrets/carp_pass", str(tmp_path / "pass")))
    config = load({"CARP_CONFIG": str(path)})
    assert [i.vhid for i in config.instances] == [1, 2, 3]
    assert [str(v) for v in config.instances[0].vips] == ["172.16.0.1/16", "2001:db8::1/64"]
    assert all(i.health == ["apache"] for i in config.instances)
    assert config.runtime().instances[0].hmac_address.compressed == "172.16.0.1"
