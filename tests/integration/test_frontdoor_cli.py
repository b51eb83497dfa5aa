"""The commands an operator types find the agent each shipped layout starts (the systemd unit,
the compose file, a start script, CARP_CONTROL_SOCKET), and `--daemonize` detaches a start
script's agent on a host that has a container runtime's marker file, but not a container's
PID 1. Every agent runs in a mount namespace of its own whose /run is an empty tmpfs: its
/run/carp-sidecar is a real one, never the host's; the operator's commands enter it (nsenter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.lab import ADDRESSES, LAB_PASSWORD, VIP, Lab, agent_env

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
A = ADDRESSES["a"].split("/")[0]
# /run/.containerenv: podman's marker, which the code before (d6edd87) read as "a container"
# as it read /.dockerenv (present on this host, a sandbox, and on many CI runners)
PRIVATE_RUN = 'mount -t tmpfs -o mode=0755 carp-test-run /run && touch /run/.containerenv && exec "$@"'
UNIT_ENV = f"CARP_INTERFACE=eth0\nCARP_SRCIP={A}\nCARP_VHID=1\nCARP_PASS={LAB_PASSWORD}\n" \
           f"CARP_ADDR={VIP}/16\n"
START_SH = f"""#!/bin/sh
# deploy/ucarp-start.sh.example after the migration guide's step 1 (ucarp -> carp-sidecar run)
exec {sys.executable} -m sidecar.tools.cli run --interface=eth0 --srcip={A} --vhid=1 \\
  --pass={LAB_PASSWORD} --advbase=1 --addr={VIP} --daemonize --preempt
"""


def private_run(*cmd: str) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_RUN, "sh", *cmd]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def agent_pid(lab: Lab) -> int:
    """The agent in node-a: the process there in a mount namespace not ours, past the
    wrappers (ip netns exec, unshare, sh)."""
    ours = os.readlink("/proc/self/ns/mnt")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = subprocess.run(["ip", "netns", "pids", lab.topo["a"].ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if comm not in ("ip", "unshare", "sh") and \
                        os.readlink(f"/proc/{pid}/ns/mnt") != ours:
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError("no agent in node-a")


def operator(lab: Lab, *argv: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """`carp-sidecar ARGV` typed on node-a's host: in the agent's mount and network namespaces."""
    pid = agent_pid(lab)
    return subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--net=/proc/{pid}/ns/net",
                           sys.executable, "-m", "sidecar.tools.cli", *argv],
                          capture_output=True, text=True, timeout=60, env=env or base_env())


def every_command(lab: Lab, *before: str, env: dict[str, str] | None = None) -> None:
    wait_for(lambda: operator(lab, *before, "status", env=env).returncode == 0, 10,
             "the agent's control socket")
    answers = {}
    for command in ("status", "demote", "promote", "reload"):
        r = operator(lab, *before, command, env=env)
        assert r.returncode == 0, (command, r.stderr, (lab.dir / "a.log").read_text()[-2000:])
        answers[command] = r.stdout
    assert "vhid 1 on eth0:" in answers["status"]
    assert "maintenance=on" in answers["demote"] and "maintenance=off" in answers["promote"]
    assert answers["reload"].startswith("reloaded:") and "no changes" in answers["reload"]


def start(lab: Lab, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = lab.topo.start("a", private_run(*cmd), log=lab.dir / "a.log", env=env)
    lab.agents["a"] = proc
    return proc


def stop(lab: Lab) -> None:
    pid = agent_pid(lab)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
             10, "the agent's exit")
    lab.agents.pop("a").wait(10)


AGENT = [sys.executable, "-m", "sidecar.tools.cli"]


def test_systemd_unit_layout_env_file_names_the_socket(lab: Lab) -> None:
    """deploy/systemd/carp-sidecar@.service for vip1: `--env-file /etc/carp-sidecar/vip1.env
    run` with CARP_CONTROL_SOCKET=/run/carp-sidecar/vip1.sock set by the unit. The operator
    types the same --env-file; before, it asked /run/carp-sidecar/eth0-vhid1.sock."""
    env_file = lab.dir / "vip1.env"
    env_file.write_text(UNIT_ENV)
    start(lab, [*AGENT, "--env-file", str(env_file), "run"],
          base_env(CARP_CONTROL_SOCKET="/run/carp-sidecar/vip1.sock",
                   CARP_STATE_DIR=str(lab.dir / "a-state")))
    every_command(lab, "--env-file", str(env_file))
    broken = lab.dir / "broken" / "vip1.env"  # the unit's name, a file that no longer validates
    broken.parent.mkdir()
    broken.write_text(UNIT_ENV.replace("CARP_VHID=1", "CARP_VHID=300"))
    r = operator(lab, "--env-file", str(broken), "reload")
    assert r.returncode == 2 and "CARP_VHID" in r.stderr and "no control socket" not in r.stderr
    stop(lab)


def test_compose_layout_configuration_names_the_socket(lab: Lab) -> None:
    """deploy/compose.yml: CARP_* in the container's environment, no socket set; `docker
    compose exec carp-sidecar carp-sidecar demote` runs with that same environment."""
    env = agent_env(lab.dir, "a", A, CARP_CONTROL_SOCKET="")
    env = base_env(**{k: v for k, v in env.items() if k.startswith("CARP_") and v})
    start(lab, [*AGENT, "run"], env)
    every_command(lab, env=env)
    stop(lab)


def test_control_socket_variable_alone(lab: Lab) -> None:
    """Before, demote, promote and reload needed the whole configuration beside it."""
    lab.start_agent("a")  # the lab's agent: CARP_CONTROL_SOCKET in its lab directory
    sock = str(lab.dir / "a.sock")
    wait_for(lambda: Path(sock).is_socket(), 10, "the agent's socket")
    for command in ("status", "demote", "promote", "reload"):
        r = subprocess.run([*AGENT, command], capture_output=True, text=True, timeout=60,
                           env=base_env(CARP_CONTROL_SOCKET=sock))
        assert r.returncode == 0, (command, r.stderr)
    lab.stop_agent("a")


def test_start_script_daemonizes_on_a_marked_host_and_commands_find_its_socket(lab: Lab) -> None:
    """deploy/ucarp-start.sh.example with `carp-sidecar run`: the script returns at once, as
    with ucarp, though the host has a container runtime's marker; the detached agent keeps
    running, configured by its command line alone, and the operator's commands (no
    configuration at all) find it in /run/carp-sidecar."""
    script = lab.dir / "start.sh"
    script.write_text(START_SH)
    launcher = start(lab, ["sh", str(script)], base_env(CARP_STATE_DIR=str(lab.dir / "a-state")))
    began = time.monotonic()
    try:
        code = launcher.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("the start script still runs after 10 s: --daemonize was ignored\n"
                    + (lab.dir / "a.log").read_text()[-1500:])
    returned = time.monotonic() - began
    assert code == 0 and returned < 5, (code, returned)
    wait_for(lambda: lab.state("a") == "MASTER", 10, "the detached agent MASTER")
    assert "--daemonize ignored" not in (lab.dir / "a.log").read_text()
    every_command(lab)
    print(f"\nstart script with --daemonize returned in {returned:.2f} s")
    stop(lab)


def test_daemonize_as_pid_1_stays_in_the_foreground(lab: Lab) -> None:
    """A container whose main process is the agent (`unshare --pid`: PID 1 of its namespace):
    detaching would end it, so --daemonize keeps the foreground and says so."""
    launcher = start(lab, ["unshare", "--pid", "--fork", "--mount-proc", *AGENT, "run",
                           "--interface=eth0", f"--srcip={A}", "--vhid=1",
                           f"--pass={LAB_PASSWORD}", f"--addr={VIP}", "--daemonize"],
                     base_env(CARP_STATE_DIR=str(lab.dir / "a-state")))
    wait_for(lambda: lab.state("a") is not None, 10, "the agent's /status")
    time.sleep(1)
    assert launcher.poll() is None, (lab.dir / "a.log").read_text()
    assert "--daemonize ignored in a container" in (lab.dir / "a.log").read_text()
    every_command(lab)
    stop(lab)
