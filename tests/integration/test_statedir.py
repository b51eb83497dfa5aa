"""Faults, round 4: the state directory and the held-VIP record (sidecar/net/held.py,
sidecar/runtime/stale.py). A full or broken state directory never stops the agent, a record is
never cut short by a full disk, and a killed run's VIP is removed from whatever interface it is
on. The full disk is a small tmpfs mounted on the node's state directory for the test."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.lab import LAB_PASSWORD, VIP, Lab

from .conftest import metric, vip_holders, wait_for
from .test_faults import log_of
from .test_reload import reload

NO_RECORD = "running without a record of the VIPs this agent holds"


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "carp-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Until ENOSPC: the state directory is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def killed_master(lab: Lab, **env: str) -> None:
    lab.start_agent("a", CARP_PREEMPT="true", **env)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.stop_agent("a", sig=signal.SIGKILL)
    assert vip_holders(lab) == ["a"], "a SIGKILLed agent leaves its VIP"


def addresses(lab: Lab, dev: str = "eth0") -> list[str]:
    out = lab.topo["a"].run("ip", "-4", "-o", "addr", "show", "dev", dev).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_a_full_state_dir_never_stops_the_agent(lab: Lab) -> None:
    state = lab.dir / "a-state"
    with small_tmpfs(state):
        killed_master(lab)
        fill(state)
        # the killed run's record, swept, frees the space its successor's needs (reserved)
        proc = lab.start_agent("a", CARP_PREEMPT="true")
        wait_for(lambda: "Removed stale VIP 172.16.0.1 from eth0" in log_of(lab, "a")
                 or proc.poll() is not None, 10, "the stale VIP removed")
        assert proc.poll() is None, log_of(lab, "a")
        wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER again")
        assert metric(lab, "a", "carp_held_record_ok") == 1
        lab.stop_agent("a")  # a clean stop deletes the record: the disk fills up meanwhile
        fill(state)
        proc = lab.start_agent("a", CARP_PREEMPT="true")
        wait_for(lambda: NO_RECORD in log_of(lab, "a") or proc.poll() is not None, 10,
                 "the agent running without a record")
        assert proc.poll() is None, log_of(lab, "a")
        assert "No space left on device" in log_of(lab, "a")
        wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER again")
        assert metric(lab, "a", "carp_held_record_ok") == 0
        st = lab.status("a")
        assert st is not None and st["held_record"]["kept"] is False
        assert "No space left on device" in st["held_record"]["problem"]
        assert LAB_PASSWORD not in json.dumps(st)
        lab.stop_agent("a")
        assert vip_holders(lab) == []


def test_a_file_where_held_should_be_still_removes_the_killed_runs_vip(lab: Lab) -> None:
    killed_master(lab)
    held = lab.dir / "a-state" / "held"
    shutil.rmtree(held)  # the record gone, a file in its place: nothing for a sweep to read
    held.write_text("not a directory\n")
    proc = lab.start_agent("a")  # no preempt: BACKUP for a master-down interval first
    wait_for(lambda: vip_holders(lab) == [] or proc.poll() is not None, 3, "the stale VIP removed")
    assert proc.poll() is None, log_of(lab, "a")
    assert vip_holders(lab) == []
    assert "Removed stale VIP 172.16.0.1 from eth0" in log_of(lab, "a")
    assert NO_RECORD in log_of(lab, "a") and "held: Not a directory" in log_of(lab, "a")
    assert metric(lab, "a", "carp_held_record_ok") == 0
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER again")


@pytest.mark.parametrize("broken", ["read-only", "a file"])
def test_a_read_only_state_dir_or_a_file_in_its_place_never_stops_the_agent(
        lab: Lab, broken: str) -> None:
    state = lab.dir / "a-state"
    killed_master(lab)
    with contextlib.ExitStack() as undo:
        if broken == "a file":
            shutil.rmtree(state)
            state.write_text("not a directory\n")
        else:  # root writes anywhere but on a read-only mount
            subprocess.run(["mount", "--bind", "-o", "ro", str(state), str(state)], check=True)
            undo.callback(subprocess.run, ["umount", "-l", str(state)], check=False)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        env = lab.dir / "a.env"
        env.write_text("CARP_PEERS=172.16.0.12\n")
        proc = lab.start_agent("a", "--env-file", str(env))
        wait_for(lambda: vip_holders(lab) == [] or proc.poll() is not None, 3,
                 "the stale VIP removed")
        assert proc.poll() is None, log_of(lab, "a")
        assert "Removed stale VIP 172.16.0.1 from eth0" in log_of(lab, "a")
        assert "running without it: maintenance records can be read but not written" \
            in log_of(lab, "a")
        wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER again")
        assert metric(lab, "a", "carp_held_record_ok") == 0
        env.write_text("CARP_PEERS=172.16.0.12,172.16.0.99\n")  # restarts the instance
        out = reload(lab, "a", check=False)  # as at start: only strict mode needs the disk
        assert out.startswith("reloaded:") and "restarted" in out, out


def test_strict_mode_refuses_a_full_state_dir_but_removes_the_stale_vip_first(lab: Lab) -> None:
    state = lab.dir / "a-state"
    with small_tmpfs(state):
        killed_master(lab, CARP_STRICT="true", CARP_PEERS="172.16.0.12")
        shutil.rmtree(state / "held")  # no record: only the configuration finds the VIP
        fill(state)
        proc = lab.start_agent("a", CARP_PREEMPT="true", CARP_STRICT="true",
                               CARP_PEERS="172.16.0.12")
        assert proc.wait(15) == 2
        assert vip_holders(lab) == [], "the stale VIP is removed before the refusal"
        text = log_of(lab, "a")
        assert "Removed stale VIP 172.16.0.1 from eth0" in text
        assert "CARP_STATE_DIR" in text and "No space left on device" in text


def test_a_record_is_whole_on_a_full_disk_and_a_reload_of_150_vips_is_swept(lab: Lab) -> None:
    """A reload adds 150 VIPs after the state directory filled up; the agent is SIGKILLed and
    restarted with its first configuration: the record lists every one, so all are removed."""
    (lab.dir / "pass").write_text(LAB_PASSWORD + "\n")
    conf = lab.dir / "a.toml"
    head = (f'interface = "eth0"\npass_file = "{lab.dir / "pass"}"\npreempt = true\n'
            f'srcip = "172.16.0.11"\n\n[[vhid]]\nvhid = 1\naddr = ["{VIP}/16"]\n')
    many = [f"172.16.{10 + i}.{j}" for i in range(10) for j in range(1, 16)]
    tables = ""
    for i in range(10):
        addrs = ", ".join(f'"{a}/16"' for a in many[i * 15:(i + 1) * 15])
        tables += f"\n[[vhid]]\nvhid = {2 + i}\naddr = [{addrs}]\n"
    unset = {k: "" for k in ("CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS", "CARP_SRCIP")}
    state = lab.dir / "a-state"
    with small_tmpfs(state):
        conf.write_text(head)
        lab.start_agent("a", CARP_CONFIG=str(conf), **unset)
        wait_for(lambda: VIP in addresses(lab), 10, "node-a MASTER")
        fill(state)
        conf.write_text(head + tables)
        lab.agents["a"].send_signal(signal.SIGHUP)
        wait_for(lambda: set(many) <= set(addresses(lab)), 20, "the 150 VIPs added")
        lab.stop_agent("a", sig=signal.SIGKILL)
        (record,) = (state / "held").glob("*.json")
        listed = {entry[2] for entry in json.loads(record.read_bytes())["held"]}
        assert set(many) <= listed, "the record lists every VIP it held"
        conf.write_text(head)  # the operator reverted the file while the agent was dead
        lab.start_agent("a", CARP_CONFIG=str(conf), **unset)
        wait_for(lambda: not set(many) & set(addresses(lab)), 10, "the 150 VIPs removed")
        assert metric(lab, "a", "carp_held_record_ok") == 1  # its own record: reserved space


@pytest.mark.parametrize("evidence", ["record", "kind", "label"],
                         ids=["by-the-record", "by-configuration", "by-the-label"])
def test_a_vip_on_an_interface_renamed_while_the_agent_was_dead_is_removed(
        lab: Lab, evidence: str) -> None:
    """The record names the index (the sweep before validation); without it, a configured VIP
    on another interface is removed when that one is of the configured one's kind and not
    configured (a veth here), or when its label is CARP_IF_ALIAS's under the new name (the
    kernel renames labels with their interface; the new eth0 is a bridge here, so the kind
    alone would not do)."""
    # the lab labels VIPs eth0:0; without a label, the interface's kind must say it
    alias = {"CARP_IF_ALIAS": {"label": "eth0:carp", "kind": ""}.get(evidence, "eth0:0")}
    killed_master(lab, **alias)
    if evidence != "record":
        shutil.rmtree(lab.dir / "a-state" / "held")
    node = lab.topo["a"]
    node.run("ip", "link", "set", "eth0", "down")
    node.run("ip", "link", "set", "eth0", "name", "old0")
    node.run("ip", "link", "set", "old0", "up")
    if evidence == "label":
        node.run("ip", "link", "add", "eth0", "type", "bridge")
        assert "old0:carp" in node.run("ip", "-4", "-o", "addr", "show", "dev", "old0").stdout
    else:
        node.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    node.run("ip", "addr", "add", "172.16.0.11/16", "dev", "eth0")
    node.run("ip", "link", "set", "eth0", "up")
    assert VIP in addresses(lab, "old0")
    proc = lab.start_agent("a", **alias)
    wait_for(lambda: VIP not in addresses(lab, "old0") or proc.poll() is not None, 5,
             "the VIP removed from the renamed interface")
    wait_for(lambda: "Removed stale VIP 172.16.0.1 from old0" in log_of(lab, "a")
             or proc.poll() is not None, 5, "the removal logged, naming the interface")
    assert proc.poll() is None, log_of(lab, "a")
    assert "Removed stale VIP 172.16.0.1 from old0" in log_of(lab, "a")
    assert VIP not in addresses(lab, "old0")
    why = {"record": "(was eth0)", "kind": "of the same kind (veth) that is not configured",
           "label": "labelled old0:carp, CARP_IF_ALIAS eth0:carp"}[evidence]
    assert why in log_of(lab, "a"), log_of(lab, "a")


def test_a_configured_vip_on_an_interface_the_agent_has_no_claim_on_is_left_and_said(
        lab: Lab) -> None:
    """LVS-DR or anycast put the VIP on ``lo``, kube-proxy IPVS on the dummy ``kube-ipvs0``
    (this kernel has no dummy module: a bridge stands in, another kind than the configured
    veth): someone else's, whatever the configuration says; only a warning names it."""
    node = lab.topo["a"]
    node.run("ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    node.run("ip", "link", "add", "kube-ipvs0", "type", "bridge")
    node.run("ip", "addr", "add", f"{VIP}/32", "dev", "kube-ipvs0")
    proc = lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: VIP in addresses(lab) or proc.poll() is not None, 10, "node-a MASTER")
    assert proc.poll() is None, log_of(lab, "a")
    assert VIP in addresses(lab, "lo") and VIP in addresses(lab, "kube-ipvs0")
    text = log_of(lab, "a")
    for dev in ("lo", "kube-ipvs0"):
        assert f"VIP {VIP} of" in text and f"is also on {dev}, which this agent has no claim " \
            "on" in text, text
    assert "Removed stale VIP" not in text
    lab.stop_agent("a")
    assert VIP in addresses(lab, "lo") and VIP in addresses(lab, "kube-ipvs0")


def test_a_record_of_the_previous_release_is_swept_after_an_upgrade(lab: Lab) -> None:
    """1a36780's agent wrote ``json.dumps(doc)`` after a truncate, without ``crc``: a killed
    old agent's VIP is removed by the upgraded one's sweep before validation."""
    killed_master(lab)
    (record,) = (lab.dir / "a-state" / "held").glob("*.json")
    doc = json.loads(record.read_bytes())
    record.write_text(json.dumps({k: doc[k] for k in ("boot_id", "netns", "held")}))
    proc = lab.start_agent("a", CARP_ADVSKEW="many")  # validation fails: only the sweep ran
    assert proc.wait(10) == 2
    assert vip_holders(lab) == []
    assert "removed stale VIP 172.16.0.1 from eth0 (left by an earlier run)" in log_of(lab, "a")
