#!/usr/bin/env python3
"""Start-up: how soon a restarted agent is back in charge, and what the short commands cost.

1. **Stale VIP removed:** a killed master leaves its VIP on the interface; until the restarted
   agent removes it, the VIP is held twice. In node-a's namespace the agent (carp-sidecar,
   ucarp with its down script, keepalived) becomes MASTER, is SIGKILLed, and is started again;
   ``ip -ts monitor address`` stamps the deletion: start -> VIP gone, median of N, per agent,
   in the same run. ucarp removes it by spawning its down script at start, keepalived by
   itself, carp-sidecar from the killed run's record before validating (sidecar/net/held.py).
   Also measured: a VIP added by hand (no record: the first start after a migration), which
   carp-sidecar removes only once the configuration is validated.
2. **Short commands:** wall time of ``carp-sidecar --version``, ``--help``, ``check-config``
   (a valid environment, --offline, and in the namespace with the host checks), beside
   ``keepalived --version`` and ``ucarp --help`` (ucarp has no --version), and the floor under
   them: the interpreter alone, and it importing pydantic-settings alone.

Run it with the python of a wheel install (``make bench`` builds build/bench-venv on Debian's
python3, which a systemd install on Debian and CI's image run): the editable .venv starts
slower, and the figures say which install and which interpreter they are of. Needs root (network
namespaces), ucarp and keepalived. ``--merge FILE`` adds the figures to a JSON file under
"startup" (docs/bench-results.json).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_failover import start_agent
from results import merge

from sidecar.lab.netns import stop_process
from sidecar.lab.scenario import ADDRESSES, LAB_PASSWORD, VIP, Lab

AGENTS = ("carp-sidecar", "ucarp", "keepalived")
CLI = [str(Path(sys.executable).with_name("carp-sidecar"))]
STAMP = re.compile(r"^\[(\S+)\]\s*Deleted .* inet (\S+)/")


def stale_removed_ms(kind: str, killed: bool = True) -> float | None:
    """One run: node-a's agent is MASTER and SIGKILLed (its VIP stays), then started again;
    ``killed=False``: the VIP added by hand instead (no run of ours left it: a migration)."""
    with Lab() as lab:
        host = lab.topo["a"]
        lab.start_apache("a")  # the agents' health checks (as in bench_failover)
        if killed:
            start_agent(lab, kind, "a")
            lab.wait(lambda: lab.has_vip("a"), 15, f"{kind} on node-a to take the VIP")
            stop_process(lab.agents.pop("a"), sig=signal.SIGKILL)
            if kind == "keepalived":
                # its VRRP child has a session of its own; killed, it stays a zombie here (this
                # VM's init does not reap it), and keepalived would take the zombie's pid file
                # for a running daemon: a host's init reaps it, so the files go too
                for pidfile in ("ka-a.pid", "vrrp-a.pid"):
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int((lab.dir / pidfile).read_text()), signal.SIGKILL)
                    (lab.dir / pidfile).unlink(missing_ok=True)
            assert lab.has_vip("a"), "the killed agent's VIP is still there"
        else:
            host.run("ip", "addr", "add", f"{VIP}/16", "dev", "eth0", "label", "eth0:0")
        monitor = subprocess.Popen(host.argv("ip", "-ts", "monitor", "address", "dev", "eth0"),
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        lab.topo.procs.append(monitor)
        time.sleep(0.3)  # the monitor is listening
        began = time.time()
        start_agent(lab, kind, "a")
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in monitor.stdout or ()],
                         daemon=True).start()
        try:
            while True:
                m = STAMP.match(lines.get(timeout=max(0.0, began + 10 - time.time())))
                if m and m.group(2) == VIP:
                    stamp = datetime.fromisoformat(m.group(1)).timestamp()
                    stop_process(lab.agents.pop("a"))
                    return round((stamp - began) * 1000, 1)
        except queue.Empty:
            pass
        return None


def wall_ms(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 1)


def commands(runs: int) -> dict[str, float]:
    env = {"PATH": os.environ["PATH"], "CARP_INTERFACE": "eth0", "CARP_SRCIP": "172.16.0.11",
           "CARP_VHID": "1", "CARP_PASS": LAB_PASSWORD, "CARP_ADDR": VIP,
           "CARP_STATE_DIR": "/nonexistent-bench-state"}
    out = {
        "carp-sidecar --version": wall_ms([*CLI, "--version"], env, runs),
        "carp-sidecar --help": wall_ms([*CLI, "--help"], env, runs),
        "carp-sidecar check-config --offline": wall_ms([*CLI, "check-config", "--offline"], env,
                                                       runs),
        "keepalived --version": wall_ms(["keepalived", "--version"], env, runs),
        "ucarp --help": wall_ms(["ucarp", "--help"], env, runs),
        # what no change of ours can go below: this interpreter, and it importing the
        # configuration's library (pydantic-settings) and nothing else
        "python -c pass (the interpreter alone)": wall_ms([sys.executable, "-c", "pass"], env,
                                                          runs),
        "python: import pydantic_settings alone": wall_ms(
            [sys.executable, "-c", "import gc, os; gc.disable(); import pydantic_settings; "
             "os._exit(0)"], env, runs),
    }
    with Lab() as lab:  # the host checks need the interface and its address
        host = lab.topo["a"]
        out["carp-sidecar check-config (host checks)"] = wall_ms(
            host.argv("env", *[f"{k}={v}" for k, v in env.items()], *CLI, "check-config"),
            env, runs)
        out["ip netns exec (its own cost, in the line above)"] = wall_ms(host.argv("true"), env,
                                                                          runs)
    return out


def install_kind() -> str:
    """What the figures are of: a wheel as users install it (`make bench` builds one into
    build/bench-venv), or the editable development install, which pays more per start."""
    import sidecar

    where = Path(sidecar.__file__).resolve()
    if Path(sys.prefix).resolve() in where.parents:
        return "a wheel (bytecode compiled at install)"
    return (f"editable, from {where.parent.parent} (slower start: setuptools' finder, and no "
            "bytecode where PYTHONDONTWRITEBYTECODE is set)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="restarts per agent (default 5)")
    ap.add_argument("--merge", type=Path, default=None, help="add the figures to this JSON file")
    args = ap.parse_args()
    if args.merge:
        args.merge = args.merge.resolve()
    # `python -m sidecar...` (the lab's agents) looks in the current directory first: out of
    # the checkout, so that the installed package is what starts
    os.chdir("/")
    assert ADDRESSES  # the lab's addressing: node-a is 172.16.0.11, the VIP 172.16.0.1
    runs: dict[str, list[float | None]] = {kind: [] for kind in AGENTS}
    by_hand: list[float | None] = []
    for _ in range(args.runs):  # interleaved: a slow moment of the machine hits every agent
        for kind in AGENTS:
            runs[kind].append(stale_removed_ms(kind))
        by_hand.append(stale_removed_ms("carp-sidecar", killed=False))
    med: dict[str, float | None] = {}
    for kind, values in runs.items():
        ok = [v for v in values if v is not None]
        med[kind] = round(statistics.median(ok), 1) if len(ok) == len(values) else None
    cmd = commands(runs=9)
    print(f"\n| start -> stale VIP removed (median of {args.runs}) | ms | runs |")
    print("|---|---|---|")
    for kind in AGENTS:
        print(f"| {kind} | {med[kind]} | {runs[kind]} |")
    hand = round(statistics.median([v for v in by_hand if v is not None]), 1) if all(
        v is not None for v in by_hand) else None
    print(f"| carp-sidecar, VIP added by hand (no record) | {hand} | {by_hand} |")
    ucarp, sidecar = med["ucarp"], med["carp-sidecar"]
    ratio = round(sidecar / ucarp, 2) if sidecar and ucarp else None
    print(f"\ncarp-sidecar / ucarp: {ratio}x (target <= 4x); / keepalived: "
          f"{round(sidecar / med['keepalived'], 2) if sidecar and med['keepalived'] else None}x")
    print("\n| command (median of 9) | ms | target |")
    print("|---|---|---|")
    for name, ms in cmd.items():
        target = "< 150" if name.startswith("carp-sidecar") else ""
        print(f"| {name} | {ms} | {target} |")
    installed = install_kind()
    interpreter = f"{Path(sys._base_executable).resolve()} (Python {sys.version.split()[0]})"
    print(f"\ncarp-sidecar as installed in {sys.prefix}: {installed}; interpreter {interpreter}")
    result: dict[str, Any] = {"stale_vip_removed_ms": runs, "median_ms": med,
                              "by_hand_ms": by_hand, "by_hand_median_ms": hand,
                              "sidecar_over_ucarp": ratio, "commands_ms": cmd,
                              "installed": installed, "interpreter": interpreter}
    if args.merge:
        merge(args.merge, "startup", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
