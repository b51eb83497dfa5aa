"""The manifest under load and with any name the file system allows, what a failed settle does
to a pull, the master's manifest writes off the event loop, and the secret copies of agents
that are gone (real files, real SQLite, real processes)."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.core.replica import Confirmations
from sidecar.replica.confirm import Agreement
from sidecar.replica.displaced import after_pull
from sidecar.replica.manifest import Manifest, Stamp
from sidecar.replica.puller import _after, _Path
from sidecar.replica.rsync import Itemized, RsyncResult
from sidecar.replica.secret import ORPHAN_AGE, Secrets, sweep

CAFE = os.fsdecode(b"caf\xe9")  # rsync prints it caf\#351; its unescaped str holds a surrogate


def _write(root: Path, rel: bytes, data: bytes, mtime_ns: int) -> Stamp:
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return Stamp.of(os.lstat(path))


def test_a_name_that_is_not_utf8_is_recorded_judged_and_deleted(tmp_path: Path) -> None:
    items = Itemized()
    for line in (b">f+++++++++ caf\\#351", b">f+++++++++ d\\#377/x", b"cd+++++++++ d\\#377/"):
        items.feed(line)
    assert items.received == [CAFE, os.fsdecode(b"d\xff/x")]
    first = _write(tmp_path, b"caf\xe9", b"v1", 1_000)
    _write(tmp_path, b"d\xff/x", b"x", 1_000)
    after_pull(tmp_path, items, True, 3, first_sync=False)
    man = Manifest(tmp_path)
    assert man.get(CAFE) == first and len(man) == 2
    man.close()
    # the master changes it: the copy displaced is the agreed one (discarded); a local edit
    # of the other is a conflict, kept under its own bytes
    run = tmp_path / ".carp-sync/displaced/1"
    _write(run, b"caf\xe9", b"v1", 1_000)
    _write(run, b"d\xff/x", b"edited here", 2_000)
    deleted = Itemized(deleted=[os.fsdecode(b"d\xff")])
    settled = after_pull(tmp_path, deleted, True, 3, first_sync=False)
    assert settled.agreed == 1 and settled.conflicts == [os.fsdecode(b"d\xff/x")]
    kept = Path(os.fsdecode(os.fsencode(tmp_path) + b"/.carp-sync/conflicts/3/d\xff/x"))
    assert kept.read_bytes() == b"edited here"
    man = Manifest(tmp_path)
    assert man.get(CAFE) == first and man.get(os.fsdecode(b"d\xff/x")) is None
    man.close()


def test_a_subtree_delete_is_a_key_range_not_a_scan(tmp_path: Path) -> None:
    man = Manifest(tmp_path)
    man.replace_all((f"d{i // 100}/f{i}", Stamp(i, i)) for i in range(100_000))
    man.update([("d5", Stamp(1, 1)), ("d50", Stamp(1, 1)), ("d5/", Stamp(1, 1))])
    t0 = time.perf_counter()
    man.update([(f"d{i // 100}/f{i}", None) for i in range(0, 100_000, 100)])  # 1,000 files
    man.update([("d5", None)])  # a folder: itself and all under it, not d50's
    took = time.perf_counter() - t0
    assert took < 0.5, f"{took:.2f} s"
    assert man.get("d5/f501") is None and man.get("d5") is None
    assert man.get("d50/f5001") == Stamp(5001, 5001) and man.get("d50") == Stamp(1, 1)
    assert len(man) == 100_000 + 1 - 1_000 - 99
    man.close()


def test_a_text_keyed_manifest_is_carried_over(tmp_path: Path) -> None:
    (tmp_path / ".carp-sync").mkdir()
    db = sqlite3.connect(tmp_path / ".carp-sync/manifest.db")
    db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER)")
    db.execute("INSERT INTO files VALUES ('é/a', 1, 2)")
    db.commit()
    db.close()
    man = Manifest(tmp_path)
    assert man.get("é/a") == Stamp(1, 2)
    man.update([("é", None)])
    assert len(man) == 0
    man.close()


def test_a_settle_that_raises_anything_fails_the_run_instead_of_the_task(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _Path("web", tmp_path, None, first_sync=False)
    ok = RsyncResult(True, 0, Itemized(received=["a\0b"]), "")  # lstat: ValueError
    with caplog.at_level(logging.ERROR, "carp-sidecar"):
        assert _after(p, ok, 3) is None
    assert "web" in caplog.text and "ValueError" in caplog.text


def test_the_masters_manifest_is_written_off_the_event_loop_one_job_at_a_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(200):
        (tmp_path / f"f{i}").write_text("x")
    threads: set[str] = set()

    async def go() -> Agreement:
        agreement = Agreement(tmp_path, Confirmations(0, time.time()))
        update = agreement.manifest.update

        def spy(entries: object) -> None:
            threads.add(threading.current_thread().name)
            update(entries)  # type: ignore[arg-type]
        agreement.manifest.update = spy  # type: ignore[method-assign]
        agreement.connected("b")
        agreement.changed(1, {"f0"}, time.time())
        agreement.confirm("b", 1)
        await agreement.idle()
        assert agreement.manifest.get("f199") is not None
        agreement.manifest.close()  # a broken manifest: the job logs, the loop goes on
        agreement.changed(2, {"f1"}, time.time())
        agreement.confirm("b", 2)
        await agreement.idle()
        await agreement.close()
        agreement.confirm("b", 2)  # after close: nothing scheduled, nothing raised
        return agreement
    with caplog.at_level(logging.ERROR, "carp-sidecar"):
        asyncio.run(go())
    assert threads and all(t.startswith("manifest") for t in threads)
    assert "manifest not updated" in caplog.text


def test_secret_copies_of_a_process_that_is_gone_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = tmp_path / "carp-sync-gone"
    gone.mkdir()
    (gone / "pid").write_text(f"{dead.stdout.strip()} 1")
    reused = tmp_path / "carp-sync-reused"  # our pid, another start time: a reused pid
    reused.mkdir()
    (reused / "pid").write_text(f"{os.getpid()} 1")
    old, young = tmp_path / "carp-sync-old", tmp_path / "carp-sync-young"
    old.mkdir()
    young.mkdir()  # being made by another agent: no pid file yet
    os.utime(old, (time.time() - ORPHAN_AGE - 10,) * 2)
    other = tmp_path / "unrelated"
    other.mkdir()
    os.utime(other, (time.time() - ORPHAN_AGE - 10,) * 2)
    live = Secrets(b"s", base=tmp_path)
    try:
        assert (live.dir / "pid").read_text().split()[0] == str(os.getpid())
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [live.dir.name, "carp-sync-young", "unrelated"])
        assert sweep(tmp_path) == []  # this process is alive: its copies stay
        assert live.password_file.read_bytes() == b"s\n"
    finally:
        live.remove()
    assert not live.dir.exists()


def test_secret_copies_of_another_pid_namespace_are_left_alone(tmp_path: Path) -> None:
    """A container sharing /run (or /tmp): its pid means nothing here, its agent may live."""
    foreign = tmp_path / "carp-sync-foreign"
    foreign.mkdir()
    (foreign / "pid").write_text("1 12345 pid:[1]")  # pid 1 of another namespace
    ours = tmp_path / "carp-sync-ours"
    ours.mkdir()
    (ours / "pid").write_text(f"1 12345 {os.readlink('/proc/self/ns/pid')}")  # not our pid 1
    assert sweep(tmp_path) == [ours]
    assert foreign.exists()
