"""Faults, round 4 (README "Fault behaviour"): reloads that restart instances. A reload that
cannot be carried out whole is refused before the running instance is touched (the VIP stays
where it is), and restarting instances leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time

from sidecar.lab import ADDRESSES, Lab
from sidecar.lab.holders import HolderSampler
from sidecar.lab.scenario import agent_env

from .conftest import dump_on_failure, metric, status, vip_holders, wait_for
from .test_faults import log_of
from .test_faults3 import MASTER_DOWN, ready_code
from .test_reload import reload
from .test_statedir import fill, small_tmpfs

A, B = ADDRESSES["a"].split("/")[0], ADDRESSES["b"].split("/")[0]


def test_a_restart_that_cannot_write_its_counter_mark_is_refused_and_keeps_the_vip(
        lab: Lab) -> None:
    """Strict mode, the state directory full, the peers changed (a restart): the new instance
    could not keep its counter mark. The reload is refused whole before the master is
    touched: it stays MASTER, the VIP never leaves."""
    env = lab.dir / "a.env"
    env.write_text(f"CARP_PEERS={B}\n")
    with small_tmpfs(lab.dir / "a-state", size="2m") as state:
        lab.start_agent("a", "--env-file", str(env), CARP_STRICT="true", CARP_PREEMPT="true")
        wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
        sent = metric(lab, "a", "carp_adverts_sent_total")
        fill(state)
        env.write_text(f"CARP_PEERS={B},172.16.0.13\n")
        with HolderSampler(lab) as sampler:
            out = reload(lab, "a", check=False)
            time.sleep(3)
        assert "reload refused, nothing changed" in out, out
        assert "No space left on device" in out, out
        assert sampler.longest(0) == 0, (sampler.longest(0), dump_on_failure(lab))
        assert vip_holders(lab) == ["a"], dump_on_failure(lab)
        assert status(lab, "a")["state"] == "MASTER"
        assert metric(lab, "a", "carp_adverts_sent_total") >= sent + 2  # adverts went on
        assert ready_code(lab, "a") == "200" and health_code(lab, "a") == "200"
        assert metric(lab, "a", "carp_config_last_reload_successful") == 0
        assert "Traceback" not in log_of(lab, "a")
        (state / "filler").unlink()  # space again: the same reload goes through
        out = reload(lab, "a")
        assert "restarted (peers" in out, out
        wait_for(lambda: lab.state("a") == "MASTER", 8, "node-a MASTER again")
        assert metric(lab, "a", "carp_config_last_reload_successful") == 1
        lab.stop_agent("a")


def script_pair(lab: Lab, takes_away: str) -> dict[str, str]:
    """Up and down scripts; the down script also removes ``takes_away`` from eth0: the host
    changing under a reload, between the old instance's stop and the new one's start."""
    up, down = lab.dir / "up.sh", lab.dir / "down.sh"
    up.write_text('#!/bin/sh\nexec ip addr add "$2"/16 dev "$1"\n')
    armed = lab.dir / "armed"  # not at start: the down script runs then too
    down.write_text(f'#!/bin/sh\n[ -e {armed} ] && ip addr del {takes_away} dev "$1"\n'
                    'ip addr del "$2"/16 dev "$1"\nexit 0\n')
    for p in (up, down):
        p.chmod(0o755)
    return {"CARP_UPSCRIPT": str(up), "CARP_DOWNSCRIPT": str(down)}


def source_reload(lab: Lab, takes_away: str) -> str:
    """node-a MASTER from 172.16.0.11, then reloaded to use 172.16.0.21 (a restart), while its
    down script takes ``takes_away`` off eth0."""
    env = lab.dir / "a.env"
    env.write_text(f"CARP_SRCIP={A}\n")
    lab.start_agent("a", "--env-file", str(env), CARP_SRCIP="", **script_pair(lab, takes_away))
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.topo["a"].run("ip", "addr", "add", "172.16.0.21/16", "dev", "eth0")
    (lab.dir / "armed").touch()
    env.write_text("CARP_SRCIP=172.16.0.21\n")
    return reload(lab, "a", check=False)


def test_a_reload_that_fails_after_stopping_an_instance_starts_it_again(lab: Lab) -> None:
    out = source_reload(lab, "172.16.0.21/16")
    assert "reload failed part way" in out and "previous instances restarted" in out, out
    assert "NOT RUNNING" not in out, out
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER again, as it was")
    assert metric(lab, "a", "carp_instances_not_running") == 0
    assert ready_code(lab, "a") == "200" and health_code(lab, "a") == "200"
    assert "started again as it was" in log_of(lab, "a")


def test_an_instance_a_failed_reload_cannot_start_again_is_shown_not_hidden(lab: Lab) -> None:
    out = source_reload(lab, f"{ADDRESSES['a']}")  # both sources gone: neither can start
    assert "reload failed part way" in out and "vhid 1 on eth0 (NOT RUNNING)" in out, out
    assert metric(lab, "a", "carp_instances_not_running") == 1
    assert ready_code(lab, "a") == "503" and health_code(lab, "a") == "503"
    assert "Instance not running: vhid 1 on eth0" in log_of(lab, "a")
    assert lab.agents["a"].poll() is None  # the agent says so, and a restart is the way back
    # ... or a reload once the host is fixed: the instance that does not run is started again
    (lab.dir / "armed").unlink()
    for address in (ADDRESSES["a"], "172.16.0.21/16"):
        lab.topo["a"].run("ip", "addr", "replace", address, "dev", "eth0")
    out = reload(lab, "a", check=False)
    assert out.startswith("reloaded:"), out
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER after the reload")
    assert metric(lab, "a", "carp_instances_not_running") == 0
    assert ready_code(lab, "a") == "200" and health_code(lab, "a") == "200"


def health_code(lab: Lab, node: str) -> str:
    return lab.topo[node].run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://127.0.0.1:9655/healthz", check=False).stdout


def test_a_corrupt_counter_mark_is_repaired_and_the_peer_accepts_the_node_again(
        lab: Lab) -> None:
    """Strict mode: an unreadable mark keeps the agent from starting (its counters could go
    back). `carp-sidecar repair-counter` sets one above any counter sent before: the node
    starts, node-b accepts its adverts (no replay drop) and it preempts back."""
    strict = {"CARP_STRICT": "true", "CARP_PREEMPT": "true", "CARP_PEERS": B}
    lab.start_agent("a", **strict)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A, CARP_STRICT="true")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    time.sleep(1.5)  # node-b has remembered node-a's counter
    assert lab.stop_agent("a") == 0
    wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b takes over")
    mark = lab.dir / "a-state" / "eth0-vhid1.counter"
    mark.write_bytes(b'{"reserved": 17')  # cut short
    refused = lab.start_agent("a", **strict)
    assert refused.wait(10) == 2
    assert "carp-sidecar repair-counter" in log_of(lab, "a")
    env = {k: v for k, v in agent_env(lab.dir, "a", A, **strict).items() if v}
    cli = [sys.executable, "-m", "sidecar.tools.cli", "repair-counter"]
    r = subprocess.run(lab.topo["a"].argv(*cli), env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "counter mark set to 9223372036854775808" in r.stdout, (
        r.stdout + r.stderr)
    lab.start_agent("a", **strict)
    wait_for(lambda: vip_holders(lab) == ["a"], MASTER_DOWN + 4, "node-a back, accepted")
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="replay") == 0
    again = subprocess.run(lab.topo["a"].argv(*cli), env=env, capture_output=True, text=True,
                           timeout=30)
    assert "nothing to repair" in again.stderr, again.stdout + again.stderr
