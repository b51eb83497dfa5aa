"""The lab's run as a picture (`carp-sidecar lab --timeline FILE`, PNG or SVG by extension):
each node's state over time, which node the client's requests reached (or none), and each
step's window with the downtime the client saw. Drawn with matplotlib (the ``[lab]`` extra)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMATS = (".png", ".svg")
COLOURS = {"MASTER": "#2e7d32", "BACKUP": "#f9a825", "INIT": "#1565c0", "none": "#9e9e9e",
           "node-a": "#6a1b9a", "node-b": "#00838f", "no answer": "#c62828"}


@dataclass
class Recording:
    """What the lab saw, in Unix time: states by node, the client's answers, the steps."""

    t0: float
    states: list[tuple[float, str, str]] = field(default_factory=list)  # (t, node, state)
    answers: list[tuple[float, str | None]] = field(default_factory=list)  # (t, node or None)
    steps: list[tuple[float, float, str, float | None]] = field(default_factory=list)


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
        rows.append((f"node-{node}", [(t - rec.t0, s) for t, n, s in rec.states if n == node]))
    fig, ax = plt.subplots(figsize=(12, 4.0), layout="constrained")
    for y, (_, changes) in enumerate(rows):
        for start, width, value in _spans(changes, end - rec.t0):
            ax.broken_barh([(start, width)], (y - 0.35, 0.7), color=COLOURS.get(value, "#000"))
    captions = []
    for i, (began, ended, title, downtime) in enumerate(rec.steps):
        ax.axvspan(began - rec.t0, ended - rec.t0, color="#000", alpha=0.07)
        number, _, text = title.partition(". ")
        gap = "" if downtime is None else f": {downtime:.0f} ms without an answer"
        # the window's number and downtime over it (two heights: windows may be close)
        late = began - rec.t0 > 0.75 * (end - rec.t0)  # near the right edge: end there
        ax.text((ended if late else began) - rec.t0, len(rows) - 0.5 + 0.45 * (i % 2),
                f"{number}{gap}", fontsize=7, va="bottom", ha="right" if late else "left")
        captions.append(f"{number}. {text}")
    half = (len(captions) + 1) // 2  # the steps, named under the axis on two lines
    steps = "\n".join("    ".join(part) for part in (captions[:half], captions[half:]) if part)
    ax.set_xlabel("seconds since the lab started" + (f"\n\n{steps}" if steps else ""),
                  fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylim(-0.6, len(rows) + 0.7)
    ax.set_xlim(0, end - rec.t0)
    ax.set_title("carp-sidecar lab: who is MASTER, and which node the client reached")
    seen = {v for _, changes in rows for _, v in changes}
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLOURS.items() if k in seen],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.savefig(path, metadata={"Date": None} if path.suffix.lower() == ".svg" else None)
    plt.close(fig)
