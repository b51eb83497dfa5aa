"""Operator maintenance that outlives the process: one small JSON file per instance in the
state directory (``CARP_STATE_DIR``), and the maintenance file an operator can create by hand
(``CARP_MAINTENANCE_FILE``).

A demoted node that restarts (an upgrade, a reboot, a rescheduled pod) must come back demoted,
or it preempts in the middle of the maintenance window. So the record is written atomically
(temporary file, fsync, rename, fsync of the directory) and read before the first election; a
record that cannot be read is an error at start, never a silent "not in maintenance".
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.sending import StrictCounter
from sidecar.core.session import Session

log = logging.getLogger("carp-sidecar")

MAX_RECORD_BYTES = 4096  # a record is ~100 bytes; anything larger is not ours
Prepared = tuple[int, int]  # strict: (the mark an earlier run kept, reserved up to)


class StateError(Exception):
    """The state directory or a record in it is unusable; one line naming the path."""


@dataclass(frozen=True)
class Record:
    maintenance: bool
    since: float  # Unix time the operator's decision was made

    def to_json(self) -> str:
        utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return json.dumps({"maintenance": self.maintenance, "since": self.since,
                           "since_utc": utc}) + "\n"




class MaintenanceStore:
    """Records in ``directory``, one per instance, named after it (``eth0-vhid1.json``), and
    strict mode's counter high-water marks beside them (``eth0-vhid1.counter``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._reserved: dict[str, int] = {}  # the highest mark written, per instance

    def path(self, instance: str, suffix: str = ".json") -> Path:
        return self.directory / (instance.replace("/", "-") + suffix)

    def prepare(self) -> None:
        """Create the directory if needed and check it can take a record now, not later."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"CARP_STATE_DIR: cannot create {self.directory}: "
                             f"{e.strerror or e} (mount a volume there, or set it to off)") from None
        if not self.directory.is_dir() or not os.access(self.directory, os.W_OK | os.X_OK):
            raise StateError(f"CARP_STATE_DIR: {self.directory} is not a writable directory "
                             "(mount a volume there, or set it to off)")

    def _read(self, path: Path) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"CARP_STATE_DIR: cannot read {path}: {e.strerror or e}") from None
        try:
            return os.read(fd, MAX_RECORD_BYTES + 1)
        except OSError as e:
            raise StateError(f"CARP_STATE_DIR: cannot read {path}: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def operator_record(self, instance: str, strict: bool) -> Record | None:
        """:meth:`load`, except that outside strict mode a state directory that is not one (a
        file in its place) holds no record, said in the log: only a demote or promote needs
        to write there. A directory whose record cannot be read still raises: look at it."""
        try:
            return self.load(instance)
        except StateError as e:
            if strict or self.directory.is_dir():
                raise
            log.error("%s: no maintenance record read", e)
            return None

    def load(self, instance: str) -> Record | None:
        """The instance's record, None if it has none; StateError if it cannot be trusted."""
        path = self.path(instance)
        raw = self._read(path)
        if raw is None:
            return None
        try:
            if len(raw) > MAX_RECORD_BYTES:
                raise ValueError("too large")
            doc = json.loads(raw)
            on, since = doc["maintenance"], doc["since"]
            if not isinstance(on, bool) or not isinstance(since, int | float) or since < 0:
                raise ValueError("unexpected values")
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"CARP_STATE_DIR: {path} is not a maintenance record ({e}); "
                             "it may be truncated: fix it, or delete it to leave maintenance"
                             ) from None
        return Record(on, float(since))

    def save(self, instance: str, record: Record) -> None:
        """Atomically replace the instance's record; OSError if it could not be made durable."""
        self._write(self.path(instance), record.to_json())

    def counter_mark(self, instance: str) -> int | None:
        """Strict mode: the highest advert counter an earlier run may have used (its
        reservation), None if none was kept; StateError if the file cannot be trusted."""
        path = self.path(instance, ".counter")
        raw = self._read(path)
        if raw is None:
            return None
        try:
            mark = json.loads(raw)["reserved"]
            if not isinstance(mark, int) or not 0 <= mark < 1 << 64:
                raise ValueError("not a 64-bit counter")
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"CARP_STATE_DIR: {path} is not a counter record ({e}); "
                             "`carp-sidecar repair-counter` sets a mark above any counter sent "
                             "before (docs/runbook.md)") from None
        return mark

    def reserve_counter(self, instance: str, upto: int) -> None:
        """Record that counters up to ``upto`` may be used: a later run starts above it. Never
        lower than a mark this process wrote: a reload prepares the restarted instance's mark
        while the old one still runs, and the old one must not write it back down."""
        upto = max(upto, self._reserved.get(instance, 0))
        self._write(self.path(instance, ".counter"), json.dumps({"reserved": upto}) + "\n")
        self._reserved[instance] = upto

    def _write(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)


def file_since(path: Path) -> float | None:
    """When the maintenance file appeared (its mtime), or None while it does not exist."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class CounterMark:
    """Strict mode's counter mark of one instance: its session starts above what an earlier
    run reserved, and reserves ahead before its counters reach the mark."""

    def __init__(self, store: MaintenanceStore, name: str) -> None:
        self.store, self.name = store, name

    def keep(self, session: Session, prepared: Prepared | None = None) -> None:
        """Before the first advert. Raises StateError/OSError; with a mark a reload
        ``prepared`` (:meth:`prepare`), writes nothing."""
        if prepared is not None:
            session.counters.floor, session.counters.reserved = prepared
            return
        upto = session.counters.keep(self.store.counter_mark(self.name))
        self.store.reserve_counter(self.name, upto)
        session.counters.reserved = upto

    def prepare(self, wall: Callable[[], float]) -> Prepared:
        """A reload, before it touches the running instance: the mark an earlier run kept and a
        reservation above it, written now (raises StateError/OSError); :meth:`keep` gives
        them to the new session, which then needs no write to start."""
        floor = self.store.counter_mark(self.name)
        upto = StrictCounter(wall).keep(floor)
        self.store.reserve_counter(self.name, upto)
        return floor or 0, upto

    def reserve(self, session: Session, upto: int) -> None:
        try:  # before the advert leaves: a crash after it must not reuse its counter
            self.store.reserve_counter(self.name, upto)
        except OSError as e:
            log.error("Cannot keep the advert counter in %s: %s; a restart with the clock behind "
                      "would be dropped as replays", self.store.directory, e.strerror or e)
            return
        session.counters.reserved = upto


REPAIRS_MAX = 20  # rungs of the repaired marks: 2^63, then halfway to 2^64 each time


def repair_counter(store: MaintenanceStore, instance: str, now: float) -> str:
    """Strict mode: replace an unreadable counter mark by one above every counter this
    instance can have sent, without the lost value. A run's counters start above the wall clock
    in µs (< 2^62 until the year 148,000) and above the mark, which is reserved at most 2^32
    ahead: below 2^63 they stay for 2^30 restarts or 2^62 adverts. So the first repair sets
    2^63; each later one (the earlier ones are kept as ``.counter.repaired-*``, never deleted)
    halfway to 2^64 from the last: 2^63 + 2^62, ... Rung r leaves 2^(62-r) counters below the
    next: at the last (r = 19) 2^43, 2048 restarts (each reserves 2^32) or 1100 years of adverts
    at 4 ms. The rung is the count of kept files or the highest rung their names record, so
    keep them: deleting them would put the next repair below counters already sent. Raises
    StateError if the mark is readable or no rung is left."""
    path = store.path(instance, ".counter")
    try:
        mark = store.counter_mark(instance)
    except StateError:
        pass
    else:
        raise StateError(f"{path}: nothing to repair (" + (
            f"a readable mark, {mark})" if mark is not None else "no mark: the first start "
            "makes one)"))
    kept = list(store.directory.glob(f"{path.name}.repaired-*"))
    named = [int(n) + 1 for p in kept if (n := p.name.rpartition("-")[2]).isdigit()]
    rung = max([len(kept), *named])
    if rung >= REPAIRS_MAX:
        raise StateError(f"{path}: repaired {rung} times, no room left above: restart every "
                         "peer's agent with this mark deleted (they forget our counters)")
    upto = (1 << 64) - (1 << (63 - rung))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    with open(path, "rb") as corrupt:  # kept: the evidence, and the count of repairs
        store._write(path.with_name(f"{path.name}.repaired-{stamp}-{rung}"),
                     corrupt.read(MAX_RECORD_BYTES).decode(errors="replace"))
    store.reserve_counter(instance, upto)
    return f"{instance}: counter mark set to {upto} (repair {rung + 1}; was unreadable)"
