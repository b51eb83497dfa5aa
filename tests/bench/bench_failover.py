#!/usr/bin/env python3
"""Client-visible failover downtime and idle cost: carp-sidecar vs Debian's ucarp and keepalived.

Every run builds fresh network namespaces (sidecar.lab): node-a (preferred) and node-b with
Apache, a client polling http://VIP/ every 10 ms. For each agent and scenario — master unplugged,
master SIGKILLed, master SIGTERMed, Apache killed on the master — it measures

  downtime: the longest time the client went without any answer (gap before the first answer
            from node-b), and
  takeover: event -> first answer from node-b.

Then the idle CPU (% of one core) and RSS of each agent over --idle seconds, all three measured
side by side. Same intervals for all: advert every 1 s, master-down 3 s (+skew), health check
every 1 s with fall 2 (keepalived: a vrrp_script; ucarp has no health checks).

    python tests/bench/bench_failover.py [--runs 3] [--idle 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if importlib.util.find_spec("sidecar") is None:  # a python without the package: the checkout's
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.lab import ADDRESSES, LAB_PASSWORD, VIP, Lab
from sidecar.lab.netns import stop_process

AGENTS = ("carp-sidecar", "ucarp", "keepalived")
SCENARIOS = ("unplug", "sigkill", "sigterm", "apache_killed")
GIVE_UP = 12.0  # s: a scenario an agent does not handle (ucarp has no health checks)

KEEPALIVED = """global_defs {{
  script_user root
  enable_script_security
}}
vrrp_script chk_apache {{
  script "/usr/bin/curl -sf -m 1 -o /dev/null http://127.0.0.1/"
  interval 1
  fall 2
  rise 2
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface eth0
  virtual_router_id 1
  priority {priority}
  advert_int 1
  virtual_ipaddress {{
    {vip}/16 dev eth0 label eth0:0
  }}
  track_script {{
    chk_apache
  }}
}}
"""


def start_agent(lab: Lab, kind: str, node: str) -> subprocess.Popen[bytes]:
    preferred = node == "a"
    src = ADDRESSES[node].split("/")[0]
    if kind == "carp-sidecar":
        extra = {"CARP_HEALTH_URL": "http://127.0.0.1/"}
        extra |= {"CARP_PREEMPT": "true"} if preferred else {"CARP_ADVSKEW": "100"}
        return lab.start_agent(node, **extra)
    if kind == "ucarp":
        up, down = lab.dir / "up.sh", lab.dir / "down.sh"
        up.write_text('#!/bin/sh\nip addr add "$2"/16 dev "$1" label "$1":0\n')
        down.write_text('#!/bin/sh\nip addr del "$2"/16 dev "$1" 2>/dev/null; true\n')
        up.chmod(0o755)
        down.chmod(0o755)
        cmd = ["ucarp", "-i", "eth0", "-s", src, "-v", "1", "-p", LAB_PASSWORD, "-a", VIP,
               "-b", "1", "-k", "0" if preferred else "100", "-u", str(up), "-d", str(down),
               "-z", "-f", "none"] + (["-P"] if preferred else [])
    else:
        conf = lab.dir / f"keepalived-{node}.conf"
        conf.write_text(KEEPALIVED.format(priority=150 if preferred else 100, vip=VIP))
        cmd = ["keepalived", "-n", "-l", "-D", "--vrrp", "-f", str(conf),
               "-p", str(lab.dir / f"ka-{node}.pid"), "-r", str(lab.dir / f"vrrp-{node}.pid")]
    proc = lab.topo.start(node, cmd, log=lab.dir / f"{node}.log")
    lab.agents[node] = proc
    return proc


def event(lab: Lab, scenario: str) -> Callable[[], None]:
    return {
        "unplug": lambda: lab.topo.unplug("a"),
        "sigkill": lambda: stop_process(lab.agents.pop("a"), sig=signal.SIGKILL) and None,
        "sigterm": lambda: stop_process(lab.agents.pop("a"), sig=signal.SIGTERM) and None,
        "apache_killed": lambda: lab.kill_apache("a"),
    }[scenario]


def one_run(kind: str, scenario: str) -> dict[str, float | None]:
    with Lab() as lab:
        for node in ("a", "b"):
            lab.start_apache(node)
        start_agent(lab, kind, "a")
        lab.wait(lambda: lab.has_vip("a"), 10, f"{kind} on node-a to take the VIP")
        start_agent(lab, kind, "b")
        lab.start_probe()
        lab.wait(lambda: lab.client_sees() == "node-a", 10, "the client to reach node-a")
        time.sleep(2.5)  # node-b settled as BACKUP
        began = time.time()
        event(lab, scenario)()
        return node_b_took_over(lab, began)


def node_b_took_over(lab: Lab, began: float) -> dict[str, float | None]:
    """After an event at ``began`` (Unix time): the client's downtime until node-b answers, and
    when it first did (ms), both None if it never does within GIVE_UP."""
    try:
        lab.wait(lambda: lab.client_sees() == "node-b", GIVE_UP, "node-b")
    except TimeoutError:
        return {"downtime_ms": None, "takeover_ms": None}
    first_b = next(line["t"] for line in lab.probe_lines
                   if line["t"] >= began and line["body"] == "node-b")
    return {"downtime_ms": lab.downtime_ms(began, "node-b"),
            "takeover_ms": round((first_b - began) * 1000, 1)}


def idle_cost(seconds: float) -> dict[str, dict[str, float]]:
    """Each agent alone as MASTER (with Apache and its health check) in its own namespaces, all
    three at once. CPU includes reaped children, so keepalived's curl checks count too."""
    labs = {kind: Lab().__enter__() for kind in AGENTS}
    try:
        for lab in labs.values():
            lab.start_apache("a")  # the health checks run while idle, as in production
        procs = {kind: start_agent(lab, kind, "a") for kind, lab in labs.items()}
        for kind, lab in labs.items():
            lab.wait(lambda lab=lab: lab.has_vip("a"), 10, f"{kind} MASTER")  # type: ignore[misc]
        time.sleep(2)
        before = {kind: _cpu_seconds(p.pid) for kind, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return {kind: {"cpu_percent": round(100 * (_cpu_seconds(p.pid) - before[kind]) / elapsed, 3),
                       "rss_mb": round(_rss_kb(p.pid) / 1024, 1)} for kind, p in procs.items()}
    finally:
        for lab in labs.values():
            lab.__exit__(None, None, None)


def _tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout.split()
    return [pid] + [q for c in out for q in _tree(int(c))]


def _cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        # utime + stime + reaped children's (keepalived's check scripts, our scripts), in ticks
        total += sum(int(f) for f in fields[11:15])
    return total / 100


def _rss_kb(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def summarize(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    if len(got) < len(values) or not got:
        return {"min": None, "median": None, "max": None, "failed_runs": len(values) - len(got)}
    return {"min": min(got), "median": statistics.median(got), "max": max(got), "failed_runs": 0}


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{a / max(b, 10.0):.2f}"  # 10 ms is the client's polling resolution


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--idle", type=float, default=60)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    started = time.monotonic()
    results: dict[str, Any] = {"machine": f"{platform.node()} {platform.machine()}, "
                                          f"{platform.platform()}, Python {platform.python_version()}",
                               "runs": args.runs, "failover": {}, "idle": {}}
    for scenario in SCENARIOS:
        for kind in AGENTS:
            runs = [one_run(kind, scenario) for _ in range(args.runs)]
            results["failover"].setdefault(scenario, {})[kind] = {
                "downtime_ms": summarize([r["downtime_ms"] for r in runs]),
                "takeover_ms": summarize([r["takeover_ms"] for r in runs]),
            }
            print(f"  {scenario:<14} {kind:<13} downtime ms {[r['downtime_ms'] for r in runs]}",
                  flush=True)
    results["idle"] = idle_cost(args.idle)
    results["wall_seconds"] = round(time.monotonic() - started)
    print_table(results)
    text = json.dumps(results, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"\nmachine: {r['machine']}; {r['runs']} runs each; medians (min-max) in ms; "
          "'never' = no failover within 12 s\n")
    print("| scenario | carp-sidecar downtime | ucarp downtime | keepalived downtime | "
          "sidecar/ucarp | sidecar/keepalived |")
    print("|---|---|---|---|---|---|")
    for scenario, by in r["failover"].items():
        cells = []
        for kind in AGENTS:
            d = by[kind]["downtime_ms"]
            cells.append("never" if d["median"] is None else
                         f"{d['median']:.0f} ({d['min']:.0f}-{d['max']:.0f})")
        med = {k: by[k]["downtime_ms"]["median"] for k in AGENTS}
        print(f"| {scenario} | {' | '.join(cells)} | {ratio(med['carp-sidecar'], med['ucarp'])} | "
              f"{ratio(med['carp-sidecar'], med['keepalived'])} |")
    print("\n| scenario | takeover (event -> client on node-b), median ms: sidecar / ucarp / keepalived |")
    print("|---|---|")
    for scenario, by in r["failover"].items():
        meds = [by[k]["takeover_ms"]["median"] for k in AGENTS]
        print(f"| {scenario} | {' / '.join('never' if m is None else f'{m:.0f}' for m in meds)} |")
    print("\n| agent | idle CPU (% of a core) | RSS (MB) |")
    print("|---|---|---|")
    for kind, v in r["idle"].items():
        print(f"| {kind} | {v['cpu_percent']:.3f} | {v['rss_mb']:.1f} |")
    print(f"\nwhole benchmark: {r['wall_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
