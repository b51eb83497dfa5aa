"""A master's side of replication for the puller's tests, written independently of the agent's:
one port, peeked like the agent's listener does (``@RSYNCD:`` -> a real ``rsync --daemon`` in
inetd mode on the socket, with a config written here; ``CARPSYNC`` -> the watch channel spoken
line by line from :mod:`sidecar.core.syncwire`), and a way to run a coroutine inside a network
namespace (the thread enters it; the processes it starts inherit it)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from sidecar.core import syncwire as wire

CLONE_NEWNET = 0x40000000


def run_in_netns(ns: str, make: Callable[[], Coroutine[Any, Any, Any]],
                 timeout: float = 90) -> Any:
    """``asyncio.run(make())`` in a thread that has entered netns ``ns``."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["value"] = asyncio.run(asyncio.wait_for(make(), timeout))
        except BaseException as e:  # handed to the test's thread
            out["error"] = e

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


class FakeMaster:
    def __init__(self, workdir: Path, vhid: int, secret: bytes, epoch: int,
                 paths: dict[str, Path], address: str = "127.0.0.1", port: int = 0) -> None:
        self.vhid, self.secret, self.epoch, self.paths = vhid, secret, epoch, paths
        self.gens = dict.fromkeys(paths, 1)
        self.synced: list[tuple[str, int]] = []
        self.daemons: list[asyncio.subprocess.Process] = []
        self.sessions: list[asyncio.StreamWriter] = []
        self.refuse: bytes | None = None  # NOTMASTER / DENIED for every hello while set
        self.bad_proof = False
        self.auth_epochs: list[int] = []
        self.log = workdir / f"rsyncd-{address}.log"
        self.config = self._write_config(workdir, address)
        self.listener = socket.socket()
        self.listener.bind((address, port))
        self.listener.listen()
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self._tasks: set[asyncio.Task[None]] = set()

    def _write_config(self, workdir: Path, address: str) -> Path:
        secrets_file = workdir / f"rsyncd-{address}.secrets"
        fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, b"carp:" + self.secret + b"\n")
        os.close(fd)
        text = f"use chroot = no\nnumeric ids = yes\nlog file = {self.log}\n"
        for name, path in self.paths.items():
            text += (f"[v{self.vhid}-{name}]\n path = {path}\n read only = yes\n"
                     f" auth users = carp\n secrets file = {secrets_file}\n"
                     " exclude = /.carp-sync/\n uid = 0\n gid = 0\n")
        config = workdir / f"rsyncd-{address}.conf"
        config.write_text(text)
        return config

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            self._start(self._connection(conn))

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, conn: socket.socket) -> None:
        first = await _peek(conn)
        if first.startswith(wire.RSYNC_GREETING):
            conn.setblocking(True)  # the flag is the socket's, shared with the daemon
            proc = await asyncio.create_subprocess_exec(
                "rsync", "--daemon", f"--config={self.config}", stdin=conn.fileno(),
                stdout=conn.fileno(), stderr=subprocess.DEVNULL, start_new_session=True)
            conn.close()
            self.daemons.append(proc)
            await proc.wait()
            return
        reader, writer = await asyncio.open_connection(sock=conn)
        try:
            await self._watch(reader, writer)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer in self.sessions:
                self.sessions.remove(writer)
            writer.close()

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = wire.parse_hello(await reader.readline())
        if self.refuse is not None:
            writer.write(self.refuse)
            await writer.drain()
            return
        mine = secrets.token_hex(16)
        writer.write(wire.challenge(mine))
        their_epoch, proof = wire.parse_auth(await reader.readline())
        self.auth_epochs.append(their_epoch)
        expected = wire.client_proof(self.secret, self.vhid, mine, hello.nonce, their_epoch)
        if not wire.proven(expected, proof):
            writer.write(wire.denied("auth"))
            return
        ours = wire.server_proof(self.secret, self.vhid, hello.nonce, mine, self.epoch)
        writer.write(wire.ok(self.epoch, "0" * 64 if self.bad_proof else ours))
        for name, gen in self.gens.items():
            writer.write(wire.gen(name, gen))
        self.sessions.append(writer)
        pinger = asyncio.get_running_loop().create_task(self._ping(writer))
        try:
            while line := await reader.readline():
                s = wire.parse_synced(line)
                self.synced.append((s.name, s.gen))
        finally:
            pinger.cancel()

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await asyncio.sleep(wire.PING_INTERVAL)
            writer.write(wire.PING)

    def bump(self, name: str) -> int:
        """A change on the master: a new generation, told to every backup."""
        self.gens[name] += 1
        for writer in self.sessions:
            writer.write(wire.gen(name, self.gens[name]))
        return self.gens[name]

    def drop_sessions(self) -> None:
        for writer in list(self.sessions):
            writer.close()

    def kill_daemons(self) -> None:
        for proc in self.daemons:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        self.kill_daemons()
        self.drop_sessions()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proc in self.daemons:
            await proc.wait()
        self.listener.close()


async def _peek(conn: socket.socket) -> bytes:
    for _ in range(500):
        try:
            data = conn.recv(len(wire.RSYNC_GREETING), socket.MSG_PEEK)
        except BlockingIOError:
            data = b""
        if len(data) >= len(wire.RSYNC_GREETING):
            return data
        await asyncio.sleep(0.01)
    return b""
