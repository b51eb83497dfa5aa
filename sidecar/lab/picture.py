"""The lab's run as a picture (`carp-sidecar lab --timeline FILE`, PNG or SVG by extension):
each node's state over time, which node the client's requests reached (or none), and each
step's window with the downtime the client saw. Drawn with matplotlib (the ``[lab]`` extra)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMATS = (".png", ".svg")
COLOURS = {"MASTER": "#2e7d32", "BACKUP": "#f9a825", "INIT": "#1565c0", "none": "#9e9e9e",
           "node-a": "#6a1b9a", "node-b": "#00838f", "no answer": "#c62828"}
# what each colour means, in the legend ("none" and "no answer" alone were read as each other)
LEGEND = {"MASTER": "MASTER (holds the VIP)", "BACKUP": "BACKUP", "INIT": "INIT",
          "none": "none: no agent running", "node-a": "client reached node-a",
          "node-b": "client reached node-b", "no answer": "no answer: the client's request failed"}
POLL_MS = 10  # the client polls every 10 ms (sidecar.lab.probe's default): the resolution


@dataclass
class Recording:
    """What the lab saw, in Unix time: states by node, the client's answers, the steps."""

    t0: float
    states: list[tuple[float, str, str]] = field(default_factory=list)  # (t, node, state)
    answers: list[tuple[float, str | None]] = field(default_factory=list)  # (t, node or None)
    steps: list[tuple[float, float, str, float | None]] = field(default_factory=list)
    sessions: dict[int, bool] = field(default_factory=dict)  # step number -> client still logged in


def missed_a_poll(answers: list[tuple[float, str | None]], since: float, body: str) -> bool | None:
    """Whether the client went without an answer before its first answer from ``body`` after
    ``since`` (None: no such answer). The client's lines come only when the answer changes, so a
    failed poll is always a line of its own: an answer straight after another node's means the
    VIP moved between two polls, and the gap measured is just the poll interval."""
    before: tuple[float, str | None] | None = None
    for t, who in answers:
        if t >= since and who == body:
            return before is None or before[1] is None
        before = (t, who)
    return None


def downtime_text(downtime_ms: float | None, missed: bool | None) -> str:
    """A step's client-visible downtime, as the summary table and the picture print it."""
    if downtime_ms is None:
        return "-"
    if missed is False:
        return f"no missed poll (< {POLL_MS} ms)"
    return f"{downtime_ms:.0f} ms without an answer"


def _spans(changes: list[tuple[float, str]], end: float) -> list[tuple[float, float, str]]:
    """Value changes -> (start, width, value) spans up to ``end``."""
    return [(t, (changes[i + 1][0] if i + 1 < len(changes) else end) - t, value)
            for i, (t, value) in enumerate(changes)]


def draw(path: Path, rec: Recording, end: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, readable
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [("client", [(t - rec.t0, body or "no answer") for t, body in rec.answers])]
    for node in ("a", "b"):
        changes = sorted((t, s) for t, n, s in rec.states if n == node)
        rows.append((f"node-{node}", [(t - rec.t0, s) for t, s in changes]))
    # the steps are named under the axis, one a line
    fig, ax = plt.subplots(figsize=(13, 4.4 + 0.25 * len(rec.steps)), layout="constrained")
    for y, (_, changes) in enumerate(rows):
        for start, width, value in _spans(changes, end - rec.t0):
            ax.broken_barh([(start, width)], (y - 0.35, 0.7), color=COLOURS.get(value, "#000"))
    captions = []
    for began, ended, title, downtime in rec.steps:
        ax.axvspan(began - rec.t0, ended - rec.t0, color="#000", alpha=0.07)
        number, _, text = title.partition(". ")
        # the answer that ended the window: the first one after the step began
        reached = next((who for t, who in rec.answers if t >= began and who), None)
        missed = None if reached is None else missed_a_poll(rec.answers, began, reached)
        gap = "" if downtime is None else f" \N{EM DASH} {downtime_text(downtime, missed)}"
        ax.text((began + ended) / 2 - rec.t0, len(rows) - 0.5, number, fontsize=13,
                va="bottom", ha="center", fontweight="bold")
        kept = rec.sessions.get(int(number)) if number.isdigit() else None
        session = "" if kept is None else " \N{EM DASH} session " + ("kept" if kept else "LOST")
        captions.append(f"{number}. {text}{gap}{session}")
    ax.set_xlabel("\n".join(["seconds since the lab started", "", *captions]), fontsize=12,
                  multialignment="left")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=13)
    ax.tick_params(axis="x", labelsize=11)
    ax.set_ylim(-0.6, len(rows) + 0.2)
    ax.set_xlim(0, end - rec.t0)
    ax.set_title("carp-sidecar lab: who is MASTER, and which node the client reached",
                 fontsize=15)
    seen = {v for _, changes in rows for _, v in changes}
    ax.legend(handles=[Patch(color=c, label=LEGEND[k]) for k, c in COLOURS.items() if k in seen],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=12)
    fig.savefig(path, metadata={"Date": None} if path.suffix.lower() == ".svg" else None)
    plt.close(fig)
