"""`make chaos`: the rolling password change (Faults, round 4).

Changing the password one node at a time splits the group: a node with the new password rejects
the others' adverts (bad_hmac) and they reject its, so a backup that hears no valid advert takes
the VIP while the master keeps it. ucarp knows one password: there is no other way. carp-sidecar
rotates with CARP_PASS_NEXT (docs/runbook.md, "Rotating the password"): every step is a rolling
reload, every node accepts every other node's adverts at every moment, and the key is swapped
in place (no restart, no VIP move).

Each part builds its own lab and samples who holds the VIP every 50 ms:
  ucarp pair      the password changed on node-a (ucarp restarted), on node-b 5 s later
  sidecar pair    the same with carp-sidecar and no CARP_PASS_NEXT (a reload each)
  sidecar group   three carp-sidecar nodes (node-a, node-b and the client namespace) rotated
                  in three rolling reloads of their env files: 0 two-holder samples, no
                  transition, no bad_hmac drop
  mixed group     node-a carp-sidecar, node-b real ucarp: ucarp is stopped while the
                  carp-sidecar nodes switch, and started again with the new password
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sidecar.lab import ADDRESSES, VIP, Lab
from sidecar.lab.netns import stop_process

OLD, NEW = "rot-old-pw", "rot-new-pw"
NODES = ("a", "b", "client")
SKEW = {"a": 0, "b": 100, "client": 150}
UCARP_GAP = 5.0  # s between the two nodes of the ucarp pair, as in the issue


def vip_holders(lab: Lab, nodes: Sequence[str]) -> list[str]:
    from pyroute2 import NetNS

    out = []
    for name in nodes:
        with NetNS(lab.topo[name].ns) as ns:
            if VIP in [a.get("IFA_ADDRESS") for a in ns.get_addr(family=2)]:
                out.append(name)
    return out


class Sampler:
    """How many of ``nodes`` hold the VIP, every ``interval`` s, in a thread."""

    def __init__(self, lab: Lab, nodes: Sequence[str], interval: float = 0.05) -> None:
        self.lab, self.nodes, self.interval = lab, nodes, interval
        self.samples: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), vip_holders(self.lab, self.nodes)))
            self._stop.wait(self.interval)

    def count(self, holders: int) -> int:
        return sum(1 for _, h in self.samples if len(h) == holders)

    def longest(self, holders: int) -> float:
        worst, since = 0.0, None
        for t, h in self.samples:
            if len(h) == holders:
                since = t if since is None else since
                worst = max(worst, t - since)
            else:
                since = None
        return worst

    def moves(self) -> int:
        """Changes of the (sole) holder: a VIP that moved."""
        sole = [h[0] for _, h in self.samples if len(h) == 1]
        return sum(1 for x, y in itertools.pairwise(sole) if x != y)


def metric(lab: Lab, node: str, name: str, **labels: str) -> float:
    text = lab.get(node, "http://127.0.0.1:9655/metrics") or ""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " "))
               and all(f'{k}="{v}"' in line for k, v in labels.items()))


# ---- carp-sidecar: the env file each node reloads ----
def env_file(lab: Lab, node: str) -> Path:
    return lab.dir / f"{node}-rotation.env"


def write_env(lab: Lab, node: str, password: str, next_password: str | None) -> None:
    text = f"CARP_PASS={password}\n" + (f"CARP_PASS_NEXT={next_password}\n"
                                         if next_password else "")
    env_file(lab, node).write_text(text)


def start_sidecar(lab: Lab, node: str, password: str = OLD) -> None:
    write_env(lab, node, password, None)
    extra = {"CARP_PREEMPT": "true"} if node == "a" else {}
    # CARP_PASS="" unsets the lab's own: the env file holds the password
    lab.start_agent(node, "--env-file", str(env_file(lab, node)), CARP_PASS="",
                    CARP_ADVSKEW=str(SKEW[node]), **extra)


def reload(lab: Lab, node: str) -> str:
    cli = [sys.executable, "-m", "sidecar.tools.cli", "reload", "--socket",
           str(lab.dir / f"{node}.sock")]
    r = lab.topo[node].run(*cli, check=False, timeout=60)
    if r.returncode != 0 or not r.stdout.startswith("reloaded"):
        raise RuntimeError(f"reload of node-{node} failed: {r.stdout}{r.stderr}")
    return r.stdout.strip()


def rolling(lab: Lab, nodes: Sequence[str], password: str, next_password: str | None,
            gap: float) -> list[str]:
    """One step of the rotation on every node in turn, ``gap`` s apart."""
    replies = []
    for node in nodes:
        write_env(lab, node, password, next_password)
        replies.append(reload(lab, node))
        time.sleep(gap)
    return replies


def rotate(lab: Lab, nodes: Sequence[str], gap: float,
           between: Callable[[], None] = lambda: None) -> list[str]:
    """docs/runbook.md's three steps; ``between`` runs after the first (the mixed group's
    ucarp node is stopped there)."""
    replies = rolling(lab, nodes, OLD, NEW, gap)  # 1. accept the new password
    between()
    replies += rolling(lab, nodes, NEW, OLD, gap)  # 2. send the new one, still accept the old
    replies += rolling(lab, nodes, NEW, None, gap)  # 3. forget the old one
    return replies


def sidecar_group(gap: float) -> dict[str, Any]:
    """Three carp-sidecar nodes rotated; the figures the chaos report and the test check."""
    with Lab() as lab:
        for node in NODES:
            start_sidecar(lab, node)
        Lab.wait(lambda: vip_holders(lab, NODES) == ["a"], 15, "node-a MASTER")
        time.sleep(2)
        before = {n: metric(lab, n, "carp_transitions_total") for n in NODES}
        with Sampler(lab, NODES) as sampler:
            replies = rotate(lab, NODES, gap)
            time.sleep(4)  # past a master-down interval after the last step
        return {
            "samples": len(sampler.samples), "two_holders": sampler.count(2),
            "no_holder": sampler.count(0), "vip_moves": sampler.moves(),
            "holders_at_end": vip_holders(lab, NODES),
            "transitions": sum(metric(lab, n, "carp_transitions_total") - before[n]
                               for n in NODES),
            "bad_hmac": sum(metric(lab, n, "carp_adverts_dropped_total", reason="bad_hmac")
                            for n in NODES),
            "next_key_accepted": {n: metric(lab, n, "carp_adverts_accepted_next_key_total")
                                  for n in NODES},
            "replies": replies,
        }


def sidecar_naive_pair(gap: float = UCARP_GAP) -> dict[str, Any]:
    """For comparison: carp-sidecar with the password changed on node-a, node-b ``gap`` s
    later, without CARP_PASS_NEXT (each change a reload)."""
    with Lab() as lab:
        for node in "ab":
            start_sidecar(lab, node)
        Lab.wait(lambda: vip_holders(lab, "ab") == ["a"], 12, "node-a MASTER")
        time.sleep(2)
        with Sampler(lab, "ab") as sampler:
            rolling(lab, "ab", NEW, None, gap)
            time.sleep(4)
        return {"samples": len(sampler.samples), "two_holders": sampler.count(2),
                "longest_two_holders_s": round(sampler.longest(2), 2),
                "bad_hmac": sum(metric(lab, n, "carp_adverts_dropped_total", reason="bad_hmac")
                                for n in "ab")}


# ---- ucarp ----
UP = '#!/bin/sh\nip addr add "$2"/16 dev "$1" label "$1":0\n'
DOWN = '#!/bin/sh\nip addr del "$2"/16 dev "$1" 2>/dev/null\nexit 0\n'


def start_ucarp(lab: Lab, node: str, password: str, advskew: int,
                preempt: bool = False) -> subprocess.Popen[bytes]:
    up, down = lab.dir / "ucarp-up.sh", lab.dir / "ucarp-down.sh"
    for path, text in ((up, UP), (down, DOWN)):
        path.write_text(text)
        path.chmod(0o755)
    src = ADDRESSES[node].split("/")[0]
    cmd = ["ucarp", "-i", "eth0", "-s", src, "-v", "1", "-p", password, "-a", VIP, "-b", "1",
           "-k", str(advskew), "-u", str(up), "-d", str(down), "-z", "-f", "none",
           *(["-P"] if preempt else [])]
    proc = lab.topo.start(node, cmd, log=lab.dir / f"{node}.log")
    lab.agents[node] = proc
    return proc


def ucarp_pair(gap: float = UCARP_GAP) -> dict[str, Any]:
    """ucarp's only way: restart node-a with the new password, node-b ``gap`` s later."""
    with Lab() as lab:
        start_ucarp(lab, "a", OLD, 0, preempt=True)
        Lab.wait(lambda: vip_holders(lab, "ab") == ["a"], 10, "ucarp node-a MASTER")
        start_ucarp(lab, "b", OLD, 100)
        time.sleep(3)
        with Sampler(lab, "ab") as sampler:
            for node, skew in (("a", 0), ("b", 100)):
                stop_process(lab.agents.pop(node), sig=signal.SIGTERM)
                start_ucarp(lab, node, NEW, skew, preempt=node == "a")
                time.sleep(gap)
            time.sleep(4)
        return {"samples": len(sampler.samples), "two_holders": sampler.count(2),
                "longest_two_holders_s": round(sampler.longest(2), 2),
                "holders_at_end": vip_holders(lab, "ab")}


def mixed_group(gap: float) -> dict[str, Any]:
    """node-a carp-sidecar (MASTER), node-b real ucarp (BACKUP). ucarp has one password, so
    it cannot accept both: it is stopped after step 1 (a backup: nothing moves), node-a
    switches, and ucarp starts again with the new password."""
    with Lab() as lab:
        start_sidecar(lab, "a")
        Lab.wait(lambda: vip_holders(lab, "ab") == ["a"], 10, "node-a MASTER")
        start_ucarp(lab, "b", OLD, 100)
        time.sleep(3)
        before = metric(lab, "a", "carp_transitions_total")

        with Sampler(lab, "ab") as sampler:
            rolling(lab, ["a"], OLD, NEW, gap)
            stop_process(lab.agents.pop("b"), sig=signal.SIGTERM)  # a backup: nothing moves
            rolling(lab, ["a"], NEW, OLD, gap)
            start_ucarp(lab, "b", NEW, 100)
            time.sleep(gap + 1)
            rolling(lab, ["a"], NEW, None, gap)
            time.sleep(4)
        ucarp_log = (lab.dir / "b.log").read_text(errors="replace")
        return {"samples": len(sampler.samples), "two_holders": sampler.count(2),
                "vip_moves": sampler.moves(), "holders_at_end": vip_holders(lab, "ab"),
                "transitions": metric(lab, "a", "carp_transitions_total") - before,
                "bad_hmac_at_a": metric(lab, "a", "carp_adverts_dropped_total",
                                        reason="bad_hmac"),
                "ucarp_bad_digest": ucarp_log.count("Bad digest"),
                "ucarp_master": "Switching to state: MASTER" in ucarp_log}


def part(limits: Any, report: Any) -> None:
    """chaos.py's part (its Limits and Report): the short run (a 45 s fault loop) steps the
    rotation 1 s apart, the long one 5 s, as the ucarp pair."""
    figures, checks = rotation_figures(short=limits.fault_seconds < 60)
    report.figures["rotation"] = figures
    for name, ok, detail in checks:
        report.check(name, ok, detail)


def rotation_figures(short: bool) -> tuple[dict[str, Any], list[tuple[str, bool, str]]]:
    """Figures and (name, ok, detail) checks."""
    gap = 1.0 if short else UCARP_GAP
    ucarp, naive = ucarp_pair(), sidecar_naive_pair()
    group = sidecar_group(gap)
    mixed = mixed_group(gap)
    figures = {"ucarp_pair": ucarp, "sidecar_pair_without_next": naive,
               "sidecar_group": {k: v for k, v in group.items() if k != "replies"},
               "mixed_group": mixed}
    checks = [
        ("rotation: ucarp pair, password changed 5 s apart (for comparison)", True,
         f"{ucarp['two_holders']} two-holder samples of {ucarp['samples']}, longest "
         f"{ucarp['longest_two_holders_s']} s"),
        ("rotation: carp-sidecar pair, CARP_PASS changed 5 s apart without CARP_PASS_NEXT "
         "(for comparison)", True,
         f"{naive['two_holders']} two-holder samples of {naive['samples']}, longest "
         f"{naive['longest_two_holders_s']} s, {naive['bad_hmac']:g} bad_hmac drops"),
        ("rotation: three carp-sidecar nodes, CARP_PASS_NEXT, never two holders",
         group["two_holders"] == 0 and group["holders_at_end"] == ["a"],
         f"{group['two_holders']} two-holder samples of {group['samples']}, "
         f"{group['vip_moves']} VIP moves"),
        ("rotation: no advert rejected, no transition, no VIP move",
         group["bad_hmac"] == 0 and group["transitions"] == 0 and group["vip_moves"] == 0,
         f"bad_hmac {group['bad_hmac']:g}, transitions {group['transitions']:g}"),
        ("rotation: mixed group with ucarp, never two holders",
         mixed["two_holders"] == 0 and mixed["holders_at_end"] == ["a"]
         and not mixed["ucarp_master"],
         f"{mixed['two_holders']} two-holder samples of {mixed['samples']}, "
         f"ucarp bad digests {mixed['ucarp_bad_digest']}"),
    ]
    return figures, checks
