"""Logging: ucarp's line format (``2026-11-26T19:20:47.668249: [WARNING] text``) or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime


class UcarpFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).isoformat(timespec="microseconds")
        return f"{ts}: [{record.levelname}] {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        doc = {"ts": ts, "level": record.levelname, "msg": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        return json.dumps(doc)


def setup(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else UcarpFormatter())
    root = logging.getLogger("carp-sidecar")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
