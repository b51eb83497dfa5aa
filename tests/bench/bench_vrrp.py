#!/usr/bin/env python3
"""carp-sidecar in a keepalived group (VRRP mode), measured against a pure keepalived pair.

Same lab as the CARP figures (sidecar.lab: fresh namespaces per run, Apache on node-a and
node-b, a client polling http://VIP/ every 10 ms, each request given 20 ms). node-a is the
preferred router (priority 150), node-b the backup (priority 100); keepalived is Debian's, with
no authentication, preempt on (its default and ours in VRRP mode). For VRRPv2 (advert_int 1)
and VRRPv3 (advert_int 0.1), and for each pair

  keepalived -> keepalived      the reference: a pure keepalived pair, same settings
  keepalived -> carp-sidecar    keepalived master, our backup
  carp-sidecar -> keepalived    our master, keepalived backup

it measures, median of --runs:

  unplug   node-a's cable pulled: client-visible downtime (the gap before node-b answers)
  stop     node-a's agent stopped (SIGTERM): its resign (priority 0) and node-b's takeover

and the same for VRRPv3 over IPv6 (advert_int 0.1, scenarios unplug_v6 and stop_v6): the VIP
2001:db8::1/64, keepalived's IPv6 instance, our agent advertising from its link-local address,
the client polling http://[VIP]/, DAD off inside the namespaces (vrrp6lab.Lab6).

Then the idle cost (--idle seconds, side by side, each node-a alone as MASTER): an agent with one
CARP instance, with a CARP and a VRRPv3 instance, with two CARP instances, and keepalived with
one VRRP instance: CPU (% of one core, every thread, schedstat) and RSS.

--soak MINUTES: a mixed VRRPv3 group at advert_int 0.1 in both directions at once (VRID 1: our
master, keepalived backup; VRID 2: keepalived master, our backup) with a CPU burner on every
core: spurious transitions counted from both sides' logs and our carp_transitions_total (must
be 0).

    python tests/bench/bench_vrrp.py [--runs 5] [--idle 60] [--soak 10] [--quick]
                                     [--family 4|6] [--json FILE]
                                     [--merge docs/bench-results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_failover import _tree, node_b_took_over, summarize  # beside this file
from bench_instances import NO_LAB_DEFAULTS, cpu_seconds, rss_mb
from results import merge
from vrrp6lab import VIP6, Lab6, agent_env6

from sidecar.lab import LAB_PASSWORD, VIP, Lab

VERSIONS = {"vrrp2": 1.0, "vrrp3": 0.1}  # protocol -> advert_int (s)
PAIRS = (("keepalived", "keepalived"), ("keepalived", "carp-sidecar"),
         ("carp-sidecar", "keepalived"))
SCENARIOS = ("unplug", "stop")
FAMILIES = {"vrrp2": (4,), "vrrp3": (4, 6)}  # VRRPv2 is IPv4 only
PRIORITY = {"a": 150, "b": 100}
VIP2 = "172.16.0.2"

KEEPALIVED_INSTANCE = """vrrp_instance VI_{vrid} {{
  state BACKUP
  interface eth0
  virtual_router_id {vrid}
  priority {priority}
  advert_int {interval}
  virtual_ipaddress {{
    {address}
  }}
}}
"""


def keepalived(lab: Lab, node: str, version: str, instances: dict[int, tuple[str, int]],
               interval: float) -> subprocess.Popen[bytes]:
    """{vrid: (vip, priority)}; its own config and pid files, foreground, VRRP only."""
    conf = lab.dir / f"keepalived-{node}.conf"
    conf.write_text(f"global_defs {{\n  vrrp_version {version[-1]}\n}}\n" + "".join(
        KEEPALIVED_INSTANCE.format(vrid=vrid, priority=prio, interval=f"{interval:g}",
                                   address=f"{vip}/64 dev eth0" if ":" in vip  # no IPv6 label
                                   else f"{vip}/16 dev eth0 label eth0:{vrid}")
        for vrid, (vip, prio) in instances.items()))
    cmd = ["keepalived", "-n", "-l", "-D", "--vrrp", "-f", str(conf),
           "-p", str(lab.dir / f"ka-{node}.pid"), "-r", str(lab.dir / f"vrrp-{node}.pid"),
           "-c", str(lab.dir / f"checkers-{node}.pid")]
    proc = lab.topo.start(node, cmd, log=lab.dir / f"{node}.log")
    lab.agents[node] = proc
    return proc


def sidecar_config(lab: Lab, node: str, instances: dict[int, tuple[str, str, int]],
                   interval: float) -> dict[str, str]:
    """{vhid: (protocol, vip, priority)} as a CARP_CONFIG file; CARP instances get the lab's
    password and advskew 0, VRRP ones their priority and advert_int (and no password)."""
    text = 'interface = "eth0"\n\n'
    for vhid, (protocol, vip, prio) in instances.items():
        text += f'[[vhid]]\nvhid = {vhid}\naddr = ["{vip}/16"]\nif_alias = "eth0:{vhid}"\n'
        if protocol == "carp":
            text += f'pass = "{LAB_PASSWORD}"\npreempt = true\n\n'
        else:
            text += f'protocol = "{protocol}"\npriority = {prio}\nadvert_int = {interval:g}\n\n'
    path = lab.dir / f"{node}.toml"
    path.write_text(text)
    return {"CARP_CONFIG": str(path), **NO_LAB_DEFAULTS}


def start(lab: Lab, kind: str, node: str, version: str, family: int = 4
          ) -> subprocess.Popen[bytes]:
    interval = VERSIONS[version]
    if kind == "keepalived":
        vip = VIP6 if family == 6 else VIP
        return keepalived(lab, node, version, {1: (vip, PRIORITY[node])}, interval)
    if family == 6:
        return lab.start_agent(node, **agent_env6(PRIORITY[node], interval))
    return lab.start_agent(node, CARP_PROTOCOL=version, CARP_PRIORITY=str(PRIORITY[node]),
                           CARP_ADVERT_INT=f"{interval:g}", CARP_PASS="")


def vips(lab: Lab, node: str) -> str:
    return lab.topo[node].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout


def one_run(version: str, pair: tuple[str, str], scenario: str, family: int = 4
            ) -> dict[str, float | None]:
    with Lab6() if family == 6 else Lab() as lab:
        for node in ("a", "b"):
            lab.start_apache(node)
        start(lab, pair[0], "a", version, family)
        lab.wait(lambda: lab.has_vip("a"), 10, f"{pair[0]} on node-a to take the VIP")
        start(lab, pair[1], "b", version, family)
        lab.start_probe(timeout=0.02)
        lab.wait(lambda: lab.client_sees() == "node-a", 10, "the client to reach node-a")
        time.sleep(2.5)  # node-b settled as BACKUP
        if lab.has_vip("b"):
            raise RuntimeError(f"{version} IPv{family} {pair}: node-b holds the VIP beside "
                               "node-a")
        began = time.time()
        if scenario == "unplug":
            lab.topo.unplug("a")
        else:
            lab.stop_agent("a", sig=signal.SIGTERM)
        return node_b_took_over(lab, began)


def idle_cost(seconds: float) -> dict[str, dict[str, float]]:
    """Each setup alone as MASTER on node-a of its own lab, all at once."""
    setups = {
        "carp-sidecar, one CARP instance": {1: ("carp", VIP, 0)},
        "carp-sidecar, CARP + VRRPv3 instance": {1: ("carp", VIP, 0), 2: ("vrrp3", VIP2, 150)},
        "carp-sidecar, two CARP instances": {1: ("carp", VIP, 0), 2: ("carp", VIP2, 0)},
    }
    labs = {name: Lab().__enter__() for name in [*setups, "keepalived, one VRRPv3 instance"]}
    try:
        procs = {}
        for name, lab in labs.items():
            if name in setups:
                procs[name] = lab.start_agent("a", **sidecar_config(lab, "a", setups[name], 1.0))
            else:
                procs[name] = keepalived(lab, "a", "vrrp3", {1: (VIP, 150)}, 1.0)
        for name, lab in labs.items():
            lab.wait(lambda lab=lab: lab.has_vip("a"), 15, f"{name}: MASTER")  # type: ignore[misc]
        time.sleep(5 if seconds >= 30 else 2)  # start-up over (imports, first GARPs)
        pids = {name: _tree(p.pid) for name, p in procs.items()}
        before, t0 = {name: cpu_seconds(p) for name, p in pids.items()}, time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return {name: {"cpu_percent": round(100 * (cpu_seconds(p) - before[name]) / elapsed, 3),
                       "rss_mb": round(rss_mb(p), 1)} for name, p in pids.items()}
    finally:
        for lab in labs.values():
            lab.__exit__(None, None, None)


# keepalived 2.2.7: "(VI_1) Entering MASTER STATE", "(VI_1): entering FAULT state (...)"
KA_STATE = re.compile(r"\((VI_\d+)\):? entering (MASTER|BACKUP|FAULT) state", re.I)
OUR_STATE = re.compile(r"Switching to state: (\w+)(?: \(vhid (\d+))?")


def _transitions(text: str) -> int:
    return int(sum(float(v) for v in re.findall(r"^carp_transitions_total\{[^}]*\} (\S+)$",
                                                 text, re.M)))


def soak(minutes: float) -> dict[str, Any]:
    """Mixed VRRPv3 group at 0.1 s in both directions, every core busy."""
    interval = 0.1
    with Lab() as lab:
        lab.start_agent("a", **sidecar_config(
            lab, "a", {1: ("vrrp3", VIP, 150), 2: ("vrrp3", VIP2, 100)}, interval))
        keepalived(lab, "b", "vrrp3", {1: (VIP, 100), 2: (VIP2, 150)}, interval)
        lab.wait(lambda: f" {VIP}/" in vips(lab, "a") and f" {VIP2}/" in vips(lab, "b")
                 and f" {VIP}/" not in vips(lab, "b") and f" {VIP2}/" not in vips(lab, "a"),
                 20, "VRID 1 on node-a (ours), VRID 2 on node-b (keepalived)")
        time.sleep(3)
        logs = {n: lab.dir / f"{n}.log" for n in ("a", "b")}
        offsets = {n: len(p.read_bytes()) for n, p in logs.items()}
        settled = {"a": OUR_STATE, "b": KA_STATE}
        for n, pattern in settled.items():  # the patterns do match each side's start-up
            if not pattern.search(logs[n].read_text(errors="replace")):
                raise RuntimeError(f"no state line in node-{n}'s log: {pattern.pattern}")
        metrics0 = _transitions(lab.get("a", "http://127.0.0.1:9655/metrics") or "")
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   for _ in range(os.cpu_count() or 2)]
        try:
            time.sleep(minutes * 60)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
        time.sleep(1)
        after = {n: p.read_bytes()[offsets[n]:].decode(errors="replace") for n, p in logs.items()}
        ours = [m.group(0) for m in OUR_STATE.finditer(after["a"])]
        theirs = [m.group(0) for m in KA_STATE.finditer(after["b"])]
        metrics = _transitions(lab.get("a", "http://127.0.0.1:9655/metrics") or "") - metrics0
        held = {"vrid1_on_ours": f" {VIP}/" in vips(lab, "a"),
                "vrid2_on_keepalived": f" {VIP2}/" in vips(lab, "b")}
    return {"minutes": minutes, "advert_int": interval, "burners": os.cpu_count() or 2,
            "spurious_transitions": {"carp-sidecar log": len(ours), "keepalived log": len(theirs),
                                     "carp_transitions_total": metrics},
            "lines": (ours + theirs)[:20], "still_held_at_end": held}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--idle", type=float, default=60, help="seconds of idle measurement")
    p.add_argument("--soak", type=float, default=0, help="minutes of the mixed v3 soak (0: none)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run each, 10 s idle")
    p.add_argument("--family", type=int, choices=(4, 6), help="only the IPv4 or the IPv6 "
                   "failover rows (default: both)")
    p.add_argument("--json", type=Path)
    p.add_argument("--merge", type=Path, help="also store the results under 'vrrp' in this "
                   "JSON file (docs/bench-results.json)")
    args = p.parse_args()
    if args.quick:
        args.runs, args.idle = 1, min(args.idle, 10)
    started = time.monotonic()
    result: dict[str, Any] = {"machine": f"{platform.machine()}, {platform.platform()}, "
                                         f"Python {platform.python_version()}",
                              "runs": args.runs, "failover": {}}
    cases = [(version, family, scenario) for version in VERSIONS
             for family in FAMILIES[version] if args.family in (None, family)
             for scenario in SCENARIOS]
    for version, family, scenario in cases:
        key = f"{scenario}_v6" if family == 6 else scenario  # beside the IPv4 rows
        for pair in PAIRS:
            runs = [one_run(version, pair, scenario, family) for _ in range(args.runs)]
            name = f"{pair[0]} -> {pair[1]}"
            result["failover"].setdefault(version, {}).setdefault(key, {})[name] = {
                measure: summarize([r[measure] for r in runs])
                | {"runs": [r[measure] for r in runs]}
                for measure in ("downtime_ms", "takeover_ms")}
            print(f"  {version} {key:<9} {name:<28} downtime ms "
                  f"{[r['downtime_ms'] for r in runs]}", flush=True)
    if args.idle:
        result["idle"] = idle_cost(args.idle)
    if args.soak:
        result["soak"] = soak(args.soak)
    result["wall_seconds"] = round(time.monotonic() - started)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.merge:
        merge(args.merge, "vrrp", result)
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['machine']}; {r['runs']} runs each; client-visible downtime, median "
          "(min-max) ms, and its ratio to the pure keepalived pair\n")
    print("| VRRP | event on node-a | pair (master -> backup) | downtime | ratio |")
    print("|---|---|---|---|---|")
    for version, by_scenario in r["failover"].items():
        for scenario, by_pair in by_scenario.items():
            base = by_pair["keepalived -> keepalived"]["downtime_ms"]["median"]
            for name, entry in by_pair.items():
                d = entry["downtime_ms"]
                cell = ("never" if d["median"] is None
                        else f"{d['median']:.0f} ({d['min']:.0f}-{d['max']:.0f})")
                ratio = ("n/a" if d["median"] is None or not base
                         else f"{d['median'] / max(base, 10.0):.2f}")
                event = scenario.replace("_v6", ", IPv6")
                print(f"| {version} {VERSIONS[version]:g} s | {event} | {name} | {cell} | "
                      f"{ratio} |")
    if "idle" in r:
        print("\n| idle, node-a MASTER | CPU (% of a core) | RSS (MB) |\n|---|---|---|")
        for name, v in r["idle"].items():
            print(f"| {name} | {v['cpu_percent']:.3f} | {v['rss_mb']:.1f} |")
    if "soak" in r:
        s = r["soak"]
        print(f"\nsoak {s['minutes']:g} min, VRRPv3 {s['advert_int']} s both ways, "
              f"{s['burners']} CPU burners: spurious transitions {s['spurious_transitions']}, "
              f"masters held at the end {s['still_held_at_end']}")
    print(f"\nwhole benchmark: {r['wall_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
