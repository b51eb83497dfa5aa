"""The sync secret's private copies: rsync reads a password file, its daemon a secrets file,
and both refuse files others can read, which a Docker or Kubernetes secret usually is. The
copies live in a 0700 directory of their own (on /run when it is writable: never on the data
disk), made at start and removed at stop. The secret is never in argv or an environment.

An agent killed by SIGKILL (or a test that never stops it) cannot remove its copies: each
directory holds a ``pid`` file, and a new :class:`Secrets` first removes every one of ours
whose process is gone (or, with no pid file, that is older than :data:`ORPHAN_AGE`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

USER = "carp"  # the rsync daemon's auth user (the secret is what authenticates)
PREFIX = "carp-sync-"
ORPHAN_AGE = 3600.0  # s: a directory with no pid file (one being made has none for a moment)


class Secrets:
    def __init__(self, secret: bytes, base: Path | None = None) -> None:
        base = base or _base()
        sweep(base)
        self.dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        self.secret = secret
        self._write("pid", f"{_identity(os.getpid())} {_namespace()}".encode())
        self.password_file = self._write("rsync.pass", secret + b"\n")
        self.secrets_file = self._write("rsyncd.secrets", USER.encode() + b":" + secret + b"\n")
        self.daemon_config = self.dir / "rsyncd.conf"

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep(base: Path) -> list[Path]:
    """Remove the secret directories under ``base`` that are ours (our uid) and whose process
    is gone; the ones removed."""
    removed = []
    for d in base.glob(PREFIX + "*"):
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
                continue
            if _orphan(d, st.st_mtime):
                shutil.rmtree(d)
                removed.append(d)
        except OSError:
            continue  # gone meanwhile, or not ours to judge
    return removed


def _orphan(d: Path, mtime: float) -> bool:
    try:
        recorded = (d / "pid").read_text().split()
    except FileNotFoundError:
        return time.time() - mtime > ORPHAN_AGE
    try:
        pid = int(recorded[0])
    except (IndexError, ValueError):
        return time.time() - mtime > ORPHAN_AGE  # written in part: judged by age
    # the start time guards against a reused pid (then the process named is another one); a
    # directory of another pid namespace (a container sharing /run or /tmp) is not ours to
    # judge: its pid means nothing here
    if len(recorded) > 2 and recorded[2] != _namespace():
        return False
    return _identity(pid) != " ".join(recorded[:2])


def _identity(pid: int) -> str:
    """``<pid> <start time>`` of a running process, ``""`` when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # field 22 (starttime), counted after the command name's closing parenthesis
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


def _base() -> Path:
    return Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir())
