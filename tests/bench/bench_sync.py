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
import statistics
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


def measure_catch_up(files: int, runs: int = 3) -> dict[str, Any]:
    """Medians of ``runs`` interleaved pairs: a fresh backup's first catch-up (from its first
    pull's start) and a plain rsync of the same tree over the same veth (a daemon in a's
    namespace, pulled from b's into an empty folder)."""
    import shutil

    with Lab() as lab:
        a = data(lab, "a")
        blob = os.urandom(10_000)
        for i in range(files):
            sub = a / f"d{i // 500:03d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i:05d}").write_bytes(blob[i % 100:] + blob[:i % 100])
        lab.start_agent("a", **env(lab, "a", CARP_PREEMPT="true"))
        wait(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        conf = lab.dir / "plain-rsyncd.conf"
        conf.write_text(f"use chroot = no\nuid = 0\ngid = 0\nport = 8874\n[m]\npath = {a}\n"
                        "read only = yes\nexclude = /.carp-sync/\n")
        lab.topo.start("a", ["rsync", "--daemon", "--no-detach", f"--config={conf}"])
        time.sleep(0.5)
        ours, whole, plain = [], [], []
        for run in range(runs):
            b = data(lab, "b")
            shutil.rmtree(b)
            b.mkdir()
            shutil.rmtree(lab.dir / "b-state", ignore_errors=True)  # a new node: epoch 0
            lab.start_agent("b", **env(lab, "b", CARP_ADVSKEW="100"))
            whole.append(wait(lambda: caught_up(lab, "b"), 300, "b caught up"))
            paths = ((lab.status("b") or {}).get("sync") or {}).get("paths") or [{}]
            ours.append(float(paths[0].get("first_catch_up_seconds") or whole[-1]))
            lab.stop_agent("b")
            target = lab.dir / f"plain{run}"
            t = time.monotonic()
            lab.topo["b"].run("rsync", "-a", "rsync://172.16.0.11:8874/m/", f"{target}/",
                              timeout=600)
            plain.append(time.monotonic() - t)
            shutil.rmtree(target)
    o, w, pl = (statistics.median(x) for x in (ours, whole, plain))
    return {"files": files, "megabytes": files * 10_000 / 1e6, "runs": runs, "carp_sidecar_s": o,
            "agent_start_to_caught_up_s": w, "plain_rsync_s": pl, "ratio": o / pl,
            "ratios": [round(x / y, 2) for x, y in zip(ours, plain, strict=True)]}


def measure_rounds(rounds: int, lag_allowance: float) -> dict[str, Any]:
    """Writes go to the VIP holder (none while nobody holds it, none to a node whose cable is
    out: no client reaches it); every pull is followed by the preempt back."""
    with Lab() as lab:
        start_pair(lab)
        log: list[tuple[str, str, float, str]] = []  # (op, name, t, node)
        holder: dict[str, str | None] = {"node": "a"}
        cut: set[str] = set()
        lock, stop = threading.Lock(), threading.Event()

        def on_holder(op: str, name: str) -> None:
            with lock:
                node = holder["node"]
                if node is None or node in cut:
                    return
                try:
                    if op == "write":
                        (data(lab, node) / name).write_text(name)
                    else:
                        (data(lab, node) / name).unlink()
                except OSError:
                    return
                log.append((op, name, time.monotonic(), node))

        def writer() -> None:
            i = 0
            while not stop.is_set():
                on_holder("write", f"r{i:06d}")
                if i % 10 == 5:  # deleted 0.5 s later, on whoever holds the VIP then
                    threading.Timer(0.5, on_holder, ("delete", f"r{i:06d}")).start()
                i += 1
                time.sleep(0.02)

        def follow() -> None:
            while not stop.is_set():
                found = [n for n in ("a", "b") if n not in cut and lab.has_vip(n)]
                with lock:
                    holder["node"] = found[0] if len(found) == 1 else None
                time.sleep(0.02)

        threading.Thread(target=writer, daemon=True).start()
        threading.Thread(target=follow, daemon=True).start()
        pulls: list[float] = []
        backs: list[float] = []
        for _ in range(rounds):
            time.sleep(3)
            with lock:
                cut.add("a")
                pulls.append(time.monotonic())
                lab.topo.unplug("a")
            wait(lambda: lab.state("b") == "MASTER", 15, "b MASTER")
            time.sleep(3)
            lab.topo.plug("a")
            cut.discard("a")
            wait(lambda: lab.state("a") == "MASTER", 60, "a back")
            backs.append(time.monotonic())  # the planned move back (polled: a bit after it)
        time.sleep(3)
        stop.set()
        time.sleep(1)
        wait(lambda: caught_up(lab, "b"), 30, "b caught up at the end")
        final = data(lab, "a")
        moves = pulls + backs
        deleted = {n: t for op, n, t, _ in log if op == "delete"}
        written = {n: t for op, n, t, _ in log if op == "write"}

        def at_risk(t: float) -> bool:  # within the lag (and the poll) before a move
            return any(0 <= m - t < lag_allowance + 0.1 for m in moves)
        present = {n for n in written if (final / n).exists()}
        aside = {p.name for node in ("a", "b")
                 for p in (data(lab, node) / ".carp-sync" / "conflicts").rglob("r*")}
        missing = [n for n in written if n not in deleted and n not in present]
        lost = [n for n in missing if not at_risk(written[n]) and n not in aside]
        back = [n for n, t in deleted.items() if n in present]
    return {"rounds": rounds, "writes": len(written), "deletes": len(deleted),
            "lag_allowance_s": lag_allowance, "lost": len(lost),
            "resurrected": sum(1 for n in back if not at_risk(deleted[n])),
            "missing_in_a_window": sum(1 for n in missing if at_risk(written[n])),
            "missing_kept_aside": sum(1 for n in missing if n in aside),
            "deletes_undone_in_a_window": sum(1 for n in back if at_risk(deleted[n])),
            "conflict_files": len(aside)}


def measure_sessions(clients: int) -> dict[str, Any]:
    """``clients`` log in through the VIP one after the other (PHP file sessions in a
    replicated path), the last just before the cable pull; after the takeover each asks who it
    is, through the VIP, with its own cookie."""
    from sidecar.lab import VIP
    from sidecar.lab.sessions import SessionClient, prepare_lab

    with Lab(sessions=True) as lab:
        prepare_lab(lab.dir)
        for node in ("a", "b"):
            lab.start_apache(node)
        lab.start_agent("a", CARP_PREEMPT="true")
        wait(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        lab.start_agent("b", CARP_ADVSKEW="100")
        wait(lambda: caught_up(lab, "b"), 30, "b caught up")
        base, logged = f"http://{VIP}", []
        for i in range(clients):
            client = SessionClient(lab.topo["client"], lab.dir / f"jar{i}")
            if client.login(base, f"user{i}") == f"logged in: user{i}":
                logged.append((client, f"user{i}", time.monotonic()))
        pulled = time.monotonic()
        lab.topo.unplug("a")
        wait(lambda: lab.state("b") == "MASTER", 15, "b MASTER")
        wait(lambda: lab.get("client", f"{base}/") == "node-b", 10, "the VIP on b")
        kept = [(u, pulled - t) for c, u, t in logged if c.whoami(base).startswith(u + " ")]
        lost = [pulled - t for c, u, t in logged if not any(k == u for k, _ in kept)]
    return {"clients": clients, "logged_in": len(logged), "kept": len(kept),
            "lost": len(lost), "lost_ages_s": sorted(round(x, 3) for x in lost)}


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
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--idle", type=float, default=30)
    p.add_argument("--json", type=Path)
    p.add_argument("--merge", type=Path)
    p.add_argument("--only", nargs="*", default=["lag", "catch_up", "rounds", "sessions", "blocked", "idle"])
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
              f"{r['carp_sidecar_s']:.2f} s from the first pull's start (from the agent's start: "
              f"{r['agent_start_to_caught_up_s']:.2f} s) vs plain rsync {r['plain_rsync_s']:.2f}"
              f" s: {r['ratio']:.2f}x (goal <= 1.2x; medians of {r['runs']}, each run "
              f"{r['ratios']})")
    if "rounds" in args.only:
        r = result["rounds"] = measure_rounds(args.rounds, lag_allowance)
        print(f"{r['rounds']} pull-and-preempt rounds, {r['writes']} writes, {r['deletes']} "
              f"deletes: {r['lost']} lost, {r['resurrected']} resurrected (outside the "
              f"{r['lag_allowance_s']:.2f} s before a move); within it: "
              f"{r['missing_in_a_window']} writes not on the final master "
              f"({r['missing_kept_aside']} of all missing kept in a conflicts folder), "
              f"{r['deletes_undone_in_a_window']} deletes undone")
    if "sessions" in args.only:
        r = result["sessions"] = measure_sessions(args.clients)
        print(f"sessions: {r['logged_in']} of {r['clients']} clients logged in through the VIP, "
              f"cable pull: {r['kept']} still logged in on the new master, {r['lost']} lost "
              f"(their ages at the pull: {r['lost_ages_s']} s)")
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
