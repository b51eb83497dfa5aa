"""The container image, run as a user would: `podman run --net=ns:... --cap-add=NET_ADMIN`.

Needs the image (`make image`); `make image-test` builds it and runs these tests.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.lab.netns import Topology

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "localhost/carp-sidecar")
pytestmark = pytest.mark.image
ENV = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "img-secret",
       "CARP_ADDR": "172.16.0.1/16", "CARP_IF_ALIAS": "eth0:0"}


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "build/containers.conf")}
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=timeout, env=env)


@pytest.fixture
def topo() -> Iterator[Topology]:
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} missing: run `make image` first (make image-test does)")
    t = Topology().create({"a": "172.16.0.11/16", "b": "172.16.0.12/16"})
    names: list[str] = []
    t.containers = names  # type: ignore[attr-defined]
    try:
        yield t
    finally:
        for name in names:
            podman("rm", "-f", "-t", "0", name, check=False)
        t.destroy()


def run(topo: Topology, node: str, *caps: str, **env: str) -> str:
    name = f"carp-{topo.tag}-{node}"
    topo.containers.append(name)  # type: ignore[attr-defined]
    args = ["run", "-d", "--name", name, f"--net=ns:/run/netns/{topo[node].ns}"]
    args += [f"--cap-add={c}" for c in caps]
    for k, v in {**ENV, **env}.items():
        args += ["-e", f"{k}={v}"]
    podman(*args, IMAGE)
    return name


def vip_on(topo: Topology, node: str) -> bool:
    return " 172.16.0.1/16" in topo[node].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout


def state(topo: Topology, node: str) -> str:
    r = topo[node].run("curl", "-s", "-m", "1", "http://127.0.0.1:9655/status", check=False)
    return r.stdout.split('"state": "')[1].split('"')[0] if '"state"' in r.stdout else ""


def test_image_two_nodes_one_master_and_podman_stop_hands_over(topo: Topology) -> None:
    a = run(topo, "a", "NET_ADMIN", "NET_RAW", CARP_PREEMPT="true")
    run(topo, "b", "NET_ADMIN", "NET_RAW", CARP_ADVSKEW="100")
    wait_for(lambda: state(topo, "a") == "MASTER" and state(topo, "b") == "BACKUP", 15,
             "one MASTER")
    assert vip_on(topo, "a") and not vip_on(topo, "b")
    assert "eth0:0" in topo["a"].run("ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert podman("healthcheck", "run", a, check=False).returncode == 0
    began = time.monotonic()
    podman("stop", "-t", "10", a)  # SIGTERM, the image's STOPSIGNAL
    assert time.monotonic() - began < 5
    wait_for(lambda: vip_on(topo, "b"), 3, "VIP on node-b")
    assert not vip_on(topo, "a")  # nothing left behind
    inspect = podman("inspect", "--format", "{{.State.ExitCode}}", a).stdout.strip()
    assert inspect == "0"
    logs = podman("logs", a).stdout + podman("logs", a).stderr
    assert "Switching to state: MASTER" in logs and "img-secret" not in logs
    assert "Traceback" not in logs


def test_image_without_net_admin_exits_with_a_clear_message(topo: Topology) -> None:
    name = run(topo, "a")  # no --cap-add at all
    wait_for(lambda: podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
             == "exited", 15, "container exit")
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    out = podman("logs", name)
    text = out.stdout + out.stderr
    assert code == "2"  # every problem found at start: exit 2, one line
    assert "missing capability NET_ADMIN" in text and "Traceback" not in text
    assert not vip_on(topo, "a")


def test_image_bad_config_exits_2_naming_the_variable(topo: Topology) -> None:
    name = run(topo, "a", "NET_ADMIN", "NET_RAW", CARP_VHID="300")
    wait_for(lambda: podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
             == "exited", 15, "container exit")
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "2"
    out = podman("logs", name)
    assert "CARP_VHID: Input should be less than or equal to 255" in out.stdout + out.stderr


def test_image_size_is_reported() -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB")
    assert size > 0


def test_image_has_its_commands_extras_and_leaves_the_lab_out() -> None:
    """watch (scapy) and import (tomli-w) run in the image; the lab, which needs network
    namespaces and Apache, is not shipped, and saying so names the extra."""
    py = "import scapy.layers.l2, tomli_w, importlib.util as u; print(u.find_spec('sidecar.lab'))"
    r = podman("run", "--rm", "--entrypoint", "python3", IMAGE, "-c", py, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr
    lab = podman("run", "--rm", IMAGE, "lab", check=False)
    assert lab.returncode == 1
    assert "pip install 'carp-sidecar[lab]'" in lab.stderr


def test_image_runs_the_classic_ucarp_conf_and_scripts_as_env_file(topo: Topology, tmp_path: Path) -> None:
    etc = tmp_path / "ucarp"
    etc.mkdir()
    conf = (ROOT / "deploy/ucarp.conf.example").read_text()  # paths stay /etc/ucarp/...
    (etc / "ucarp.conf").write_text(conf)
    (etc / "ucarp-up.sh").write_text("#!/bin/bash\n. /etc/ucarp/ucarp.conf\n"
                                     '/sbin/ifconfig "$UCARP_IF_ALIAS" "$UCARP_ADDR" netmask '
                                     '"$UCARP_MASK"\n')
    (etc / "ucarp-down.sh").write_text('#!/bin/bash\n. /etc/ucarp/ucarp.conf\n'
                                       '/sbin/ifconfig "$UCARP_IF_ALIAS" down\n')
    for p in ("ucarp-up.sh", "ucarp-down.sh"):
        (etc / p).chmod(0o700)
    name = f"carp-{topo.tag}-classic"
    topo.containers.append(name)  # type: ignore[attr-defined]
    podman("run", "-d", "--name", name, f"--net=ns:/run/netns/{topo['a'].ns}",
           "--cap-add=NET_ADMIN", "--cap-add=NET_RAW", "-v", f"{etc}:/etc/ucarp:ro",
           "--env-file", str(etc / "ucarp.conf"), IMAGE)
    wait_for(lambda: "eth0:0" in topo["a"].run("ip", "-4", "addr", "show", "dev", "eth0").stdout,
             10, "eth0:0 raised by the classic up script")
    assert " 172.16.0.1/16" in topo["a"].run("ip", "-4", "-o", "addr").stdout
    podman("stop", "-t", "10", name)
    assert not vip_on(topo, "a")
    logs = podman("logs", name)
    text = logs.stdout + logs.stderr
    assert "Spawning [/etc/ucarp/ucarp-up.sh eth0 172.16.0.1]" in text
    assert "Spawning [/etc/ucarp/ucarp-down.sh eth0 172.16.0.1]" in text and "geheim" not in text


def test_image_as_ucarp_takes_a_ucarp_command_line(topo: Topology) -> None:
    """`--entrypoint ucarp` with the options of a start script; --daemonize keeps PID 1 in the
    foreground (the container would end otherwise)."""
    name = f"carp-{topo.tag}-asucarp"
    topo.containers.append(name)  # type: ignore[attr-defined]
    podman("run", "-d", "--name", name, f"--net=ns:/run/netns/{topo['a'].ns}",
           "--cap-add=NET_ADMIN", "--cap-add=NET_RAW", "--entrypoint", "ucarp", IMAGE,
           "--interface=eth0", "--srcip=172.16.0.11", "--vhid=1", "--pass=geheim",
           "--addr=172.16.0.1", "--daemonize", "--preempt")
    def vip32() -> bool:  # ucarp's --addr is one address: /32 without a mask
        return " 172.16.0.1/32" in topo["a"].run("ip", "-4", "-o", "addr", "show", "dev",
                                                 "eth0").stdout

    wait_for(vip32, 10, "VIP raised by the ucarp drop-in")
    podman("stop", "-t", "10", name)
    assert not vip32()
    logs = podman("logs", name)
    assert "--daemonize ignored in a container" in logs.stdout + logs.stderr


def test_image_labels_name_the_version_commit_time_and_source() -> None:
    import json

    import sidecar

    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", IMAGE).stdout)
    assert labels["org.opencontainers.image.version"] == sidecar.__version__
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # built from this checkout by `make image`
        assert labels["org.opencontainers.image.revision"] == head.stdout.strip()
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert labels["org.opencontainers.image.created"] > "2026"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert "example.invalid" not in json.dumps(labels)
    assert labels["org.opencontainers.image.licenses"] == "ISC"
    version = podman("run", "--rm", IMAGE, "--version").stdout.strip()
    assert version == f"carp-sidecar {sidecar.__version__}"


def test_build_script_removes_only_the_images_it_left_untagged(tmp_path: Path) -> None:
    """Somebody else's dangling image survives our build (podman image prune alone would
    delete it)."""
    (tmp_path / "Containerfile").write_text(
        "FROM localhost/debian:bookworm\nLABEL test.owner=someone-else\nRUN true\n")
    podman("build", "--network=host", "-q", str(tmp_path), timeout=300)  # untagged: dangling
    theirs = podman("images", "-q", "--filter", "dangling=true", "--filter",
                    "label=test.owner=someone-else").stdout.split()
    assert theirs
    try:
        r = subprocess.run(["bash", str(ROOT / ".ci/build-image.sh")], cwd=ROOT,
                           capture_output=True, text=True, timeout=900,
                           env={**os.environ, "IMAGE": IMAGE})
        assert r.returncode == 0, r.stderr[-3000:]
        assert podman("image", "exists", theirs[0], check=False).returncode == 0
        ours = podman("images", "-q", "--filter", "dangling=true", "--filter",
                      "label=io.carp-sidecar.stage=build").stdout.split()
        assert ours == []
    finally:
        for image in theirs:
            podman("rmi", "-f", image, check=False)


def test_image_for_another_architecture_when_the_machine_can_emulate_it() -> None:
    emulator = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not emulator.exists():
        pytest.skip("no arm64 emulation here (qemu-user-static registered with binfmt_misc): "
                    "linux/arm64 is built on a machine that has it, see docs/development.md 'Releases'")
    arm = f"{IMAGE}-arm64-test"
    r = subprocess.run(["bash", str(ROOT / ".ci/build-image.sh")], cwd=ROOT, capture_output=True,
                       text=True, timeout=3600,
                       env={**os.environ, "IMAGE": arm, "PLATFORMS": "linux/arm64"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = podman("run", "--rm", "--platform", "linux/arm64", arm, "--version").stdout
    assert out.startswith("carp-sidecar ")
