#!/usr/bin/env python3
"""255 VHIDs failing over at once: node-a masters all 255 (one VIP each), node-b backs all
up with the same advskew, so every VHID's master-down timer on node-b ends in the same
instant when node-a is unplugged.

Measured on node-b: ``ip -ts monitor address`` stamps each VIP's arrival (first, last, the
spread between them, pull -> last); carp-sidecar's own ``carp_takeover_duration_seconds`` gives
each VHID's decision -> VIP added and GARP sent (p50, max; target: every one <= 100 ms, the
last VIP <= 300 ms after the first); the CPU node-b's agent(s) used from the pull until the
last VIP, plus 1 s. Beside it, in the same run, 255 Debian ucarp processes per node with
up scripts (``ip addr add``), the classic recipe.

    python tests/bench/bench_together.py [--runs 3] [--merge docs/bench-results.json]
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_instances import NO_LAB_DEFAULTS, config, cpu_seconds, vip_of
from results import merge

from sidecar.lab import LAB_PASSWORD, Lab

N = 255
ADDED = re.compile(r"^\[(\S+)\]\s*\d+: eth0\s+inet (172\.17\.\d+\.\d+)/")
TAKEOVER = re.compile(r'^carp_takeover_duration_seconds_sum\{.*vhid="(\d+)".*\} (\S+)$')


def _tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout.split()
    return [pid] + [q for child in out for q in _tree(int(child))]


def _vips_on(lab: Lab, node: str) -> int:
    return lab.topo[node].run("ip", "-4", "-o", "addr").stdout.count(" 172.17.")


def _start(lab: Lab, kind: str, node: str, skew: int) -> list[int]:
    vhids = {v: (vip_of(v), skew) for v in range(1, N + 1)}
    if kind == "carp-sidecar":
        proc = lab.start_agent(node, CARP_CONFIG=str(config(lab, node, vhids)), **NO_LAB_DEFAULTS)
        return [proc.pid]
    up, down = lab.dir / "up.sh", lab.dir / "down.sh"
    up.write_text('#!/bin/sh\nip addr add "$2"/16 dev "$1"\n')
    down.write_text('#!/bin/sh\nip addr del "$2"/16 dev "$1" 2>/dev/null; true\n')
    up.chmod(0o755)
    down.chmod(0o755)
    src = "172.16.0.11" if node == "a" else "172.16.0.12"
    pids = []
    for vhid, (vip, _) in vhids.items():
        cmd = ["ucarp", "-i", "eth0", "-s", src, "-v", str(vhid), "-p", LAB_PASSWORD, "-a", vip,
               "-b", "1", "-k", str(skew), "-u", str(up), "-d", str(down), "-z", "-f", "none"]
        pids.append(lab.topo.start(node, cmd + (["-P"] if node == "a" else [])).pid)
    return pids


def one_run(kind: str) -> dict[str, Any]:
    with Lab() as lab:
        _start(lab, kind, "a", 0)
        Lab.wait(lambda: _vips_on(lab, "a") == N, 60, f"{kind}: {N} VIPs on node-a")
        b = _start(lab, kind, "b", 100)
        time.sleep(6)  # node-b settled as BACKUP of all
        assert _vips_on(lab, "b") == 0
        monitor = subprocess.Popen(lab.topo["b"].argv("ip", "-ts", "monitor", "address", "dev",
                                                      "eth0"),
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        lab.topo.procs.append(monitor)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in monitor.stdout or ()],
                         daemon=True).start()
        time.sleep(0.3)
        pids = [q for pid in b for q in _tree(pid)]
        cpu0 = cpu_seconds(pids)
        pulled = time.time()
        lab.topo.unplug("a")
        stamps: dict[str, float] = {}
        deadline = pulled + 20
        while len(stamps) < N and time.time() < deadline:
            try:
                m = ADDED.match(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            if m:
                stamps.setdefault(m.group(2), datetime.fromisoformat(m.group(1)).timestamp())
        time.sleep(max(0.0, max(stamps.values(), default=pulled) + 1 - time.time()))
        # scripts spawned for the takeover have ended: count what is left of the tree
        cpu = cpu_seconds([q for pid in b for q in _tree(pid)] + pids) - cpu0
        first, last = min(stamps.values()), max(stamps.values())
        out: dict[str, Any] = {
            "vips": len(stamps), "pull_to_first_ms": round((first - pulled) * 1000, 1),
            "pull_to_last_ms": round((last - pulled) * 1000, 1),
            "spread_ms": round((last - first) * 1000, 1),
            "cpu_seconds": round(cpu, 3)}
        if kind == "carp-sidecar":
            text = lab.get("b", "http://127.0.0.1:9655/metrics") or ""
            took = sorted(float(m.group(2)) * 1000 for m in map(TAKEOVER.match, text.splitlines())
                          if m)
            out["takeover_ms"] = {"count": len(took),
                                  "p50": round(statistics.median(took), 1) if took else None,
                                  "max": round(took[-1], 1) if took else None}
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--merge", type=Path, default=None)
    ap.add_argument("--only", choices=["carp-sidecar", "ucarp x255"], default=None)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"carp-sidecar": [], "ucarp x255": []}
    if args.only:
        runs = {args.only: []}
    for _ in range(args.runs):
        for kind in runs:
            runs[kind].append(one_run(kind))
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    if len(runs) == 1:
        return 0

    def med(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[kind]), 1)

    print(f"\n| {N} VHIDs at once (median of {args.runs}) | carp-sidecar | ucarp x255 | ratio |")
    print("|---|---|---|---|")
    for key in ("pull_to_first_ms", "pull_to_last_ms", "spread_ms", "cpu_seconds"):
        s, u = med("carp-sidecar", key), med("ucarp x255", key)
        print(f"| {key} | {s} | {u} | {round(s / u, 2) if u else None} |")
    worst = max(r["takeover_ms"]["max"] or 0 for r in runs["carp-sidecar"])
    print(f"\ncarp-sidecar decision -> VIP + GARP per VHID: p50 "
          f"{[r['takeover_ms']['p50'] for r in runs['carp-sidecar']]} ms, max "
          f"{[r['takeover_ms']['max'] for r in runs['carp-sidecar']]} ms (target <= 100); "
          f"spread {[r['spread_ms'] for r in runs['carp-sidecar']]} ms (target <= 300)")
    if args.merge:
        merge(args.merge, "together_255", {"runs": runs, "worst_takeover_ms": worst})
    return 0


if __name__ == "__main__":
    sys.exit(main())
