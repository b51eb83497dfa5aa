"""The operator's first hour (README "Commands", "Migrating from ucarp"): status without
arguments, check-config on the host, the process's name, the VIP's prefix with scripts, watch
across a handover. Each failed on the main issue 19 was filed against."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sidecar.lab import LAB_PASSWORD, VIP, Lab
from sidecar.lab.scenario import agent_env

from .conftest import vip_holders, wait_for, write_scripts
from .test_dropin import ucarp_symlink
from .test_faults import log_of
from .test_watch import CONFIGURED, watch

ROOT = Path(__file__).resolve().parents[2]


def cli(lab: Lab, node: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    base.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(lab.topo[node].argv(sys.executable, "-m", "sidecar.tools.cli", *args),
                          capture_output=True, text=True, env=base, timeout=60)


def test_status_without_arguments_finds_the_agent_and_prints_a_table(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    time.sleep(1.2)
    env = {"CARP_CONTROL_SOCKET": str(lab.dir / "b.sock")}  # what the container has set
    r = cli(lab, "b", "status", **env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("vhid 1 on eth0: BACKUP since 20"), lines
    assert "  master:       172.16.0.11" in lines and f"  VIPs:         {VIP}/16" in lines
    assert "  health:       no check configured" in lines
    assert any(ln.startswith("  failover:     3.39 s if the master fails") for ln in lines), lines
    a = cli(lab, "a", "status", CARP_CONTROL_SOCKET=str(lab.dir / "a.sock")).stdout
    assert "MASTER since" in a and "master:       this node (172.16.0.11)" in a
    js = cli(lab, "a", "status", "--json", CARP_CONTROL_SOCKET=str(lab.dir / "a.sock"))
    assert '"state": "MASTER"' in js.stdout
    head = subprocess.run(" ".join(lab.topo["a"].argv(sys.executable, "-m", "sidecar.tools.cli",
                                                      "status")) + " | head -1", shell=True,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "CARP_CONTROL_SOCKET": str(lab.dir / "a.sock")})
    assert head.stdout.startswith("vhid 1") and "Traceback" not in head.stderr, head.stderr


def test_check_config_checks_the_host_and_names_every_problem(lab: Lab) -> None:
    env = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": LAB_PASSWORD,
           "CARP_ADDR": f"{VIP}/16"}
    ok = cli(lab, "a", "check-config", **env)
    assert ok.returncode == 0 and "# host: can run this" in ok.stdout, ok.stderr
    bad = cli(lab, "a", "check-config", **{**env, "CARP_SRCIP": "10.9.9.9"})
    assert bad.returncode == 2
    assert "CARP_SRCIP: 10.9.9.9 is not an address of eth0 (it has 172.16.0.11)" in bad.stderr
    gone = cli(lab, "a", "check-config", **{**env, "CARP_INTERFACE": "eth9"})
    assert gone.returncode == 2 and "no interface named 'eth9'" in gone.stderr
    offline = cli(lab, "a", "check-config", "--offline", **{**env, "CARP_INTERFACE": "eth9"})
    assert offline.returncode == 0 and "not checked (--offline)" in offline.stdout
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    no_caps = subprocess.run(lab.topo["a"].argv(
        "capsh", "--drop=cap_net_raw,cap_net_admin", "--", "-c",
        f"{sys.executable} -m sidecar.tools.cli check-config"), capture_output=True, text=True,
        env={**base, **env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert no_caps.returncode == 2 and "missing capability NET_RAW" in no_caps.stderr, no_caps.stderr


def test_the_drop_in_is_named_ucarp_and_answers_version(lab: Lab) -> None:
    ucarp = ucarp_symlink(lab) / "ucarp"
    version = subprocess.run([str(ucarp), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "ucarp 1.5.2 compatible" in version.stdout, version.stderr
    cmd = [str(ucarp), "-i", "eth0", "-s", "172.16.0.11", "-v", "1", "-p", LAB_PASSWORD,
           "-a", VIP, "-b", "1", "-z"]
    proc = lab.topo.start("a", cmd, log=lab.dir / "a.log", env=agent_env(lab.dir, "a", "172.16.0.11"))
    lab.agents["a"] = proc
    wait_for(lambda: lab.state("a") == "MASTER", 10, "the drop-in MASTER")
    comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert comm == "ucarp", comm
    assert cmdline.startswith("ucarp -i eth0") and LAB_PASSWORD not in cmdline, cmdline
    pids = subprocess.run(["pidof", "ucarp"], capture_output=True, text=True).stdout.split()
    assert str(proc.pid) in pids  # `pidof ucarp` / `killall -USR1 ucarp` find it
    os.kill(proc.pid, signal.SIGUSR1)
    wait_for(lambda: "MASTER on eth0 id 1" in log_of(lab, "a"), 3, "USR1 status line")
    other = lab.start_agent("b")
    wait_for(lambda: Path(f"/proc/{other.pid}/comm").read_text().strip() == "carp-sidecar", 8,
             "carp-sidecar named carp-sidecar")


def test_vip_added_by_scripts_is_reported_with_the_prefix_the_configuration_gives(lab: Lab) -> None:
    up, down = write_scripts(lab)  # the recipe's: ip addr add "$2"/16
    scripts = {"CARP_UPSCRIPT": str(up), "CARP_DOWNSCRIPT": str(down), "CARP_ADDR": VIP}
    lab.start_agent("a", **scripts)
    wait_for(lambda: lab.state("a") == "MASTER", 10, "MASTER")
    st = lab.status("a")
    assert st is not None and st["vip"] == VIP and st["vips"] == [VIP], st  # not "/32"
    assert st["vip_prefix"] == "set by the scripts"
    assert f"VIP {VIP} (prefix: the scripts' own)" in log_of(lab, "a")
    assert lab.stop_agent("a") == 0
    lab.start_agent("a", **scripts, UCARP_MASK="255.255.0.0")
    wait_for(lambda: lab.state("a") == "MASTER", 10, "MASTER")
    st = lab.status("a")
    assert st is not None and st["vip"] == f"{VIP}/16", st


def test_watch_across_a_handover_is_not_a_split_brain(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    watcher = threading.Thread(target=lambda: result.setdefault("r", watch(lab, 8, **CONFIGURED)))
    watcher.start()
    time.sleep(3)
    assert lab.stop_agent("a") == 0  # a graceful handover in the middle of the window
    watcher.join(80)
    r = result["r"]
    assert r.returncode == 0, r.stderr
    assert "split brain" not in r.stdout, r.stdout[-2000:]
    assert "vhid 1: master 172.16.0.12" in r.stdout, r.stdout[-2000:]
    assert "overwrites" not in r.stdout + r.stderr  # no library noise
