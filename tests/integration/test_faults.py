"""Faults and hostile input (README "Fault behaviour"): never two VIP holders, never a lost
VIP, never a touched file. Each test is a regression test for one finding of the adversarial
pass; the flood and storm figures themselves are kept by `make chaos` (tests/chaos)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.lab import LAB_PASSWORD, VIP, Lab
from sidecar.lab.holders import HolderSampler

from .conftest import dump_on_failure, metric, status, transitions, vip_holders, wait_for

CHAOS = Path(__file__).resolve().parents[1] / "chaos"
PEER_BYTES = 800  # a peer's five carp_peer_* series (about 120 bytes each), with room


def exited(lab: Lab, node: str, timeout: float = 10) -> int:
    proc = lab.agents.pop(node)
    proc.wait(timeout)
    return proc.returncode


def log_of(lab: Lab, node: str) -> str:
    return (lab.dir / f"{node}.log").read_text()


def mac_of(lab: Lab, node: str) -> str:
    out = lab.topo[node].run("ip", "-o", "link", "show", "dev", "eth0").stdout
    found = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert found
    return found.group(1)


def conflicts(lab: Lab, node: str, evidence: str) -> float:
    return metric(lab, node, "carp_conflicts_total", evidence=evidence)


# ---- 1. the control socket never deletes a file it did not make ----
def test_control_socket_path_holding_other_files_is_refused_and_left_intact(lab: Lab) -> None:
    regular = lab.dir / "precious.txt"
    regular.write_text("do not delete\n")
    device = lab.dir / "null-device"
    os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for path in (regular, device):
        lab.start_agent("a", CARP_CONTROL_SOCKET=str(path))
        assert exited(lab, "a") == 2, dump_on_failure(lab)
        assert f"{path} exists and is not a socket; refusing to replace it" in log_of(lab, "a")
    assert regular.read_text() == "do not delete\n"
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    lab.start_agent("a", CARP_CONTROL_SOCKET="relative.sock")
    assert exited(lab, "a") == 2
    assert "CARP_CONTROL_SOCKET: relative.sock is not an absolute path" in log_of(lab, "a")
    assert "Traceback" not in log_of(lab, "a")


def test_deleted_control_socket_is_recreated_and_a_replaced_one_left_alone(lab: Lab) -> None:
    sock = lab.dir / "a.sock"
    lab.start_agent("a")
    wait_for(lambda: lab.state("a") == "BACKUP" or lab.state("a") == "MASTER", 8, "agent up")
    sock.unlink()
    wait_for(lambda: sock.exists() and stat.S_ISSOCK(os.lstat(sock).st_mode), 5, "re-created")
    cli = [sys.executable, "-m", "sidecar.tools.cli", "demote", "--socket", str(sock)]
    assert "maintenance=on" in lab.topo["a"].run(*cli).stdout
    sock.unlink()
    sock.write_text("not yours\n")
    wait_for(lambda: (status(lab, "a")["control_socket"] or {}).get("ok") is False,  # type: ignore[union-attr]
             4, "/status reports the lost socket")
    assert lab.stop_agent("a") == 0
    assert sock.read_text() == "not yours\n"


# ---- 2. interface deleted and re-created ----
def test_interface_deleted_and_recreated_agent_follows_it(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.topo.remove_interface("a")
    wait_for(lambda: vip_holders(lab) == ["b"], 6, "node-b takes over")
    ready = lab.topo["a"].run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://127.0.0.1:9655/readyz", check=False).stdout
    assert ready == "503"
    st = status(lab, "a")
    assert st["state"] == "BACKUP" and st["interface_present"] is False
    received_before = metric(lab, "a", "carp_adverts_received_total")
    lab.topo.recreate_interface("a")
    back = wait_for(lambda: vip_holders(lab) == ["a"], 6, "node-a back and preempting")
    assert back < 3.4 + 1.0, back  # within one master-down interval (+ one advert)
    assert metric(lab, "a", "carp_adverts_received_total") > received_before
    assert metric(lab, "a", "carp_interface_present") == 1
    ready = lab.topo["a"].run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://127.0.0.1:9655/readyz", check=False).stdout
    assert ready == "200"
    text = log_of(lab, "a")
    assert "Traceback" not in text and "Interface eth0 is back" in text, dump_on_failure(lab)


# ---- 3. scripts that daemonise; a demote while the upscript still runs ----
def test_upscript_that_starts_a_daemon_is_not_hung_and_the_daemon_lives(lab: Lab) -> None:
    pidfile = lab.dir / "daemon.pid"
    up = lab.dir / "up.sh"
    up.write_text(f"#!/bin/sh\nip addr add \"$2\"/16 dev \"$1\"\nsleep 300 &\necho $! > {pidfile}\n")
    up.chmod(0o755)
    lab.start_agent("a", CARP_UPSCRIPT=str(up), CARP_SCRIPT_TIMEOUT="5")
    wait_for(lambda: metric(lab, "a", "carp_script_runs_total", script="up", result="ok") == 1,
             8, "upscript ok")
    assert metric(lab, "a", "carp_script_duration_seconds_sum", script="up") < 1
    time.sleep(5.5)  # past the script timeout: nothing may kill the daemon
    daemon = int(pidfile.read_text())
    os.kill(daemon, 0)  # raises if the agent killed it
    assert metric(lab, "a", "carp_script_runs_total", script="up", result="timeout") == 0
    os.kill(daemon, 9)


def test_demote_during_a_slow_upscript_never_leaves_two_holders(lab: Lab) -> None:
    up, down = lab.dir / "up.sh", lab.dir / "down.sh"
    up.write_text("#!/bin/sh\nip addr add \"$2\"/16 dev \"$1\"\nsleep 60\n")
    down.write_text("#!/bin/sh\nip addr del \"$2\"/16 dev \"$1\" 2>/dev/null\nexit 0\n")
    for p in (up, down):
        p.chmod(0o755)
    lab.start_agent("a", CARP_PREEMPT="true", CARP_UPSCRIPT=str(up), CARP_DOWNSCRIPT=str(down),
                    CARP_SCRIPT_TIMEOUT="20")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER, upscript still running")
    cli = [sys.executable, "-m", "sidecar.tools.cli", "demote", "--socket", str(lab.dir / "a.sock")]
    with HolderSampler(lab) as sampler:
        lab.topo["a"].run(*cli)
        wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b alone")
        time.sleep(0.5)
    assert sampler.longest(2) <= 1.0, sampler.samples
    assert metric(lab, "a", "carp_script_runs_total", script="up", result="superseded") == 1
    assert metric(lab, "a", "carp_script_runs_total", script="down", result="ok") >= 2


# ---- 4. replayed adverts from random sources: bounded cost, bounded state ----
def test_replayed_adverts_from_random_sources_cost_little_and_grow_nothing(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    time.sleep(4)  # the takeover GARPs are over
    garps = metric(lab, "a", "carp_garps_sent_total")
    size0 = len(lab.get("a", "http://127.0.0.1:9655/metrics") or "")
    flood = [sys.executable, str(CHAOS / "flood.py"), "replay", "1000", "6", LAB_PASSWORD, VIP]
    sent = int(lab.topo["client"].run(*flood, timeout=60).stdout)
    assert sent >= 5000
    assert metric(lab, "a", "carp_adverts_received_total") >= 0.9 * sent  # they are valid
    assert metric(lab, "a", "carp_garps_sent_total") - garps <= 6 + 4  # <= one per interval
    assert conflicts(lab, "a", "advert") >= 0.9 * sent  # counted, all of them
    assert metric(lab, "a", "carp_peers") <= 32
    assert metric(lab, "a", "carp_peers_evicted_total") > 4000
    text = lab.get("a", "http://127.0.0.1:9655/metrics") or ""
    assert len(re.findall(r"^carp_peer_advskew\{", text, re.M)) <= 32
    assert len(text) - size0 < 32 * PEER_BYTES, (len(text), size0)  # the peers' series only
    assert len(status(lab, "a")["peers"]) <= 32  # type: ignore[arg-type]
    warnings = log_of(lab, "a").count("Non-preferred master advertising")
    assert warnings <= 6 + 2, warnings
    assert transitions(lab, "a") == ["BACKUP", "MASTER"]


# ---- 6. problems found at start: exit 2, one line naming the variable ----
@pytest.mark.parametrize(("env", "line"), [
    ({"CARP_INTERFACE": "eth9", "CARP_IF_ALIAS": ""}, "CARP_INTERFACE: no interface named 'eth9'"),
    ({"CARP_SRCIP": "172.16.0.99"}, "CARP_SRCIP: 172.16.0.99 is not an address of eth0"),
    ({"CARP_METRICS_LISTEN": "10.9.9.9:9655"}, "CARP_METRICS_LISTEN: cannot listen on"),
    ({"CARP_CONTROL_SOCKET": "/proc/version/x.sock"}, "CARP_CONTROL_SOCKET: cannot create"),
    ({"CARP_HEALTH_URL": "http://[::1"}, "CARP_HEALTH_URL: not a valid URL"),
])
def test_start_up_problems_exit_2_with_one_line(lab: Lab, env: dict[str, str], line: str) -> None:
    lab.start_agent("a", **env)
    assert exited(lab, "a") == 2
    lines = [t for t in log_of(lab, "a").splitlines() if t.strip()]
    assert len(lines) == 1 and line in lines[0], lines


# ---- 7. routine preemption is not a conflict; a split brain is ----
def test_ten_preempt_cycles_count_no_conflict_and_a_split_brain_does(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    cli = [sys.executable, "-m", "sidecar.tools.cli"]
    sock = ["--socket", str(lab.dir / "a.sock")]
    for _ in range(10):
        lab.topo["a"].run(*cli, "demote", *sock)
        wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b MASTER")
        lab.topo["a"].run(*cli, "promote", *sock)
        wait_for(lambda: vip_holders(lab) == ["a"], 5, "node-a preempts")
    time.sleep(1.5)
    assert metric(lab, "a", "carp_transitions_total", to="MASTER", reason="preempt") == 10
    for node in ("a", "b"):
        assert conflicts(lab, node, "advert") + conflicts(lab, node, "arp") == 0, node
    lab.stop_agent("b")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PASS="other-secret")
    wait_for(lambda: sorted(vip_holders(lab)) == ["a", "b"], 8, "split brain")
    wait_for(lambda: conflicts(lab, "a", "arp") > 0, 4, "node-a sees node-b's ARP for the VIP")


# ---- 8. a healed split brain re-announces; 9. a deleted VIP comes back with a GARP ----
def test_healed_split_brain_moves_clients_back_at_once(lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_PASS="other-secret")
    wait_for(lambda: sorted(vip_holders(lab)) == ["a", "b"], 8, "split brain")
    time.sleep(3)
    # the client last heard node-b (the worst case: its entry points at the node about to leave)
    lab.topo["client"].run("ip", "neigh", "replace", VIP, "lladdr", mac_of(lab, "b"), "dev",
                           "eth0", "nud", "reachable")
    assert lab.get("client", f"http://{VIP}/") == "node-b"
    lab.stop_agent("b")  # the operator fixes node-b ...
    lab.start_agent("b")  # ... and it joins as a BACKUP
    healed = time.monotonic()
    wait_for(lambda: lab.get("client", f"http://{VIP}/") == "node-a", 4, "client on node-a")
    took = time.monotonic() - healed
    assert took < 4, took
    # the re-announce for the silent former master (the client may also have re-resolved by
    # itself a moment earlier on a busy machine)
    # (node-b's last advert, though signed with the other password, was its bow-out: planned)
    wait_for(lambda: re.search(r"stopped advertising( \(bowed out, as planned\))?: "
                               r"re-announcing", log_of(lab, "a")), 3,
             "node-a re-announces for the former master")


def test_vip_deleted_behind_the_agent_is_readded_and_announced(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    time.sleep(4)  # the takeover GARPs are over
    garps = metric(lab, "a", "carp_garps_sent_total")
    capture = subprocess.Popen(lab.topo["client"].argv(
        "timeout", "3", "tcpdump", "-tt", "-l", "-n", "-e", "-i", "eth0", "arp"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.7)
    lab.topo["a"].run("ip", "addr", "del", f"{VIP}/16", "dev", "eth0")
    out, _ = capture.communicate(timeout=15)
    assert vip_holders(lab) == ["a"]
    assert metric(lab, "a", "carp_garps_sent_total") == garps + 1
    mac = mac_of(lab, "a")
    assert any(line.split()[1] == mac and f"tell {VIP}" in line
               for line in out.splitlines() if line.strip()), out
    assert json.dumps(status(lab, "a")).count('"MASTER"') >= 1


def test_as_pid_1_the_agent_reaps_the_daemons_its_scripts_leave(lab: Lab) -> None:
    """In a container the agent is PID 1: orphaned daemons of its scripts become its children."""
    from sidecar.lab import agent_env

    up = lab.dir / "up.sh"
    up.write_text("#!/bin/sh\nfor i in 1 2 3; do sleep 0.2 & done\nexit 0\n")
    up.chmod(0o755)
    env = {k: v for k, v in agent_env(lab.dir, "a", "172.16.0.11",
                                       CARP_UPSCRIPT=str(up)).items() if v}
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "sidecar.tools.cli", "run"]
    proc = lab.topo.start("a", cmd, log=lab.dir / "a.log", env=env)
    lab.agents["a"] = proc
    wait_for(lambda: metric(lab, "a", "carp_script_runs_total", script="up", result="ok") == 1,
             8, "upscript ok")

    def zombies() -> list[int]:
        agent = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[0] == "Z" and int(fields[1]) == agent:
                    found.append(int(entry))
        return found

    time.sleep(0.5)  # the daemons have died: zombies until someone reaps them
    wait_for(lambda: not zombies(), 4, "orphaned daemons reaped")
    assert lab.stop_agent("a") == 0
