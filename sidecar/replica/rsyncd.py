"""The rsync daemon side of the sync port: its private config, and one ``rsync --daemon`` per
accepted rsync connection, in inetd mode (the socket is its stdin and stdout).

The agent owns the listener (one port for the watch channel and rsync, the address check done
before rsync sees a byte), so rsync never listens itself. Each module is read-only, unlisted,
authenticated with the sync secret, limited to its VHID's group (``hosts allow``), never serves
the private ``.carp-sync/`` folder, and refuses the options that would make it follow symlinks
(``--copy-links`` and friends): a symlink is sent as a symlink, and the backup's
``--safe-links`` drops those that leave the tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from sidecar.replica.rsync import Spawn
from sidecar.replica.secret import USER

log = logging.getLogger("carp-sidecar")

RSYNC = "rsync"
# Options that make the sender follow symlinks (and so read outside the module) are refused.
REFUSED = "copy-links copy-dirlinks copy-unsafe-links keep-dirlinks"


@dataclass(frozen=True, slots=True)
class Module:
    vhid: int
    name: str
    path: Path
    hosts_allow: tuple[IPv4Network | IPv6Network, ...]

    @property
    def label(self) -> str:
        return module_name(self.vhid, self.name)


def module_name(vhid: int, name: str) -> str:
    return f"v{vhid}-{name}"


def render_config(modules: list[Module], secrets_file: Path, uid: int, gid: int) -> str:
    """rsyncd.conf text. A module with no allowed network gets ``hosts allow`` of nothing
    routable (rsync reads an empty list as "everyone")."""
    head = [
        "# written by carp-sidecar: rewritten whenever the served VHIDs change",
        f"uid = {uid}", f"gid = {gid}", "use chroot = no", "reverse lookup = no",
        "numeric ids = yes", "read only = yes", "list = no", "strict modes = yes",
        f"auth users = {USER}", f"secrets file = {secrets_file}", "exclude = /.carp-sync/",
        f"refuse options = {REFUSED}", "timeout = 60", "transfer logging = no", "",
    ]
    body: list[str] = []
    for m in sorted(modules, key=lambda m: (m.vhid, m.name)):
        allow = " ".join(str(n) for n in m.hosts_allow) or "0.0.0.0/32"
        body += [f"[{m.label}]", f"    path = {m.path}", f"    hosts allow = {allow}",
                 "    hosts deny = *", ""]
    return "\n".join(head + body)


def write_atomically(path: Path, text: str) -> None:
    """The daemon may be reading the old file right now: a rename replaces it whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Daemons:
    """The running ``rsync --daemon`` processes, one per rsync connection."""

    def __init__(self, config: Path, spawn: Spawn | None = None) -> None:
        self.config = config
        # the agent's spawn: as PID 1 its reaper must not collect a daemon asyncio waits for
        self._spawn: Spawn = spawn or asyncio.create_subprocess_exec
        self._procs: set[asyncio.subprocess.Process] = set()

    @property
    def running(self) -> int:
        return len(self._procs)

    async def spawn(self, sock: socket.socket) -> None:
        """Hand ``sock`` to a new daemon (this process's copy of it closed) and wait for it
        to end (killed if this is cancelled)."""
        try:
            sock.setblocking(True)  # the daemon shares the file status flags
            proc = await self._spawn(
                RSYNC, "--daemon", f"--config={self.config}", stdin=sock.fileno(),
                stdout=sock.fileno(), stderr=asyncio.subprocess.DEVNULL, env=_child_env(),
                start_new_session=True)
        except OSError as e:
            log.error("sync: cannot start rsync --daemon (%s)", e.strerror or e)
            return
        finally:
            sock.close()
        self._procs.add(proc)
        try:
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
            self._procs.discard(proc)

    def kill_all(self) -> int:
        """Kill every running daemon (a module no longer served must stop sending now; a
        backup's pull of a module still served fails and is retried). How many were killed."""
        killed = 0
        for proc in list(self._procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                    killed += 1
        return killed

    async def close(self) -> None:
        self.kill_all()
        procs = list(self._procs)
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=2.0)

    def __len__(self) -> int:
        return sum(1 for p in self._procs if p.returncode is None)


def _child_env() -> dict[str, str]:
    """Nothing of the agent's environment (it may hold CARP_PASS): only what rsync needs."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
