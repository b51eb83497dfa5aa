"""deploy/ as an operator meets it: every mounted path exists, no default Grafana login, the
systemd unit's restart policy and sandbox agree with the documentation and the features."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd/carp-sidecar@.service"
DROPINS = DEPLOY / "systemd/carp-sidecar@.service.d"
compose_cli = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                 reason="docker-compose missing (make deps installs Debian's)")


def compose_config(work: Path, *secrets: str) -> subprocess.CompletedProcess[str]:
    shutil.copytree(DEPLOY, work / "deploy")
    shutil.copytree(ROOT / "grafana", work / "grafana")
    for name in secrets:
        (work / "deploy" / name).write_text("geheim\n")
    return subprocess.run(["docker-compose", "--env-file", "node-a.env", "-f", "compose.yml",
                           "config"], cwd=work / "deploy", capture_output=True, text=True,
                          timeout=60)


def test_every_relative_bind_mount_of_compose_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, not shipped"
    assert (DEPLOY / "htdocs/index.html").is_file()


@compose_cli
def test_grafana_has_no_default_login_but_the_operators_password_file(tmp_path: Path) -> None:
    r = compose_config(tmp_path / "with", "carp_pass", "grafana_admin_password")
    assert r.returncode == 0, r.stderr
    grafana = yaml.safe_load(r.stdout)["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert [s["source"] if isinstance(s, dict) else s for s in grafana["secrets"]] == \
        ["grafana_admin_password"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env  # never a password in the file itself
    assert compose_config(tmp_path / "anon", "carp_pass").returncode == 0  # checked at `up`


def test_monitoring_listens_on_loopback_only_and_compose_says_so() -> None:
    text = (DEPLOY / "compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    assert "--web.listen-address=127.0.0.1:9115" in services["blackbox-exporter"]["command"]
    assert services["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    header = text.split("services:", 1)[0]
    assert "127.0.0.1 only" in header and "grafana_admin_password" in header


def unit(*dropins: str) -> configparser.ConfigParser:
    """The unit as systemd merges it: a drop-in's capability lists add, other keys replace."""
    merged = configparser.ConfigParser(strict=False, interpolation=None)
    merged.optionxform = str  # type: ignore[assignment,method-assign]
    merged.read(UNIT)
    for name in dropins:
        extra = configparser.ConfigParser(strict=False, interpolation=None)
        extra.optionxform = str  # type: ignore[assignment,method-assign]
        extra.read(DROPINS / name)
        for key, value in extra["Service"].items():
            add = key in ("CapabilityBoundingSet", "AmbientCapabilities")
            merged["Service"][key] = f"{merged['Service'].get(key, '')} {value}" if add else value
    return merged


def test_the_unit_does_not_restart_after_a_clean_stop_and_the_docs_agree() -> None:
    assert unit()["Service"]["Restart"] == "on-failure"  # exit 0 after SIGTERM stays stopped
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for doc in docs:
        for said in re.findall(r"Restart=(\w[\w-]*)", doc.read_text()):
            assert said == "on-failure", f"{doc.name} says Restart={said}"


@pytest.mark.parametrize("dropin", ["realtime.conf.example", "classic-scripts.conf.example"])
def test_the_unit_names_each_drop_in_it_ships(dropin: str) -> None:
    assert (DROPINS / dropin).is_file()
    assert f"carp-sidecar@.service.d/{dropin}" in UNIT.read_text()


def test_carp_realtime_has_a_drop_in_that_allows_sched_fifo() -> None:
    assert unit()["Service"]["RestrictRealtime"] == "yes"
    service = unit("realtime.conf.example")["Service"]
    assert service["RestrictRealtime"] == "no"
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert set(service[key].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_NICE"}
    if shutil.which("systemd-analyze"):  # sched_setscheduler stays allowed by the filter
        out = subprocess.run(["systemd-analyze", "syscall-filter", "@system-service"],
                             capture_output=True, text=True).stdout
        assert "@resources" in out


def test_classic_scripts_drop_in_gives_ifup_and_service_reload_what_they_need() -> None:
    service = unit("classic-scripts.conf.example")["Service"]
    assert service["ProtectSystem"] == "full"  # /run and /var writable for ifup, dhclient
    assert service["ProtectKernelTunables"] == "no" and service["ProcSubset"] == "all"
    assert service["NoNewPrivileges"] == "no" and service["SystemCallFilter"] == ""
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SETUID"} <= caps


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("dropin", ["realtime.conf.example", "classic-scripts.conf.example"])
def test_systemd_loads_the_unit_with_each_drop_in(dropin: str, tmp_path: Path) -> None:
    units = tmp_path / "etc/systemd/system"
    (units / "carp-sidecar@.service.d").mkdir(parents=True)
    shutil.copy(UNIT, units)
    shutil.copy(DROPINS / dropin, units / "carp-sidecar@.service.d" / dropin.removesuffix(
        ".example"))
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tmp_path}",
                        "carp-sidecar@vip1.service"], capture_output=True, text=True, timeout=60)
    assert "exposure level" in r.stdout, r.stdout + r.stderr
    assert "Unknown key" not in r.stderr and "Failed to parse" not in r.stderr, r.stderr
    realtime = next(ln for ln in r.stdout.splitlines() if "RestrictRealtime=" in ln)
    assert realtime.lstrip().startswith("✗") == (dropin == "realtime.conf.example"), realtime
