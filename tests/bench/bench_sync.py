#!/usr/bin/env python3
"""Replicated paths (docs/sync.md): figures printed beside a plain rsync of the same tree,
measured in the same run, never asserted.

- lag: a writer makes --rate new 10 kB files per second on the master for --seconds; each
  file's lag is from its write to its complete content on the backup (p50, p99, max).
- catch-up: a backup joins a master holding --files files of 10 kB; time from the agent's
  start to its first catch-up, beside `rsync -a` of the same tree from an rsync daemon in the
  master's namespace to a fresh folder in the backup's (the same transport).
- rounds: a writer on whichever node holds the VIP (new files, some deleted 0.5 s later) through
  --rounds cable pulls of the master and its preempt back: files lost (written more than the
  measured lag before a pull, absent or wrong on the final master), deleted files back, and
  files of the old master's lag window not kept in its conflicts folder.
- blocked: a preferred backup whose pulls are blocked, started beside a healthy master,
  --tries times: how many times it took the VIP (goal 0).
- idle: CPU and RSS of an agent replicating a --files tree for --idle s, beside one without.

    python tests/bench/bench_sync.py [--json FILE] [--merge docs/bench-results.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if importlib.util.find_spec("sidecar") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.lab import Lab

SECRET = "bench-sync-secret"
BLOCK = ("table inet syncblock {\n chain output {\n  type filter hook output priority 0;\n"
         "  tcp dport 8873 drop\n }\n}\n")


def data(lab: Lab, node: str) -> Path:
    path = lab.dir / f"{node}-data"
    path.mkdir(exist_ok=True)
    return path


def env(lab: Lab, node: str, **extra: str) -> dict[str, str]:
    secret = lab.dir / "sync.secret"
    if not secret.exists():
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
    return {"CARP_SYNC_PATHS": f"docs={data(lab, node)}", "CARP_SYNC_SECRET_FILE": str(secret),
            **extra}


def wait(cond: Any, timeout: float, what: str) -> float:
    return Lab.wait(lambda: bool(cond()), timeout, what)


def caught_up(lab: Lab, node: str) -> bool:
    paths = ((lab.status(node) or {}).get("sync") or {}).get("paths") or []
    return bool(paths) and all(p.get("lag_seconds") == 0 for p in paths)


def start_pair(lab: Lab) -> None:
    lab.start_agent("a", **env(lab, "a", CARP_PREEMPT="true"))
    wait(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
    lab.start_agent("b", **env(lab, "b", CARP_ADVSKEW="100"))
    wait(lambda: caught_up(lab, "b"), 60, "b caught up")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_lag(rate: int, seconds: float) -> dict[str, Any]:
    with Lab() as lab:
        start_pair(lab)
        a, b = data(lab, "a"), data(lab, "b")
        written: dict[str, float] = {}
        seen: dict[str, float] = {}
        blob = os.urandom(10_000)
        done = threading.Event()

        def check() -> None:
            while not done.is_set() or len(seen) < len(written):
                for name in [n for n in written if n not in seen]:
                    try:
                        if (b / name).read_bytes() == blob:
                            seen[name] = time.monotonic()
                    except OSError:
                        pass
                time.sleep(0.005)
                if done.is_set() and time.monotonic() - stop_at > 30:
                    return

        stop_at = float("inf")
        checker = threading.Thread(target=check, daemon=True)
        checker.start()
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            name = f"w{i:06d}"
            (a / name).write_bytes(blob)
            written[name] = time.monotonic()
            i += 1
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        stop_at = time.monotonic()
        done.set()
        checker.join(40)
        lags = [seen[n] - written[n] for n in written if n in seen]
        missing = len(written) - len(lags)
        t = time.monotonic()
        subprocess.run(["rsync", "-a", f"{a}/", f"{lab.dir}/plain/"], check=True)
        plain = time.monotonic() - t
    return {"files": len(written), "missing": missing, "p50_s": pct(lags, 0.5),
            "p99_s": pct(lags, 0.99), "max_s": max(lags), "plain_rsync_local_s": plain}


def measure_catch_up(files: int) -> dict[str, Any]:
    with Lab() as lab:
        a = data(lab, "a")
        blob = os.urandom(10_000)
        for i in range(files):
            sub = a / f"d{i // 500:03d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i:05d}").write_bytes(blob[i % 100:] + blob[:i % 100])
        lab.start_agent("a", **env(lab, "a", CARP_PREEMPT="true"))
        wait(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        t = time.monotonic()
        lab.start_agent("b", **env(lab, "b", CARP_ADVSKEW="100"))
        ours = wait(lambda: caught_up(lab, "b"), 300, "b caught up")
        del t
        # plain rsync: a daemon in a's namespace, pulled from b's, same tree, no agent
        conf = lab.dir / "plain-rsyncd.conf"
        conf.write_text(f"use chroot = no\nuid = 0\ngid = 0\nport = 8874\n[m]\npath = {a}\n"
                        "read only = yes\nexclude = /.carp-sync/\n")
        lab.topo.start("a", ["rsync", "--daemon", "--no-detach", f"--config={conf}"])
        time.sleep(0.5)
        t = time.monotonic()
        lab.topo["b"].run("rsync", "-a", "rsync://172.16.0.11:8874/m/", f"{lab.dir}/plain/",
                          timeout=600)
        plain = time.monotonic() - t
    return {"files": files, "megabytes": files * 10_000 / 1e6, "carp_sidecar_s": ours,
            "plain_rsync_s": plain, "ratio": ours / plain}


def measure_rounds(rounds: int, lag_allowance: float) -> dict[str, Any]:
    """Writes go to the VIP holder; every pull is followed by the preempt back."""
    with Lab() as lab:
        start_pair(lab)
        log: list[tuple[str, str, float, str]] = []  # (op, name, t, node)
        holder = {"node": "a"}
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                node = holder["node"]
                name = f"r{i:06d}"
                try:
                    (data(lab, node) / name).write_text(name)
                    log.append(("write", name, time.monotonic(), node))
                    if i % 10 == 5:  # deleted 0.5 s later, on whoever holds the VIP then
                        threading.Timer(0.5, delete, (f"r{i:06d}",)).start()
                except OSError:
                    pass
                i += 1
                time.sleep(0.02)

        def delete(name: str) -> None:
            node = holder["node"]
            try:
                (data(lab, node) / name).unlink()
                log.append(("delete", name, time.monotonic(), node))
            except OSError:
                pass

        def follow() -> None:
            while not stop.is_set():
                for node in ("a", "b"):
                    if lab.has_vip(node):
                        holder["node"] = node
                time.sleep(0.05)

        threading.Thread(target=writer, daemon=True).start()
        threading.Thread(target=follow, daemon=True).start()
        pulls: list[float] = []
        for _ in range(rounds):
            time.sleep(3)
            pulls.append(time.monotonic())
            lab.topo.unplug("a")
            wait(lambda: lab.state("b") == "MASTER", 15, "b MASTER")
            time.sleep(3)
            lab.topo.plug("a")
            wait(lambda: lab.state("a") == "MASTER", 60, "a back")
        time.sleep(3)
        stop.set()
        time.sleep(1)
        wait(lambda: caught_up(lab, "b"), 30, "b caught up at the end")
        final = data(lab, "a")
        deleted = {n for op, n, _, _ in log if op == "delete"}
        lost = resurrected = 0
        for op, name, t, _node in log:
            if op != "write" or name in deleted:
                continue
            at_risk = any(0 <= p - t < lag_allowance for p in pulls)
            if not at_risk and not (final / name).exists():
                lost += 1
        for name in deleted:
            if (final / name).exists():
                resurrected += 1
        kept = {p.name for p in (final / ".carp-sync" / "conflicts").rglob("r*")}
        young_missing = sum(1 for op, n, t, _ in log if op == "write" and n not in deleted
                            and not (final / n).exists())
    return {"rounds": rounds, "writes": sum(1 for e in log if e[0] == "write"),
            "deletes": len(deleted), "lost": lost, "resurrected": resurrected,
            "young_not_on_master": young_missing, "kept_as_conflicts": len(kept)}


def measure_blocked(tries: int) -> dict[str, Any]:
    took = 0
    for _ in range(tries):
        with Lab() as lab:
            (data(lab, "a") / "seed").write_text("seed")
            lab.start_agent("a", **env(lab, "a", CARP_ADVSKEW="100"))
            wait(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
            subprocess.run(lab.topo["b"].argv("nft", "-f", "-"), input=BLOCK, text=True,
                           check=True)
            lab.start_agent("b", **env(lab, "b", CARP_PREEMPT="true"))
            wait(lambda: lab.state("b") in ("BACKUP", "MASTER"), 10, "b up")
            time.sleep(5)
            took += lab.state("b") == "MASTER"
    return {"tries": tries, "took_the_vip": took}


def _cpu_rss(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return (int(fields[11]) + int(fields[12])) / ticks, rss


def agent_pid(lab: Lab, node: str) -> int:
    st = lab.status(node) or {}
    pid = st.get("pid")
    if pid:
        return int(pid)
    out = subprocess.run(["pgrep", "-f", "sidecar.runtime.agent", "-P",
                          str(lab.agents[node].pid)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out.strip() else lab.agents[node].pid


def measure_idle(files: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, with_sync in (("without", False), ("with", True)):
        with Lab() as lab:
            a = data(lab, "a")
            for i in range(files):
                sub = a / f"d{i // 500:03d}"
                sub.mkdir(exist_ok=True)
                (sub / f"f{i:05d}").write_bytes(b"x" * 100)
            extra = env(lab, "a") if with_sync else {}
            lab.start_agent("a", **extra)
            wait(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
            time.sleep(3)
            pid = agent_pid(lab, "a")
            c0, _ = _cpu_rss(pid)
            time.sleep(seconds)
            c1, rss = _cpu_rss(pid)
            out[label] = {"cpu_percent": 100 * (c1 - c0) / seconds, "rss_mb": rss / 1e6}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--idle", type=float, default=30)
    p.add_argument("--json", type=Path)
    p.add_argument("--merge", type=Path)
    p.add_argument("--only", nargs="*", default=["lag", "catch_up", "rounds", "blocked", "idle"])
    args = p.parse_args()
    result: dict[str, Any] = {}
    if "lag" in args.only:
        r = result["lag"] = measure_lag(args.rate, args.seconds)
        print(f"lag at {args.rate} files/s of 10 kB: p50 {r['p50_s']:.3f} s, p99 "
              f"{r['p99_s']:.3f} s (goal <= 1 s), max {r['max_s']:.3f} s; {r['missing']} of "
              f"{r['files']} never arrived")
    lag_allowance = max(1.0, result.get("lag", {}).get("p99_s", 1.0))
    if "catch_up" in args.only:
        r = result["catch_up"] = measure_catch_up(args.files)
        print(f"catch-up of {r['files']} files / {r['megabytes']:.0f} MB: "
              f"{r['carp_sidecar_s']:.2f} s (agent start included) vs plain rsync "
              f"{r['plain_rsync_s']:.2f} s: {r['ratio']:.2f}x (goal <= 1.2x)")
    if "rounds" in args.only:
        r = result["rounds"] = measure_rounds(args.rounds, lag_allowance)
        print(f"{r['rounds']} pull-and-preempt rounds, {r['writes']} writes, {r['deletes']} "
              f"deletes: {r['lost']} lost, {r['resurrected']} resurrected; "
              f"{r['young_not_on_master']} written within the lag of a pull not on the final "
              f"master, {r['kept_as_conflicts']} kept as conflicts")
    if "blocked" in args.only:
        r = result["blocked"] = measure_blocked(args.tries)
        print(f"blocked preferred backup took the VIP {r['took_the_vip']} of {r['tries']} "
              "times (goal 0)")
    if "idle" in args.only:
        r = result["idle"] = measure_idle(args.files, args.idle)
        print(f"idle with a {args.files}-file tree: {r['with']['cpu_percent']:.2f} % CPU, "
              f"{r['with']['rss_mb']:.1f} MB RSS; without sync {r['without']['cpu_percent']:.2f}"
              f" %, {r['without']['rss_mb']:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.merge:
        sys.path.insert(0, str(Path(__file__).parent))
        from results import merge
        merge(args.merge, "sync", result)


if __name__ == "__main__":
    main()
