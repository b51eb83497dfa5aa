"""The master's manifest: what every connected backup has confirmed it holds.

The rule is pure (:class:`sidecar.core.replica.Confirmations`: which files are agreed, once
every backup confirmed a generation at or above their last change); this module feeds it the
watcher's batches and the backups' ``SYNCED`` lines, and writes what it agrees to the
manifest. A file is stamped as it is *now*, and only if its ctime is not after the time of the
generation that was agreed: a change the watcher has not reported yet is never recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from sidecar.replica.manifest import Manifest, Stamp, walk

log = logging.getLogger("carp-sidecar")


class Confirmations(Protocol):
    """What this module needs of core/replica.py's ``Confirmations`` (one per path)."""

    def changed(self, gen: int, rel_paths: Iterable[str], at: float) -> None: ...
    def connected(self, client_id: str) -> None: ...
    def confirm(self, client_id: str, gen: int) -> None: ...
    def forget(self, client_id: str) -> None: ...
    def agreed(self) -> tuple[list[str], float | None]: ...  # files agreed once, the cutoff
    def first_full(self) -> float | None: ...  # once: the cutoff of the first full agreement
    @property
    def pending(self) -> frozenset[str]: ...  # changed, not agreed yet: a walk skips them


class Agreement:
    """One replicated path on the master: its confirmations and its manifest."""

    def __init__(self, root: Path, confirmations: Confirmations) -> None:
        self.root = root
        self.confirmations = confirmations
        self.manifest = Manifest(root)
        self._walking: asyncio.Task[None] | None = None

    def changed(self, gen: int, rel_paths: Iterable[str], at: float) -> None:
        self.confirmations.changed(gen, rel_paths, at)

    def connected(self, client_id: str) -> None:
        """A backup holds back every agreement until it confirms its first pull."""
        self.confirmations.connected(client_id)

    def confirm(self, client_id: str, gen: int) -> None:
        self.confirmations.confirm(client_id, gen)
        self._record()

    def forget(self, client_id: str) -> None:
        self.confirmations.forget(client_id)
        self._record()  # the backups still connected may now all agree

    def _record(self) -> None:
        rels, until = self.confirmations.agreed()
        if until is not None:
            entries = [_entry(self.root, rel, until) for rel in rels]
            self._update(e for e in entries if e is not None)
        cutoff = self.confirmations.first_full()
        if cutoff is not None and self._walking is None:
            self._walking = asyncio.create_task(self._record_tree(cutoff), name="manifest walk")

    async def _record_tree(self, cutoff: float) -> None:
        """The tree as a whole, the first time every backup holds it (in a thread: a large
        tree takes a while to stat; the manifest is written from the event loop)."""
        limit, pending = int(cutoff * 1e9), self.confirmations.pending
        entries = await asyncio.to_thread(lambda: list(_walk_before(self.root, limit)))
        self._update(e for e in entries if e[0] not in pending)

    def _update(self, entries: Iterable[tuple[str, Stamp | None]]) -> None:
        try:
            self.manifest.update(entries)
        except sqlite3.Error as e:
            log.error("sync path %s: manifest not updated (%s)", self.root, e)

    async def close(self) -> None:
        if self._walking is not None and not self._walking.done():
            self._walking.cancel()
            await asyncio.gather(self._walking, return_exceptions=True)
        self.manifest.close()


def _entry(root: Path, rel: str, cutoff: float) -> tuple[str, Stamp | None] | None:
    """The manifest entry of an agreed file: its stamp now, or None when it is gone; no entry
    at all when it changed after ``cutoff`` (that newer content is not agreed yet)."""
    try:
        st = (root / rel).lstat()
    except FileNotFoundError:
        return rel, None
    except OSError:
        return None
    return None if st.st_ctime_ns > int(cutoff * 1e9) else (rel, Stamp.of(st))


def _walk_before(root: Path, limit_ns: int) -> Iterable[tuple[str, Stamp]]:
    for rel, st in walk(root):
        try:
            if os.lstat(root / rel).st_ctime_ns <= limit_ns:
                yield rel, st
        except FileNotFoundError:
            continue
