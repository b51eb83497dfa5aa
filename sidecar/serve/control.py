"""Maintenance control over a Unix socket: ``demote``, ``promote``, ``status``.

The socket is created mode 0600 in a root-owned directory, so only root (or the agent's own
user) can drain a node: the filesystem is the authentication. One line in, one line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

# demote, promote and status may name a vhid ("demote 2"); restart-on-stop takes seconds or off
COMMANDS = ("demote", "promote", "status", "reload", "restart", "restart-on-stop")
log = logging.getLogger("carp-sidecar")


class ControlServer:
    """Serves the control socket at ``path`` and removes only what it made.

    At start an existing path is replaced only if it is a socket nobody listens on (left by an
    agent that died); anything else (a regular file, a device, a symlink, a live agent's socket)
    is refused. At exit the path is unlinked only if it is still the very socket this process
    bound (same device and inode). :meth:`watch` re-creates the socket if someone deletes it and
    reports a path taken over by something else in :attr:`problem` instead of touching it.
    """

    def __init__(self, path: Path, handle: Callable[[str], str | Awaitable[str]]) -> None:
        self.path, self._handle = path, handle
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None
        self.problem = ""  # empty while the socket is ours and in place

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket; refusing to "
                                      "replace it")
            if listening(self.path):
                raise FileExistsError(f"another agent is listening on {self.path}")
            _unlink_if(self.path, (st.st_dev, st.st_ino))  # left by an agent that died
        await self._bind()

    async def _bind(self) -> None:
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._serve, str(self.path))
        finally:
            os.umask(old)
        if self._server is not None:
            self._server.close()
        self._server = server
        st = os.lstat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self.problem = ""

    async def watch(self, interval: float = 2.0) -> None:
        """Keep the socket in place for the agent's lifetime."""
        while True:
            await asyncio.sleep(interval)
            await self.check()

    async def check(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            log.warning("Control socket %s was removed: re-creating it", self.path)
            try:
                await self._bind()
            except OSError as e:
                self._report(f"removed and cannot be re-created: {e.strerror or e}")
            return
        except OSError as e:
            self._report(f"cannot be checked: {e.strerror or e}")
            return
        if (st.st_dev, st.st_ino) != self._identity:
            self._report("replaced by another file; left alone, demote/promote unavailable")
        elif self.problem:
            self.problem = ""

    def _report(self, problem: str) -> None:
        if problem != self.problem:
            log.error("Control socket %s %s", self.path, problem)
        self.problem = problem

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._identity is not None:
            _unlink_if(self.path, self._identity)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            command = line.decode(errors="replace").strip()
            known = command.partition(" ")[0] in COMMANDS
            reply = self._handle(command) if known else f"error: unknown {command!r}"
            if inspect.isawaitable(reply):
                reply = await reply
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass  # ValueError: a line over the stream limit
        finally:
            writer.close()


def _unlink_if(path: Path, identity: tuple[int, int]) -> None:
    """Unlink ``path`` only if it is still the socket ``identity`` names."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == identity:
            path.unlink()


def listening(path: Path) -> bool:
    """An agent accepts on ``path`` (the socket file of a killed agent refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def send_command(path: Path, command: str, timeout: float = 5.0) -> str:
    """The agent's reply (one line, or several for a reload); OSError for "error:" replies."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise OSError(f"no agent listening on {path} (is it running? CARP_CONTROL_SOCKET?)") from None
        s.sendall(command.encode() + b"\n")
        reply = s.makefile().read().strip()  # the agent closes after its reply
    if reply.startswith("error:"):
        raise OSError(reply)
    return reply
