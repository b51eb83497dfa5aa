"""The classic recipe's ucarp.conf and up/down scripts work unchanged; scripts never block."""

from __future__ import annotations

import time
from pathlib import Path

from sidecar.lab import Lab

from .conftest import dump_on_failure, metric, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNSET_LAB_DEFAULTS = {k: "" for k in ("CARP_INTERFACE", "CARP_SRCIP", "CARP_VHID", "CARP_PASS",
                                      "CARP_ADDR", "CARP_IF_ALIAS")}


def classic_setup(lab: Lab) -> Path:
    """ucarp.conf + the tutorial's bash scripts (ifconfig, sourcing ucarp.conf), for node-a."""
    conf = lab.dir / "ucarp.conf"
    up, down, argv_log = lab.dir / "ucarp-up.sh", lab.dir / "ucarp-down.sh", lab.dir / "argv.log"
    text = (ROOT / "deploy/ucarp.conf.example").read_text()
    text = text.replace("/etc/ucarp/ucarp-up.sh", str(up)).replace(
        "/etc/ucarp/ucarp-down.sh", str(down))
    conf.write_text(text)
    up.write_text(f"""#!/bin/bash
echo "$0 $*" >> {argv_log}
. {conf}
/sbin/ifconfig "$UCARP_IF_ALIAS" "$UCARP_ADDR" netmask "$UCARP_MASK"
""")
    down.write_text(f"""#!/bin/bash
echo "$0 $*" >> {argv_log}
. {conf}
/sbin/ifconfig "$UCARP_IF_ALIAS" down
""")
    for p in (up, down):
        p.chmod(0o700)
    return conf


def test_classic_ucarp_conf_and_scripts_work_unchanged(lab: Lab) -> None:
    # the tutorial's addresses: node-a's eth0 becomes 172.16.0.11/16 as in ucarp.conf
    conf = classic_setup(lab)
    proc = lab.start_agent("a", "--env-file", str(conf), **UNSET_LAB_DEFAULTS)
    wait_for(lambda: lab.state("a") == "MASTER", 8, "MASTER")
    wait_for(lambda: "eth0:0" in lab.topo["a"].run("/sbin/ifconfig").stdout, 3, "eth0:0 up")
    ifconfig = lab.topo["a"].run("/sbin/ifconfig", "eth0:0").stdout
    assert "inet 172.16.0.1 " in ifconfig and "netmask 255.255.0.0" in ifconfig
    up, down = lab.dir / "ucarp-up.sh", lab.dir / "ucarp-down.sh"
    log = (lab.dir / "a.log").read_text()
    assert f"[WARNING] Spawning [{down} eth0 172.16.0.1]" in log  # at startup, like ucarp
    assert f"[WARNING] Spawning [{up} eth0 172.16.0.1]" in log
    assert (lab.dir / "argv.log").read_text().splitlines() == [
        f"{down} eth0 172.16.0.1", f"{up} eth0 172.16.0.1"]
    assert metric(lab, "a", "carp_script_runs_total", script="up", result="ok") == 1
    assert lab.stop_agent("a") == 0 and proc.returncode == 0
    assert "eth0:0" not in lab.topo["a"].run("/sbin/ifconfig").stdout, dump_on_failure(lab)
    assert (lab.dir / "argv.log").read_text().splitlines()[-1] == f"{down} eth0 172.16.0.1"
    assert "geheim" not in (lab.dir / "a.log").read_text()


def test_hanging_upscript_never_delays_adverts_and_times_out(lab: Lab) -> None:
    hang = lab.dir / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    lab.start_agent("a", CARP_UPSCRIPT=str(hang), CARP_SCRIPT_TIMEOUT="4", CARP_XPARAM="XP")
    wait_for(lambda: lab.state("a") == "MASTER", 8, "MASTER")
    sent = metric(lab, "a", "carp_adverts_sent_total")
    time.sleep(3)  # the upscript is still hanging
    assert metric(lab, "a", "carp_adverts_sent_total") - sent >= 2
    assert metric(lab, "a", "carp_script_runs_total", script="up", result="timeout") == 0
    wait_for(lambda: metric(lab, "a", "carp_script_runs_total", script="up",
                            result="timeout") == 1, 4, "script killed at its timeout")
    log = (lab.dir / "a.log").read_text()
    assert "timed out after 4.0 s and was killed" in log
    assert f"[WARNING] Spawning [{hang} eth0 172.16.0.1 XP]" in log  # xparam is ucarp's argv[3]
    assert "Warning: no script called when going down" in log
