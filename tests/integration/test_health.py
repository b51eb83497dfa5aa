"""Beyond ucarp: Apache health demotion, maintenance mode, hanging checks."""

from __future__ import annotations

import subprocess
import sys
import time

from sidecar.lab import Lab, agent_env

from .conftest import (
    advert_times,
    max_gap,
    metric,
    status,
    transitions,
    vip_holders,
    wait_for,
)

HEALTH = {"CARP_HEALTH_URL": "http://127.0.0.1/", "CARP_HEALTH_INTERVAL": "0.5"}


def start_pair(lab: Lab, **a_env: str) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true", **HEALTH, **a_env)
    lab.start_agent("b", CARP_ADVSKEW="100", **HEALTH)
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 15, "node-a serving")


def test_apache_killed_on_master_moves_vip_and_returns_with_preempt(lab: Lab) -> None:
    start_pair(lab)
    lab.kill_apache("a")
    wait_for(lambda: lab.client_sees() == "node-b", 6, "node-b serving after Apache died on a")
    assert vip_holders(lab) == ["b"]
    st = status(lab, "a")
    assert st["state"] == "BACKUP" and st["demoted"] is True
    assert st["last_transition"]["reason"] == "unhealthy"  # type: ignore[index]
    assert metric(lab, "a", "carp_health_up") == 0
    time.sleep(4)  # a demoted node never takes the VIP, even after a master-down interval
    assert vip_holders(lab) == ["b"]
    lab.start_apache("a")
    wait_for(lambda: lab.client_sees() == "node-a", 8, "node-a back after Apache recovered")
    assert vip_holders(lab) == ["a"] and metric(lab, "a", "carp_health_up") == 1
    assert transitions(lab, "b") == ["BACKUP", "MASTER", "BACKUP"]


def test_node_whose_service_is_down_never_takes_the_vip(lab: Lab) -> None:
    lab.start_apache("b")
    lab.start_agent("a", CARP_PREEMPT="true", **HEALTH)  # no Apache on node-a at all
    lab.start_agent("b", CARP_ADVSKEW="100", **HEALTH)
    wait_for(lambda: lab.state("b") == "MASTER", 8, "node-b MASTER")
    time.sleep(4)
    assert lab.state("a") == "BACKUP" and vip_holders(lab) == ["b"]
    assert transitions(lab, "a") == ["BACKUP"]


def test_demote_and_promote_move_the_vip(lab: Lab) -> None:
    start_pair(lab)
    demote = lab.topo["a"].run(sys.executable, "-m", "sidecar.tools.cli", "demote", "--socket",
                               str(lab.dir / "a.sock"))
    assert "maintenance=on" in demote.stdout
    wait_for(lambda: lab.client_sees() == "node-b", 5, "node-b serving after demote")
    st = status(lab, "a")
    assert st["maintenance"] is True and metric(lab, "a", "carp_maintenance") == 1
    promote = lab.topo["a"].run(sys.executable, "-m", "sidecar.tools.cli", "promote", "--socket",
                                str(lab.dir / "a.sock"))
    assert "maintenance=off" in promote.stdout
    wait_for(lambda: lab.client_sees() == "node-a", 5, "node-a serving after promote")
    assert vip_holders(lab) == ["a"]


def test_control_socket_is_root_only_and_rejects_unknown_commands(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: (lab.dir / "a.sock").exists(), 5, "control socket")
    assert (lab.dir / "a.sock").stat().st_mode & 0o777 == 0o600
    r = lab.topo["a"].run(sys.executable, "-m", "sidecar.tools.cli", "demote", "--socket",
                          str(lab.dir / "nope.sock"), check=False)
    assert r.returncode == 1 and "no agent listening" in r.stderr
    second = lab.topo["a"].popen([sys.executable, "-m", "sidecar.tools.cli", "run"],
                                 log=lab.dir / "a2.log", env=agent_env(lab.dir, "a", "172.16.0.11",
                                                                  CARP_METRICS_LISTEN="off"))
    assert second.wait(10) == 2  # a second agent must not steal the socket (a start-up problem)
    assert "another agent is listening" in (lab.dir / "a2.log").read_text()
    assert (lab.dir / "a.sock").exists() and lab.state("a") in ("BACKUP", "MASTER")
    out = subprocess.run(lab.topo["a"].argv(sys.executable, "-c", (
        "import socket; s=socket.socket(socket.AF_UNIX); s.connect('" + str(lab.dir / "a.sock")
        + "'); s.sendall(b'reboot\\n'); print(s.recv(100).decode())")),
        capture_output=True, text=True, timeout=10).stdout
    assert out.startswith("error: unknown")


def test_hanging_health_command_never_delays_adverts(lab: Lab) -> None:
    lab.start_agent("a", CARP_HEALTH_CMD="sleep 3600", CARP_HEALTH_TIMEOUT="2",
                    CARP_HEALTH_INTERVAL="0.5")
    # the check never answers: the node is unhealthy from the first result and never MASTER
    assert advert_times(lab, 8) == [] and lab.state("a") == "BACKUP"
    assert metric(lab, "a", "carp_health_checks_total", result="failed") >= 2


def test_hanging_health_command_on_master_keeps_adverts_on_schedule(lab: Lab) -> None:
    flag = lab.dir / "hang"
    lab.start_agent("a", CARP_HEALTH_CMD=f"sh -c 'test -e {flag} && sleep 3600; true'",
                    CARP_HEALTH_TIMEOUT="5", CARP_HEALTH_INTERVAL="0.5", CARP_HEALTH_FALL="3")
    wait_for(lambda: lab.state("a") == "MASTER", 8, "MASTER")
    flag.touch()  # from now on every check hangs until its 5 s timeout
    stamps = advert_times(lab, 6)
    assert len(stamps) >= 5, stamps
    assert max_gap(stamps) < 1.5
    assert lab.state("a") == "MASTER"  # fall=3 x 5 s timeouts have not passed yet
