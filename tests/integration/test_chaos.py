"""The short `make chaos` run inside `make test`: the same verdicts as the long run (flood,
scrape storm, fault loop), scaled down and with timing bounds loosened for a busy CI machine;
the long run's figures are in the README."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))

from chaos import run


@pytest.mark.parametrize("part", ["flood", "scrape", "faults", "operator", "statedir"])
def test_chaos_short(part: str) -> None:
    report = run(short=True, only=[part])
    failed = [f"{name}: {detail}" for name, ok, detail in report.checks if not ok]
    assert report.checks and not failed, failed
