"""deploy/ and the Dockerfile: lint clean, schema-valid, and loadable by our own config."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.config.settings import load, read_env_file

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


def _kustomize_version() -> int:
    if shutil.which("kubectl") is None:
        return 0
    out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True,
                         timeout=60).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("Kustomize Version: v")), "")
    return int(line.removeprefix("Kustomize Version: v").split(".")[0] or 0) if line else 0


kubectl = pytest.mark.skipif(_kustomize_version() < 4, reason="needs kubectl with kustomize >= 4 "
                             "(directories as resources); make deps installs a kubectl")


def kustomize(path: Path, password: str | None = "geheim") -> list[dict[str, object]]:
    """Render a copy of deploy/kubernetes (with the password file an operator creates)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "kubernetes"
        shutil.copytree(DEPLOY / "kubernetes", work)
        if password is not None:
            (work / "base/carp_pass").write_text(password)
        r = subprocess.run(["kubectl", "kustomize", str(work / path.relative_to(
            DEPLOY / "kubernetes"))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@kubectl
def test_without_a_password_file_the_base_does_not_build_and_says_why(tmp_path: Path) -> None:
    work = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY / "kubernetes", work)
    r = subprocess.run(["kubectl", "kustomize", str(work / "base")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "carp_pass" in r.stderr, r.stderr


@kubectl
def test_the_secret_is_made_from_the_operators_file_under_a_stable_name() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d  # type: ignore[index]
            for d in kustomize(DEPLOY / "kubernetes/base", password="s3cret")}
    import base64

    secret = docs[("Secret", "carp-sidecar")]
    assert base64.b64decode(secret["data"]["pass"]) == b"s3cret"  # type: ignore[index]
    volumes = docs[("DaemonSet", "carp-sidecar")]["spec"]["template"]["spec"]["volumes"]  # type: ignore[index]
    assert any(v.get("secret", {}).get("secretName") == "carp-sidecar" for v in volumes)


def test_compose_pins_a_release_image_not_latest() -> None:
    import sidecar

    text = (DEPLOY / "compose.yml").read_text()
    assert ":latest" not in text
    assert f"carp-sidecar:{sidecar.__version__}" in text  # the release this checkout is


@kubectl
def test_kustomize_base_renders_valid_objects_in_one_namespace(tmp_path: Path) -> None:
    docs = kustomize(DEPLOY / "kubernetes/base")
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)  # type: ignore[index]
    assert kinds == ["ConfigMap/carp-sidecar", "ConfigMap/carp-sidecar-nodes",
                     "DaemonSet/apache", "DaemonSet/carp-sidecar", "Namespace/carp",
                     "Secret/carp-sidecar"]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "carp", d["kind"]  # type: ignore[index]
    files = []
    for n, d in enumerate(docs):
        files.append(tmp_path / f"{n}.yaml")
        files[-1].write_text(yaml.safe_dump(d))
    r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *map(str, files)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("passed") == len(docs), r.stdout + r.stderr


@kubectl
def test_kustomize_sets_a_pullable_pinned_image_and_per_node_settings() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d  # type: ignore[index]
            for d in kustomize(DEPLOY / "kubernetes/base")}
    pod = docs[("DaemonSet", "carp-sidecar")]["spec"]["template"]["spec"]  # type: ignore[index]
    agent = pod["containers"][0]
    assert [c["name"] for c in pod["containers"]] == ["carp-sidecar"]  # Apache on its own
    image, tag = agent["image"].rsplit(":", 1)
    assert "/" in image and not image.startswith("localhost/") and tag not in ("", "latest")
    assert agent["imagePullPolicy"] == "IfNotPresent"
    assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in pod["tolerations"])
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostNetwork"] is True
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                        "add": ["NET_ADMIN", "NET_RAW"]}
    # each node's file, chosen by the downward API's node name, is a valid env file with the
    # shared ConfigMap
    assert agent["args"][:2] == ["--env-file", "/etc/carp-sidecar/nodes/$(NODE_NAME).env"]
    assert agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    shared = docs[("ConfigMap", "carp-sidecar")]["data"]  # type: ignore[index]
    mounts = {v["name"]: v["mountPath"] for v in agent["volumeMounts"]}
    assert shared["CARP_PASS_FILE"].startswith(mounts["pass"])
    assert mounts["nodes"] == "/etc/carp-sidecar/nodes"
    nodes = docs[("ConfigMap", "carp-sidecar-nodes")]["data"]  # type: ignore[index]
    assert len(nodes) >= 2
    for name, text in nodes.items():
        assert name.endswith(".env")
        env = {**shared, **dict(line.split("=", 1) for line in text.splitlines() if line),
               "CARP_PASS": "x"}
        env.pop("CARP_PASS_FILE")
        assert load(env).instances[0].interface


@kubectl
def test_monitoring_overlay_adds_the_operator_objects() -> None:
    kinds = sorted(d["kind"] for d in kustomize(DEPLOY / "kubernetes/monitoring"))  # type: ignore[misc]
    assert kinds.count("PodMonitor") == 1 and kinds.count("PrometheusRule") == 1
    assert kinds.count("DaemonSet") == 2


def test_prometheusrule_carries_exactly_the_alert_rules() -> None:
    rule = yaml.safe_load((DEPLOY / "kubernetes/monitoring/prometheusrule.yaml").read_text())
    rules = yaml.safe_load((ROOT / "grafana/alerts/carp.rules.yml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == rules


def test_podmonitor_scrapes_the_metrics_port() -> None:
    pm = yaml.safe_load((DEPLOY / "kubernetes/monitoring/podmonitor.yaml").read_text())
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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_is_rated_at_most_3_and_starts_what_the_install_puts_there() -> None:
    unit = DEPLOY / "systemd/carp-sidecar@.service"
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    score = float(r.stdout.rsplit("exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= 3.0, r.stdout[-3000:]
    text = unit.read_text()
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[0] == "/opt/carp-sidecar/bin/carp-sidecar"
    assert "python3 -m venv /opt/carp-sidecar" in (ROOT / "README.md").read_text()
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_PACKET AF_NETLINK" in text


def test_example_config_file_loads(tmp_path: Path) -> None:
    text = (DEPLOY / "carp-sidecar.toml.example").read_text()
    (tmp_path / "pass").write_text("geheim\n")
    path = tmp_path / "carp.toml"
    path.write_text(text.replace("/run/secrets/carp_pass", str(tmp_path / "pass")))
    config = load({"CARP_CONFIG": str(path)})
    assert [i.vhid for i in config.instances] == [1, 2, 3]
    assert [str(v) for v in config.instances[0].vips] == ["172.16.0.1/16", "2001:db8::1/64"]
    assert all(list(i.health) == ["apache"] for i in config.instances)
    assert config.runtime().instances[0].hmac_address.compressed == "172.16.0.1"


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 missing (make deps)")
@pytest.mark.parametrize("node", ["a", "b"])
def test_bird_node_configuration_parses_with_each_site_file(node: str, tmp_path: Path) -> None:
    """bird.conf with site-NODE.conf as site.conf, as test_routed.py and an install use them."""
    shutil.copy(DEPLOY / "bird" / "bird.conf", tmp_path / "bird.conf")
    shutil.copy(DEPLOY / "bird" / f"site-{node}.conf", tmp_path / "site.conf")
    for conf in (tmp_path / "bird.conf", DEPLOY / "bird" / "upstream.conf"):
        r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    (tmp_path / "site.conf").write_text("define LOCAL_AS = 65001;\n")  # the rest missing
    r = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True,
                       text=True)
    assert r.returncode != 0  # so the check above can fail


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="frr missing (make deps)")
@pytest.mark.parametrize("node", ["a", "b"])
def test_frr_node_configuration_passes_vtysh_dry_run(node: str, tmp_path: Path) -> None:
    conf = DEPLOY / "frr" / f"frr-{node}.conf"
    r = subprocess.run(["vtysh", "-C", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = conf.read_text()
    assert "bgp graceful-restart-disable" in text and "redistribute connected route-map" in text
    (tmp_path / "bad.conf").write_text(text.replace("redistribute connected", "redistribute lo"))
    assert subprocess.run(["vtysh", "-C", "-f", str(tmp_path / "bad.conf")],
                          capture_output=True).returncode != 0
