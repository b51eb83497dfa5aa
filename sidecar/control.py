"""Maintenance control over a Unix socket: ``demote``, ``promote``, ``status``.

The socket is created mode 0600 in a root-owned directory, so only root (or the agent's own
user) can drain a node: the filesystem is the authentication. One line in, one line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

COMMANDS = ("demote", "promote", "status")


def socket_path(settings: Settings | None) -> Path:
    if settings is not None and settings.control_socket is not None:
        return settings.control_socket
    if settings is None:
        raise OSError("no control socket: set CARP_CONTROL_SOCKET (or the agent's CARP_* "
                      "variables), or pass --socket")
    # the same vhid may run on two interfaces (two broadcast domains): both name the socket
    return Path(f"/run/carp-sidecar/{settings.interface}-vhid{settings.vhid}.sock")


class ControlServer:
    def __init__(self, path: Path, handle: Callable[[str], str]) -> None:
        self.path, self._handle = path, handle
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _listening(self.path):
            raise FileExistsError(f"another agent is listening on {self.path}")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an agent that died
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            command = line.decode(errors="replace").strip()
            reply = self._handle(command) if command in COMMANDS else f"error: unknown {command!r}"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def send_command(path: Path, command: str, timeout: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise OSError(f"no agent listening on {path} (is it running? CARP_CONTROL_SOCKET?)") from None
        s.sendall(command.encode() + b"\n")
        reply = s.makefile().readline().strip()
    if reply.startswith("error:"):
        raise OSError(reply)
    return reply
