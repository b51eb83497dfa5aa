"""Fixtures for root + netns tests: every test builds its own namespaces and removes them."""

from __future__ import annotations

import itertools
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.lab import VIP, Lab
from sidecar.lab.holders import vip_holders  # noqa: F401 - the tests import it from here
from sidecar.lab.netns import require_root_and_tools

NEEDS = ["ucarp", "/usr/sbin/apache2", "curl", "tshark", "tcpdump"]
why = require_root_and_tools(NEEDS)
pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> float:
    return Lab.wait(lambda: bool(cond()), timeout, what)


def advert_times(lab: Lab, seconds: float) -> list[float]:
    """Capture adverts in the client namespace for ``seconds``: their arrival times."""
    dump = lab.topo["client"].run("timeout", str(seconds), "tcpdump", "-tt", "-n", "-l", "-i",
                                  "eth0", "ip proto 112", check=False, timeout=seconds + 12).stdout
    return [float(line.split()[0]) for line in dump.splitlines() if line.strip()]


def max_gap(times: list[float]) -> float:
    return max(b - a for a, b in itertools.pairwise(times))


def metric(lab: Lab, node: str, name: str, **labels: str) -> float:
    """One sample from a node's /metrics (0 when absent). A scrape that times out (curl's 1 s
    on a loaded machine) is tried again before it reads as 0: a failed read is not a zero."""
    text = ""
    for _ in range(5):
        text = lab.get(node, "http://127.0.0.1:9655/metrics") or ""
        if text:
            break
        time.sleep(0.2)
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def transitions(lab: Lab, node: str) -> list[str]:
    log = (lab.dir / f"{node}.log").read_text()
    return re.findall(r"Switching to state: (\w+)", log)


UP_SCRIPT = """#!/bin/sh
# classic recipe up script, with ucarp's argv: $1 interface, $2 VIP
exec ip addr add "$2"/16 dev "$1" label "$1":0
"""
DOWN_SCRIPT = """#!/bin/sh
exec ip addr del "$2"/16 dev "$1" 2>/dev/null || true
"""


def write_scripts(lab: Lab) -> tuple[Path, Path]:
    up, down = lab.dir / "vip-up.sh", lab.dir / "vip-down.sh"
    up.write_text(UP_SCRIPT)
    down.write_text(DOWN_SCRIPT.replace("exec ip", "ip"))
    for p in (up, down):
        p.chmod(0o755)
    return up, down


def start_ucarp(lab: Lab, node: str, *, advskew: int = 0, preempt: bool = False,
                password: str = "lab-only", src: str | None = None) -> subprocess.Popen[bytes]:
    from sidecar.lab import ADDRESSES

    up, down = write_scripts(lab)
    src = src or ADDRESSES[node].split("/")[0]
    cmd = ["ucarp", "-i", "eth0", "-s", src, "-v", "1", "-p", password, "-a", VIP, "-b", "1",
           "-k", str(advskew), "-u", str(up), "-d", str(down), "-z", "-f", "none"]
    if preempt:
        cmd.append("-P")
    proc = lab.topo.start(node, cmd, log=lab.dir / f"{node}.log")
    lab.agents[node] = proc
    return proc


def status(lab: Lab, node: str) -> dict[str, object]:
    st = lab.status(node)
    assert st is not None, f"no /status from node-{node}"
    return st


def dump_on_failure(lab: Lab) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(lab.dir.glob("*.log")))

