"""One rsync pull from the master's daemon: its argv, its run, what it did.

The argv is fixed (docs/sync.md): ``--delay-updates`` so Apache never reads a half-written file
(each file lands under a temporary name and all are renamed at the end), ``--safe-links`` so no
symlink that leaves the tree is created, ``--backup --backup-dir`` so every file the pull
overwrites or deletes is kept aside for :mod:`sidecar.replica.displaced` to judge. The secret is
read by rsync from the private password file: never in argv, never in the child's environment,
which is a minimal one (``PATH``, ``LANG=C``: the agent's ``CARP_*`` stay with the agent).

What the pull did comes from ``--out-format='%i %n%L'`` (one itemized line per change) and
``--stats`` (``Total bytes received``). A run is killable: cancelling it sends SIGTERM to the
rsync process group (the client forks a receiver), then SIGKILL after :data:`KILL_GRACE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from sidecar.replica.manifest import PRIVATE
from sidecar.replica.secret import USER

IO_TIMEOUT = 10  # s without data: a master that vanished mid-transfer ends the run
CONNECT_TIMEOUT = 5  # s to reach the daemon
KILL_GRACE = 1.0  # s between SIGTERM and SIGKILL
STDERR_KEEP = 4000  # bytes of rsync's stderr kept for the log
OK_CODES = (0, 24)  # 24: files vanished on the master during the pull (it moved on: a re-run
# follows, and the generation confirmed is the one seen when the run started)
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]

# ``%i`` is 11 characters: update type, file type, 9 attribute flags (rsync(1), --itemize-changes)
_ITEM = re.compile(rb"^([<>ch.])([fdLDS])[.+ ?a-zA-Z]{9} (.+)$")
_DELETING = re.compile(rb"^\*deleting +(.+)$")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")  # rsync prints unprintable bytes as \#ooo
_RECEIVED_BYTES = re.compile(rb"^Total bytes received: ([0-9,.]+)")


def module_name(vhid: int, name: str) -> str:
    return f"v{vhid}-{name}"


def source_url(master: IPv4Address | IPv6Address, port: int, module: str) -> str:
    host = f"[{master}]" if master.version == 6 else str(master)
    return f"rsync://{USER}@{host}:{port}/{module}/"


def displaced_dir(root: Path, run: str) -> Path:
    return root / PRIVATE / "displaced" / run


def pull_argv(source: str, root: Path, run: str, password_file: Path) -> list[str]:
    return ["rsync", "-a", "--delete", "--delay-updates", "--safe-links", "--numeric-ids",
            f"--exclude=/{PRIVATE}/", "--backup", f"--backup-dir={displaced_dir(root, run)}",
            f"--password-file={password_file}", f"--timeout={IO_TIMEOUT}",
            f"--contimeout={CONNECT_TIMEOUT}", "--stats", "--out-format=%i %n%L",
            source, f"{root}/"]


def child_environment() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}


@dataclass(slots=True)
class Itemized:
    """What a pull did, from its stdout: paths relative to the replicated path."""
    received: list[str] = field(default_factory=list)  # files, symlinks, devices created/updated
    deleted: list[str] = field(default_factory=list)
    bytes_received: int = 0

    def feed(self, line: bytes) -> None:
        line = line.rstrip(b"\n")
        if m := _DELETING.match(line):
            self.deleted.append(_unescape(m.group(1)).rstrip("/"))
        elif m := _ITEM.match(line):
            name = m.group(3)
            if m.group(2) == b"L":  # %L: " -> target"
                name = name.split(b" -> ", 1)[0]
            if m.group(2) != b"d":
                self.received.append(_unescape(name))
        elif m := _RECEIVED_BYTES.match(line):
            self.bytes_received = int(re.sub(rb"[^0-9]", b"", m.group(1)))


def _unescape(name: bytes) -> str:
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), name)
    return os.fsdecode(raw)


@dataclass(frozen=True, slots=True)
class RsyncResult:
    ok: bool
    returncode: int | None  # None: rsync could not be started
    items: Itemized
    error: str  # rsync's own words (stderr, trimmed), "" when it succeeded


def error_summary(stderr: bytes) -> str:
    """The line that says what went wrong: rsync's first ``@ERROR``/``rsync:`` line, else the
    last one; at most 300 characters."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    chosen = next((ln for ln in lines if ln.startswith(("@ERROR", "rsync:"))),
                  lines[-1] if lines else "")
    return chosen[:300]


async def run_rsync(argv: list[str], spawn: Spawn | None = None) -> RsyncResult:
    """Run one pull to its end. Cancelled: the rsync group is killed (TERM, then KILL) and
    reaped before the cancellation goes on. ``spawn`` is the agent's (its reaper must leave
    rsync to asyncio when the agent is PID 1); ``asyncio.create_subprocess_exec`` otherwise."""
    start: Any = spawn or asyncio.create_subprocess_exec
    items = Itemized()
    try:
        proc = await start(*argv, stdin=asyncio.subprocess.DEVNULL,
                           stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                           env=child_environment(), start_new_session=True)
    except OSError as e:
        return RsyncResult(False, None, items, f"cannot start rsync: {e.strerror}")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        _, stderr, code = await asyncio.gather(_read_items(proc.stdout, items),
                                               _read_tail(proc.stderr), proc.wait())
    except asyncio.CancelledError:
        await asyncio.shield(_kill(proc))
        raise
    ok = code in OK_CODES
    return RsyncResult(ok, code, items, "" if ok else error_summary(stderr) or f"exit {code}")


async def _read_items(stream: asyncio.StreamReader, items: Itemized) -> None:
    while line := await _readline(stream):
        items.feed(line)


async def _readline(stream: asyncio.StreamReader) -> bytes:
    try:
        return await stream.readline()
    except ValueError:  # over the stream's 64 kB limit (no name is): dropped by asyncio
        return b"\n"


async def _read_tail(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(4096):
        kept = (kept + chunk)[-STDERR_KEEP:]
    return kept


async def _kill(proc: asyncio.subprocess.Process) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(KILL_GRACE):
            await proc.wait()
    except TimeoutError:
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
