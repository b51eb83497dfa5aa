#!/usr/bin/env python3
"""Restart without a move (issue 33): what a client sees while the master's agent restarts,
beside today's stop-and-start, measured in the same run, never asserted.

Network namespaces (sidecar.lab): node-a (preferred, preempt) and node-b (advskew 100), each
running a tiny TCP service on 0.0.0.0 that answers with its node's name (so a move shows); a
client polls http://VIP/ every 10 ms (failed requests, which node answered) and keeps 20
long-lived TCP connections open through the VIP, pinging each every 100 ms (resets, closures,
stalls). A watcher in each node's namespace records the VIP's netlink add/del events (the
two-holder and no-holder windows) and, on node-b, the CARP adverts from node-a on a packet
socket (the largest advert gap the backup saw).

  in_place        --rounds `carp-sidecar restart`s (control verb) of the master at advbase 1,
                  each waited for (the new process's agent.started in status)
  in_place_fast   the same at advbase 0, advskew 25 (adverts every ~98 ms; backup skew 50:
                  master-down ~0.49 s), --fast-rounds of them
  today           --today-rounds stop-and-starts (SIGTERM, then a new `carp-sidecar run`)
  broken          --broken-rounds in-place restarts into a new version that cannot start (a
                  sitecustomize that os._exit(1)s in the agent's process once a flag file exists):
                  time from the exec to the VIP on node-b, and the two-holder window; today's
                  counterpart: SIGTERM to the VIP on node-b
  containers      (--containers) the image under Podman: --container-rounds `podman restart`s
                  after `carp-sidecar restart --on-stop`, and as many upgrades (a new container
                  of a second tag on the same state volume); the same counts

    python tests/bench/bench_restart.py [--quick] [--containers] [--json F] [--merge F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's sidecar
sys.path.insert(0, str(Path(__file__).resolve().parent))  # results.py

VIP = "172.16.0.1"
HTTP_PORT, HOLD_PORT = 80, 8081
CONNECTIONS = 20
SITECUSTOMIZE = """\
import os
if os.path.exists({flag!r}):
    with open("/proc/self/cmdline", "rb") as _c:
        if b"sidecar.runtime.agent" in _c.read().split(b"\\0"):
            os._exit(1)  # a new version that cannot start: only the agent's own process
"""


# ---------------------------------------------------------------- helpers run in a namespace
def serve(name: str) -> None:
    """Port 80: one HTTP answer per connection; port 8081: a line back per line, for ever."""
    reply = name.encode() + b"\n"
    http = (b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(reply)
            + reply)
    sel = selectors.DefaultSelector()
    for port in (HTTP_PORT, HOLD_PORT):
        s = socket.create_server(("0.0.0.0", port), backlog=256)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("listen", port))
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            if kind == "listen":
                with _quiet():
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, ("conn", port))
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                data = conn.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if data and port == HOLD_PORT:
                with _quiet():
                    conn.send(reply * data.count(b"\n"))  # type: ignore[union-attr]
                continue
            if data:
                with _quiet():
                    conn.send(http)  # type: ignore[union-attr]
            sel.unregister(conn)
            conn.close()  # type: ignore[union-attr]


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *exc: object) -> bool:
        return kind is not None and issubclass(kind, OSError)  # type: ignore[arg-type]


def client() -> None:
    """Polls and holds connections; prints its counters (cumulative) for every stdin line."""
    c: dict[str, Any] = {"requests": 0, "failed": 0, "moves": 0, "answers": {}, "resets": 0,
                         "closed": 0, "stalled": 0, "longest_gap_s": 0.0}
    lock = threading.Lock()

    def poll() -> None:
        last, last_ok = None, time.monotonic()
        while True:
            t = time.monotonic()
            body = None
            with _quiet(), socket.create_connection((VIP, HTTP_PORT), timeout=0.2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                body = data.rsplit(b"\r\n\r\n", 1)[-1].decode().strip() or None
            now = time.monotonic()
            with lock:
                c["requests"] += 1
                if body is None:
                    c["failed"] += 1
                else:
                    c["answers"][body] = c["answers"].get(body, 0) + 1
                    c["moves"] += last is not None and body != last
                    c["longest_gap_s"] = max(c["longest_gap_s"], now - last_ok)
                    last, last_ok = body, now
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))

    def hold(i: int) -> None:
        time.sleep(i * 0.005)
        while True:
            try:
                s = socket.create_connection((VIP, HOLD_PORT), timeout=1)
            except OSError:
                time.sleep(0.05)
                continue
            s.settimeout(2.0)  # a reply later than this: stalled (counted, then dropped)
            try:
                while True:
                    s.sendall(b"p\n")
                    if not s.recv(64):
                        raise EOFError
                    time.sleep(0.1)
            except (ConnectionResetError, BrokenPipeError):
                key = "resets"
            except (EOFError, ConnectionAbortedError):
                key = "closed"
            except OSError:
                key = "stalled"
            s.close()
            with lock:
                c[key] += 1

    threading.Thread(target=poll, daemon=True).start()
    for i in range(CONNECTIONS):
        threading.Thread(target=hold, args=(i,), daemon=True).start()
    for _ in sys.stdin:
        with lock:
            print(json.dumps(c), flush=True)


def watch(carp_from: str) -> None:
    """The VIP's RTM_NEWADDR/RTM_DELADDR events on this namespace (with Unix times), and the
    CARP adverts from ``carp_from`` (kernel receive times): per stdin line, the events since the
    previous line and the largest advert gap since then."""
    ev: list[tuple[float, bool]] = []
    gap = {"max": 0.0, "count": 0, "last": 0.0}
    lock = threading.Lock()
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    ev.append((time.time(), f" {VIP}/" in out))
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    nl.bind((0, 0x10))  # RTMGRP_IPV4_IFADDR

    def addresses() -> None:
        vip = socket.inet_aton(VIP)
        while True:
            data, at = nl.recv(65536), time.time()
            while len(data) >= 16:
                length, kind = struct.unpack_from("=IH", data)
                if kind in (20, 21):  # RTM_NEWADDR, RTM_DELADDR
                    off = 24
                    while off + 4 <= length:
                        alen, atype = struct.unpack_from("=HH", data, off)
                        if atype == 1 and data[off + 4:off + alen] == vip:  # IFA_ADDRESS
                            with lock:
                                ev.append((at, kind == 20))
                        off += (alen + 3) & ~3
                data = data[(length + 3) & ~3:] if length else b""

    def adverts() -> None:
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        raw.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS: kernel receive time
        src = socket.inet_aton(carp_from)
        while True:
            pkt, anc, _, _ = raw.recvmsg(128, 64)
            if len(pkt) < 20 or pkt[9] != 112 or pkt[12:16] != src:
                continue
            at = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == 35:
                    sec, nsec = struct.unpack("=qq", value[:16])
                    at = sec + nsec / 1e9
            with lock:
                if gap["last"]:
                    gap["max"] = max(gap["max"], at - gap["last"])
                gap["last"] = at
                gap["count"] += 1

    threading.Thread(target=addresses, daemon=True).start()
    threading.Thread(target=adverts, daemon=True).start()
    for _ in sys.stdin:
        with lock:
            print(json.dumps({"events": ev[:], "max_gap": gap["max"], "adverts": gap["count"]}),
                  flush=True)
            ev.clear()
            gap["max"], gap["count"] = 0.0, 0


def role_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=("serve", "client", "watch"))
    p.add_argument("--name", default="")
    a = p.parse_args(argv)
    {"serve": lambda: serve(a.name), "client": client, "watch": lambda: watch(a.name)}[a.role]()
    return 0


if __name__ == "__main__" and "--role" in sys.argv:
    sys.exit(role_main(sys.argv[1:]))

# ---------------------------------------------------------------- the bench itself
from sidecar.lab import ADDRESSES, Lab  # noqa: E402
from sidecar.serve.control import send_command  # noqa: E402


class Helper:
    """One of the helpers above in a node's namespace, asked for its figures line by line."""

    def __init__(self, lab: Lab, node: str, role: str, name: str = "") -> None:
        argv = lab.topo[node].argv(sys.executable, str(Path(__file__).resolve()), "--role", role,
                                   "--name", name)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        lab.topo.procs.append(self.proc)  # type: ignore[arg-type]

    def ask(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))


class Rig:
    """The lab of this bench: both agents, both services, the client, a watcher per node."""

    def __init__(self, lab: Lab, fast: bool = False) -> None:
        self.lab, self.fast = lab, fast
        self.site = lab.dir / "site"
        self.site.mkdir()
        self.flag = lab.dir / "new-version-is-broken"
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(flag=str(self.flag)))
        self.events: dict[str, list[tuple[float, bool]]] = {"a": [], "b": []}
        for node in ("a", "b"):
            lab.topo.start(node, [sys.executable, str(Path(__file__).resolve()), "--role",
                                  "serve", "--name", f"node-{node}"])
        self.watchers = {"a": Helper(lab, "a", "watch", ADDRESSES["b"].split("/")[0]),
                         "b": Helper(lab, "b", "watch", ADDRESSES["a"].split("/")[0])}
        self.start("a")
        lab.wait(lambda: self.state("a") == "MASTER" and lab.has_vip("a"), 15, "node-a MASTER")
        self.start("b")
        lab.wait(lambda: self.state("b") == "BACKUP", 15, "node-b BACKUP")
        self.client = Helper(lab, "client", "client")
        lab.wait(lambda: self.client.ask()["answers"].get("node-a", 0) > 10, 10, "the client")
        time.sleep(1.0)  # every held connection open

    def start(self, node: str) -> None:
        extra: dict[str, str] = {}
        if node == "a":
            extra |= {"CARP_PREEMPT": "true", "PYTHONPATH": os.pathsep.join(
                [str(self.site), os.environ.get("PYTHONPATH", "")])}
            extra |= {"CARP_ADVBASE": "0", "CARP_ADVSKEW": "25"} if self.fast else {}
        else:
            extra |= {"CARP_ADVBASE": "0", "CARP_ADVSKEW": "50"} if self.fast else \
                {"CARP_ADVSKEW": "100"}
        self.lab.start_agent(node, **extra)

    def sock(self, node: str) -> Path:
        return self.lab.dir / f"{node}.sock"

    def status(self, node: str) -> dict[str, Any]:
        try:
            return dict(json.loads(send_command(self.sock(node), "status", timeout=2)))
        except (OSError, ValueError):
            return {}

    def state(self, node: str) -> str | None:
        return self.status(node).get("state")

    def backup_masters(self) -> int:
        return (self.lab.dir / "b.log").read_text(errors="replace").count(
            "Switching to state: MASTER")

    def snapshot(self) -> dict[str, Any]:
        """The client's counters, node-b's takeovers so far; VIP events kept in self.events."""
        gap = 0.0
        for node, w in self.watchers.items():
            got = w.ask()
            self.events[node] += [(float(t), bool(p)) for t, p in got["events"]]
            if node == "b":
                gap = float(got["max_gap"])
        return {"client": self.client.ask(), "backup_masters": self.backup_masters(),
                "max_advert_gap_s": gap, "t": time.time()}

    def restart_in_place(self) -> float:
        """`carp-sidecar restart`'s control verb, waited for: the new process's status."""
        before = self.status("a").get("agent", {}).get("started")
        t0 = time.monotonic()
        reply = send_command(self.sock("a"), "restart", timeout=30)
        assert reply.startswith("ok"), reply

        def done() -> bool:
            st = self.status("a")
            return st.get("agent", {}).get("started") not in (None, before) and \
                st.get("state") == "MASTER"

        self.lab.wait(done, 30, "the restarted agent")
        return time.monotonic() - t0

    def settled(self) -> None:
        """node-a holds the VIP alone, node-b BACKUP, the held connections back."""
        lab = self.lab
        lab.wait(lambda: self.state("a") == "MASTER" and self.state("b") == "BACKUP"
                 and lab.has_vip("a") and not lab.has_vip("b"), 20, "node-a MASTER again")
        time.sleep(1.0)


def windows(events: dict[str, list[tuple[float, bool]]], since: float) -> dict[str, float]:
    """Longest stretch after ``since`` with the VIP on both nodes, and on neither (s)."""
    merged = sorted((t, node, p) for node, evs in events.items() for t, p in evs)
    held = {"a": False, "b": False}
    worst = {"two_holders_s": 0.0, "no_holder_s": 0.0}
    open_at: dict[str, float | None] = {"two_holders_s": None, "no_holder_s": None}
    for t, node, present in merged:
        held[node] = present
        for key, now_true in (("two_holders_s", held["a"] and held["b"]),
                              ("no_holder_s", not held["a"] and not held["b"])):
            began = open_at[key]
            if now_true and began is None:
                open_at[key] = t
            elif not now_true and began is not None:
                if t >= since:
                    worst[key] = max(worst[key], t - max(began, since))
                open_at[key] = None
    return worst


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    c0, c1 = before["client"], after["client"]
    return {"vip_moves": c1["moves"] - c0["moves"],
            "backup_transitions": after["backup_masters"] - before["backup_masters"],
            "failed_requests": c1["failed"] - c0["failed"], "requests": c1["requests"] - c0["requests"],
            "reset_connections": sum(c1[k] - c0[k] for k in ("resets", "closed", "stalled")),
            "longest_client_gap_s": round(c1["longest_gap_s"], 3)}


def in_place(rounds: int, fast: bool) -> dict[str, Any]:
    with Lab() as lab:
        rig = Rig(lab, fast=fast)
        before = rig.snapshot()
        took = []
        for _ in range(rounds):
            took.append(rig.restart_in_place())
            time.sleep(0.1)
        time.sleep(1.0)
        after = rig.snapshot()
        out = delta(before, after) | windows(rig.events, before["t"])
        out |= {"rounds": rounds, "restart_s_median": round(statistics.median(took), 3),
                "restart_s_max": round(max(took), 3),
                "max_advert_gap_s": round(after["max_advert_gap_s"], 3),
                "restarts_resumed": _metric(rig, 'carp_restarts_total{kind="in_place",'
                                                 'result="resumed"}')}
    return out


def _metric(rig: Rig, series: str) -> float | None:
    text = rig.lab.get("a", "http://127.0.0.1:9655/metrics") or ""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def today(rounds: int) -> dict[str, Any]:
    with Lab() as lab:
        rig = Rig(lab)
        before = rig.snapshot()
        takeover = []
        for _ in range(rounds):
            began = time.time()
            lab.stop_agent("a")
            rig.start("a")
            rig.settled()
            rig.snapshot()
            took = [t for t, p in rig.events["b"] if p and t >= began]
            if took:
                takeover.append(took[0] - began)
        after = rig.snapshot()
        out = delta(before, after) | windows(rig.events, before["t"])
    return out | {"rounds": rounds, "sigterm_to_vip_on_backup_s": _median(takeover)}


def broken(rounds: int) -> dict[str, Any]:
    """In-place restarts into a version whose agent dies at once: the keeper bows out."""
    with Lab() as lab:
        rig = Rig(lab)
        takeover, two, none, kept = [], [], [], 0
        for _ in range(rounds):
            rig.snapshot()
            rig.flag.touch()
            since = time.time()
            try:
                send_command(rig.sock("a"), "restart", timeout=30)
            except OSError as e:  # refused: nothing was exec'd
                print(f"  restart refused: {e}", flush=True)
                rig.flag.unlink()
                continue
            execd = time.time()
            lab.wait(lambda: lab.agents["a"].poll() is not None and lab.has_vip("b"), 20,
                     "the broken version gone and node-b MASTER")
            time.sleep(0.5)
            rig.snapshot()
            kept += lab.has_vip("a")
            took = [t for t, p in rig.events["b"] if p and t >= since]
            takeover.append(took[0] - execd if took else None)
            w = windows(rig.events, since)
            two.append(w["two_holders_s"])
            none.append(w["no_holder_s"])
            rig.flag.unlink()
            lab.agents.pop("a")
            rig.start("a")
            rig.settled()
    return {"rounds": rounds, "exec_to_vip_on_backup_s": _median(takeover),
            "exec_to_vip_on_backup_max_s": max((round(t, 3) for t in takeover if t is not None),
                                               default=None),
            "two_holders_max_s": round(max(two, default=0.0), 3),
            "no_holder_max_s": round(max(none, default=0.0), 3), "vip_left_on_old_host": kept}


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def per_round(r: dict[str, Any], key: str) -> float:
    return float(r[key]) / max(1, int(r["rounds"]))


def ratio(ours: float, theirs: float) -> str:
    return "n/a" if theirs == 0 else f"{ours / theirs:.2f}"


def print_table(r: dict[str, Any]) -> None:
    print(f"\nmachine: {r['machine']}; per restart unless said; ratio = this / today's "
          "stop-and-start\n")
    base = r["today"]
    keys = ("vip_moves", "backup_transitions", "failed_requests", "reset_connections")
    print("| scenario | rounds | VIP moves | backup transitions | failed requests | "
          "reset connections | two holders max (s) | no holder max (s) | ratio moves / resets |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("in_place", "in_place_fast", "containers_restart", "containers_upgrade",
                 "today"):
        x = r.get(name)
        if not x:
            continue
        cells = [f"{per_round(x, k):.2f}" for k in keys]
        print(f"| {name} | {x['rounds']} | {' | '.join(cells)} | {x['two_holders_s']:.3f} | "
              f"{x['no_holder_s']:.3f} | {ratio(per_round(x, 'vip_moves'), per_round(base, 'vip_moves'))}"
              f" / {ratio(per_round(x, 'reset_connections'), per_round(base, 'reset_connections'))} |")
    print()
    for name in ("in_place", "in_place_fast", "containers_restart", "containers_upgrade"):
        if r.get(name):
            x = r[name]
            resumed = f"; resumed per carp_restarts_total: {x['restarts_resumed']:g}" \
                if x.get("restarts_resumed") is not None else ""
            print(f"{name}: restart took {x['restart_s_median']} s median ({x['restart_s_max']} "
                  f"max); largest advert gap seen by node-b {x['max_advert_gap_s']} s{resumed}")
    b = r.get("broken")
    if b:
        took, t = b["exec_to_vip_on_backup_s"], base["sigterm_to_vip_on_backup_s"]
        print(f"\nbroken new version ({b['rounds']} runs): exec -> VIP on node-b {took} s median "
              f"({b['exec_to_vip_on_backup_max_s']} max), today's SIGTERM -> VIP on node-b {t} s "
              f"(ratio {ratio(took or 0, t or 0)}); two holders at most {b['two_holders_max_s']} s, "
              f"no holder at most {b['no_holder_max_s']} s; VIP left on the old host in "
              f"{b['vip_left_on_old_host']} runs")
    print(f"\nwhole benchmark: {r['wall_seconds']} s")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="a smoke run: a few rounds of each")
    p.add_argument("--containers", action="store_true", help="also the image under Podman")
    p.add_argument("--only", help="comma-separated scenarios (today,in_place,in_place_fast,"
                   "broken,containers)")
    p.add_argument("--json", type=Path)
    p.add_argument("--merge", type=Path, help="store under 'restart' in this JSON file")
    args = p.parse_args()
    n = {"in_place": 3, "fast": 3, "today": 2, "broken": 2, "containers": 2} if args.quick else \
        {"in_place": 100, "fast": 30, "today": 10, "broken": 10, "containers": 10}
    started = time.monotonic()
    r: dict[str, Any] = {"machine": f"{platform.node()} {platform.machine()}, "
                                    f"Python {platform.python_version()}"}
    steps = [("today", lambda: today(n["today"])),
             ("in_place", lambda: in_place(n["in_place"], fast=False)),
             ("in_place_fast", lambda: in_place(n["fast"], fast=True)),
             ("broken", lambda: broken(n["broken"]))]
    if args.containers:
        steps.append(("containers", lambda: containers(n["containers"])))
    only = set(args.only.split(",")) if args.only else None
    for name, step in steps:
        if only and name not in only:
            continue
        t = time.monotonic()
        try:
            got = step()
        except (TimeoutError, OSError, AssertionError, subprocess.CalledProcessError) as e:
            got = {"error": f"{type(e).__name__}: {e}"}
        if name == "containers" and "error" not in got:
            r |= got
        else:
            r[name] = got
        print(f"  {name}: {json.dumps(got)} ({time.monotonic() - t:.0f} s)", flush=True)
    r["wall_seconds"] = round(time.monotonic() - started)
    for name in [k for k, v in r.items() if isinstance(v, dict) and "error" in v]:
        print(f"{name} failed: {r.pop(name)['error']}")
    if "today" in r:
        print_table(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    if args.merge:
        from results import merge

        merge(args.merge, "restart", r)
    return 0


ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "localhost/carp-sidecar")


def podman(*args: str, check: bool = True) -> str:
    """As tests/integration/test_image.py runs it (make image's containers.conf)."""
    env = {**os.environ, "CONTAINERS_CONF": str(ROOT / "build/containers.conf")}
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=120, env=env).stdout


class ContainerRig(Rig):
    """The same rig with the agents in the image under Podman (--net=ns:): node-a on a state
    volume, node-b BACKUP. Its control socket is inside the container: status over HTTP."""

    def __init__(self, lab: Lab) -> None:
        self.volume = lab.dir / "a-volume"
        self.volume.mkdir()
        self.names: list[str] = []
        self.current = ""
        super().__init__(lab)

    def start(self, node: str, image: str = IMAGE) -> None:
        name = f"carp-{self.lab.topo.tag}-{node}-{len(self.names)}"
        env = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "bench-restart",
               "CARP_ADDR": f"{VIP}/16", "CARP_IF_ALIAS": "eth0:0"}
        env |= {"CARP_PREEMPT": "true", "CARP_STATE_DIR": "/state"} if node == "a" else \
            {"CARP_ADVSKEW": "100"}
        args = ["run", "-d", "--name", name, f"--net=ns:/run/netns/{self.lab.topo[node].ns}",
                "--cap-add=NET_ADMIN", "--cap-add=NET_RAW"]
        args += ["-v", f"{self.volume}:/state"] if node == "a" else []
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.names.append(name)
        podman(*args, image)
        if node == "a":
            self.current = name
        else:
            self.backup = name

    def status(self, node: str) -> dict[str, Any]:
        return self.lab.status(node) or {}

    def backup_masters(self) -> int:
        out = subprocess.run(["podman", "logs", self.backup], capture_output=True, text=True,
                             env={**os.environ, "CONTAINERS_CONF": str(ROOT / "build/containers.conf")})
        return (out.stdout + out.stderr).count("Switching to state: MASTER")

    def replaced(self, how: str, image: str) -> float:
        """Arm the intent, then `podman restart` or a new container of ``image``; waited for."""
        before = self.status("a").get("agent", {}).get("started")
        t0 = time.monotonic()
        podman("exec", self.current, "carp-sidecar", "restart", "--on-stop")
        if how == "restart":
            podman("restart", "-t", "10", self.current)
        else:
            podman("stop", "-t", "10", self.current)
            old = self.current
            self.start("a", image)
            podman("rm", "-f", old, check=False)

        def done() -> bool:
            st = self.status("a")
            return st.get("agent", {}).get("started") not in (None, before) and \
                st.get("state") == "MASTER"

        self.lab.wait(done, 30, "the new container MASTER")
        return time.monotonic() - t0

    def remove(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "0", name, check=False)


def containers(rounds: int) -> dict[str, Any]:
    """--rounds `podman restart`s and as many upgrades (alternating between the image and a
    second tag of it, on the same volume), each after `carp-sidecar restart --on-stop`."""
    if subprocess.run(["podman", "image", "exists", IMAGE], env={
            **os.environ, "CONTAINERS_CONF": str(ROOT / "build/containers.conf")}).returncode:
        raise OSError(f"image {IMAGE} missing (make image)")
    second = f"{IMAGE}:bench-upgrade"
    podman("tag", IMAGE, second)
    out: dict[str, Any] = {}
    with Lab() as lab:
        rig = None
        try:
            rig = ContainerRig(lab)
            for how in ("restart", "upgrade"):
                before, took = rig.snapshot(), []
                for i in range(rounds):
                    took.append(rig.replaced(how, (second, IMAGE)[i % 2]))
                    time.sleep(0.5)
                time.sleep(1.0)
                after = rig.snapshot()
                out[f"containers_{how}"] = delta(before, after) | windows(rig.events, before["t"]) \
                    | {"rounds": rounds, "restart_s_median": round(statistics.median(took), 3),
                       "restart_s_max": round(max(took), 3),
                       "max_advert_gap_s": round(after["max_advert_gap_s"], 3)}
        finally:
            if rig is not None:
                rig.remove()
            podman("rmi", second, check=False)
    return out


if __name__ == "__main__":
    sys.exit(main())
