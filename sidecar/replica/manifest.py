"""What a node knows its group agrees on, per replicated path: ``relative path -> (size,
mtime)``, in ``<path>/.carp-sync/manifest.db`` (SQLite, beside the data it describes).

A backup records each file as it receives it; a master records a file once every backup has
confirmed a pull that started after the file's last change. A file that a pull would overwrite
or delete and that does *not* match its entry was written here and never reached the group:
it is a conflict and is kept aside, never lost (:mod:`sidecar.replica.displaced`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PRIVATE = ".carp-sync"  # inside every replicated path: excluded from replication, mode 0700
SYNCED = "synced"  # in PRIVATE: this path has been pulled whole, or served, at least once


@dataclass(frozen=True, slots=True)
class Stamp:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns)


def stamp(path: Path) -> Stamp | None:
    """The file's stamp, or None when it is gone (or not a regular file or symlink)."""
    try:
        return Stamp.of(path.lstat())
    except FileNotFoundError:
        return None


def private_dir(root: Path) -> Path:
    """``<root>/.carp-sync``, created 0700 (the web server must not serve what is in it)."""
    d = root / PRIVATE
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    return d


class Manifest:
    """Keys are the names' bytes (``os.fsencode``): any name the file system allows, UTF-8 or
    not (rsync's ``\\#351`` unescapes to a surrogate that SQLite text cannot hold). A BLOB
    key also orders by plain bytes, so a folder's subtree is one range of the primary key.
    The connection may be used from any thread, one at a time (the caller's discipline)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._db = sqlite3.connect(private_dir(root) / "manifest.db", isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        if self._db.execute("PRAGMA user_version").fetchone()[0] < 1:
            self._bytes_keys()

    def _bytes_keys(self) -> None:
        """Version 1: BLOB keys in a table clustered on them (version 0 kept text keys, all
        UTF-8: their bytes are the same names)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("CREATE TABLE IF NOT EXISTS stamps (path BLOB PRIMARY KEY, "
                             "size INTEGER, mtime_ns INTEGER) WITHOUT ROWID")
            old = self._db.execute("SELECT 1 FROM sqlite_master WHERE name='files'").fetchone()
            if old is not None:
                self._db.execute("INSERT OR REPLACE INTO stamps "
                                 "SELECT CAST(path AS BLOB), size, mtime_ns FROM files")
                self._db.execute("DROP TABLE files")
            self._db.execute("PRAGMA user_version=1")

    def get(self, rel: str) -> Stamp | None:
        row = self._db.execute("SELECT size, mtime_ns FROM stamps WHERE path=?",
                               (_key(rel),)).fetchone()
        return None if row is None else Stamp(row[0], row[1])

    def update(self, entries: Iterable[tuple[str, Stamp | None]]) -> None:
        """Record each file's stamp (None: the file is gone, and all under it when it was a
        folder). One transaction; sqlite3.Error (a full disk) leaves the manifest as it was."""
        with self._db:
            self._db.execute("BEGIN")
            for rel, st in entries:
                key = _key(rel)
                if st is None:
                    # two statements, each a primary-key lookup (an OR of them, or a LIKE,
                    # scans the table: seconds per thousand deletes over 100k files)
                    self._db.execute("DELETE FROM stamps WHERE path=?", (key,))
                    self._db.execute("DELETE FROM stamps WHERE path>=? AND path<?",
                                     (key + b"/", key + b"0"))  # "0" is "/" + 1
                else:
                    self._db.execute("INSERT OR REPLACE INTO stamps VALUES (?, ?, ?)",
                                     (key, st.size, st.mtime_ns))

    def replace_all(self, entries: Iterable[tuple[str, Stamp]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM stamps")
            self._db.executemany("INSERT OR REPLACE INTO stamps VALUES (?, ?, ?)",
                                 ((_key(rel), st.size, st.mtime_ns) for rel, st in entries))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM stamps").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()


def walk(root: Path) -> Iterable[tuple[str, Stamp]]:
    """Every file and symlink under ``root`` but the private folder, relative, with stamps."""
    for top, dirs, files in os.walk(root):
        if top == str(root):
            dirs[:] = [d for d in dirs if d != PRIVATE]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            full = os.path.join(top, name)
            try:
                yield os.path.relpath(full, root), Stamp.of(os.lstat(full))
            except FileNotFoundError:
                continue


def _key(rel: str) -> bytes:
    """The name's bytes, as the file system holds them (a surrogate-escaped str included)."""
    return os.fsencode(rel.rstrip("/"))
