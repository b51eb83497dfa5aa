"""What a pull overwrote or deleted, judged: agreed (discarded) or a conflict (kept aside).

rsync's ``--backup-dir`` moves every file a pull replaces or deletes into
``<path>/.carp-sync/displaced/<run>/``. Each is compared with the manifest, the group's agreed
``(size, mtime)`` of that file (:mod:`sidecar.replica.manifest`): equal, the group already had
it and the master's newer copy replaced it, so it goes; different or unknown, it was written
here and never reached the group, so it is a conflict, moved to
``<path>/.carp-sync/conflicts/<epoch>/<rel>`` (the master's epoch) and never overwritten there
(a second one gets a numbered suffix). A node that never was master of the VHID (epoch 0 before
its first pull) keeps its first catch-up's leftovers in ``.carp-sync/before-first-sync/``
instead: whatever was there before it joined the group is kept, not counted as a conflict.

Every run directory found is settled (a crash may have left one behind), then removed. A file
that cannot be moved stays where it is with its run directory: nothing is ever lost. These are
blocking file operations, run off the event loop (the manifest is opened in that thread).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.core.replica import is_conflict
from sidecar.replica.manifest import PRIVATE, Manifest, Stamp, private_dir, stamp, walk
from sidecar.replica.rsync import Itemized

DISPLACED, CONFLICTS, BEFORE_FIRST_SYNC = "displaced", "conflicts", "before-first-sync"
HOLDING = ".~tmp~"  # rsync's --delay-updates holding directory, in each directory it updates


@dataclass(slots=True)
class Settled:
    conflicts: list[str] = field(default_factory=list)  # relative paths, as on the master
    set_aside: list[str] = field(default_factory=list)  # before-first-sync
    agreed: int = 0  # displaced copies the group already had: discarded
    stuck: list[str] = field(default_factory=list)  # could not be moved: left in displaced/


def settle(root: Path, manifest: Manifest, epoch: int, first_sync: bool) -> Settled:
    """Judge every file under ``<root>/.carp-sync/displaced/*/``."""
    private = private_dir(root)
    keep = private / (BEFORE_FIRST_SYNC if first_sync else f"{CONFLICTS}/{epoch}")
    done = Settled()
    base = private / DISPLACED
    runs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    for run in runs:
        stuck_before = len(done.stuck)
        for rel, st in list(walk(run)):
            _judge(run / rel, rel, st, manifest.get(rel), keep, first_sync, done)
        if len(done.stuck) == stuck_before:
            shutil.rmtree(run, ignore_errors=True)
    return done


def _judge(src: Path, rel: str, st: Stamp, agreed: Stamp | None, keep: Path,
           first_sync: bool, done: Settled) -> None:
    try:
        if not is_conflict((st.size, st.mtime_ns),
                           None if agreed is None else (agreed.size, agreed.mtime_ns)):
            src.unlink()
            done.agreed += 1
            return
        _move_unique(src, keep / rel)
    except OSError:
        done.stuck.append(rel)
        return
    (done.set_aside if first_sync else done.conflicts).append(rel)


def _move_unique(src: Path, dest: Path) -> None:
    """``src`` to ``dest``, or ``dest.1``, ``dest.2``... when taken: a conflict is never
    overwritten by a later one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    target, n = dest, 0
    while os.path.lexists(target):
        n += 1
        target = dest.with_name(f"{dest.name}.{n}")
    os.rename(src, target)  # same file system: .carp-sync is inside the path


def record(root: Path, manifest: Manifest, items: Itemized, ok: bool) -> None:
    """The manifest after a pull: what was deleted is gone; what was received (only when the
    pull succeeded: with ``--delay-updates`` a failed one may not have renamed its files into
    place) is recorded with the stamp the local copy has now. Deletions first: a directory
    replaced by a file is deleted, then received."""
    entries: list[tuple[str, Stamp | None]] = [(rel, None) for rel in items.deleted]
    if ok:
        entries += [(rel, stamp(root / rel)) for rel in items.received]
    manifest.update(entries)


def remove_holding_dirs(root: Path) -> None:
    """rsync leaves a killed pull's partial files in ``.~tmp~`` folders and protects them from
    ``--delete`` (to resume from them); one whose file the master no longer has would stay for
    ever. After a pull that succeeded, anything in them still useful has been used: they go."""
    for top, dirs, _ in os.walk(root):
        if top == str(root):
            dirs[:] = [d for d in dirs if d != PRIVATE]
        if HOLDING in dirs:
            dirs.remove(HOLDING)
            shutil.rmtree(os.path.join(top, HOLDING), ignore_errors=True)


def after_pull(root: Path, items: Itemized, ok: bool, epoch: int, first_sync: bool,
               sweep: bool = False) -> Settled:
    """Settle the displaced files, then update the manifest (in that order: the judgement
    needs the manifest as it was before this pull); with ``sweep`` (a pull that succeeded
    after one that did not, or the first one since start), remove rsync's holding folders."""
    manifest = Manifest(root)
    try:
        settled = settle(root, manifest, epoch, first_sync)
        record(root, manifest, items, ok)
    finally:
        manifest.close()
    if ok and sweep:
        remove_holding_dirs(root)
    return settled
