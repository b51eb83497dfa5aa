"""Logging: ucarp's line format (``2026-11-26T19:20:47.668249+00:00: [WARNING] text``) or JSON
lines, INFO and DEBUG to stdout and the rest to stderr as ucarp does, and syslog when asked.

Structured fields travel as ``extra={"fields": {...}}`` (see :func:`fields`): JSON lines carry
them as keys, text lines keep ucarp's wording, which is what people grep for.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from logging.handlers import SysLogHandler
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
SYSLOG_SOCKET = "/dev/log"


def fields(**values: Any) -> dict[str, Any]:
    """``log.warning(msg, extra=fields(vhid=1, state="MASTER"))``; None values are left out."""
    return {"fields": {k: v for k, v in values.items() if v is not None}}


class UcarpFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        return f"{ts}: [{record.levelname}] {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        doc: dict[str, Any] = {"ts": ts, "level": record.levelname, "msg": record.getMessage()}
        for key, value in getattr(record, "fields", {}).items():
            doc.setdefault(key, value if isinstance(value, int | float | bool) else str(value))
        return json.dumps(doc)


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup(fmt: str, level: str = "info", syslog: str | None = None) -> None:
    formatter = JsonFormatter() if fmt == "json" else UcarpFormatter()
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 (a conflict's)
        reconfigure = getattr(stream, "reconfigure", None)  # is escaped, never a logging error
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    out = logging.StreamHandler(sys.stdout)  # INFO, DEBUG: ucarp prints these on stdout
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [out, err]
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger("carp-sidecar")
    if syslog is not None:
        if os.path.exists(SYSLOG_SOCKET):
            handler = SysLogHandler(SYSLOG_SOCKET, SysLogHandler.facility_names[syslog])
            handler.setFormatter(logging.Formatter(
                f"carp-sidecar[{os.getpid()}]: [%(levelname)s] %(message)s"))
            handlers.append(handler)
        else:
            print(f"carp-sidecar: no {SYSLOG_SOCKET}: not logging to syslog", file=sys.stderr)
    root.handlers[:] = handlers
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False


def set_level(level: str) -> None:
    """A reload changed CARP_LOG_LEVEL."""
    logging.getLogger("carp-sidecar").setLevel(LEVELS.get(level, logging.INFO))
