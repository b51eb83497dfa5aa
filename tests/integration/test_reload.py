"""Reload (SIGHUP, `carp-sidecar reload`): a changed configuration applied live, without moving
VIPs that need not move; a bad one refused whole while the agent keeps running what it had."""

from __future__ import annotations

import signal
import sys
import time

from sidecar.lab import LAB_PASSWORD, Lab

from .conftest import dump_on_failure, metric, transitions, wait_for
from .test_faults import log_of
from .test_instances import NO_LAB_DEFAULTS, VIPS, holders, write_config


def reload(lab: Lab, node: str, check: bool = True) -> str:
    cli = [sys.executable, "-m", "sidecar.tools.cli", "reload", "--socket", str(lab.dir / f"{node}.sock")]
    r = lab.topo[node].run(*cli, check=False, timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def tables(*vhids: tuple[int, int]) -> str:
    return "".join(f"[[vhid]]\nvhid = {vhid}\naddr = [\"{VIPS[vhid]}/16\"]\nadvskew = {skew}\n\n"
                   for vhid, skew in vhids)


def master_transitions(lab: Lab, node: str, vhid: int) -> float:
    text = lab.get(node, "http://127.0.0.1:9655/metrics") or ""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("carp_transitions_total{") and f'vhid="{vhid}"' in line
               and ('to="MASTER"' in line or 'from="MASTER"' in line))


def test_reload_adds_removes_and_updates_instances_without_moving_what_need_not_move(
        lab: Lab) -> None:
    a = write_config(lab, "a", tables((1, 0), (2, 0)))
    b = write_config(lab, "b", tables((1, 100), (2, 100)))
    lab.start_agent("a", CARP_CONFIG=str(a), **NO_LAB_DEFAULTS)
    lab.start_agent("b", CARP_CONFIG=str(b), **NO_LAB_DEFAULTS)
    wait_for(lambda: holders(lab) == {1: ["a"], 2: ["a"], 3: []}, 12, "node-a masters 1 and 2")
    moves = master_transitions(lab, "a", 1), master_transitions(lab, "b", 1)
    extra_vip = "172.16.0.21"
    # node-a: VHID 1 gets a better skew and a second VIP, VHID 2 goes, VHID 3 arrives
    two_vips = tables((1, 10)).replace(f'"{VIPS[1]}/16"', f'"{VIPS[1]}/16", "{extra_vip}/16"')
    write_config(lab, "a", two_vips + tables((3, 0)))
    write_config(lab, "b", tables((1, 100), (3, 100)))
    reply_a, reply_b = reload(lab, "a"), reload(lab, "b")
    assert "vhid 1 on eth0: vips +172.16.0.21/16, advskew 0 -> 10" in reply_a, reply_a
    assert "vhid 2 on eth0: removed" in reply_a and "vhid 3 on eth0: added" in reply_a
    assert "vhid 2 on eth0: removed" in reply_b
    wait_for(lambda: holders(lab) == {1: ["a"], 2: [], 3: ["a"]}, 8, "VHID 2 gone, 3 on a")
    addrs = lab.topo["a"].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f" {extra_vip}/16" in addrs, addrs  # the new VIP of the running master, at once
    assert (master_transitions(lab, "a", 1), master_transitions(lab, "b", 1)) == moves
    assert metric(lab, "a", "carp_advskew", vhid="1") == 10
    assert metric(lab, "a", "carp_vip_present", vhid="1", vip=extra_vip) == 1
    text = lab.get("a", "http://127.0.0.1:9655/metrics") or ""
    assert 'vhid="2"' not in text  # no series left to raise CarpNoMaster for a removed VHID
    assert metric(lab, "a", "carp_config_last_reload_successful") == 1
    # the VIP removed from the list leaves the master at once
    write_config(lab, "a", tables((1, 10), (3, 0)))
    assert "vips -172.16.0.21/16" in reload(lab, "a")
    wait_for(lambda: f" {extra_vip}/" not in lab.topo["a"].run(
        "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout, 3, "extra VIP removed")
    assert (master_transitions(lab, "a", 1), master_transitions(lab, "b", 1)) == moves
    assert "Traceback" not in log_of(lab, "a") + log_of(lab, "b")


def test_a_bad_file_is_refused_whole_and_the_agent_keeps_running(lab: Lab) -> None:
    a = write_config(lab, "a", tables((1, 0)))
    lab.start_agent("a", CARP_CONFIG=str(a), **NO_LAB_DEFAULTS)
    wait_for(lambda: holders(lab)[1] == ["a"], 10, "node-a MASTER")
    good = a.read_text()
    a.write_text(good.replace("advskew = 0", "advskew = 0\nvhid_typo = 3") + tables((2, 300)) +
                 "[[vhid]]\nvhid = 3\naddr = [\"172.16.0.300/16\"]\n")
    out = reload(lab, "a", check=False)
    assert "reload refused, nothing changed" in out, out
    text = log_of(lab, "a")
    # every error at once, each named
    assert "advskew" in text and "172.16.0.300" in text, text[-3000:]
    assert "Reload refused: still running the previous configuration" in text
    assert metric(lab, "a", "carp_config_last_reload_successful") == 0
    assert holders(lab) == {1: ["a"], 2: [], 3: []} and lab.state("a") == "MASTER"
    a.write_text(good.replace("advskew = 0", "advskew = 5"))
    lab.agents["a"].send_signal(signal.SIGHUP)  # the signal does the same as the command
    wait_for(lambda: metric(lab, "a", "carp_config_last_reload_successful") == 1, 8,
             "SIGHUP reloads the fixed file")
    assert metric(lab, "a", "carp_advskew", vhid="1") == 5
    assert lab.agents["a"].poll() is None and lab.state("a") == "MASTER"
    assert metric(lab, "a", "carp_config_last_reload_success_timestamp_seconds") > time.time() - 30


def test_a_worse_advskew_on_a_master_lets_the_preempting_peer_take_over(lab: Lab) -> None:
    env = lab.dir / "a.env"
    env.write_text("CARP_ADVSKEW=0\n")
    lab.start_agent("a", "--env-file", str(env))
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PREEMPT="true")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    env.write_text("CARP_ADVSKEW=200\n")
    assert "advskew 0 -> 200" in reload(lab, "a")
    wait_for(lambda: lab.state("b") == "MASTER" and lab.state("a") == "BACKUP", 5,
             "node-b preempts the now worse master")


def test_a_changed_password_is_swapped_in_place_and_never_shown(lab: Lab) -> None:
    """Round 4: the instance was restarted (a master bowed out, the VIP moved); the key is now
    swapped in place (a rotation, docs/runbook.md, needs CARP_PASS_NEXT besides)."""
    secret = lab.dir / "pass-file"
    secret.write_text(LAB_PASSWORD + "\n")
    lab.start_agent("a", CARP_PASS="", CARP_PASS_FILE=str(secret))
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    secret.write_text("s3cret-new\n")
    out = reload(lab, "a")
    assert "vhid 1 on eth0: password changed" in out and "restarted" not in out, out
    time.sleep(1.5)
    assert lab.state("a") == "MASTER"
    assert "s3cret-new" not in out + log_of(lab, "a")
    assert transitions(lab, "a").count("MASTER") == 1  # no restart, no transition


def test_as_ucarp_sighup_keeps_ucarps_meaning_a_clean_exit(lab: Lab) -> None:
    from .test_dropin import ucarp_symlink

    cmd = [str(ucarp_symlink(lab) / "ucarp"), "-i", "eth0", "-s", "172.16.0.11", "-v", "1",
           "-p", LAB_PASSWORD, "-a", VIPS[1], "-b", "1", "-z"]
    from sidecar.lab.scenario import agent_env

    env = agent_env(lab.dir, "a", "172.16.0.11")
    proc = lab.topo.start("a", cmd, log=lab.dir / "a.log", env=env)
    lab.agents["a"] = proc
    wait_for(lambda: lab.state("a") == "MASTER", 10, "ucarp-named agent MASTER")
    proc.send_signal(signal.SIGHUP)
    proc.wait(10)
    assert proc.returncode == 0, dump_on_failure(lab)
    assert not lab.has_vip("a")
    assert "Received SIGHUP: stopping" in log_of(lab, "a")


def test_a_health_check_added_and_removed_by_reload_gates_the_node(lab: Lab) -> None:
    """Checks are rebuilt by a reload: a failing one demotes the master (a real change, so a
    transition), and removing it lets the preferred node preempt back."""
    env = lab.dir / "a.env"
    env.write_text("CARP_PREEMPT=true\n")
    lab.start_agent("a", "--env-file", str(env))
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    env.write_text("CARP_PREEMPT=true\nCARP_HEALTH_CMD=false\nCARP_HEALTH_INTERVAL=0.2\n")
    assert "health check service: added" in reload(lab, "a")
    wait_for(lambda: lab.state("b") == "MASTER" and lab.state("a") == "BACKUP", 5,
             "the unhealthy node hands over")
    assert metric(lab, "a", "carp_health_up") == 0
    env.write_text("CARP_PREEMPT=true\n")
    assert "health check service: removed" in reload(lab, "a")
    wait_for(lambda: lab.state("a") == "MASTER", 6, "node-a back once the check is gone")
    assert metric(lab, "a", "carp_health_up") == 1


def test_a_maintenance_file_named_by_a_reload_drains_the_node_and_dropping_it_ends_that(
        lab: Lab) -> None:
    env = lab.dir / "a.env"
    env.write_text("CARP_PREEMPT=true\n")
    lab.start_agent("a", "--env-file", str(env))
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    drain = lab.dir / "drain"
    drain.touch()
    env.write_text(f"CARP_PREEMPT=true\nCARP_MAINTENANCE_FILE={drain}\n")
    assert "maintenance_file none ->" in reload(lab, "a")
    wait_for(lambda: lab.state("b") == "MASTER" and lab.state("a") == "BACKUP", 3,
             "the file drains node-a")
    assert metric(lab, "a", "carp_maintenance") == 1
    env.write_text("CARP_PREEMPT=true\n")  # the setting gone, the file still there
    reload(lab, "a")
    wait_for(lambda: lab.state("a") == "MASTER", 6, "node-a back")
    assert metric(lab, "a", "carp_maintenance") == 0
