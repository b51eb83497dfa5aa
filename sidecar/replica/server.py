"""The sync port on the master: one TCP listener per agent, for rsync and the watch channel.

Every accepted connection is checked first: its source address must be in a VHID group this
agent serves (else closed, ``refused("address")``). Then its first bytes are peeked, not read:
``@RSYNCD:`` hands the socket itself to an ``rsync --daemon`` in inetd mode (rsync authenticates
with the sync secret and serves the read-only modules, :mod:`sidecar.replica.rsyncd`);
``CARPSYNC`` opens the watch channel (:mod:`sidecar.core.syncwire`): the backup proves the
secret and its epoch, the master proves them back, then says each path's generation at once
and whenever it changes, and a PING each second with nothing to say. Anything else is
``refused("protocol")``. Only a VHID this node is MASTER of (a :class:`MasterSide` given to
:meth:`SyncServer.serve`) is answered; any other gets NOTMASTER, and its modules are absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets as random
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from sidecar.core import syncwire as wire
from sidecar.replica.rsync import Spawn
from sidecar.replica.rsyncd import Daemons, Module, render_config, write_atomically
from sidecar.replica.secret import Secrets
from sidecar.replica.watcher import MasterSide, Subscription

log = logging.getLogger("carp-sidecar")

Network = IPv4Network | IPv6Network
PEEK_TIMEOUT = 5.0  # s for a client's first bytes, and for each handshake line
SEND_TIMEOUT = 10.0  # s: a backup that reads nothing for this long is dropped
MAX_DAEMONS = 32  # rsync daemons at once: each connection of the group forks one
_GREETINGS = (wire.RSYNC_GREETING, wire.MAGIC.encode())


class SyncServer:
    def __init__(self, bind: IPv4Address | IPv6Address, port: int, secrets: Secrets,
                 refused: Callable[[str], None], spawn: Spawn | None = None) -> None:
        self.bind, self.port, self.secrets, self.refused = bind, port, secrets, refused
        self._sides: dict[int, MasterSide] = {}
        self._networks: dict[int, list[Network]] = {}
        self._channels: dict[int, set[asyncio.Task[None]]] = {}  # watch connections per VHID
        self._handlers: set[asyncio.Task[None]] = set()
        self._daemons = Daemons(secrets.daemon_config, spawn)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    async def start(self) -> None:
        """Listen; OSError naming the address and port when they are taken."""
        family = socket.AF_INET6 if self.bind.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(self.bind), self.port))
            sock.listen(64)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"sync port {_where(self.bind, self.port)}: {e.strerror} "
                          "(CARP_SYNC_PORT: another agent or daemon listens there?)") from e
        sock.setblocking(False)
        self._sock = sock
        self._write_config()
        self._accepting = asyncio.create_task(self._accept(sock), name="sync listener")
        log.info("sync: listening on %s", _where(self.bind, self.port))

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._daemons.close()

    def serve(self, side: MasterSide) -> None:
        """Serve ``side``'s VHID (it replaces the one served before: that one's watch
        connections are closed, so the backups reconnect and learn the new epoch)."""
        old = self._sides.get(side.vhid)
        self._sides[side.vhid] = side
        if old is not None and old is not side:
            self._close_channels(side.vhid)
            if old.paths != side.paths:
                self._daemons.kill_all()
        self._write_config()

    def unserve(self, vhid: int) -> None:
        """Stop serving ``vhid``: its watch connections are closed and every running rsync
        daemon is killed (a daemon does not say which module it serves; the backups of the
        VHIDs still served retry their pull), and its modules leave the config."""
        if self._sides.pop(vhid, None) is None:
            return
        self._close_channels(vhid)
        self._daemons.kill_all()
        self._write_config()

    def allow(self, vhid: int, networks: list[Network]) -> None:
        """The addresses of ``vhid``'s group (connections already open are not re-checked)."""
        self._networks[vhid] = list(networks)
        self._write_config()

    @property
    def daemons(self) -> int:
        """rsync daemons running now."""
        return len(self._daemons)

    def _write_config(self) -> None:
        modules = [Module(vhid, name, path, tuple(self._networks.get(vhid, ())))
                   for vhid, side in self._sides.items() for name, path in side.paths.items()]
        text = render_config(modules, self.secrets.secrets_file, os.getuid(), os.getgid())
        write_atomically(self.secrets.daemon_config, text)

    def _close_channels(self, vhid: int) -> None:
        for task in self._channels.pop(vhid, set()):
            task.cancel()

    def _allowed(self, peer: IPv4Address | IPv6Address, vhid: int | None = None) -> bool:
        nets = self._networks.items()
        return any(peer in n for v, group in nets if vhid in (None, v) for n in group)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as e:  # out of file descriptors: let some close
                log.error("sync: accept failed (%s)", e.strerror or e)
                await asyncio.sleep(0.5)
                continue
            task = asyncio.create_task(self._handle(conn, addr), name=f"sync {addr[0]}")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        peer = ip_address(addr[0].split("%", 1)[0])
        try:
            if not self._allowed(peer):
                self.refused("address")
                log.warning("sync: refused %s (not in a group this node serves)", addr[0])
                return
            head = await _peek(conn)
            if head == wire.RSYNC_GREETING:
                if self._daemons.running >= MAX_DAEMONS:
                    self.refused("busy")
                    log.warning("sync: refused %s (%d rsync daemons running already)", addr[0],
                                MAX_DAEMONS)
                    return
                await self._daemons.spawn(conn)
            elif head == wire.MAGIC.encode():
                await self._channel(conn, peer, f"{addr[0]}:{addr[1]}#{next(self._ids)}")
            else:
                self.refused("protocol")
                log.warning("sync: refused %s (neither rsync nor the watch channel)", addr[0])
        except OSError as e:
            log.info("sync: connection from %s ended (%s)", addr[0], e.strerror or e)
        finally:
            conn.close()

    async def _channel(self, conn: socket.socket, peer: IPv4Address | IPv6Address,
                       client_id: str) -> None:
        with contextlib.suppress(OSError):  # dead backups are found by unacked PINGs
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(SEND_TIMEOUT * 1e3))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # GEN goes out now
        reader, writer = await asyncio.open_connection(sock=conn, limit=2 * wire.MAX_LINE)
        try:
            side = await self._handshake(reader, writer, peer)
            if side is not None:
                await _session(reader, writer, side, client_id, self._sides)
        finally:
            writer.close()  # after what was written (NOTMASTER, DENIED) is sent
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: IPv4Address | IPv6Address) -> MasterSide | None:
        """HELLO, CHALLENGE, AUTH, OK: the side to announce, or None (refused and answered)."""
        try:
            hello = wire.parse_hello(await _line(reader))
            side = self._sides.get(hello.vhid)
            if side is None:
                self._refuse(writer, "not_master", wire.NOTMASTER)
                return None
            if not self._allowed(peer, hello.vhid):
                self._refuse(writer, "address", wire.denied("address"))
                return None
            self._channel_of(hello.vhid)
            nonce = random.token_hex(wire.NONCE_HEX // 2)
            writer.write(wire.challenge(nonce))
            epoch, proof = wire.parse_auth(await _line(reader))
        except (wire.WireError, ValueError, TimeoutError, EOFError) as e:
            log.info("sync: watch channel from %s refused (%s)", peer, e or "no line")
            self._refuse(writer, "protocol", None)
            return None
        expected = wire.client_proof(self.secrets.secret, side.vhid, nonce, hello.nonce, epoch)
        if not wire.proven(expected, proof):
            log.warning("sync: %s failed the sync secret's proof (VHID %d)", peer, side.vhid)
            self._refuse(writer, "auth", wire.denied("auth"))
            return None
        if epoch > side.epoch:
            log.warning("sync: backup %s holds epoch %d, above this master's %d (VHID %d)",
                        peer, epoch, side.epoch, side.vhid)
            side.on_higher_epoch(epoch)
            self._refuse(writer, "epoch", wire.denied("epoch"))  # void its agreements: see Puller
            return None
        if side.void is not None and side.void[0] <= epoch <= side.void[1]:
            log.warning("sync: backup %s holds epoch %d, of the line that lost (VHID %d)",
                        peer, epoch, side.vhid)
            self._refuse(writer, "epoch", wire.denied("epoch"))
            return None
        mine = wire.server_proof(self.secrets.secret, side.vhid, hello.nonce, nonce, side.epoch)
        writer.write(wire.ok(side.epoch, mine))
        return side

    def _refuse(self, writer: asyncio.StreamWriter, reason: str, answer: bytes | None) -> None:
        self.refused(reason)
        if answer is not None:
            writer.write(answer)

    def _channel_of(self, vhid: int) -> None:
        """Count the running task among ``vhid``'s watch connections (closed with it)."""
        task = asyncio.current_task()
        if task is not None:
            tasks = self._channels.setdefault(vhid, set())
            tasks.add(task)  # type: ignore[arg-type,unused-ignore]
            task.add_done_callback(tasks.discard)


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   side: MasterSide, client_id: str, served: dict[int, MasterSide]) -> None:
    """After OK: GEN and PING out, SYNCED in, until either side stops."""
    sub = side.subscribe()
    side.connect(client_id)
    reading = asyncio.create_task(_synced_lines(reader, side, client_id))
    announcing = asyncio.create_task(_announce(writer, side, sub))
    try:
        await asyncio.wait({reading, announcing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reading, announcing):
            task.cancel()
        await asyncio.gather(reading, announcing, return_exceptions=True)
        side.unsubscribe(sub)
        if served.get(side.vhid) is side:  # a replaced side is closed: nothing to forget
            side.forget(client_id)


async def _announce(writer: asyncio.StreamWriter, side: MasterSide,
                    sub: Subscription) -> None:
    names = set(side.paths)
    while True:
        for name in sorted(names):
            writer.write(wire.gen(name, side.generation(name)))
        if not names:
            writer.write(wire.PING)
        async with asyncio.timeout(SEND_TIMEOUT):
            await writer.drain()
        names = await sub.wait(wire.PING_INTERVAL)


async def _synced_lines(reader: asyncio.StreamReader, side: MasterSide, client_id: str) -> None:
    """A backup's confirmations; a line that is not one ends the connection."""
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            synced = wire.parse_synced(line)
            side.confirm(client_id, synced.name, synced.gen)
        except (wire.WireError, KeyError) as e:
            log.info("sync: backup %s sent a bad line (%s): closing", client_id, e)
            return


async def _line(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(PEEK_TIMEOUT):
        line = await reader.readline()
    if not line.endswith(b"\n"):
        raise EOFError("connection closed")
    return line


async def _peek(conn: socket.socket) -> bytes:
    """Up to 8 bytes of what the client sent, left in the socket (rsync must read them)."""
    conn.setblocking(False)
    deadline = time.monotonic() + PEEK_TIMEOUT
    loop = asyncio.get_running_loop()
    head = b""
    while time.monotonic() < deadline:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _resolve, readable)
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await readable
        except TimeoutError:
            break
        finally:
            loop.remove_reader(conn.fileno())
        head = conn.recv(8, socket.MSG_PEEK)
        if len(head) == 8 or not head or not any(g.startswith(head) for g in _GREETINGS):
            break
        await asyncio.sleep(0.02)  # part of a greeting: the rest is on its way
    return head


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _where(addr: IPv4Address | IPv6Address, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
