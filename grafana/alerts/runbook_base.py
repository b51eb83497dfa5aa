#!/usr/bin/env python3
"""Points every alert's ``runbook_url`` at the runbook under one base URL, in both files that
carry the rules (grafana/alerts/carp.rules.yml and the Kubernetes PrometheusRule) and in the
rules' promtool tests, so alert
notifications link somewhere a person on call can open.

    .venv/bin/python grafana/alerts/runbook_base.py https://wiki.example.org/carp/runbook
    .venv/bin/python grafana/alerts/runbook_base.py --check    # exit 1 if not all on one base

Each URL is BASE#<alert name in lower case>, the runbook's section anchors.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "grafana/alerts/carp.rules.yml", ROOT / "deploy/kubernetes/monitoring/prometheusrule.yaml",
         ROOT / "grafana/alerts/carp.rules.test.yml"]  # the promtool tests expect the URLs too
DEFAULT_BASE = "https://github.com/carp-sidecar/carp-sidecar/blob/main/docs/runbook.md"
URL = re.compile(r'(runbook_url: )"?([^"#\s]*)#([a-z0-9-]+)"?')


def bases() -> set[str]:
    return {m.group(2) for f in FILES for m in URL.finditer(f.read_text())}


def set_base(base: str) -> None:
    if not re.match(r"^https?://[^\s\"#]+$", base):
        raise SystemExit(f"not an absolute http(s) URL without a fragment: {base!r}")
    for f in FILES:
        f.write_text(URL.sub(lambda m: f'{m.group(1)}"{base}#{m.group(3)}"', f.read_text()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        found = bases()
        ok = len(found) == 1 and all(b.startswith(("https://", "http://")) for b in found)
        print(f"runbook base: {', '.join(sorted(found))}", file=sys.stderr)
        sys.exit(0 if ok else 1)
    set_base(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_BASE)
