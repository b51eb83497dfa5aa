"""The lab's --timeline picture from a recording (the integration test draws a real run)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sidecar.lab.picture import COLOURS, Recording, draw


def recording() -> Recording:
    rec = Recording(t0=1000.0)
    rec.states += [(1000.5, "a", "BACKUP"), (1000.6, "b", "BACKUP"), (1003.5, "a", "MASTER"),
                   (1008.0, "a", "BACKUP"), (1011.4, "b", "MASTER")]
    rec.answers += [(1004.0, "node-a"), (1008.0, None), (1011.5, "node-b")]
    rec.steps.append((1007.9, 1011.6, "1. unplug node-a's network cable", 3450.0))
    return rec


def test_png_shows_states_answers_and_the_failover_window(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "lab.png"
    draw(path, recording(), end=1015.0)
    image = Image.open(path).convert("RGB")
    assert image.format is None or image.size[0] >= 800
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20) or []}
    wanted = {tuple(int(COLOURS[k][i:i + 2], 16) for i in (1, 3, 5))
              for k in ("MASTER", "BACKUP", "node-a", "node-b", "no answer")}
    assert wanted <= colours, wanted - colours


def test_svg_names_the_rows_and_the_downtime(tmp_path: Path) -> None:
    path = tmp_path / "lab.svg"
    draw(path, recording(), end=1015.0)
    text = " ".join(t for t in ET.parse(path).getroot().itertext())
    for label in ("client", "node-a", "node-b", "MASTER", "no answer",
                  "3450 ms without an answer", "unplug node-a"):
        assert label in text, label


@pytest.mark.parametrize("name", ["lab.jpg", "lab"])
def test_the_lab_refuses_a_timeline_it_cannot_write(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.tools import cli

    assert cli.main(["lab", "--short", "--timeline", name]) == 2
    assert "must end in .png or .svg" in capsys.readouterr().err
