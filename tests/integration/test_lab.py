"""`carp-sidecar lab --short` plays the scenario and its timeline says what happened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_lab_short_timeline(tmp_path: Path) -> None:
    picture = tmp_path / "lab.png"
    r = subprocess.run([sys.executable, "-m", "sidecar.tools.cli", "lab", "--short",
                        "--timeline", str(picture)], capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    order = [
        r"step 0: node-a is MASTER and serves the VIP",
        r"step 1: unplug node-a's network cable",
        r"node-a: BACKUP +\(link_down\)",
        r"node-b: MASTER",
        r"step 1 done: client sees node-b; VIP on node-b; client-visible downtime \d+ ms",
        r"step 2 done: client sees node-a; VIP on node-a",
        r"node-a: MASTER +\(sync_caught_up\)",  # the preempt its replicas held back
        r"step 3 done: client sees node-b; VIP on node-b",
        r"node-b: MASTER +\(handover\)",
        r"all steps passed",
    ]
    for pattern in order:
        assert re.search(pattern, out), f"{pattern!r} missing from:\n{out}"
    # the run drawn: both nodes MASTER at some time, both answering the client, and a gap
    from PIL import Image

    from sidecar.lab.picture import COLOURS

    image = Image.open(picture)
    assert image.format == "PNG" and image.size[0] >= 800
    colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}
    for key in ("MASTER", "BACKUP", "node-a", "node-b", "no answer"):
        rgb = tuple(int(COLOURS[key][i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, key
    tag = re.search(r"tag (\w+)", out)
    assert tag is not None
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag.group(1) not in leftovers


def test_lab_refuses_without_root_with_exit_2() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run([*nobody, "-c", "import sidecar"], capture_output=True, timeout=60,
                           cwd="/")
    if probe.returncode != 0:
        pytest.skip("this checkout's interpreter or package is not readable by nobody")
    r = subprocess.run([*nobody, "-m", "sidecar.tools.cli", "lab", "--short"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 2 and "needs root" in r.stderr, r.stderr
