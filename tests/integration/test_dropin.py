"""A true drop-in for ucarp setups: the recipe's start.sh and ucarp.conf, scripts' environment,
the notify script, --neutral, the log lines people grep for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.lab import ADDRESSES, LAB_PASSWORD, VIP, Lab, agent_env

from .conftest import metric, start_ucarp, status, vip_holders, wait_for, write_scripts

ROOT = Path(__file__).resolve().parents[2]
# The recipe's ucarp.conf, as shell: an inline comment and a ${VAR} the shell expands
UCARP_CONF = """# /etc/ucarp/ucarp.conf
UCARP_INTERFACE=eth0
UCARP_IF_ALIAS=${{UCARP_INTERFACE}}:0
UCARP_SRCIP={srcip}
UCARP_VHID=1
UCARP_ADVBASE=1
UCARP_PASS={password}   # the shared secret, same on both hosts
UCARP_ADDR=172.16.0.1
UCARP_MASK=255.255.0.0
UCARP_UPSCRIPT={up}
UCARP_DOWNSCRIPT={down}
"""
# The recipe's start script: sources ucarp.conf, --daemonize, --preempt on the master only
START_SH = """#!/bin/sh
. {conf}
{ucarp} --interface=$UCARP_INTERFACE --srcip=$UCARP_SRCIP --vhid=$UCARP_VHID \\
  --pass=$UCARP_PASS --advbase=$UCARP_ADVBASE --addr=$UCARP_ADDR \\
  --upscript=$UCARP_UPSCRIPT --downscript=$UCARP_DOWNSCRIPT --daemonize {preempt}
"""
# The recipe gives both hosts the same advbase and no advskew, so who is master after a
# failover and return depends on timing and the address tie-break; the tests give the backup
# a skew so that the preferred master (with --preempt) must win, every time.


def recipe(lab: Lab, node: str, ucarp: str, preempt: bool) -> Path:
    up, down = write_scripts(lab)
    conf = lab.dir / f"ucarp-{node}.conf"
    conf.write_text(UCARP_CONF.format(srcip=ADDRESSES[node].split("/")[0], password=LAB_PASSWORD,
                                      up=up, down=down))
    start = lab.dir / f"start-{node}.sh"
    start.write_text(START_SH.format(conf=conf, ucarp=ucarp,
                                     preempt="--preempt" if preempt else "--advskew=100"))
    start.chmod(0o755)
    return start


def own_env(lab: Lab, node: str, **extra: str) -> dict[str, str]:
    """Only what keeps parallel labs apart (socket, state); everything else comes from the
    start script's command line, as with ucarp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    env.update(CARP_CONTROL_SOCKET=str(lab.dir / f"{node}.sock"),
               CARP_STATE_DIR=str(lab.dir / f"{node}-state"), PYTHONPATH=str(ROOT), **extra)
    return env


def ucarp_symlink(lab: Lab) -> Path:
    """`ucarp` on PATH that is carp-sidecar (the console script, symlinked)."""
    bindir = lab.dir / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "ucarp").symlink_to(Path(sys.executable).parent / "carp-sidecar")
    return bindir


def fail_over_and_back(lab: Lab) -> None:
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    wait_for(lambda: metric(lab, "a", "carp_adverts_received_total") >= 0, 5, "node-a /metrics")
    lab.topo.unplug("a")
    wait_for(lambda: vip_holders(lab) == ["b"], 8, "node-b takes over")
    lab.topo.plug("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a preempts back")
    assert metric(lab, "a", "carp_adverts_dropped_total", reason="bad_hmac") == 0


@pytest.mark.parametrize("how", ["symlink", "carp-sidecar run"])
def test_unchanged_start_script_forms_a_group_with_real_ucarp(lab: Lab, how: str) -> None:
    if how == "symlink":  # the start script is byte for byte a ucarp one
        start_a = recipe(lab, "a", "ucarp", preempt=True)
        path = f"{ucarp_symlink(lab)}:{os.environ['PATH']}"
    else:  # its only change: `ucarp` -> `carp-sidecar run`
        start_a = recipe(lab, "a", "carp-sidecar run", preempt=True)
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    launcher = lab.topo.start("a", ["sh", str(start_a)], log=lab.dir / "a.log",
                              env=own_env(lab, "a", PATH=path))
    lab.agents["a"] = launcher
    start_b = recipe(lab, "b", "ucarp", preempt=False)  # Debian's ucarp 1.5.2
    lab.topo.start("b", ["sh", str(start_b)], log=lab.dir / "b.log")
    fail_over_and_back(lab)
    st = status(lab, "a")
    # ucarp's -a: one address; its prefix is the scripts' (the recipe's add /16), not "/32"
    assert st["preempt"] is True and st["vips"] == ["172.16.0.1"]
    # --daemonize detaches as ucarp's does (this host has /.dockerenv, but the agent is not a
    # container's PID 1 nor its init's child): the start script has returned
    assert launcher.wait(5) == 0
    assert "--daemonize ignored" not in (lab.dir / "a.log").read_text()


def test_ucarp_conf_with_comments_and_expansion_authenticates_with_a_ucarp_node(
        lab: Lab) -> None:
    start_b = recipe(lab, "b", "ucarp", preempt=False)
    recipe(lab, "a", "ucarp", preempt=True)
    conf_a = lab.dir / "ucarp-a.conf"
    lab.topo.start("b", ["sh", str(start_b)], log=lab.dir / "b.log")
    lab.start_agent("a", "--env-file", str(conf_a), CARP_PREEMPT="true", CARP_PASS="",
                    CARP_ADDR="", CARP_IF_ALIAS="", CARP_SRCIP="", CARP_INTERFACE="",
                    CARP_VHID="")
    fail_over_and_back(lab)
    st = status(lab, "a")
    assert metric(lab, "a", "carp_adverts_received_total") > 0  # ucarp's adverts authenticate
    assert st["interface"] == "eth0" and st["vips"] == ["172.16.0.1/16"]
    out = subprocess.run([sys.executable, "-m", "sidecar.tools.cli", "--env-file", str(conf_a),
                          "check-config", "--offline"], capture_output=True, text=True,
                         env=own_env(lab, "a"), check=True).stdout
    assert "CARP_IF_ALIAS=eth0:0" in out and "CARP_PASS=***" in out


def test_daemonize_outside_a_container_detaches_like_ucarp(lab: Lab) -> None:
    code = ("import sys, sidecar.tools.cli as c; "
            "sys.argv[0] = 'ucarp'; sys.exit(c.main(sys.argv[1:]))")
    launcher = lab.topo.start("a", [sys.executable, "-c", code, "-i", "eth0", "-s", "172.16.0.11",
                                    "-v", "1", "-p", LAB_PASSWORD, "-a", VIP, "-B", "-P"],
                              log=lab.dir / "a.log", env=own_env(lab, "a"))
    assert launcher.wait(10) == 0  # the foreground process returns at once, as ucarp's does
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "the detached agent is MASTER")
    # the detached agent, named as ucarp would be (comm and command line), in node-a only
    named = set(subprocess.run(["pgrep", "-x", "ucarp"], capture_output=True, text=True).stdout.split())
    in_a = set(subprocess.run(["ip", "netns", "pids", lab.topo["a"].ns], capture_output=True,
                              text=True).stdout.split())
    pids = sorted(named & in_a)
    assert pids, "no detached agent named ucarp"
    with open(f"/proc/{pids[0]}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    sid = int(fields[3])
    assert sid not in (launcher.pid, os.getsid(0))  # detached: a session of its own


def test_scripts_get_the_settings_and_the_event_but_never_the_password(lab: Lab) -> None:
    dump = lab.dir / "env-up.json"
    up = lab.dir / "up.sh"
    # A classic up script that relies on the conf's variables without sourcing it
    up.write_text(f"#!/bin/sh\nip addr add \"$2\"/$UCARP_MASK dev \"$1\" label \"$UCARP_IF_ALIAS\"\n"
                  f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))' "
                  f"> {dump}\n")
    up.chmod(0o755)
    _, down = write_scripts(lab)
    env_file = lab.dir / "a.env"
    env_file.write_text(f"UCARP_PASS={LAB_PASSWORD}\nUCARP_MASK=255.255.0.0\nUCARP_IF_ALIAS=eth0:9\n"
                        "CLOUD_API_ENDPOINT=https://api.example.invalid/v1\n")
    lab.start_agent("a", "--env-file", str(env_file), CARP_PASS="", CARP_IF_ALIAS="",
                    CARP_UPSCRIPT=str(up), CARP_DOWNSCRIPT=str(down))
    wait_for(dump.exists, 10, "the upscript ran")
    time.sleep(0.2)
    env = json.loads(dump.read_text())
    assert env["CARP_STATE"] == "MASTER" and env["CARP_REASON"] == "master_down"
    assert env["UCARP_IF_ALIAS"] == env["CARP_IF_ALIAS"] == "eth0:9"
    assert env["UCARP_VHID"] == "1" and env["CARP_VIPS"] == "172.16.0.1/16"
    assert env["CLOUD_API_ENDPOINT"] == "https://api.example.invalid/v1"  # from the env file
    assert LAB_PASSWORD not in json.dumps(env)
    assert not {"CARP_PASS", "UCARP_PASS"} & set(env)
    out = lab.topo["a"].run("ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert "172.16.0.1/16" in out and "eth0:9" in out


def test_notify_script_hears_every_state_with_keepalived_words(lab: Lab) -> None:
    calls = lab.dir / "notify.log"
    notify = lab.dir / "notify.sh"
    notify.write_text(f"#!/bin/sh\necho \"$1 $2 $3 $CARP_STATE\" >> {calls}\n")
    notify.chmod(0o755)
    lab.start_agent("a", CARP_NOTIFYSCRIPT=str(notify))
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "MASTER")
    lab.topo.unplug("a")
    wait_for(lambda: "FAULT" in calls.read_text(), 5, "FAULT on link loss")
    lab.topo.plug("a")
    wait_for(lambda: calls.read_text().count("MASTER") == 4, 8, "MASTER again")
    lab.stop_agent("a")
    lines = calls.read_text().splitlines()
    assert lines == ["1 BACKUP startup BACKUP", "1 MASTER master_down MASTER",
                     "1 FAULT link_down FAULT", "1 BACKUP link_up BACKUP",
                     "1 MASTER master_down MASTER", "1 STOP stop STOP"], lines


def test_neutral_start_keeps_a_vip_in_place_and_drops_it_when_another_master_speaks(
        lab: Lab) -> None:
    lab.topo["a"].run("ip", "addr", "add", f"{VIP}/16", "dev", "eth0", "label", "eth0:0")
    samples: list[bool] = []
    lab.start_agent("a", CARP_NEUTRAL="true")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        samples.append(lab.has_vip("a"))
        time.sleep(0.05)
    assert all(samples) and lab.state("a") == "MASTER"  # never removed: taken over in place
    assert "Removed stale VIP" not in (lab.dir / "a.log").read_text()
    lab.stop_agent("a")
    assert not lab.has_vip("a")  # a stop still releases it
    # now with a working master elsewhere: the neutral node lets go when it hears it
    lab.start_agent("b", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["b"], 8, "node-b MASTER")
    lab.topo["a"].run("ip", "addr", "add", f"{VIP}/16", "dev", "eth0", "label", "eth0:0")
    lab.start_agent("a", CARP_NEUTRAL="true", CARP_ADVSKEW="100")
    took = wait_for(lambda: vip_holders(lab) == ["b"], 4, "node-a lets go of the VIP")
    assert took < 2.5 and lab.state("a") == "BACKUP"


def test_log_lines_people_grep_for_and_json_fields(lab: Lab) -> None:
    start_ucarp(lab, "b", advskew=100, password="not-the-lab-one")  # a wrong password
    lab.start_agent("a", CARP_LOG_FORMAT="json", CARP_LOG_LEVEL="debug")
    wait_for(lambda: metric(lab, "a", "carp_adverts_dropped_total", reason="bad_hmac") >= 3, 8,
             "bad digests counted")
    wait_for(lambda: vip_holders(lab) in (["a"], ["a", "b"]), 8, "node-a MASTER")
    lines = [json.loads(ln) for ln in (lab.dir / "a.log").read_text().splitlines()
             if ln.startswith("{")]
    digest = [ln for ln in lines if ln["msg"].startswith("Bad digest - Check vhid, password and "
                                                         "virtual IP address")]
    assert len(digest) == 1 and digest[0]["peer"] == "172.16.0.12"  # once a minute, with fields
    switch = next(ln for ln in lines if ln["msg"].startswith("Switching to state: MASTER"))
    assert (switch["vhid"], switch["state"], switch["from"], switch["reason"]) == (
        1, "MASTER", "BACKUP", "master_down")
    assert switch["ts"][-6] in "+-"  # a time zone
    assert any(ln["msg"] == "Local advertised ethernet address is [00:00:5e:00:00:01]"
               for ln in lines)
    assert any(ln["level"] == "DEBUG" for ln in lines)
    assert LAB_PASSWORD not in (lab.dir / "a.log").read_text()


def test_adverts_of_other_groups_are_counted_not_warned_about(lab: Lab) -> None:
    lab.start_agent("a")
    proc = lab.topo.start("b", ["ucarp", "-i", "eth0", "-s", "172.16.0.12", "-v", "7", "-p", "x",
                                "-a", "172.16.0.7", "-u", "/bin/true", "-d", "/bin/true",
                                "-f", "none"], log=lab.dir / "b.log")
    lab.agents["b"] = proc
    wait_for(lambda: metric(lab, "a", "carp_adverts_dropped_total", reason="other_vhid") >= 3, 8,
             "other group's adverts counted")
    text = (lab.dir / "a.log").read_text()
    assert "other_vhid" not in text and "Dropped advertisement" not in text, text


def test_stop_signal_still_works_for_a_start_script_agent(lab: Lab) -> None:
    env = agent_env(lab.dir, "a", "172.16.0.11")
    proc = lab.topo.start("a", [sys.executable, "-m", "sidecar.tools.cli", "run", "-P", "-k", "10"],
                          log=lab.dir / "a.log", env=env)
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "MASTER")
    assert status(lab, "a")["advskew"] == 10  # the option overrode nothing else, and applied
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(5) == 0 and vip_holders(lab) == []
