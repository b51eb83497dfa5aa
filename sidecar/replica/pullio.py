"""The backup's side of the watch channel's I/O, and what a pull records as agreed beyond
what it received (a first or distrusted pull: the whole tree)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

from sidecar.core import syncwire as wire
from sidecar.replica.manifest import PRIVATE, SYNCED, Manifest, walk

log = logging.getLogger("carp-sidecar")

SILENCE = 3 * wire.PING_INTERVAL  # no line for this long: the channel is dead

class Refused(Exception):
    """NOTMASTER or DENIED: the node is not (or no longer) the master, or refuses us."""


class BadProof(Exception):
    """The master's OK did not prove the secret: not our group's master."""


def forget_agreements(root: Path) -> None:
    """Empty the manifest; one that cannot be written goes (its files removed): either way
    nothing of it counts as agreed any more."""
    try:
        manifest = Manifest(root)
        try:
            manifest.replace_all([])
        finally:
            manifest.close()
    except (OSError, sqlite3.Error) as e:
        log.error("Sync path %s: manifest unusable (%s): removed", root, e)
        for name in ("manifest.db", "manifest.db-wal", "manifest.db-shm"):
            with contextlib.suppress(OSError):
                (root / PRIVATE / name).unlink()


def record_tree(root: Path) -> bool:
    """Record every file of the tree as agreed (after a first or voided pull) and mark the
    path as synced once (see VhidReplica._never_synced); False if the manifest could not be
    written (tried again after the next pull)."""
    try:
        manifest = Manifest(root)
        try:
            manifest.replace_all(walk(root))
        finally:
            manifest.close()
        (root / PRIVATE / SYNCED).touch()
    except (OSError, sqlite3.Error) as e:
        log.error("Sync path %s: manifest not recorded (%s)", root, e)
        return False
    return True


async def answer(reader: asyncio.StreamReader) -> bytes:
    line = await readline(reader)
    if not line:
        raise EOFError("the master closed the channel during the handshake")
    if line.startswith((wire.NOTMASTER.rstrip(), b"DENIED")):
        raise Refused(line.decode("ascii", "replace").strip()[:80])
    return line


async def readline(reader: asyncio.StreamReader) -> bytes:
    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that comes
    # as its inner call ends, and a follower told to stop would go on
    async with asyncio.timeout(SILENCE):
        return await reader.readline()


async def uncancellable(work: Any) -> Any:
    """Await ``work`` to its end even if cancelled meanwhile; the cancellation goes on after."""
    fut = asyncio.ensure_future(work)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return fut.result()


def describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"silent for {SILENCE:.0f} s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
