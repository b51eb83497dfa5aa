"""deploy/ for replicated paths (docs/sync.md): Apache and the agent share the document root and
PHP's sessions in compose, kustomize and systemd; the example's files are the ones deploy/example
ships (tests/integration/test_sessions_apache.py runs them on real Apache)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_deploy_files import kubectl
from tests.deploy.test_deploy_traps import DROPINS, UNIT, unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "example"
OVERLAY = DEPLOY / "kubernetes/sessions"
SYNC = "/var/lib/carp-sidecar-sync"


def sync_paths(value: str) -> dict[str, str]:
    """CARP_SYNC_PATHS' ``name=/dir,...`` as {name: dir}."""
    return dict(item.split("=", 1) for item in value.split(","))


def conf_default(name: str, conf: str) -> str:
    """The value a carp-*.conf Defines for ``name`` when nothing did before."""
    match = re.search(rf"^\s*Define {name} (\S+)$", (EXAMPLE / "apache" / conf).read_text(), re.M)
    assert match, name
    return match.group(1)


def test_kubernetes_carries_exact_copies_of_the_example() -> None:
    """kustomize reads nothing above its folder: the overlay has copies, and they must not drift."""
    copies = {"login.php": "htdocs/login.php", "whoami.php": "htdocs/whoami.php",
              "cookie-login.php": "htdocs/cookie/login.php",
              "cookie-whoami.php": "htdocs/cookie/whoami.php",
              **{p.name: f"apache/{p.name}" for p in (EXAMPLE / "apache").glob("*.conf")}}
    assert sorted(p.name for p in (OVERLAY / "example").iterdir()) == sorted(copies)
    for copy, original in copies.items():
        assert (OVERLAY / "example" / copy).read_bytes() == (EXAMPLE / original).read_bytes(), copy


def test_compose_shares_the_replicated_volumes_between_apache_and_the_agent() -> None:
    text = (DEPLOY / "compose.yml").read_text()
    compose = yaml.safe_load(text)
    apache, agent = compose["services"]["apache"], compose["services"]["carp-sidecar"]
    env = agent["environment"]
    paths = sync_paths(env["CARP_SYNC_PATHS"])
    assert set(paths) == {"docs", "sessions"}
    agent_mounts = dict(reversed(v.split(":")[:2]) for v in agent["volumes"])  # target -> source
    apache_mounts = {v.split(":")[0]: v.split(":")[1] for v in apache["volumes"]}  # source -> target
    for path in paths.values():
        volume = agent_mounts[path]
        assert volume in compose["volumes"], f"{path}: a named volume, shared"
        assert volume in apache_mounts, f"Apache does not mount {volume}"
    sessions_in_apache = apache_mounts[agent_mounts[paths["sessions"]]]
    assert sessions_in_apache == conf_default("CARP_SESSIONS_DIR", "carp-sessions.conf")
    assert apache_mounts[agent_mounts[paths["docs"]]] == "/var/www/html"  # php:8.2-apache's root
    # the secrets: files the operator creates, mounted where the settings say
    assert env["CARP_SYNC_SECRET_FILE"] == "/run/secrets/carp_sync_secret"
    assert "carp_sync_secret" in agent["secrets"] and "carp_sync_secret" not in apache["secrets"]
    key = conf_default("CARP_SESSION_KEY_FILE", "carp-cookie-sessions.conf")
    assert key == "/run/secrets/carp_session_key" and apache["secrets"] == ["carp_session_key"]
    assert {"carp_sync_secret", "carp_session_key"} <= set(compose["secrets"])
    # the health check asks a page outside the replicated root; the sync port is written down
    assert env["CARP_HEALTH_URL"] == "http://127.0.0.1/example/whoami.php"
    assert "8873" in text.split("services:", 1)[0]
    for name in ("carp_sync_secret", "carp_session_key"):
        assert f"deploy/{name}" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_example_apache_configuration_parses(tmp_path: Path) -> None:
    """The three files as Debian's conf-enabled/ reads them (defaults, the paths of compose)."""
    apache = Path("/usr/sbin/apache2")
    modules = Path("/usr/lib/apache2/modules")
    php = sorted(modules.glob("libphp*.so"))
    if not apache.exists() or not php:
        pytest.skip("needs apache2 and libapache2-mod-php (make deps)")
    key = tmp_path / "key"
    key.write_text("k\n")
    conf = tmp_path / "httpd.conf"
    conf.write_text("\n".join([
        f"ServerRoot {tmp_path}", "ServerName test", "Listen 127.0.0.1:1",
        f"PidFile {tmp_path}/pid", f"ErrorLog {tmp_path}/error.log",
        *(f"LoadModule {m}_module {modules}/mod_{m}.so"
          for m in ("mpm_prefork", "authz_core", "alias", "dir")),
        f"LoadModule php_module {php[-1]}", f"Define CARP_SESSION_KEY_FILE {key}",
        *(f"Include {EXAMPLE}/apache/{name}"
          for name in ("carp-example.conf", "carp-sessions.conf", "carp-cookie-sessions.conf")),
    ]) + "\n")
    r = subprocess.run([str(apache), "-t", "-f", str(conf)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "Syntax OK" in r.stderr, r.stderr


def overlay(tmp_path: Path, *files: str) -> subprocess.CompletedProcess[str]:
    work = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY / "kubernetes", work)
    (work / "base/carp_pass").write_text("geheim")
    for name in files:
        (work / "sessions" / name).write_text(f"{name}-value\n")
    return subprocess.run(["kubectl", "kustomize", str(work / "sessions")], capture_output=True,
                          text=True, timeout=120)


@kubectl
def test_the_sessions_overlay_needs_its_two_secret_files(tmp_path: Path) -> None:
    r = overlay(tmp_path, "session_key")
    assert r.returncode != 0 and "sync_secret" in r.stderr, r.stderr
    assert overlay(tmp_path / "both", "sync_secret", "session_key").returncode == 0


@kubectl
def test_the_sessions_overlay_shares_the_host_folders_and_validates(tmp_path: Path) -> None:
    r = overlay(tmp_path, "sync_secret", "session_key")
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by[("ConfigMap", "carp-sidecar")]["data"]
    agent_pod = by[("DaemonSet", "carp-sidecar")]["spec"]["template"]["spec"]
    apache_pod = by[("DaemonSet", "apache")]["spec"]["template"]["spec"]

    def host_paths(pod: dict[str, object]) -> dict[str, str]:
        """mountPath -> the host folder behind it."""
        volumes = {v["name"]: v.get("hostPath", {}).get("path")
                   for v in pod["volumes"]}  # type: ignore[attr-defined]
        return {m["mountPath"]: volumes[m["name"]]
                for m in pod["containers"][0]["volumeMounts"]}  # type: ignore[index]

    agent_hosts, apache_hosts = host_paths(agent_pod), host_paths(apache_pod)
    paths = sync_paths(config["CARP_SYNC_PATHS"])
    assert apache_hosts["/var/www/html"] == agent_hosts[paths["docs"]] == f"{SYNC}/htdocs"
    sessions_dir = conf_default("CARP_SESSIONS_DIR", "carp-sessions.conf")
    assert apache_hosts[sessions_dir] == agent_hosts[paths["sessions"]] == f"{SYNC}/sessions"
    agent = agent_pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert config["CARP_SYNC_SECRET_FILE"] == f"{mounts['sync-secret']}/sync"
    assert mounts["tmp"] == "/tmp"  # the secret's private copies (read-only root filesystem)
    caps = set(agent["securityContext"]["capabilities"]["add"])
    assert caps == {"NET_ADMIN", "NET_RAW", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID"}
    assert {"name": "sync", "containerPort": 8873} in agent["ports"]
    from sidecar.config.settings import load

    for name, text in by[("ConfigMap", "carp-sidecar-nodes")]["data"].items():
        env = {**config, **dict(ln.split("=", 1) for ln in text.splitlines() if ln),
               "CARP_PASS": "x"}
        env.pop("CARP_PASS_FILE")
        assert load(env, offline=True).instances[0].sync_paths, name  # valid, as written
    apache = apache_pod["containers"][0]
    assert apache["image"] == "docker.io/library/php:8.2-apache"
    key = conf_default("CARP_SESSION_KEY_FILE", "carp-cookie-sessions.conf")
    assert any(key.startswith(m["mountPath"]) for m in apache["volumeMounts"])
    files = []
    for n, d in enumerate(docs):
        files.append(tmp_path / f"{n}.yaml")
        files[-1].write_text(yaml.safe_dump(d))
    r = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                        *map(str, files)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("passed") == len(docs), r.stdout + r.stderr


def test_the_systemd_drop_in_opens_the_paths_and_what_rsync_needs() -> None:
    assert "carp-sidecar@.service.d/sync-paths.conf.example" in UNIT.read_text()
    service = unit("sync-paths.conf.example")["Service"]
    assert set(service["ReadWritePaths"].split()) == {"/var/www/html", SYNC}
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert set(service[key].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_CHOWN",
                                             "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
                                             "CAP_SETGID"}
    assert service["SystemCallFilter"] == "@chown @setuid"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_loads_the_unit_with_the_sync_drop_in(tmp_path: Path) -> None:
    units = tmp_path / "etc/systemd/system"
    (units / "carp-sidecar@.service.d").mkdir(parents=True)
    shutil.copy(UNIT, units)
    shutil.copy(DROPINS / "sync-paths.conf.example", units / "carp-sidecar@.service.d/sync.conf")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tmp_path}",
                        "carp-sidecar@vip1.service"], capture_output=True, text=True, timeout=60)
    assert "exposure level" in r.stdout, r.stdout + r.stderr
    assert "Unknown key" not in r.stderr and "Failed to parse" not in r.stderr, r.stderr
    # chown() allowed again by the filter (the unit alone denies it with @privileged)
    line = next(ln for ln in r.stdout.splitlines() if "SystemCallFilter=~@privileged" in ln)
    assert line.lstrip().startswith("✗") and "chown" in line, line


@pytest.mark.parametrize("node", ["a", "b"])
def test_the_agents_settings_in_compose_are_a_valid_configuration(node: str, tmp_path: Path) -> None:
    """As `carp-sidecar check-config --offline` reads a file meant for another host."""
    from sidecar.config.settings import load, read_env_file

    env = {**read_env_file(DEPLOY / f"node-{node}.env"),
           **yaml.safe_load((DEPLOY / "compose.yml").read_text())["services"]["carp-sidecar"][
               "environment"]}
    env.pop("NODE_ENV")
    env["CARP_PASS"] = "geheim"
    env.pop("CARP_PASS_FILE")
    instance = load(env, offline=True).instances[0]
    assert {p.name: str(p.path) for p in instance.sync_paths} == sync_paths(env["CARP_SYNC_PATHS"])
