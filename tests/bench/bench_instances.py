#!/usr/bin/env python3
"""Many instances in one agent, measured in network namespaces (sidecar.lab topologies):

  many     255 VHIDs with one VIP each, node-a master of all, advbase 1: idle CPU (% of one
           core) and RSS of the one carp-sidecar process over --idle seconds, and how far each
           advert strays from its nominal 1 s interval (p99 and max, from a capture in the
           client namespace) — beside the baseline's agent and 255 Debian ucarp processes
           doing the same (CPU and RSS summed over the processes).
  one      one VHID: idle CPU and RSS of carp-sidecar and of the baseline, --rounds times
           interleaved in the same run (median).

  The baseline (--baseline REV, default de0df48: the release before the start-up and
  many-at-once work) is checked out in a temporary git worktree; target: no worse than it.
  unplug   node-a masters three VHIDs and is unplugged: when each VIP appears on node-b,
           against node-b's master-down interval for that VHID (target: within + 100 ms).

    python tests/bench/bench_instances.py [--idle 30] [--rounds 3] [--baseline REV] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

from sidecar.lab import LAB_PASSWORD, Lab, agent_env

NO_LAB_DEFAULTS = {k: "" for k in ("CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS",
                                   "CARP_SRCIP")}


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread, from schedstat (nanoseconds; utime/stime count 10 ms ticks,
    too coarse for an idle agent)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total / 1024


def idle(pids: list[int], seconds: float) -> tuple[float, float]:
    before, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(pids) - before, time.monotonic() - t0
    return round(100 * used / elapsed, 3), round(rss_mb(pids), 1)


def config(lab: Lab, node: str, vhids: dict[int, tuple[str, int]]) -> Path:
    """{vhid: (vip, advskew)} as a CARP_CONFIG file."""
    (lab.dir / "pass").write_text(LAB_PASSWORD + "\n")
    text = f'interface = "eth0"\npass_file = "{lab.dir / "pass"}"\npreempt = true\n\n'
    for vhid, (vip, skew) in vhids.items():
        text += f'[[vhid]]\nvhid = {vhid}\naddr = ["{vip}/16"]\nadvskew = {skew}\n\n'
    path = lab.dir / f"{node}.toml"
    path.write_text(text)
    return path


def vip_of(vhid: int) -> str:
    return f"172.17.{vhid // 200}.{vhid % 200 + 1}"


def advert_deviation(lab: Lab, seconds: float) -> dict[str, float]:
    """Capture for ``seconds``: per VHID, |interval - 1 s| of consecutive adverts, in ms."""
    out = lab.topo["client"].run("timeout", str(seconds), "tcpdump", "-tt", "-n", "-l", "-i",
                                 "eth0", "ip proto 112", check=False, timeout=seconds + 30).stdout
    times: dict[str, list[float]] = defaultdict(list)
    for line in out.splitlines():  # tcpdump decodes protocol 112 as VRRP: "vrid N,"
        if "vrid " in line:
            vhid = line.split("vrid ")[1].split(",")[0]
            times[vhid].append(float(line.split()[0]))
    deviations = sorted(abs(b - a - 1.0) * 1000 for ts in times.values()
                        for a, b in itertools.pairwise(ts))
    p99 = deviations[int(0.99 * (len(deviations) - 1))] if deviations else float("nan")
    return {"vhids_seen": len(times), "intervals": len(deviations),
            "p99_ms": round(p99, 2), "max_ms": round(max(deviations, default=float("nan")), 2)}


def start_from(lab: Lab, checkout: Path, **extra: str) -> subprocess.Popen[bytes]:
    """node-a's agent run from ``checkout`` (this one, or the baseline's worktree), with the
    lab's environment plus ``extra`` ("" unsets a lab default)."""
    env = agent_env(lab.dir, "a", "172.16.0.11", PYTHONPATH=str(checkout), **extra)
    env = {k: v for k, v in env.items() if v != ""}
    # the command line's module where that checkout has it (it moved to tools/)
    cli = "sidecar.tools.cli" if (checkout / "sidecar/tools/cli.py").exists() else "sidecar.cli"
    proc = lab.topo["a"].popen([sys.executable, "-m", cli, "run"], log=lab.dir / "a.log",
                               env=env, cwd=checkout)
    lab.topo.procs.append(proc)
    lab.agents["a"] = proc
    return proc


@contextlib.contextmanager
def checkouts(baseline: str) -> Iterator[list[tuple[str, Path]]]:
    """(name, checkout) of this tree and of ``baseline`` in a temporary git worktree."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "-q", "--detach", str(old),
                        baseline], check=True)
        try:
            yield [("carp-sidecar", root), (f"baseline {baseline}", old)]
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(old)],
                           check=False)


def many(idle_s: float, baseline: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    vhids = {v: (vip_of(v), 0) for v in range(1, 256)}
    with checkouts(baseline) as trees:
        for name, checkout in trees:
            with Lab() as lab:
                proc = start_from(lab, checkout, CARP_CONFIG=str(config(lab, "a", vhids)),
                                  **NO_LAB_DEFAULTS)
                Lab.wait(lambda lab=lab: lab.topo["a"].run("ip", "-4", "-o", "addr").stdout
                         .count("172.17.") == 255, 30, "255 VIPs on node-a")
                time.sleep(5)
                cpu, rss = idle([proc.pid], idle_s)
                result[name] = {"cpu_percent": cpu, "rss_mb": rss,
                                "adverts": advert_deviation(lab, min(idle_s, 20))}
    with Lab() as lab:
        procs = []
        for vhid, (vip, _) in vhids.items():
            cmd = ["ucarp", "-i", "eth0", "-s", "172.16.0.11", "-v", str(vhid), "-p",
                   LAB_PASSWORD, "-a", vip, "-b", "1", "-k", "0", "-P", "-f", "none"]
            procs.append(lab.topo.start("a", cmd))
        time.sleep(8)  # all MASTER after 3 s
        pids = [p.pid for p in procs]
        cpu, rss = idle(pids, idle_s)
        result["ucarp x255"] = {"cpu_percent": cpu, "rss_mb": rss,
                                "adverts": advert_deviation(lab, min(idle_s, 20))}
    return result


def one(idle_s: float, baseline: str, rounds: int = 3) -> dict[str, Any]:
    """An idle VHID uses ~1 ms of CPU per advert: one window is at the mercy of the machine's
    other work, so both agents are measured ``rounds`` times, interleaved; the median stands."""
    samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with checkouts(baseline) as trees:
        for _ in range(rounds):
            for name, checkout in trees:
                with Lab() as lab:
                    proc = start_from(lab, checkout)
                    Lab.wait(lambda lab=lab: lab.state("a") == "MASTER", 10, "MASTER")
                    time.sleep(3)
                    samples[name].append(idle([proc.pid], idle_s))
    return {name: {"cpu_percent": round(statistics.median(c for c, _ in got), 3),
                   "rss_mb": round(statistics.median(r for _, r in got), 1),
                   "rounds": [{"cpu_percent": c, "rss_mb": r} for c, r in got]}
            for name, got in samples.items()}


def unplug() -> dict[str, Any]:
    vips = {1: "172.16.0.1", 2: "172.16.0.2", 3: "172.16.0.3"}
    with Lab() as lab:
        lab.start_agent("a", CARP_CONFIG=str(config(lab, "a", {v: (ip, 0) for v, ip in vips.items()})),
                        **NO_LAB_DEFAULTS)
        skews = {1: 20, 2: 60, 3: 100}
        lab.start_agent("b", CARP_CONFIG=str(config(lab, "b", {v: (vips[v], skews[v]) for v in vips})),
                        **NO_LAB_DEFAULTS)

        def on(node: str) -> set[int]:
            out = lab.topo[node].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
            return {v for v, ip in vips.items() if f" {ip}/" in out}

        def on_b() -> set[int]:
            return on("b")

        Lab.wait(lambda: not on_b() and on("a") == set(vips), 12, "node-a master of all")
        time.sleep(3)
        t0 = time.monotonic()
        lab.topo.unplug("a")
        took: dict[int, float] = {}
        while len(took) < 3 and time.monotonic() - t0 < 10:
            for v in on_b() - took.keys():
                took[v] = time.monotonic() - t0
            time.sleep(0.01)
        return {str(v): {"takeover_ms": round(took.get(v, float("nan")) * 1000),
                         "master_down_ms": round((3 + skews[v] / 256) * 1000),
                         "over_ms": round((took.get(v, float("nan")) - 3 - skews[v] / 256) * 1000)}
                for v in vips}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=float, default=30)
    p.add_argument("--baseline", default="de0df48", help="git revision to compare with")
    p.add_argument("--rounds", type=int, default=3, help="one VHID: measurements per agent")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = {"one_vhid": one(args.idle, args.baseline, args.rounds), "unplug_three_vhids": unplug(),
               "vhids_255": many(args.idle, args.baseline)}
    print(json.dumps(results, indent=1))
    for count, key in (("1 VHID", "one_vhid"), ("255 VHIDs", "vhids_255")):
        now, before = results[key]["carp-sidecar"], results[key][f"baseline {args.baseline}"]
        print(f"{count}: carp-sidecar {now['cpu_percent']} % CPU, {now['rss_mb']} MB; baseline "
              f"{args.baseline} {before['cpu_percent']} % CPU, {before['rss_mb']} MB")
    s, u = results["vhids_255"]["carp-sidecar"], results["vhids_255"]["ucarp x255"]
    print(f"255 VHIDs: carp-sidecar {s['cpu_percent']} % CPU, {s['rss_mb']} MB; "
          f"255 x ucarp {u['cpu_percent']} % CPU, {u['rss_mb']} MB; ratios "
          f"CPU {s['cpu_percent'] / max(u['cpu_percent'], 0.01):.2f}, "
          f"RSS {s['rss_mb'] / u['rss_mb']:.3f}; advert p99 deviation "
          f"{s['adverts']['p99_ms']} ms (ucarp {u['adverts']['p99_ms']} ms)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
