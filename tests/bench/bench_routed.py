#!/usr/bin/env python3
"""Client-visible failover of routed VIPs (BGP) beside the L2 one (ARP), in the same run.

The master's cable is pulled; each run builds fresh namespaces. For the routed setup
(sidecar.lab.routed: BIRD router, BIRD or FRR on the nodes, CARP_VIP_INTERFACE=lo) it splits
the client's downtime into

  master-down: pull -> the VIP on node-b's lo (CARP: node-b's master-down timer), and
  routing:     VIP on lo -> first answer from node-b (daemon -> BGP update -> router FIB),

and measures the same pull in the L2 lab (sidecar.lab: GARP on a shared link), where the
second part is the GARP. Same CARP timers in both: advbase 1, node-b advskew 100.

    python tests/bench/bench_routed.py [--runs 3] [--merge docs/bench-results.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import merge  # beside this file

from sidecar.lab import Lab
from sidecar.lab.routed import Daemon, RoutedLab
from sidecar.lab.scenario import ClientView

PREFERRED = {"a": {"CARP_PREEMPT": "true"}, "b": {"CARP_ADVSKEW": "100"}}


def until(cond: Callable[[], bool], timeout: float) -> float:
    """time.time() when ``cond`` first holds (polled as fast as the check runs)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return time.time()
        time.sleep(0.002)
    raise TimeoutError


def pull(lab: ClientView, unplug: Callable[[], None], on_b: Callable[[], bool]
         ) -> dict[str, float | None]:
    """Pull node-a's cable: the client's downtime, split at the VIP's arrival on node-b."""
    lab.wait(lambda: lab.client_sees() == "node-a", 60, "node-a")
    time.sleep(3)
    pulled = time.time()
    unplug()
    arrived = until(on_b, 20)
    lab.wait(lambda: lab.client_sees() == "node-b", 20, "node-b")
    down = lab.downtime_ms(pulled, "node-b")
    master_down = (arrived - pulled) * 1000
    return {"downtime_ms": down, "master_down_ms": round(master_down, 1),
            "routing_ms": None if down is None else round(down - master_down, 1)}


def routed(daemon: Daemon) -> dict[str, float | None]:
    with RoutedLab(daemon) as lab:
        lab.start_all(**PREFERRED)
        lab.wait(lambda: lab.router_via() == "a", 60, "the router's route to node-a")
        return pull(lab, lambda: lab.uplink("a", False), lambda: lab.has_vip("b"))


def l2() -> dict[str, float | None]:
    with Lab() as lab:
        for node in ("a", "b"):
            lab.start_apache(node)
            lab.start_agent(node, **PREFERRED[node])
        lab.start_probe()
        return pull(lab, lambda: lab.topo.unplug("a"), lambda: lab.has_vip("b"))


def median(runs: list[dict[str, float | None]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return round(statistics.median(values), 1) if values else None  # type: ignore[type-var]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--merge", type=Path, help="store the results under 'routed' in this JSON")
    args = p.parse_args()
    setups: dict[str, Callable[[], dict[str, float | None]]] = {
        "l2 (GARP)": l2, "bgp (BIRD)": lambda: routed("bird"), "bgp (FRR)": lambda: routed("frr")}
    result: dict[str, dict[str, object]] = {}
    for name, run in setups.items():
        runs = [run() for _ in range(args.runs)]
        result[name] = {"runs": runs, **{k: median(runs, k) for k in
                                         ("downtime_ms", "master_down_ms", "routing_ms")}}
    base = result["l2 (GARP)"]["downtime_ms"]
    print(f"{'cable pull, median of ' + str(args.runs):28} {'downtime':>10} {'master-down':>12} "
          f"{'VIP->client':>12} {'vs L2':>7}")
    for name, r in result.items():
        ratio = (f"{r['downtime_ms'] / base:.2f}x"  # type: ignore[operator]
                 if base and r["downtime_ms"] else "-")
        print(f"{name:28} {r['downtime_ms']!s:>8} ms {r['master_down_ms']!s:>9} ms "
              f"{r['routing_ms']!s:>9} ms {ratio:>7}")
    if args.merge:
        merge(args.merge, "routed", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
