"""The pull's pieces without a network: rsync's argv and environment, its itemized output read
back, and the displaced files judged against the manifest (real files in a temporary dir)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from sidecar.replica.displaced import after_pull, settle
from sidecar.replica.manifest import Manifest, Stamp
from sidecar.replica.puller import _names
from sidecar.replica.rsync import (
    Itemized,
    child_environment,
    error_summary,
    pull_argv,
    source_url,
)


def test_argv_is_the_documented_pull_with_the_secret_only_as_a_file() -> None:
    argv = pull_argv(source_url(IPv4Address("10.0.0.2"), 8873, "v7-web"), Path("/srv/www"),
                     "123", Path("/run/carp-sync-x/rsync.pass"))
    assert argv == [
        "rsync", "-a", "--delete", "--delay-updates", "--safe-links", "--numeric-ids",
        "--exclude=/.carp-sync/", "--backup",
        "--backup-dir=/srv/www/.carp-sync/displaced/123",
        "--password-file=/run/carp-sync-x/rsync.pass", "--timeout=10", "--contimeout=5",
        "--stats", "--out-format=%i %n%L", "rsync://carp@10.0.0.2:8873/v7-web/", "/srv/www/"]


def test_an_ipv6_master_is_bracketed_in_the_url() -> None:
    assert source_url(IPv6Address("fd00::2"), 873, "v1-1") == "rsync://carp@[fd00::2]:873/v1-1/"


def test_the_child_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARP_PASS", "hunter2")
    monkeypatch.setenv("RSYNC_PASSWORD", "hunter2")
    env = child_environment()
    assert set(env) == {"PATH", "LANG"} and env["LANG"] == "C"


def _fed(*lines: bytes) -> Itemized:
    items = Itemized()
    for line in lines:
        items.feed(line + b"\n")
    return items


def test_itemized_lines_give_received_and_deleted_paths() -> None:
    items = _fed(b"*deleting   sub/b", b"*deleting   sub/", b".d..t...... ./",
                 b">f.st...... a", b">f+++++++++ new\\#012line", b">f.st...... we ird",
                 b"cd+++++++++ sub2/", b">f+++++++++ sub2/c", b"cL+++++++++ lnk -> sub/b",
                 b"", b"Number of files: 8 (reg: 3, dir: 2, link: 3)",
                 b"Total bytes sent: 126", b"Total bytes received: 1,234,567",
                 b"sent 126 bytes  received 350 bytes  952.00 bytes/sec")
    assert items.deleted == ["sub/b", "sub"]
    assert items.received == ["a", "new\nline", "we ird", "sub2/c", "lnk"]
    assert items.bytes_received == 1234567


def test_non_ascii_names_come_back_as_the_bytes_on_disk() -> None:
    items = _fed(b">f+++++++++ caf\\#303\\#251.txt", b">f+++++++++ raw\\#377")
    assert items.received == ["café.txt", os.fsdecode(b"raw\xff")]


def test_lines_that_are_not_items_are_ignored() -> None:
    items = _fed(b"created directory /srv/www", b'ignoring unsafe symlink "x" -> "/etc"',
                 b"skipping non-regular file \"fifo\"", b"total size is 36  speedup is 0.08")
    assert items.received == [] and items.deleted == [] and items.bytes_received == 0


def test_error_summary_is_rsyncs_own_line() -> None:
    stderr = (b"rsync: [receiver] write failed on \"/srv/www/big\": No space left on device (28)\n"
              b"rsync error: error in file IO (code 11) at receiver.c(381) [receiver=3.2.7]\n")
    assert error_summary(stderr).startswith("rsync: [receiver] write failed")
    assert error_summary(b"@ERROR: auth failed on module v1-1\n") == \
        "@ERROR: auth failed on module v1-1"
    assert error_summary(b"") == ""


# ---- displaced ----
def _write(path: Path, text: str, mtime_ns: int = 1_700_000_000_000_000_000) -> Stamp:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return Stamp.of(path.lstat())


def test_agreed_files_go_and_the_others_are_conflicts_never_overwritten(tmp_path: Path) -> None:
    man = Manifest(tmp_path)
    run = tmp_path / ".carp-sync/displaced/1"
    agreed = _write(run / "agreed.txt", "old")
    _write(run / "dir/edited.txt", "mine")
    man.update([("agreed.txt", agreed), ("dir/edited.txt", Stamp(99, 1))])
    _write(run / "local-only.txt", "only here")
    _write(tmp_path / ".carp-sync/conflicts/7/local-only.txt", "an earlier conflict")
    settled = settle(tmp_path, man, 7, first_sync=False)
    assert settled.agreed == 1
    assert sorted(settled.conflicts) == ["dir/edited.txt", "local-only.txt"]
    kept = tmp_path / ".carp-sync/conflicts/7"
    assert (kept / "dir/edited.txt").read_text() == "mine"
    assert (kept / "local-only.txt").read_text() == "an earlier conflict"
    assert (kept / "local-only.txt.1").read_text() == "only here"
    assert not run.exists()
    assert (tmp_path / ".carp-sync").stat().st_mode & 0o777 == 0o700


def test_before_the_first_sync_leftovers_are_set_aside_not_conflicts(tmp_path: Path) -> None:
    man = Manifest(tmp_path)
    _write(tmp_path / ".carp-sync/displaced/1/index.html", "what was here")
    settled = settle(tmp_path, man, 3, first_sync=True)
    assert settled.conflicts == [] and settled.set_aside == ["index.html"]
    assert (tmp_path / ".carp-sync/before-first-sync/index.html").read_text() == "what was here"


def test_a_run_left_by_a_crash_is_settled_too(tmp_path: Path) -> None:
    man = Manifest(tmp_path)
    _write(tmp_path / ".carp-sync/displaced/1/a", "crash")
    _write(tmp_path / ".carp-sync/displaced/2/b", "now")
    settled = settle(tmp_path, man, 4, first_sync=False)
    assert sorted(settled.conflicts) == ["a", "b"]
    assert list((tmp_path / ".carp-sync/displaced").iterdir()) == []


def test_the_manifest_follows_a_pull_and_a_failed_one_records_only_deletions(
        tmp_path: Path) -> None:
    new = _write(tmp_path / "new.txt", "received")
    with_gone = Itemized(received=["new.txt"], deleted=["gone"])
    man = Manifest(tmp_path)
    man.update([("gone/x", Stamp(1, 1)), ("kept", Stamp(2, 2))])
    man.close()
    after_pull(tmp_path, Itemized(received=["new.txt"], deleted=["kept"]), False, 1, False)
    man = Manifest(tmp_path)
    assert man.get("kept") is None and man.get("new.txt") is None
    man.close()
    after_pull(tmp_path, with_gone, True, 1, False)
    man = Manifest(tmp_path)
    assert man.get("new.txt") == new and man.get("gone/x") is None


def test_a_conflict_log_names_twenty_files_then_counts_the_rest() -> None:
    assert _names(["a", "b"]) == "a, b"
    many = _names([f"f{i}" for i in range(25)])
    assert many.startswith("f0, f1,") and many.endswith("f19 and 5 more")


def test_a_sweep_after_a_good_pull_removes_rsyncs_holding_folders_only(tmp_path: Path) -> None:
    _write(tmp_path / ".~tmp~/partial", "half")
    _write(tmp_path / "d/.~tmp~/partial", "half")
    _write(tmp_path / "d/kept.txt", "whole")
    _write(tmp_path / ".carp-sync/conflicts/1/.~tmp~/x", "a conflict is never swept")
    after_pull(tmp_path, Itemized(), True, 1, False, sweep=False)
    assert (tmp_path / ".~tmp~/partial").exists()
    after_pull(tmp_path, Itemized(), True, 1, False, sweep=True)
    assert not (tmp_path / ".~tmp~").exists() and not (tmp_path / "d/.~tmp~").exists()
    assert (tmp_path / "d/kept.txt").exists()
    assert (tmp_path / ".carp-sync/conflicts/1/.~tmp~/x").exists()
