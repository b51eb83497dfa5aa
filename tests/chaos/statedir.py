"""`make chaos`'s "statedir" part: the master is SIGKILLed (its VIP stays on its interface), its
state directory fills up, and it is restarted: how long two nodes hold the VIP after the
restart, against ucarp killed and restarted the same way in the same lab (ucarp keeps no state:
its downscript at start removes the VIP).

The full state directory is a 1 MB tmpfs mounted on node-a's CARP_STATE_DIR (a directory of the
lab's own) and filled with a file; it is unmounted at the end, whatever happens. node-a runs
once from a TOML file (CARP_CONFIG: ``run``'s early sweep cannot run, so the agent's own start
removes the VIP, after validation) and once from the environment (the early sweep does).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.lab import ADDRESSES, LAB_PASSWORD, VIP, Lab
from sidecar.lab.holders import HolderSampler
from sidecar.lab.holders import vip_holders as holders
from sidecar.lab.netns import stop_process

if TYPE_CHECKING:
    from chaos import Limits, Report

NO_LAB_DEFAULTS = {k: "" for k in ("CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS",
                                   "CARP_SRCIP")}
SETTLE = 15.0  # s after the restart: the window is over long before


@contextlib.contextmanager
def full_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "carp-chaos",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def _kill_and_restart(lab: Lab, start_a: Callable[[], object], between: Callable[[], None]
                      ) -> tuple[float, bool]:
    """node-a MASTER, SIGKILLed, node-b MASTER beside its stale VIP, ``between``, node-a
    started again: the longest run of two holders after the restart (s), and whether node-a
    is running at the end."""
    start_a()
    Lab.wait(lambda: holders(lab) == ["a"], 12, "node-a MASTER")
    stop_process(lab.agents.pop("a"), sig=signal.SIGKILL)
    Lab.wait(lambda: holders(lab) == ["a", "b"], 10, "node-b MASTER beside the stale VIP")
    between()
    with HolderSampler(lab, interval=0.02) as sampler:
        restarted = time.monotonic()
        start_a()
        with contextlib.suppress(TimeoutError):
            Lab.wait(lambda: len(holders(lab)) < 2, SETTLE, "one holder")
        time.sleep(0.5)
    two = sampler.longest(2, lambda t: t < restarted)
    running = lab.agents["a"].poll() is None
    stop_process(lab.agents.pop("a"))
    return two, running


def statedir(limits: Limits, report: Report) -> None:
    toml_two, toml_running = _sidecar(toml=True)
    env_two, env_running = _sidecar(toml=False)
    ucarp_two = _ucarp()
    report.figures["statedir"] = {"sidecar_toml_two_holders_after_restart_s": round(toml_two, 3),
                                  "sidecar_env_two_holders_after_restart_s": round(env_two, 3),
                                  "ucarp_two_holders_after_restart_s": round(ucarp_two, 3)}
    running = toml_running and env_running
    report.check("statedir: a full state directory does not stop the agent", running,
                 f"TOML file: {'running' if toml_running else 'exited'}, environment: "
                 f"{'running' if env_running else 'exited'}")
    bound = 2.0  # a TOML file is validated (pydantic) before the agent's sweep: ~0.5 s
    worst = max(toml_two, env_two)
    report.check("statedir: the killed master's VIP removed at the restart (two holders)",
                 running and worst <= bound,
                 f"TOML file {toml_two:.2f} s, environment {env_two:.2f} s (ucarp "
                 f"{ucarp_two:.2f} s), bound {bound:g} s")


def _sidecar(toml: bool) -> tuple[float, bool]:
    """From a TOML file, validated before any sweep; from the environment, swept first."""
    with Lab() as lab:
        (lab.dir / "pass").write_text(LAB_PASSWORD + "\n")
        conf = lab.dir / "a.toml"
        conf.write_text(f'interface = "eth0"\npass_file = "{lab.dir / "pass"}"\npreempt = true\n'
                        f'srcip = "{ADDRESSES["a"].split("/")[0]}"\n\n'
                        f'[[vhid]]\nvhid = 1\naddr = ["{VIP}/16"]\n')
        lab.start_agent("b", CARP_ADVSKEW="100")
        with full_tmpfs(lab.dir / "a-state") as state:
            env = {"CARP_CONFIG": str(conf), **NO_LAB_DEFAULTS} if toml else {
                "CARP_PREEMPT": "true"}
            return _kill_and_restart(lab, lambda: lab.start_agent("a", **env),
                                     lambda: fill(state))


def _ucarp() -> float:
    with Lab() as lab:
        up, down = lab.dir / "vip-up.sh", lab.dir / "vip-down.sh"
        up.write_text('#!/bin/sh\nexec ip addr add "$2"/16 dev "$1" label "$1":0\n')
        down.write_text('#!/bin/sh\nip addr del "$2"/16 dev "$1" 2>/dev/null || true\n')
        for script in (up, down):
            script.chmod(0o755)
        src = ADDRESSES["a"].split("/")[0]
        cmd = ["ucarp", "-i", "eth0", "-s", src, "-v", "1", "-p", LAB_PASSWORD, "-a", VIP,
               "-b", "1", "-k", "0", "-P", "-u", str(up), "-d", str(down), "-f", "none"]

        def start_a() -> None:  # no --neutral: its downscript at start removes a stale VIP
            lab.agents["a"] = lab.topo.start("a", cmd, log=lab.dir / "a.log")

        lab.start_agent("b", CARP_ADVSKEW="100")
        two, _ = _kill_and_restart(lab, start_a, lambda: None)
        return two
