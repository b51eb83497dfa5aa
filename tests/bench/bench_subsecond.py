#!/usr/bin/env python3
"""Sub-second failover and its steadiness, measured in the same run against ucarp and keepalived.

Failover: fresh namespaces per run (sidecar.lab), Apache on both nodes, a client polling
http://VIP/ every 10 ms; node-a (preferred) is unplugged and we take the client-visible downtime
(the gap before the first answer from node-b). Agents, same topology, same run:

  carp-sidecar sub-second   advbase 0, skew 20 (adverts every 78 ms) / backup skew 26, multicast
  carp-sidecar unicast      the same over CARP_PEERS
  ucarp advbase 1           Debian's ucarp, the recipe's timing
  keepalived advert_int 1   VRRPv2
  keepalived VRRPv3 0.1     vrrp_version 3, advert_int 0.1

Soak (--soak S): the sub-second pair for S seconds with a CPU burner on every core and 1000
/metrics requests a second to the master: spurious transitions (must be 0) and the master's
advert gaps seen on the wire (p99.9 must stay under half the backup's dead timer).

--floor: the same at the protocol's floor: advbase 0 with skews 1/2 (adverts every 3.9 ms, the
smallest interval CARP can express; VRRPv3 dead timer 19.5 ms) and CARP_REALTIME, beside
keepalived VRRPv3 at its floor, advert_int 0.01; results under "floor".

    python tests/bench/bench_subsecond.py [--runs 5] [--soak 600] [--floor] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.lab import ADDRESSES, VIP, Lab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_failover import start_agent  # beside this file

KINDS = ("carp-sidecar sub-second", "carp-sidecar unicast", "ucarp advbase 1",
         "keepalived advert_int 1", "keepalived VRRPv3 0.1")
FLOOR_KINDS = ("carp-sidecar floor", "keepalived VRRPv3 0.01")
SKEWS = {"carp-sidecar floor": (1, 2)}  # otherwise 20 / 26


def skews(kind: str) -> tuple[int, int]:
    return SKEWS.get(kind, (20, 26))


def dead_timer_b(kind: str) -> float:
    a, b = skews(kind)
    return (3 * a + b) / 256  # VRRPv3's rule at advbase 0 (docs/protocol.md §6)

KEEPALIVED = """global_defs {{
  {version}
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface eth0
  virtual_router_id 1
  priority {priority}
  advert_int {interval}
  virtual_ipaddress {{
    {vip}/16 dev eth0 label eth0:0
  }}
}}
"""


def start(lab: Lab, kind: str, node: str) -> None:
    preferred = node == "a"
    other = ADDRESSES["b" if preferred else "a"].split("/")[0]
    if kind.startswith("carp-sidecar"):
        skew_a, skew_b = skews(kind)
        env = {"CARP_ADVBASE": "0", "CARP_ADVSKEW": str(skew_a if preferred else skew_b)}
        env |= {"CARP_REALTIME": "true"} if "floor" in kind else {}
        env |= {"CARP_PREEMPT": "true"} if preferred else {}
        env |= {"CARP_PEERS": other} if "unicast" in kind else {}
        lab.start_agent(node, **env)
        return
    if kind.startswith("ucarp"):  # exactly as in the 1 s benchmark
        start_agent(lab, "ucarp", node)
        return
    v3 = "VRRPv3" in kind
    conf = lab.dir / f"keepalived-{node}.conf"
    conf.write_text(KEEPALIVED.format(version="vrrp_version 3" if v3 else "",
                                      interval=kind.split()[-1] if v3 else "1",
                                      priority=150 if preferred else 100, vip=VIP))
    cmd = ["keepalived", "-n", "-l", "-D", "--vrrp", "-f", str(conf),
           "-p", str(lab.dir / f"ka-{node}.pid"), "-r", str(lab.dir / f"vrrp-{node}.pid")]
    lab.agents[node] = lab.topo.start(node, cmd, log=lab.dir / f"{node}.log")


def failover(kind: str) -> dict[str, float | None]:
    """Client-visible downtime (a request every 10 ms, each given 20 ms: the resolution), and
    the takeover on the wire, captured on node-b: unplug -> its first gratuitous ARP, and the
    master's last advert it heard -> that ARP."""
    with Lab() as lab:
        for node in ("a", "b"):
            lab.start_apache(node)
        start(lab, kind, "a")
        lab.wait(lambda: lab.has_vip("a"), 10, f"{kind}: node-a takes the VIP")
        start(lab, kind, "b")
        lab.start_probe(timeout=0.02)
        lab.wait(lambda: lab.client_sees() == "node-a", 10, "the client on node-a")
        time.sleep(2.5)
        mac_b = lab.topo["b"].run("cat", "/sys/class/net/eth0/address").stdout.strip()
        capture = subprocess.Popen(lab.topo["b"].argv(  # what node-b hears and sends
            "tcpdump", "-tt", "-n", "-l", "-e", "-i", "eth0",
            f"(arp and ether src {mac_b}) or (ip proto 112 and src host 172.16.0.11)"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.5)
        began = time.time()
        lab.topo.unplug("a")
        try:
            lab.wait(lambda: lab.client_sees() == "node-b", 12, "node-b")
        except TimeoutError:
            return {"downtime_ms": None, "takeover_ms": None}
        time.sleep(0.3)
        capture.terminate()
        out = capture.communicate(timeout=10)[0]
        lines = [line for line in out.splitlines() if line.strip()]
        garps = [float(ln.split()[0]) for ln in lines
                 if "ARP" in ln and VIP in ln and float(ln.split()[0]) >= began]
        adverts = [float(ln.split()[0]) for ln in lines if "ARP" not in ln]
        last = max((t for t in adverts if garps and t < garps[0]), default=None)
        return {"downtime_ms": lab.downtime_ms(began, "node-b"),
                "takeover_ms": round((garps[0] - began) * 1000, 1) if garps else None,
                # independent of where in the advert cycle the unplug fell: the dead timer
                # as realised, from the master's last advert node-b heard to its GARP
                "silence_to_garp_ms": round((garps[0] - last) * 1000, 1)
                if garps and last else None}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lateness(text: str) -> dict[str, float]:
    """The master's own carp_timer_lateness_seconds: the share of timers later than each
    bound (what made an advert late is the loop, not the wire, when these grow)."""
    buckets = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^carp_timer_lateness_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)}
    total = buckets.get("+Inf", 0.0)
    return {f"later_than_{le}s": round(1 - n / total, 6) for le, n in buckets.items()
            if le != "+Inf" and total} | {"timers": total}


def soak(seconds: float, kind: str = "carp-sidecar sub-second") -> dict[str, Any]:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    try:
        with Lab() as lab:
            start(lab, kind, "a")
            lab.wait(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
            start(lab, kind, "b")
            time.sleep(2)
            pid_a = lab.agents["a"].pid
            cpu0, t0 = _cpu(pid_a), time.monotonic()
            scraper = subprocess.Popen(lab.topo["client"].argv(
                sys.executable, str(Path(__file__).parents[1] / "chaos/scrape.py"),
                "http://172.16.0.11:9655/metrics", "1000", str(seconds),
                "http://172.16.0.11:9655/healthz"), stdout=subprocess.PIPE, text=True)
            dump = subprocess.run(lab.topo["client"].argv(
                "timeout", str(seconds), "tcpdump", "-tt", "-n", "-l", "-i", "eth0",
                "ip proto 112 and src host 172.16.0.11"), capture_output=True, text=True,
                timeout=seconds + 60).stdout
            scraped = json.loads(scraper.communicate(timeout=120)[0] or "{}")
            cpu = round(100 * (_cpu(pid_a) - cpu0) / (time.monotonic() - t0), 1)
            lateness = _lateness(lab.get("a", "http://127.0.0.1:9655/metrics") or "")
            times = [float(line.split()[0]) for line in dump.splitlines() if line.strip()]
            gaps = sorted(b - a for a, b in itertools.pairwise(times))
            transitions = {n: re.findall(r"Switching to state: (\w+)",
                                         (lab.dir / f"{n}.log").read_text()) for n in ("a", "b")}
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    p999 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.999))] if gaps else None
    return {"seconds": seconds, "adverts": len(times),
            "spurious_transitions": (len(transitions["a"]) - 2) + (len(transitions["b"]) - 1),
            "advert_gap_ms": {"median": round(statistics.median(gaps) * 1000, 1) if gaps else None,
                              "p99.9": round(p999 * 1000, 1) if p999 else None,
                              "max": round(gaps[-1] * 1000, 1) if gaps else None},
            "half_dead_timer_ms": round(dead_timer_b(kind) / 2 * 1000, 1),
            "master_cpu_percent": cpu,  # of one core, burners and scrapes included
            "timer_lateness": lateness,
            "scrapes": scraped}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--soak", type=float, default=600)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--floor", action="store_true", help="advskew 1/2 with CARP_REALTIME, "
                   "beside keepalived at advert_int 0.01 (stored under 'floor')")
    p.add_argument("--merge", type=Path, help="also store them under 'subsecond' in this JSON "
                   "file (docs/bench-results.json)")
    args = p.parse_args()
    started = time.monotonic()
    result: dict[str, Any] = {"machine": f"{platform.machine()}, {platform.platform()}, "
                                         f"Python {platform.python_version()}",
                              "runs": args.runs, "unplug_downtime_ms": {}}
    kinds = FLOOR_KINDS if args.floor else KINDS
    key = "floor" if args.floor else "subsecond"
    for kind in kinds:
        runs = [failover(kind) for _ in range(args.runs)]
        entry = {}
        for measure in ("downtime_ms", "takeover_ms", "silence_to_garp_ms"):
            values = [r[measure] for r in runs]
            got = [v for v in values if v is not None]
            entry[measure] = {"runs": values, "median": statistics.median(got) if got else None}
        result["unplug_downtime_ms"][kind] = entry
        print(f"  {kind:<26} downtime ms {entry['downtime_ms']['runs']} takeover ms "
              f"{entry['takeover_ms']['runs']} silence->GARP ms "
              f"{entry['silence_to_garp_ms']['runs']}", flush=True)
    if args.soak:
        result["soak"] = soak(args.soak, kinds[0])
    result["wall_seconds"] = round(time.monotonic() - started)
    by = result["unplug_downtime_ms"]
    ours = by[kinds[0]]
    print("\n| agent | unplug -> client answered by node-b, median ms | ratio | unplug -> "
          "node-b's GARP, median ms | ratio | master's last advert -> node-b's GARP, median ms "
          "| ratio |")
    print("|---|---|---|---|---|---|---|")
    for kind, entry in by.items():
        cells = []
        for measure in ("downtime_ms", "takeover_ms", "silence_to_garp_ms"):
            m, base = entry[measure]["median"], ours[measure]["median"]
            cells += ["never" if m is None else f"{m:.0f}",
                      "n/a" if m is None or not base else f"{m / base:.2f}"]
        print(f"| {kind} | {' | '.join(cells)} |")
    if "soak" in result:
        s = result["soak"]
        print(f"\nsoak {s['seconds']:.0f} s, busy cores + 1000 /metrics req/s: spurious "
              f"transitions {s['spurious_transitions']}, advert gaps ms {s['advert_gap_ms']} "
              f"(half the dead timer: {s['half_dead_timer_ms']} ms), scrapes {s['scrapes']}")
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    if args.merge:
        doc = json.loads(args.merge.read_text()) if args.merge.exists() else {}
        if "soak" not in result and "soak" in doc.get(key, {}):
            result["soak"] = doc[key]["soak"]  # a failover-only run keeps the soak
        doc[key] = result
        args.merge.write_text(json.dumps(doc, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
