"""The container image, run as a user would: `podman run --net=ns:... --cap-add=NET_ADMIN`.

Needs the image (`make image`); `make image-test` builds it and runs these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# ---- restart without a move (issue 33): the container cases ---------------------------------
# One topology for them all (CI's budget): node-b's container stays BACKUP throughout; each test
# starts its own node-a container(s) on its own state volume and stops them before the next.
# advbase 2: node-b's master-down is 6.4 s, room for a container's stop and start on a loaded CI
# machine (at advbase 1 a `podman restart` there took up to 4 s of node-b's 3.4 s).
ADVBASE = {"CARP_ADVBASE": "2"}
MASTER_DOWN = 3 * 2 + 100 / 256
HOLD = {"CARP_PREEMPT": "true", "CARP_STATE_DIR": "/state", **ADVBASE}
RESUMED_ON_STOP = 'carp_restarts_total{kind="on_stop",result="resumed"}'


class Holders:
    """Whether each node's eth0 carries the VIP, over time: `ip monitor address` events stamped
    as they arrive (a lease the kernel ends shows too), beside the state at the start."""

    def __init__(self, topo: Topology) -> None:
        self.events: dict[str, list[tuple[float, bool]]] = {"a": [], "b": []}
        self.procs = []
        for node in self.events:
            proc = subprocess.Popen(["ip", "-o", "-n", topo[node].ns, "monitor", "address"],
                                    stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(node, proc), daemon=True).start()
        time.sleep(0.2)  # listening before the first look
        for node in self.events:
            self.events[node].insert(0, (time.monotonic(), vip_on(topo, node)))

    def _read(self, node: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " 172.16.0.1/16" in line:
                self.events[node].append((time.monotonic(), not line.startswith("Deleted")))

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(5)

    def longest(self, when: Callable[[bool, bool], bool]) -> float:
        """The longest stretch (s, up to now) during which ``when(on_a, on_b)`` held."""
        merged = sorted((t, n, p) for n, evs in self.events.items() for t, p in evs)
        held, worst, began = {"a": False, "b": False}, 0.0, None
        for t, node, present in [*merged, (time.monotonic(), "", False)]:
            if began is not None:
                worst = max(worst, t - began)
            if node:
                held[node] = present
            began = (began if began is not None else t) if when(held["a"], held["b"]) else None
        return worst

    def first(self, node: str, present: bool, since: float) -> float | None:
        return next((t for t, p in self.events[node] if p == present and t >= since), None)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """Namespaces a and b, node-b's container BACKUP (advskew 100)."""
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} missing: run `make image` first (make image-test does)")
    t = Topology().create({"a": "172.16.0.11/16", "b": "172.16.0.12/16"})
    t.containers = []  # type: ignore[attr-defined]
    t.volumes = tmp_path_factory.mktemp("volumes")  # type: ignore[attr-defined]
    try:
        run(t, "b", "NET_ADMIN", "NET_RAW", CARP_ADVSKEW="100", **ADVBASE)
        yield t
    finally:
        for name in t.containers:  # type: ignore[attr-defined]
            podman("rm", "-f", "-t", "0", name, check=False)
        t.destroy()


def run_a(topo: Topology, tag: str, volume: Path, *caps: str, image: str = IMAGE) -> str:
    """A node-a container named after ``tag`` on ``volume`` (its CARP_STATE_DIR)."""
    name = f"carp-{topo.tag}-a-{tag}"
    topo.containers.append(name)  # type: ignore[attr-defined]
    args = ["run", "-d", "--name", name, f"--net=ns:/run/netns/{topo['a'].ns}",
            "-v", f"{volume}:/state", *[f"--cap-add={c}" for c in caps]]
    if "NET_ADMIN" not in caps:
        args.append("--cap-drop=NET_ADMIN")
    for k, v in {**ENV, **HOLD}.items():
        args += ["-e", f"{k}={v}"]
    podman(*args, image)
    return name


def status_of(topo: Topology, node: str) -> dict[str, Any]:
    r = topo[node].run("curl", "-s", "-m", "1", "http://127.0.0.1:9655/status", check=False)
    try:
        return dict(json.loads(r.stdout)) if r.returncode == 0 else {}
    except ValueError:
        return {}


def metric_of(topo: Topology, node: str, series: str) -> float | None:
    r = topo[node].run("curl", "-s", "-m", "1", "http://127.0.0.1:9655/metrics", check=False)
    return next((float(line.rsplit(" ", 1)[1]) for line in r.stdout.splitlines()
                 if line.startswith(series + " ")), None)


def logs_of(name: str) -> str:
    out = podman("logs", name, check=False)
    return f"--- {name}\n" + out.stdout + out.stderr


def b_takeovers(topo: Topology) -> int:
    out = podman("logs", f"carp-{topo.tag}-b")
    return (out.stdout + out.stderr).count("Switching to state: MASTER")


def a_master(topo: Topology, name: str, volume: Path) -> str:
    """A fresh node-a container, MASTER (it preempts), node-b BACKUP again."""
    volume.mkdir()
    run_a(topo, name, volume, "NET_ADMIN", "NET_RAW")
    wait_for(lambda: state(topo, "a") == "MASTER" and state(topo, "b") == "BACKUP"
             and vip_on(topo, "a") and not vip_on(topo, "b"), 20, "node-a MASTER, node-b BACKUP")
    time.sleep(1.5)  # node-b has heard node-a's adverts for a while
    return f"carp-{topo.tag}-a-{name}"


def bow_out(topo: Topology, name: str) -> None:
    """Leave the pair as the next test expects it: node-a's container gone, node-b MASTER."""
    podman("stop", "-t", "10", name, check=False)
    podman("rm", "-f", "-t", "0", name, check=False)


def past_master_down(since: float) -> None:
    """Until node-b would have taken over had nobody advertised since ``since``."""
    time.sleep(max(0.0, since + MASTER_DOWN + 0.5 - time.monotonic()))


def assert_kept(topo: Topology, holders: Holders, takeovers_before: int) -> None:
    gone = holders.longest(lambda on_a, on_b: not on_a)
    assert holders.longest(lambda on_a, on_b: on_a and on_b) == 0, holders.events
    assert gone < 2.0, f"VIP away from node-a for {gone:.2f} s"
    assert b_takeovers(topo) == takeovers_before, "node-b left BACKUP:\n" + "\n".join(
        logs_of(name)[-2500:] for name in topo.containers[-2:])  # type: ignore[attr-defined]
    assert state(topo, "b") == "BACKUP"
    print(f"\nVIP away from node-a at most {gone:.3f} s")


def restart_kept(topo: Topology, name: str, then: Callable[[], str]) -> str:
    """Arm the intent in ``name``, run ``then`` (which stops it and brings the next process),
    and check the VIP stayed and the new process resumed; the new container's name."""
    before = status_of(topo, "a").get("agent", {}).get("started")
    taken = b_takeovers(topo)
    armed = podman("exec", name, "carp-sidecar", "restart", "--on-stop", check=False)
    assert armed.returncode == 0, armed.stdout + armed.stderr
    wait_for(lambda: (status_of(topo, "a")["agent"]["restart_on_stop_until"] or 0) > time.time(),
             3, "the intent in /status")  # /status may be a scrape old
    holders = Holders(topo)
    try:
        stopped = time.monotonic()
        new = then()
        wait_for(lambda: status_of(topo, "a").get("agent", {}).get("started") not in
                 (None, before) and state(topo, "a") == "MASTER", 20, "the new process MASTER")
        past_master_down(stopped)
    finally:
        holders.close()
    assert_kept(topo, holders, taken)
    assert metric_of(topo, "a", RESUMED_ON_STOP) == 1
    logs = podman("logs", new)
    assert "Traceback" not in logs.stdout + logs.stderr
    return new


def test_image_podman_restart_with_the_intent_keeps_the_vip(pair: Topology) -> None:
    volume = pair.volumes / "restart"  # type: ignore[attr-defined]
    name = a_master(pair, "restart", volume)
    try:
        def restart() -> str:
            podman("restart", "-t", "10", name)
            return name

        restart_kept(pair, name, restart)
        logs = podman("logs", name)
        assert "Stopping for a restart: VIPs kept" in logs.stdout + logs.stderr
        assert not (volume / "restart.json").exists()  # used once
    finally:
        bow_out(pair, name)


def test_image_upgrade_to_a_new_container_on_the_volume_keeps_the_vip(pair: Topology) -> None:
    """`docker compose up -d` with a new tag: the old container stopped, a new one from another
    image (here a derived one, a LABEL apart) on the same state volume."""
    newer = f"{IMAGE}-upgrade-{pair.tag}"
    build = pair.volumes / "build"  # type: ignore[attr-defined]
    build.mkdir()
    (build / "Containerfile").write_text(f"FROM {IMAGE}\nLABEL test.upgrade={pair.tag}\n")
    podman("build", "--network=host", "-q", "-t", newer, str(build), timeout=300)
    volume = pair.volumes / "upgrade"  # type: ignore[attr-defined]
    old = a_master(pair, "old", volume)
    new = ""
    try:
        def upgrade() -> str:
            podman("stop", "-t", "10", old)
            return run_a(pair, "new", volume, "NET_ADMIN", "NET_RAW", image=newer)

        new = restart_kept(pair, old, upgrade)
    finally:
        bow_out(pair, new or old)
        podman("rmi", "-f", newer, check=False)


def test_image_podman_stop_without_the_intent_hands_over_at_once(pair: Topology) -> None:
    name = a_master(pair, "plain", pair.volumes / "plain")  # type: ignore[attr-defined]
    try:
        holders = Holders(pair)
        began = time.monotonic()
        podman("stop", "-t", "10", name)
        wait_for(lambda: vip_on(pair, "b"), 3, "VIP on node-b")
        holders.close()
        took = (holders.first("b", True, began) or time.monotonic()) - began
        assert not vip_on(pair, "a") and took < 3.0  # at once, not after node-b's master-down
        assert holders.longest(lambda on_a, on_b: on_a and on_b) < 0.5
        assert not (pair.volumes / "plain" / "restart.json").exists()  # type: ignore[attr-defined]
        print(f"\nplain stop: VIP on node-b {took:.3f} s after `podman stop` began")
    finally:
        bow_out(pair, name)


def test_image_new_container_without_net_admin_lets_the_vip_go(pair: Topology) -> None:
    """The successor cannot run (no NET_ADMIN: exit 2, and it cannot remove the VIP either):
    the kernel's lease ends the VIP on node-a and node-b takes over, never both for long."""
    volume = pair.volumes / "nocap"  # type: ignore[attr-defined]
    old = a_master(pair, "nocap-old", volume)
    armed = podman("exec", old, "carp-sidecar", "restart", "--on-stop", check=False)
    assert armed.returncode == 0, armed.stdout + armed.stderr
    holders = Holders(pair)
    try:
        began = time.monotonic()
        podman("stop", "-t", "10", old)
        assert vip_on(pair, "a")  # kept for the successor...
        new = run_a(pair, "nocap-new", volume, "NET_RAW")
        wait_for(lambda: vip_on(pair, "b") and not vip_on(pair, "a"), MASTER_DOWN + 5,
                 "node-b MASTER, the VIP gone from node-a")
        time.sleep(0.5)
    finally:
        holders.close()
    gone, taken = holders.first("a", False, began), holders.first("b", True, began)
    assert gone is not None and taken is not None
    both = holders.longest(lambda on_a, on_b: on_a and on_b)
    assert gone - began < MASTER_DOWN + 0.5, "the VIP outlived node-b's master-down on node-a"
    assert both < 1.0, f"two holders for {both:.2f} s"
    code = podman("inspect", "--format", "{{.State.ExitCode}}", new).stdout.strip()
    assert code == "2"
    print(f"\nno NET_ADMIN: VIP gone from node-a {gone - began:.2f} s after the stop, on "
          f"node-b at {taken - began:.2f} s, two holders {both:.3f} s")
    podman("rm", "-f", "-t", "0", old, new, check=False)


def test_image_restart_in_place_keeps_pid_1_and_the_vip(pair: Topology) -> None:
    name = a_master(pair, "inplace", pair.volumes / "inplace")  # type: ignore[attr-defined]
    try:
        inspect = "{{.State.Pid}} {{.State.StartedAt}}"
        before = podman("inspect", "--format", inspect, name).stdout
        started = status_of(pair, "a")["agent"]["started"]
        taken = b_takeovers(pair)
        holders = Holders(pair)
        try:
            asked = time.monotonic()
            r = podman("exec", name, "carp-sidecar", "restart", check=False, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            wait_for(lambda: status_of(pair, "a").get("agent", {}).get("started")
                     not in (None, started), 20, "the new image's status")
            past_master_down(asked)
        finally:
            holders.close()
        assert podman("inspect", "--format", inspect, name).stdout == before  # same PID 1
        assert status_of(pair, "a")["agent"]["pid"] == 1
        assert_kept(pair, holders, taken)
        assert holders.longest(lambda on_a, on_b: not on_a) == 0
        assert metric_of(pair, "a", 'carp_restarts_total{kind="in_place",result="resumed"}') == 1
    finally:
        bow_out(pair, name)
