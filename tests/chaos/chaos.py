#!/usr/bin/env python3
"""`make chaos`: the adversarial pass as a repeatable, bounded run in network namespaces.

Every part builds its own lab (sidecar.lab: node-a preferred with preempt, node-b with advskew
100, a client namespace on the same bridge) and removes it, even on failure.

  flood   20k pps for 60 s of garbage, wrong-HMAC, foreign-VHID adverts, and one valid advert
          replayed from random sources (tests/chaos/flood.py), from the client namespace:
          0 transitions, the master's advert gaps <= interval + 20 ms, RSS growth <= 5 MB,
          /metrics stays small.
  scrape  1000 /metrics requests a second for 30 s (tests/chaos/scrape.py): same advert-gap
          bound, /healthz answered within 100 ms.
  faults  10 minutes of random faults on node-a, sampling who holds the VIP every 100 ms:
          unplug, SIGKILL (and restart), SIGSTOP/SIGCONT, interface re-created, VIP deleted;
          node-b's scripts hang or start a daemon. Never two holders for more than 250 ms
          outside a frozen master's window, never longer without a holder than node-b's
          master-down interval (+0.5 s), node-b's fds and RSS flat.
  operator  a strict unicast pair: node-a restarted with its clock 1 h/1 d off, its interface
          re-created with the address added seconds later, node-a killed (VIP left behind):
          never two holders outside a killed master's window, every stale VIP signalled by
          node-b, no replay drops (the counter mark in CARP_STATE_DIR).

    python tests/chaos/chaos.py [--short] [--only flood,scrape,faults] [--json FILE]

``--short`` (what `make test` runs, via tests/integration/test_chaos.py) scales every part down
(2k pps for 4 s per kind, 300 req/s for 6 s, 45 s of faults) and loosens the timing bounds for a
busy CI machine (advert gaps <= interval + 150 ms, /healthz <= 500 ms); the verdicts it checks are
the same. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from sidecar.lab import ADDRESSES, LAB_PASSWORD, VIP, Lab
from sidecar.lab.holders import HolderSampler
from sidecar.lab.holders import vip_holders as holders
from sidecar.lab.netns import stop_process
from tests.chaos.flapping import flapping
from tests.chaos.rotation import part as rotation
from tests.chaos.statedir import statedir

HERE = Path(__file__).resolve().parent
A_IP = ADDRESSES["a"].split("/")[0]
ADVERT_INTERVAL = 1.0
B_MASTER_DOWN = 3 + 100 / 256


@dataclass
class Limits:
    flood_pps: int
    flood_seconds: float
    scrape_rps: int
    scrape_seconds: float
    fault_seconds: float
    gap_slack: float  # s over the advert interval
    healthz_ms: float


LONG = Limits(20_000, 60, 1000, 30, 600, 0.020, 100)
SHORT = Limits(2_000, 4, 300, 6, 45, 0.150, 500)


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


# ---- observations ----
def metric(lab: Lab, node: str, name: str, **labels: str) -> float:
    text = lab.get(node, "http://127.0.0.1:9655/metrics") or ""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def transitions(lab: Lab, node: str) -> float:
    return metric(lab, node, "carp_transitions_total")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class AdvertCapture:
    """tcpdump in the client namespace: arrival times of node-a's own adverts."""

    def __init__(self, lab: Lab) -> None:
        self.proc = subprocess.Popen(lab.topo["client"].argv(
            "tcpdump", "-tt", "-n", "-l", "-i", "eth0", f"ip proto 112 and src host {A_IP}"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lab.topo.procs.append(self.proc)  # type: ignore[arg-type]

    def stop(self) -> list[float]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=15)
        return [float(line.split()[0]) for line in out.splitlines() if line.strip()]


PEER_BYTES = 800  # a peer's five carp_peer_* series (about 120 bytes each), with room


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


def start_pair(lab: Lab, **b_env: str) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100", **b_env)
    Lab.wait(lambda: holders(lab) == ["a"], 12, "node-a MASTER")
    time.sleep(4)  # past the takeover GARPs, RSS settled


# ---- parts ----
def flood(limits: Limits, report: Report) -> None:
    with Lab() as lab:
        start_pair(lab)
        pid = lab.agents["a"].pid
        rss0, before = rss_kb(pid), transitions(lab, "a") + transitions(lab, "b")
        size0 = len(lab.get("a", "http://127.0.0.1:9655/metrics") or "")
        for kind in ("garbage", "wrong_hmac", "foreign_vhid", "replay"):
            capture = AdvertCapture(lab)
            time.sleep(0.5)
            cmd = [sys.executable, str(HERE / "flood.py"), kind, str(limits.flood_pps),
                   str(limits.flood_seconds), LAB_PASSWORD, VIP]
            sent = int(lab.topo["client"].run(*cmd, timeout=limits.flood_seconds + 60).stdout)
            gap = max_gap(capture.stop())
            report.figures[f"flood_{kind}"] = {"sent": sent, "max_advert_gap_s": round(gap, 4)}
            report.check(f"flood {kind}: master's adverts on time",
                         gap <= ADVERT_INTERVAL + limits.gap_slack,
                         f"{sent} frames in {limits.flood_seconds:g} s, max gap {gap * 1000:.0f} ms")
        after = transitions(lab, "a") + transitions(lab, "b")
        report.check("flood: no spurious transition", after == before, f"{after - before:g}")
        growth = (rss_kb(pid) - rss0) / 1024
        report.figures["flood_rss_growth_mb"] = round(growth, 2)
        report.check("flood: RSS growth <= 5 MB", growth <= 5, f"{growth:.1f} MB")
        size = len(lab.get("a", "http://127.0.0.1:9655/metrics") or "")
        report.figures["metrics_bytes_after_flood"] = size
        # bounded: at most PEER_BYTES for each of the 32 peers kept, over what it was before
        report.check("flood: /metrics bounded", size - size0 < 32 * PEER_BYTES,
                     f"{size} bytes, {size0} before")
        report.check("flood: still one holder", holders(lab) == ["a"], str(holders(lab)))


def scrape(limits: Limits, report: Report) -> None:
    with Lab() as lab:
        start_pair(lab)
        capture = AdvertCapture(lab)
        time.sleep(0.5)
        cmd = [sys.executable, str(HERE / "scrape.py"), f"http://{A_IP}:9655/metrics",
               str(limits.scrape_rps), str(limits.scrape_seconds),
               f"http://{A_IP}:9655/healthz"]
        result = json.loads(lab.topo["client"].run(*cmd, timeout=limits.scrape_seconds + 90).stdout)
        gap = max_gap(capture.stop())
        result["max_advert_gap_s"] = round(gap, 4)
        report.figures["scrape"] = result
        report.check("scrape storm: master's adverts on time",
                     gap <= ADVERT_INTERVAL + limits.gap_slack, f"max gap {gap * 1000:.0f} ms")
        report.check("scrape storm: /healthz answered in time",
                     result["healthz_failures"] == 0 and result["healthz_max_ms"] <= limits.healthz_ms,
                     f"slowest {result['healthz_max_ms']} ms, {result['healthz_failures']} failed")
        report.check("scrape storm: requests answered", result["answered"] >= 0.9 * result["sent"],
                     f"{result['answered']}/{result['sent']}")


B_UP = """#!/bin/sh
ip addr add "$2"/16 dev "$1" label "$1":0
sleep 20 >/dev/null 2>&1 &
[ -e {flag} ] && sleep 60
exit 0
"""
B_DOWN = """#!/bin/sh
ip addr del "$2"/16 dev "$1" 2>/dev/null
exit 0
"""


def faults(limits: Limits, report: Report) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "9")))
    with Lab() as lab:
        flag, up, down = lab.dir / "hang", lab.dir / "b-up.sh", lab.dir / "b-down.sh"
        up.write_text(B_UP.format(flag=flag))
        down.write_text(B_DOWN)
        for p in (up, down):
            p.chmod(0o755)
        start_pair(lab, CARP_UPSCRIPT=str(up), CARP_DOWNSCRIPT=str(down), CARP_SCRIPT_TIMEOUT="8")
        b = lab.agents["b"].pid
        fds0, rss0 = fds(b), rss_kb(b)
        sampler = HolderSampler(lab, interval=0.1)
        samples = sampler.samples
        excused: list[tuple[float, float]] = []  # windows of a frozen or dead master

        def sigkill() -> None:
            t = time.monotonic()
            stop_process(lab.agents.pop("a"), sig=signal.SIGKILL)
            lab.start_agent("a", CARP_PREEMPT="true")  # restarted at once, like a container
            excused.append((t, time.monotonic() + 1.5))

        def freeze() -> None:
            t, proc = time.monotonic(), lab.agents["a"]
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 5))
            os.kill(proc.pid, signal.SIGCONT)
            excused.append((t, time.monotonic() + 1.0))

        def unplug() -> None:
            lab.topo.unplug("a")
            time.sleep(rng.uniform(1, 5))
            lab.topo.plug("a")

        def recreate() -> None:
            lab.topo.remove_interface("a")
            time.sleep(rng.uniform(0.5, 4))
            lab.topo.recreate_interface("a")

        def delete_vip() -> None:
            for node in holders(lab):
                lab.topo[node].run("ip", "addr", "del", f"{VIP}/16", "dev", "eth0", check=False)

        def script_hang() -> None:
            flag.touch()  # node-b's next upscript hangs; node-a preempts it back meanwhile
            lab.topo.unplug("a")
            time.sleep(B_MASTER_DOWN + 1.5)
            lab.topo.plug("a")
            time.sleep(2)
            flag.unlink()

        actions: dict[str, Callable[[], None]] = {
            "unplug": unplug, "sigkill": sigkill, "freeze": freeze, "recreate": recreate,
            "delete_vip": delete_vip, "script_hang": script_hang}
        counts = dict.fromkeys(actions, 0)
        sampler.start()
        end = time.monotonic() + limits.fault_seconds
        try:
            while time.monotonic() < end:
                name = rng.choice(list(actions))
                counts[name] += 1
                actions[name]()
                time.sleep(rng.uniform(2, 6))  # let it settle, as between real faults
            Lab.wait(lambda: holders(lab) == ["a"], 15, "node-a MASTER at the end")
        finally:
            sampler.stop()
        report.figures["faults"] = counts

        def excused_at(t: float) -> bool:
            return any(start <= t <= end for start, end in excused)

        two, none = sampler.longest(2, excused_at), sampler.longest(0)
        report.figures["faults_longest_two_holders_s"] = round(two, 2)
        report.figures["faults_longest_no_holder_s"] = round(none, 2)
        report.check("faults: never two holders (outside a frozen/killed master)", two <= 0.25,
                     f"longest {two:.2f} s over {len(samples)} samples, faults {counts}")
        report.check("faults: at most one master-down interval without a holder",
                     none <= B_MASTER_DOWN + 0.5, f"longest {none:.2f} s")
        fds1, rss1 = fds(b), rss_kb(b)
        report.figures["node_b_fds"] = [fds0, fds1]
        report.figures["node_b_rss_kb"] = [rss0, rss1]
        report.check("faults: node-b's fds and RSS flat",
                     fds1 <= fds0 + 2 and rss1 - rss0 <= 5 * 1024,
                     f"fds {fds0}->{fds1}, RSS {rss0 // 1024}->{rss1 // 1024} MB")


FAKETIME = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def operator(limits: Limits, report: Report) -> None:
    """A strict unicast pair (state directories kept) under the faults of round 3: node-a's
    agent restarted with its wall clock an hour behind (or ahead), its interface re-created with
    the address added 1-6 s later, and node-a's agent killed (its VIP left behind) until node-b
    has signalled the stale holder."""
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "9")))
    b_ip = ADDRESSES["b"].split("/")[0]
    a_env = {"CARP_PREEMPT": "true", "CARP_PEERS": b_ip, "CARP_STRICT": "true"}
    with Lab() as lab:
        lab.start_agent("a", **a_env)
        lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A_IP, CARP_STRICT="true")
        Lab.wait(lambda: holders(lab) == ["a"], 12, "node-a MASTER")
        sampler = HolderSampler(lab, interval=0.1)
        excused: list[tuple[float, float]] = []  # a killed master's VIP stays: expected
        signal_after: list[float] = []  # kill -> node-b's stale-holder signal, s

        def clock_step() -> None:
            stop_process(lab.agents.pop("a"))
            lab.start_agent("a", **a_env, **FAKETIME, FAKETIME=rng.choice(["-1h", "+1h", "-1d"]))

        def late_address() -> None:
            lab.topo.remove_interface("a")
            time.sleep(rng.uniform(0.5, 3))
            lab.topo.recreate_interface("a", address=False)
            time.sleep(rng.uniform(1, 6))
            lab.topo.add_address("a")

        def killed_master() -> None:
            if holders(lab) != ["a"]:
                return
            t = time.monotonic()
            before = metric(lab, "b", "carp_conflicts_total", evidence="stale_holder")
            stop_process(lab.agents.pop("a"), sig=signal.SIGKILL)
            try:
                Lab.wait(lambda: metric(lab, "b", "carp_conflicts_total",
                                        evidence="stale_holder") > before,
                         B_MASTER_DOWN + 6, "node-b signals the stale holder")
                signal_after.append(round(time.monotonic() - t, 2))
            except TimeoutError:
                signal_after.append(-1)
            lab.start_agent("a", **a_env)
            excused.append((t, time.monotonic() + 1.5))

        actions: dict[str, Callable[[], None]] = {
            "clock_step": clock_step, "late_address": late_address, "killed_master": killed_master}
        counts = dict.fromkeys(actions, 0)
        sampler.start()
        end = time.monotonic() + limits.fault_seconds
        try:
            for name in itertools.cycle(actions):  # each kind at least once, even when short
                if time.monotonic() >= end and all(counts.values()):
                    break
                counts[name] += 1
                actions[name]()
                time.sleep(rng.uniform(4, 8))
            Lab.wait(lambda: holders(lab) == ["a"], 15, "node-a MASTER at the end")
        finally:
            sampler.stop()
        two = sampler.longest(2, lambda t: any(a <= t <= b for a, b in excused))
        report.figures["operator"] = {"counts": counts, "longest_two_holders_s": round(two, 2),
                                      "stale_holder_signal_after_kill_s": signal_after}
        report.check("operator: never two holders (clock steps, late address; outside a killed "
                     "master's window)", two <= 0.25, f"longest {two:.2f} s, faults {counts}")
        report.check("operator: every killed master's VIP signalled as a stale holder",
                     bool(signal_after) and min(signal_after) > 0, f"after {signal_after} s")
        replays = metric(lab, "b", "carp_adverts_dropped_total", reason="replay")
        report.check("operator: no advert of a clock-stepped node dropped as a replay",
                     replays == 0, f"{replays:g} replay drops")


PARTS = {"flood": flood, "scrape": scrape, "faults": faults, "operator": operator,
         "rotation": rotation, "statedir": statedir, "flapping": flapping}


def run(short: bool, only: list[str] | None = None) -> Report:
    limits, report = (SHORT if short else LONG), Report()
    for name in only or list(PARTS):
        print(f"== {name} ({'short' if short else 'long'})", flush=True)
        PARTS[name](limits, report)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true")
    p.add_argument("--only", default="", help="comma-separated parts: " + ",".join(PARTS))
    p.add_argument("--json", type=Path, help="write the figures and checks here")
    args = p.parse_args()
    report = run(args.short, [x for x in args.only.split(",") if x] or None)
    if args.json:
        args.json.write_text(json.dumps({"figures": report.figures, "checks": [
            {"check": n, "ok": ok, "detail": d} for n, ok, d in report.checks]}, indent=1) + "\n")
    print("chaos:", "all checks passed" if report.ok else "FAILED", flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
