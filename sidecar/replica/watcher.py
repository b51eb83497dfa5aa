"""The master's side of a VHID (:class:`MasterSide`) and each path's change detection:
inotify through ``watchfiles``.

watchfiles (Rust ``notify``) watches the tree recursively, adds watches for new folders itself
and batches bursts: a batch ends 20 ms after the last event or 100 ms after the first, so a
writer making hundreds of changes a second costs a handful of batches. Each batch that touches
something outside the private ``.carp-sync/`` folder is one new *generation* of the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

from sidecar.core import replica as core_replica
from sidecar.replica.confirm import Agreement, Confirmations
from sidecar.replica.manifest import PRIVATE

log = logging.getLogger("carp-sidecar")

DEBOUNCE_MS, STEP_MS = 100, 50  # step: the watcher thread wakes 20 times a second
# A batch of changes: (generation, the relative paths it touched, the wall-clock time it arrived:
# every change in it happened before that, which is what a file's ctime is compared with).
OnBatch = Callable[[int, set[str], float], None]


class PathWatcher:
    """Generation 1 is the tree as found at start (a backup that connects pulls it once)."""

    def __init__(self, root: Path, on_batch: OnBatch) -> None:
        self.root = root
        self.generation = 1
        self._on_batch = on_batch
        self._private = os.path.join(str(root), PRIVATE)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start watching; returns once the inotify watches are in place (a write after it
        is seen)."""
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready), name=f"watch {self.root}")
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=2.0)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    def _interesting(self, _change: Change, path: str) -> bool:
        return not (path == self._private or path.startswith(self._private + os.sep))

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    async def _run(self, ready: asyncio.Event) -> None:
        changes = awatch(self.root, watch_filter=self._interesting, debounce=DEBOUNCE_MS,
                         step=STEP_MS, stop_event=self._stop, recursive=True,
                         ignore_permission_denied=True)
        first = asyncio.ensure_future(anext(changes))
        # awatch sets its watches in the generator's first step, before it waits for events
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ready.set()
        try:
            batch = await first
            while True:
                self._batch(batch)
                batch = await anext(changes)
        except StopAsyncIteration:
            return
        except OSError as e:  # the folder went away: nothing more to report from it
            log.error("sync path %s: no longer watched (%s)", self.root, e)

    def _batch(self, batch: set[tuple[Change, str]]) -> None:
        rels = {self._rel(path) for _, path in batch}
        if not rels:
            return
        self.generation += 1
        self._on_batch(self.generation, rels, time.time())


class Subscription:
    """The paths whose generation moved since the subscriber last looked (coalesced: a slow
    reader gets the newest generation once, never a backlog)."""

    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self._event = asyncio.Event()

    def mark(self, name: str) -> None:
        self._dirty.add(name)
        self._event.set()

    async def wait(self, timeout: float) -> set[str]:
        """The paths that changed, or an empty set after ``timeout`` with none."""
        if not self._dirty:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._event.wait()
        dirty, self._dirty = self._dirty, set()
        self._event.clear()
        return dirty


def _core_confirmations() -> Confirmations:
    """The pure rule (sidecar.core.replica), from now: files older than the watch are the
    tree's, agreed by the first full confirmation."""
    return core_replica.Confirmations(0, time.time())


class MasterSide:
    """One VHID this node is MASTER of: its paths watched, their generations, and what its
    backups confirmed. ``on_higher_epoch`` is called when a backup proves an epoch above
    ``epoch`` (the agent moves its epoch past it and serves a new side)."""

    def __init__(self, vhid: int, epoch: int, paths: dict[str, Path],
                 on_higher_epoch: Callable[[int], None], *,
                 confirmations: Callable[[], Confirmations] = _core_confirmations) -> None:
        self.vhid, self.epoch, self.paths = vhid, epoch, dict(paths)
        # epochs a healed split brain made void (lo, hi): a backup still in one is told
        # DENIED epoch (it empties its manifest and comes back), never taken as agreed
        self.void: tuple[int, int] | None = None
        self.on_higher_epoch = on_higher_epoch
        self._watchers = {name: PathWatcher(root, self._batch_of(name))
                          for name, root in self.paths.items()}
        self._confirmations = confirmations
        self._agreements: dict[str, Agreement] = {}
        self._subscribers: set[Subscription] = set()

    async def start(self) -> None:
        """Open each path's manifest and watch it (OSError or sqlite3.Error when a path's
        private folder cannot be made)."""
        self._agreements = {name: Agreement(root, self._confirmations())
                            for name, root in self.paths.items()}
        await asyncio.gather(*(w.start() for w in self._watchers.values()))

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self._watchers.values()))
        await asyncio.gather(*(a.close() for a in self._agreements.values()))
        self._agreements = {}  # a connection still closing has nothing left to confirm
        self._subscribers.clear()

    def generation(self, name: str) -> int:
        return self._watchers[name].generation

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def connect(self, client_id: str) -> None:
        for agreement in self._agreements.values():
            agreement.connected(client_id)

    def confirm(self, client_id: str, name: str, gen: int) -> None:
        """A backup's ``SYNCED``; KeyError for a path this VHID does not have."""
        self._agreements[name].confirm(client_id, gen)

    def forget(self, client_id: str) -> None:
        """A backup disconnected: it no longer holds back what the others agreed."""
        for agreement in self._agreements.values():
            agreement.forget(client_id)

    def _batch_of(self, name: str) -> OnBatch:
        def batch(gen: int, rels: set[str], at: float) -> None:
            self._agreements[name].changed(gen, rels, at)
            for sub in self._subscribers:
                sub.mark(name)
        return batch
