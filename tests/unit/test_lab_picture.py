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


def svg_text(path: Path) -> str:
    return " ".join(t for t in ET.parse(path).getroot().itertext())


def test_a_move_between_two_polls_is_no_missed_poll_not_a_downtime(tmp_path: Path) -> None:
    """The VIP moved between two of the client's 10 ms polls: the ~11 ms between its last answer
    from node-a and its first from node-b is the poll interval, not time without an answer."""
    rec = recording()
    rec.answers += [(1013.0, "node-a"), (1014.011, "node-b")]
    rec.steps.append((1014.0, 1014.1, "2. stop node-a's agent (SIGTERM: immediate handover)", 11.0))
    path = tmp_path / "lab.svg"
    draw(path, rec, end=1015.0)
    text = svg_text(path)
    assert "no missed poll (< 10 ms)" in text
    assert "11 ms without an answer" not in text
    assert "3450 ms without an answer" in text  # step 1's client did go without answers


def test_the_legend_says_what_none_and_no_answer_are(tmp_path: Path) -> None:
    rec = recording()
    rec.states.append((1013.0, "a", "none"))
    path = tmp_path / "lab.svg"
    draw(path, rec, end=1015.0)
    text = svg_text(path)
    assert "none: no agent running" in text
    assert "no answer: the client's request failed" in text


def test_the_summary_table_says_no_missed_poll(capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.lab.scenario import ClientView, Step, _summary

    view = ClientView()
    view.probe_lines = [  # what sidecar.lab.probe prints: a line when the answer changes
        {"t": 1000.0, "ok": True, "body": "node-a", "gap_ms": 10.2},
        {"t": 1005.0, "ok": False, "body": None},
        {"t": 1007.9, "ok": True, "body": "node-b", "gap_ms": 2910.0},
        {"t": 1010.0, "ok": True, "body": "node-a", "gap_ms": 10.9},
    ]
    steps = []
    for title, since, body in (("unplug node-a's network cable", 1004.9, "node-b"),
                               ("plug node-a back in", 1009.9, "node-a")):
        step = Step(title, body, lambda: None, downtime_ms=view.downtime_ms(since, body), ok=True)
        step.missed = view.missed_a_poll(since, body)
        steps.append(step)
    _summary(steps)
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].endswith("node-b       2910 ms"), rows
    assert rows[3].endswith("node-a       no missed poll (< 10 ms)"), rows


class ScriptedLab:
    """What _watch_states reads of a Lab: which agents run, their /status, when they stopped."""

    def __init__(self, statuses: dict[str, dict[str, object]]) -> None:
        self.statuses = statuses
        self.agents: dict[str, object] = dict.fromkeys(statuses)
        self.exited: dict[str, float] = {}

    def status(self, node: str) -> dict[str, object] | None:
        return self.statuses[node] if node in self.agents else None


def test_states_are_placed_at_the_agents_transition_time_not_when_polled(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The lab polls /status every ~0.1 s (and each poll takes a while): a state stamped when
    polled shows the client on node-b while node-b still looks BACKUP. The agent's own
    last_transition.at is when it happened; an agent the lab stopped is gone when it exited."""
    import threading
    import time

    from sidecar.lab.scenario import Timeline, _watch_states

    now = time.time()
    became_master, became_backup = now - 0.4, now - 0.6
    lab = ScriptedLab({
        "a": {"state": "MASTER", "last_transition": {"reason": "master_down", "at": became_master}},
        "b": {"state": "BACKUP", "last_transition": {"reason": "startup", "at": became_backup}},
    })
    timeline = Timeline()
    timeline.t0 = now - 1.0
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_states, args=(lab, timeline, stop), daemon=True)
    watcher.start()
    states = timeline.recording.states
    deadline = time.time() + 5
    while len(states) < 2 and time.time() < deadline:
        time.sleep(0.01)
    del lab.agents["b"]  # the lab is stopping node-b's agent: it has not exited yet
    time.sleep(0.3)
    lab.exited["b"] = exited = time.time()
    while len(states) < 3 and time.time() < deadline:
        time.sleep(0.01)
    stop.set()
    watcher.join(5)
    timeline.release()  # what the lab prints at its end: the commentary held back to the last
    assert sorted(states) == [(became_backup, "b", "BACKUP"), (became_master, "a", "MASTER"),
                              (exited, "b", "none")]
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert lines == ["+ 0.40s node-b: BACKUP (startup)", "+ 0.60s node-a: MASTER (master_down)",
                     f"+ {exited - timeline.t0:.2f}s node-b: agent not running"]


def test_each_checked_step_says_whether_the_logged_in_client_kept_its_session(
        tmp_path: Path) -> None:
    rec = recording()
    rec.steps.append((1012.0, 1013.0, "2. plug node-a back in", None))
    path = tmp_path / "lab.svg"
    draw(path, rec, end=1015.0)
    assert "session" not in svg_text(path)  # no sessions step: nothing said
    rec.sessions.update({1: True, 2: False})
    draw(path, rec, end=1015.0)
    text = svg_text(path)
    assert "unplug node-a's network cable \N{EM DASH} 3450 ms without an answer \N{EM DASH} " \
           "session kept" in text
    assert "plug node-a back in \N{EM DASH} session LOST" in text
