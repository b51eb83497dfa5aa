"""deploy/ for a restart without a move (docs/operations.md "Restarting and upgrading"): the
safe default everywhere is the bow-out; keeping the VIP across a pod's end is an explicit,
optional component, and the systemd unit's reload stays the configuration reload."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.deploy.test_deploy_files import kubectl
from tests.deploy.test_deploy_traps import unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
ARM = "restart --on-stop --within 120"


def _render(*resources: str, components: tuple[str, ...] = ()) -> list[dict[str, object]]:
    """An operator's overlay of deploy/kubernetes, rendered with kubectl's kustomize."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "kubernetes"
        shutil.copytree(DEPLOY / "kubernetes", work)
        (work / "base/carp_pass").write_text("geheim")
        (work / "mine").mkdir()
        (work / "mine/kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"../{r}" for r in resources],
            "components": [f"../{c}" for c in components]}))
        r = subprocess.run(["kubectl", "kustomize", str(work / "mine")], capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _pod(docs: list[dict[str, object]]) -> dict[str, object]:
    ds = next(d for d in docs if d["kind"] == "DaemonSet"
              and d["metadata"]["name"] == "carp-sidecar")  # type: ignore[index]
    return ds["spec"]["template"]["spec"]  # type: ignore[index,no-any-return]


def _agent(docs: list[dict[str, object]]) -> dict[str, object]:
    return _pod(docs)["containers"][0]  # type: ignore[index,no-any-return]


@kubectl
def test_the_base_bows_out_and_the_component_arms_the_intent_before_sigterm(
        tmp_path: Path) -> None:
    assert "lifecycle" not in _agent(_render("base"))  # the default: a stop hands over at once
    for base in ("monitoring", "base"):  # a component: it composes with either
        docs = _render(base, components=("restart-keeps-vip",))
        command = _agent(docs)["lifecycle"]["preStop"]["exec"]["command"]  # type: ignore[index]
        assert command[:2] == ["sh", "-c"] and command[2].startswith("exec carp-sidecar ")
        # the node's own env file: the command finds the socket the agent was configured with
        assert '--env-file "/etc/carp-sidecar/nodes/$NODE_NAME.env"' in command[2]
        assert command[2].endswith(ARM)
        # the record waits in the state directory, which the next pod on the node mounts
        assert any(v.get("hostPath", {}).get("path") == "/var/lib/carp-sidecar"
                   for v in _pod(docs)["volumes"])  # type: ignore[attr-defined]
    daemonset = tmp_path / "daemonset.yaml"
    daemonset.write_text(yaml.safe_dump(next(d for d in docs if d["kind"] == "DaemonSet" and
                                             d["metadata"]["name"] == "carp-sidecar")))  # type: ignore[index]
    r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(daemonset)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
    text = (DEPLOY / "kubernetes/restart-keeps-vip/kustomization.yaml").read_text()
    assert "TRADE-OFF" in text and "master-down interval" in text


def test_systemd_reload_is_the_restart_in_place_and_the_reload_is_documented() -> None:
    service = unit()["Service"]
    assert service["ExecReload"] == ("/opt/carp-sidecar/bin/carp-sidecar --env-file "
                                     "/etc/carp-sidecar/%i.env restart")
    text = (DEPLOY / "systemd/carp-sidecar@.service").read_text()
    assert "carp-sidecar --env-file /etc/carp-sidecar/NAME.env reload" in text


def test_compose_says_how_to_upgrade_without_a_move() -> None:
    header = (DEPLOY / "compose.yml").read_text().split("services:", 1)[0]
    assert "carp-sidecar restart --on-stop" in header and "carp-state" in header
