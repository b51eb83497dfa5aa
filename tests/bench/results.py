"""docs/bench-results.json: each bench stores its figures under its own key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def merge(path: Path, key: str, result: Any) -> None:
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[key] = result
    path.write_text(json.dumps(doc, indent=1) + "\n")
