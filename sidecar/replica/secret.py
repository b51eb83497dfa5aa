"""The sync secret's private copies: rsync reads a password file, its daemon a secrets file,
and both refuse files others can read, which a Docker or Kubernetes secret usually is. The
copies live in a 0700 directory of their own (on /run when it is writable: never on the data
disk), made at start and removed at stop. The secret is never in argv or an environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sidecar.config.sync import read_sync_secret

USER = "carp"  # the rsync daemon's auth user (the secret is what authenticates)


class Secrets:
    def __init__(self, secret: bytes) -> None:
        base = "/run" if os.access("/run", os.W_OK) else None
        self.dir = Path(tempfile.mkdtemp(prefix="carp-sync-", dir=base))
        self.secret = secret
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


def read_secret(path: Path) -> bytes:
    """The start-up check's own rule (one rule): ValueError naming CARP_SYNC_SECRET_FILE, never
    showing the secret."""
    return read_sync_secret(path)
