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
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

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
    """One replicated path on the master: its confirmations and its manifest.

    The rule runs on the event loop (it is pure and quick); what it agrees to is stamped and
    written in a worker thread of this path's own, one job at a time and in order: an lstat
    per file and a SQLite write (a large tree's first walk takes seconds) must not stall the
    loop, and the manifest's connection is only ever used by that one thread."""

    def __init__(self, root: Path, confirmations: Confirmations) -> None:
        self.root = root
        self.confirmations = confirmations
        self.manifest = Manifest(root)  # opened here: an unusable folder fails the start
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="manifest")
        self._stop = threading.Event()  # close(): a walk under way gives up
        self._walked = False

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
        if until is not None and rels:
            self._schedule(self._record_files, rels, until)
        cutoff = self.confirmations.first_full()
        if cutoff is not None and not self._walked:
            self._walked = True
            self._schedule(self._record_tree, cutoff, self.confirmations.pending)

    def _schedule(self, job: Callable[..., None], *args: Any) -> None:
        if self._stop.is_set():
            return  # closing: nothing more is written
        self._worker.submit(self._logged, job, *args)

    def _logged(self, job: Callable[..., None], *args: Any) -> None:
        try:
            job(*args)
        except Exception as e:  # a job's failure must not end the worker, nor go unseen
            log.error("sync path %s: manifest not updated (%s)", self.root, e)

    def _record_files(self, rels: list[str], until: float) -> None:
        entries = [_entry(self.root, rel, until) for rel in rels]
        self.manifest.update(e for e in entries if e is not None)

    def _record_tree(self, cutoff: float, pending: frozenset[str]) -> None:
        """The tree as a whole, the first time every backup holds it."""
        entries = []
        for rel, st in _walk_before(self.root, int(cutoff * 1e9)):
            if self._stop.is_set():
                return
            if rel not in pending:
                entries.append((rel, st))
        self.manifest.update(entries)

    async def idle(self) -> None:
        """Wait until every job scheduled so far is done."""
        if not self._stop.is_set():
            await asyncio.wrap_future(self._worker.submit(lambda: None))

    async def close(self) -> None:
        """Queued jobs are dropped, a walk under way stops; then the manifest is closed."""
        self._stop.set()
        await asyncio.to_thread(self._worker.shutdown, True, cancel_futures=True)
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
