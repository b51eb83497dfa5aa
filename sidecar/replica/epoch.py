"""The replication epoch of a VHID, kept in ``CARP_STATE_DIR`` (``<instance>.epoch``).

Every takeover starts a new epoch, above any this node has seen; a backup accepts data only
from a master whose epoch is at least its own (see :mod:`sidecar.core.replica`), so a former
master that comes back cannot overwrite what was written after it left. The file is written
atomically (temporary file, fsync, rename); one that cannot be written is logged and the epoch
still moves on in memory (never backwards: the write is retried at the next change).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("carp-sidecar")


class EpochStore:
    """``path`` None (``CARP_STATE_DIR=off``): the epoch lives in memory only, and a restart
    starts from 0 (a takeover still goes above every epoch it hears)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.epoch = self._read()
        self.durable = True

    def _read(self) -> int:
        if self.path is None:
            return 0
        try:
            text = self.path.read_text()[:32].strip()
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.warning("sync epoch %s unreadable (%s): starting from 0", self.path, e.strerror)
            return 0
        return int(text) if text.isdigit() else 0

    def raise_to(self, epoch: int) -> bool:
        """Adopt ``epoch`` if it is higher (a master's, accepted); True if it changed."""
        if epoch <= self.epoch:
            return False
        self.epoch = epoch
        self._write()
        return True

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{self.epoch}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self.durable = True
        except OSError as e:
            if self.durable:
                log.error("sync epoch %d not saved to %s (%s): kept in memory", self.epoch,
                          self.path, e.strerror)
            self.durable = False
