"""A restart on stop (`carp-sidecar restart --on-stop`, then SIGTERM: `podman restart`, a new
container on the same state volume): the VIP stays with the node while the next process on
the same CARP_STATE_DIR starts, and the backup never moves; without the intent a SIGTERM bows
out as ever; a successor that never comes, or cannot run, or comes too late, leaves the VIP to
the backup with no second holder (the kernel's lifetime on the address, or `run` removing it).

Two real agents in network namespaces (sidecar.lab), the intent armed with the real command
line over the control socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.lab import VIP, Lab
from sidecar.runtime.resume import RESUME_FILE

from .conftest import (
    dump_on_failure,
    metric,
    status,
    transitions,
    vip_holders,
    wait_for,
    write_scripts,
)
from .test_faults import log_of

ROOT = Path(__file__).resolve().parents[2]
# b's master-down interval: 3 x 1 s + 100/256 s; a's record ends 0.5 s before its share of it
MASTER_DOWN = 3 + 100 / 256


class Holders:
    """Who holds the VIP, sampled in a thread: (monotonic time, sorted holders)."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.samples = lab, list[tuple[float, list[str]]]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), vip_holders(self.lab)))
            self._stop.wait(0.02)

    def stop(self) -> list[tuple[float, list[str]]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples

    def window(self, holders: list[str]) -> float:
        """From the first to the last sample with exactly ``holders`` (0: never seen)."""
        seen = [t for t, h in self.samples if h == holders]
        return seen[-1] - seen[0] if seen else 0.0


def _cli(lab: Lab, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The command line, on the host: the control socket is a path in the lab's directory."""
    return subprocess.run([sys.executable, "-m", "sidecar.tools.cli", *argv, "--socket",
                           str(lab.dir / f"{node}.sock")], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def pair(lab: Lab) -> Iterator[Lab]:
    """node-a MASTER (preempt), node-b BACKUP (advskew 100)."""
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    try:
        yield lab
    except BaseException:
        print(dump_on_failure(lab), file=sys.stderr)
        raise


def _arm(lab: Lab, seconds: str = "60") -> None:
    r = _cli(lab, "a", "restart", "--on-stop", "--within", seconds)
    assert r.returncode == 0, r.stderr
    until = status(lab, "a")["agent"]["restart_on_stop_until"]  # type: ignore[index]
    assert until is not None and 0 < until - time.time() <= float(seconds) + 1, until


def _stop(lab: Lab) -> float:
    """SIGTERM to node-a's agent; when it had exited (monotonic)."""
    proc = lab.agents.pop("a")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(8) == 0
    return time.monotonic()


def _valid_lifetime(lab: Lab) -> str:
    out = lab.topo["a"].run("ip", "-o", "addr", "show", "dev", "eth0", "to", VIP).stdout
    return out.split("valid_lft", 1)[1].split()[0] if "valid_lft" in out else ""


def test_the_next_process_on_the_state_dir_keeps_the_vip_and_the_backup_stays(
        pair: Lab) -> None:
    lab = pair
    _arm(lab)
    holders = Holders(lab)
    try:
        stopped = _stop(lab)
        lab.start_agent("a", CARP_PREEMPT="true")  # the new container on the kept volume
        wait_for(lambda: "Resumed as MASTER on eth0 id 1" in log_of(lab, "a"), 8,
                 "node-a's successor resumed")
        print(f"on stop: the successor resumed {time.monotonic() - stopped:.2f} s after the "
              "exit")
        time.sleep(MASTER_DOWN)  # longer than the backup would wait for a silent master
    finally:
        samples = holders.stop()
    assert samples and all(h == ["a"] for _, h in samples), [
        (round(t - samples[0][0], 2), h) for t, h in samples if h != ["a"]]
    assert "MASTER" not in transitions(lab, "b")
    assert "Stopping for a restart: VIPs kept until the next process on" in log_of(lab, "a")
    assert metric(lab, "a", "carp_restarts_total", kind="on_stop", result="resumed") == 1
    agent = status(lab, "a")["agent"]
    assert agent["last_restart"]["kind"] == "on_stop", agent  # type: ignore[index]
    assert _valid_lifetime(lab) == "forever", "the successor ends the lease"
    assert not (lab.dir / "a-state" / RESUME_FILE).exists(), "used once"


def test_a_plain_stop_still_hands_over_at_once(pair: Lab) -> None:
    lab = pair
    stopped = _stop(lab)
    wait_for(lambda: vip_holders(lab) == ["b"], 2, "node-b takes over at once")
    assert time.monotonic() - stopped < 1.0
    assert not (lab.dir / "a-state" / RESUME_FILE).exists()
    assert "Stopping for a restart" not in log_of(lab, "a")


def test_no_successor_the_kernel_ends_the_vip_and_a_late_one_starts_afresh(pair: Lab) -> None:
    lab = pair
    _arm(lab)
    holders = Holders(lab)
    try:
        stopped = _stop(lab)
        lifetime = _valid_lifetime(lab)
        assert lifetime.endswith("sec") and int(lifetime[:-3]) <= MASTER_DOWN, lifetime
        wait_for(lambda: vip_holders(lab) == ["b"], MASTER_DOWN + 3, "node-b takes over")
        took = time.monotonic() - stopped
    finally:
        holders.stop()
    print(f"no successor: node-b took over {took:.2f} s after the exit; two holders for "
          f"{holders.window(['a', 'b']):.2f} s, none for {holders.window([]):.2f} s")
    assert took <= MASTER_DOWN + 0.5, took
    assert holders.window(["a", "b"]) <= 1.0, holders.window(["a", "b"])
    assert holders.window([]) <= MASTER_DOWN, holders.window([])
    record = json.loads((lab.dir / "a-state" / RESUME_FILE).read_text())
    assert record["kind"] == "on_stop" and record["instances"][0]["state"] == "MASTER"
    # the container comes back after all, too late: its record has expired
    lab.start_agent("a")
    wait_for(lambda: lab.state("a") == "BACKUP", 8, "node-a's late successor BACKUP")
    assert "not used: expired" in log_of(lab, "a") and "starting afresh" in log_of(lab, "a")
    assert metric(lab, "a", "carp_restarts_total", kind="on_stop", result="afresh") == 1
    assert not (lab.dir / "a-state" / RESUME_FILE).exists()
    assert vip_holders(lab) == ["b"]


def test_a_successor_that_cannot_run_removes_the_vip_at_once(pair: Lab) -> None:
    lab = pair
    _arm(lab)
    stopped = _stop(lab)
    assert vip_holders(lab) == ["a"], "kept for the successor"
    proc = lab.start_agent("a", CARP_ADVSKEW="many")  # a new version refusing the config
    assert proc.wait(10) == 2
    lab.agents.pop("a")
    assert "a" not in vip_holders(lab), "removed by the failed run, not by the kernel later"
    text = log_of(lab, "a")
    assert "removed VIP 172.16.0.1/16 kept for this restart" in text, text[-2000:]
    assert "deleted the restart record" in text
    assert not (lab.dir / "a-state" / RESUME_FILE).exists()
    wait_for(lambda: vip_holders(lab) == ["b"], MASTER_DOWN + 1, "node-b takes over")
    assert time.monotonic() - stopped <= MASTER_DOWN + 0.5


def test_a_record_that_cannot_be_written_makes_it_a_plain_stop(pair: Lab) -> None:
    lab = pair
    _arm(lab)
    blocked = lab.dir / "a-state" / RESUME_FILE  # a directory where the record goes
    blocked.mkdir()
    (blocked / "x").write_text("")
    stopped = _stop(lab)
    wait_for(lambda: vip_holders(lab) == ["b"], 2, "node-b takes over at once")
    assert time.monotonic() - stopped < 1.0
    text = log_of(lab, "a")
    assert "Cannot write the restart record in" in text and "stopping as a plain stop" in text
    assert "Stopping for a restart" not in text


def test_the_restart_command_waits_for_the_new_process_and_says_what_came_of_it(
        lab: Lab) -> None:
    """`carp-sidecar restart` (in place, sidecar.tools.restartcli) against the real agent:
    the agent's reply, then one line from the process that replaced it."""
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    before = status(lab, "a")["agent"]
    r = _cli(lab, "a", "restart")
    assert r.returncode == 0, r.stdout + r.stderr
    reply, said = r.stdout.strip().splitlines()
    assert reply.startswith("ok: restarting in place (pid "), reply
    assert said.startswith("restarted in place in "), said
    assert said.endswith(f"version {before['version']} -> {before['version']}; "  # type: ignore[index]
                         "eth0 vhid 1 MASTER kept"), said
    assert status(lab, "a")["agent"]["started"] != before["started"]  # type: ignore[index]
    assert vip_holders(lab) == ["a"]


def test_vips_of_the_scripts_are_never_kept(lab: Lab) -> None:
    """What an upscript added, no kernel lifetime was set on: kept, it would outlive a
    successor that never comes. The armed stop is a plain one (bow-out, downscript)."""
    up, down = write_scripts(lab)
    lab.start_agent("a", CARP_PREEMPT="true", CARP_UPSCRIPT=str(up), CARP_DOWNSCRIPT=str(down))
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    _arm(lab)
    _stop(lab)
    assert vip_holders(lab) == [], "the downscript ran"
    assert "are its scripts'" in log_of(lab, "a") and "stopping as a plain stop" in log_of(lab, "a")
    assert not (lab.dir / "a-state" / RESUME_FILE).exists()
