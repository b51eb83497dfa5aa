"""Faults, round 4: the secret. No child of the agent (health command, scripts, notify script, a
reload's child) nor the agent's own environment carries the password; a password is rotated
(CARP_PASS_NEXT) with never two holders, in a three-node group and beside a real ucarp. Each
test failed before its fix."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from sidecar.lab import Lab
from tests.chaos.rotation import mixed_group, sidecar_group

from .conftest import dump_on_failure, vip_holders, wait_for

SECRET = "s3cret-rot4"  # distinctive: searched for in every dump

# Every Python process started with this directory first on PYTHONPATH (the launcher, the agent
# it execs into, a reload's child) leaves its command line and environment, as the kernel
# shows them to anyone who may read /proc/PID, in dumps/.
SITECUSTOMIZE = """\
import os, time
_d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dumps")
with open("/proc/self/cmdline", "rb") as _c, open("/proc/self/environ", "rb") as _e:
    _dump = _c.read() + b"\\n--\\n" + _e.read()
with open(os.path.join(_d, f"{os.getpid()}-{time.monotonic_ns()}"), "wb") as _f:
    _f.write(_dump)
"""
DUMP_ENVIRON = "#!/bin/sh\ncat /proc/self/environ > {dir}/{name}-$$\nexit 0\n"


def dumps(where: Path, marker: bytes) -> list[bytes]:
    return [p.read_bytes() for p in sorted(where.iterdir()) if marker in p.read_bytes()]


def test_no_child_of_the_agent_nor_the_agent_itself_holds_the_password(lab: Lab) -> None:
    """The health command got the agent's whole environment, CARP_PASS and every CARP_*
    setting; the agent kept CARP_PASS in its own environment (/proc/PID/environ), and a
    reload's child inherited it. Now the agent is exec'd without the password variables, the
    health command gets the scripts' curated environment, and a reload's child reads them from
    a pipe."""
    site = lab.dir / "site"
    (site / "dumps").mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    children = lab.dir / "children"
    children.mkdir()
    for name in ("health", "notify"):
        script = lab.dir / f"{name}.sh"
        script.write_text(DUMP_ENVIRON.format(dir=children, name=name))
        script.chmod(0o755)
    os.chmod(lab.dir, 0o755)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    lab.start_agent("a", CARP_PASS=SECRET, PYTHONPATH=path,
                    CARP_HEALTH_CMD=str(lab.dir / "health.sh"), CARP_HEALTH_INTERVAL="0.2",
                    CARP_NOTIFYSCRIPT=str(lab.dir / "notify.sh"))
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    wait_for(lambda: any(p.name.startswith("notify") for p in children.iterdir()), 5,
             "the notify script ran")
    before = len(list((site / "dumps").iterdir()))
    lab.agents["a"].send_signal(signal.SIGHUP)  # a reload: the child validates again
    wait_for(lambda: "Configuration reloaded" in (lab.dir / "a.log").read_text(), 20,
             "the reload succeeded (its child had the password)")
    assert len(list((site / "dumps").iterdir())) > before, "no dump of the reload's child"
    agent = dumps(site / "dumps", b"sidecar.runtime.agent")
    reload_child = dumps(site / "dumps", b"dump_runtime_config")
    assert agent and reload_child, dump_on_failure(lab)
    for dump in [*agent, *reload_child]:
        assert SECRET.encode() not in dump, dump[:300]
        assert b"CARP_ADDR=" in dump  # the rest of the configuration is kept: reloads read it
    with open(f"/proc/{lab.agents['a'].pid}/environ", "rb") as f:  # as the kernel shows it now
        assert SECRET.encode() not in f.read()
    for child in children.iterdir():  # the health command's and the notify script's
        env = child.read_bytes()
        assert SECRET.encode() not in env, child.name
        if child.name.startswith("health"):
            assert not [v for v in env.split(b"\0") if v.startswith((b"CARP_", b"UCARP_"))]
    assert any(c.name.startswith("health") for c in children.iterdir())
    assert SECRET not in (lab.dir / "a.log").read_text()


def test_a_rolling_password_rotation_of_three_nodes_never_has_two_holders() -> None:
    """Round 4: changing CARP_PASS node by node split the group (the changed node rejects the
    others' adverts and they reject its), and each change restarted the instance (a master
    bowed out: the VIP moved). With CARP_PASS_NEXT, docs/runbook.md's three rolling reloads:
    every advert accepted, the key swapped in place, the master never moves."""
    started = time.monotonic()
    got = sidecar_group(gap=1.0)
    print(f"\nrotation of 3 nodes: {got['two_holders']} two-holder samples of {got['samples']}, "
          f"{got['vip_moves']} VIP moves, next-key adverts {got['next_key_accepted']}, "
          f"{time.monotonic() - started:.0f} s")
    assert got["two_holders"] == 0 and got["no_holder"] == 0, got
    assert got["holders_at_end"] == ["a"] and got["vip_moves"] == 0, got
    assert got["transitions"] == 0 and got["bad_hmac"] == 0, got
    assert all("restarted" not in r for r in got["replies"]), got["replies"]
    assert got["replies"][3].endswith("password changed, next password changed")
    # node-a switched first: the others heard its new password as their next one
    assert got["next_key_accepted"]["b"] >= 1 and got["next_key_accepted"]["client"] >= 1


def test_a_rotation_beside_real_ucarp_never_has_two_holders() -> None:
    """ucarp knows one password: it cannot accept both. It is stopped (a backup: nothing moves)
    while the carp-sidecar node switches, and started again with the new password."""
    got = mixed_group(gap=1.0)
    assert got["two_holders"] == 0 and got["holders_at_end"] == ["a"], got
    assert got["transitions"] == 0 and got["bad_hmac_at_a"] == 0, got
    assert got["ucarp_bad_digest"] == 0 and not got["ucarp_master"], got

