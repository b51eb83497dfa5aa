"""`make chaos` part "flapping": the master's source address deleted and re-added every 300 ms
(a DHCP client or a network manager fighting over the interface, a flaky orchestration hook),
carp-sidecar against ucarp in the same run, each in its own lab.

The holders are sampled every 50 ms while node-a's address flaps: the fraction of samples with
no holder and the longest run of them, for each agent. carp-sidecar's master keeps the VIP while
it cannot advertise until its backups would take over (faults round 4), so the VIP is never
unheld; before, each loss dropped it at once while node-b waited its whole master-down interval
(64 % of samples unheld over 20 s, the longest gap 3.2 s; ucarp: 0 %).

Used by tests/chaos/chaos.py (``--only flapping``; ``--short`` flaps for 9 s instead of 20) and
by tests/integration/test_faults4_core.py (the flapping helpers).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from sidecar.lab import ADDRESSES, LAB_PASSWORD, VIP, Lab
from sidecar.lab.holders import HolderSampler
from sidecar.lab.holders import vip_holders as holders

PERIOD = 0.3  # s between a deletion and the re-addition, and between those and the next


class Report(Protocol):
    figures: dict[str, Any]

    def check(self, name: str, ok: bool, detail: str) -> None: ...


def flap(lab: Lab, node: str, seconds: float, period: float = PERIOD) -> int:
    """Delete and re-add ``node``'s address every ``period`` for ``seconds``; it is there at
    the end. Returns the number of deletions."""
    from pyroute2 import NetNS

    address, prefix = ADDRESSES[node].split("/")
    deletions = 0
    with NetNS(lab.topo[node].ns) as ns:
        index = ns.link_lookup(ifname="eth0")[0]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ns.addr("del", index=index, address=address, prefixlen=int(prefix))
            deletions += 1
            time.sleep(period)
            ns.addr("add", index=index, address=address, prefixlen=int(prefix))
            time.sleep(period)
    return deletions


def unheld(sampler: HolderSampler) -> tuple[float, float]:
    """The fraction of samples without a holder, and the longest run of them (s)."""
    samples = sampler.samples
    empty = sum(1 for _, n in samples if n == 0)
    return (empty / len(samples) if samples else 1.0), sampler.longest(0)


def start_ucarp(lab: Lab, node: str) -> None:
    """ucarp as the classic recipe runs it (the VIP by up/down scripts), node-a preferred."""
    up, down = lab.dir / "up.sh", lab.dir / "down.sh"
    up.write_text('#!/bin/sh\nip addr add "$2"/16 dev "$1" label "$1":0\n')
    down.write_text('#!/bin/sh\nip addr del "$2"/16 dev "$1" 2>/dev/null; true\n')
    for script in (up, down):
        script.chmod(0o755)
    src = ADDRESSES[node].split("/")[0]
    cmd = ["ucarp", "-i", "eth0", "-s", src, "-v", "1", "-p", LAB_PASSWORD, "-a", VIP,
           "-b", "1", "-k", "0" if node == "a" else "100", "-u", str(up), "-d", str(down),
           "-z", "-f", "none"] + (["-P"] if node == "a" else [])
    lab.agents[node] = lab.topo.start(node, cmd, log=lab.dir / f"{node}.log")


def measure(kind: str, seconds: float, promote: bool = True) -> dict[str, float]:
    """One lab: node-a preferred, node-b advskew 100; node-a's address flaps for ``seconds``.
    ``promote``: the VIP, a secondary address, survives its primary's deletion (systemd's
    default, net.ipv4.conf.all.promote_secondaries=1; the kernel's is 0: it goes with it,
    and only an agent that puts a deleted VIP back keeps serving)."""
    with Lab() as lab:
        for node in ("a", "b"):
            lab.topo[node].run("sysctl", "-qw",
                               f"net.ipv4.conf.eth0.promote_secondaries={int(promote)}")
        for node in ("a", "b"):
            if kind == "ucarp":
                start_ucarp(lab, node)
            else:
                lab.start_agent(node, **({"CARP_PREEMPT": "true"} if node == "a"
                                         else {"CARP_ADVSKEW": "100"}))
            if node == "a":
                Lab.wait(lambda: holders(lab) == ["a"], 12, f"{kind}: node-a MASTER")
        time.sleep(2)  # node-b has heard node-a
        with HolderSampler(lab) as sampler:
            deletions = flap(lab, "a", seconds)
            time.sleep(1)
        fraction, longest = unheld(sampler)
        two = sampler.longest(2)
        return {"unheld_fraction": round(fraction, 3), "longest_unheld_s": round(longest, 2),
                "longest_two_holders_s": round(two, 2), "samples": len(sampler.samples),
                "deletions": deletions}


def flapping(limits: Any, report: Report) -> None:
    seconds = min(20.0, limits.fault_seconds / 5)  # 20 s long, 9 s short
    ours, theirs = measure("carp-sidecar", seconds), measure("ucarp", seconds)
    kernel = measure("carp-sidecar", seconds, promote=False)
    report.figures["flapping"] = {"seconds": seconds, "period_s": PERIOD,
                                  "carp-sidecar": ours, "ucarp": theirs,
                                  "carp-sidecar, promote_secondaries 0": kernel}
    report.check("flapping: the master's flapping address never leaves the VIP unheld",
                 ours["unheld_fraction"] <= max(0.02, theirs["unheld_fraction"])
                 and ours["longest_unheld_s"] <= 0.25,
                 f"carp-sidecar unheld {ours['unheld_fraction']:.1%} of samples (longest "
                 f"{ours['longest_unheld_s']:.2f} s), ucarp {theirs['unheld_fraction']:.1%} "
                 f"(longest {theirs['longest_unheld_s']:.2f} s)")
    report.check("flapping: the same when the VIP goes with the deleted address (put back)",
                 kernel["unheld_fraction"] <= 0.02 and kernel["longest_unheld_s"] <= 0.25,
                 f"unheld {kernel['unheld_fraction']:.1%} (longest "
                 f"{kernel['longest_unheld_s']:.2f} s)")
    report.check("flapping: never two holders",
                 max(ours["longest_two_holders_s"], kernel["longest_two_holders_s"]) <= 0.25,
                 f"longest {max(ours['longest_two_holders_s'], kernel['longest_two_holders_s']):.2f} s")
