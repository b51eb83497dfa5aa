"""The agent's address writer: RTM_NEWADDR and RTM_DELADDR in bursts, on an event loop.

255 VHIDs becoming MASTER in the same instant add 255 addresses. pyroute2 answers a second
request on a busy socket with EBUSY, so they went one at a time (~2 ms each, the last VIP
~0.5 s after the first). :class:`AddressWriter` sends every request made in one turn of the
event loop in a single ``send`` (the kernel handles each message of it in turn, acknowledging
each) and matches the acknowledgements by sequence number. The messages are
sidecar.net.rtmsg's, which also serves the callers that come before any event loop.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from sidecar.net.rtmsg import (
    HEADER,
    MAX_BURST,
    RTM_DELADDR,
    RTM_NEWADDR,
    acknowledgements,
    address_request,
    open_socket,
)

__all__ = ["RTM_DELADDR", "RTM_NEWADDR", "AddressWriter"]


class AddressWriter:
    """Address requests of one event loop, sent in bursts; each caller awaits its errno."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sock = open_socket(blocking=False)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # 255 acks at once
        self._seq = 0
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._outgoing: list[bytes] = []
        loop.add_reader(self._sock.fileno(), self._read)

    async def request(self, kind: int, index: int, address: str, prefixlen: int,
                      label: str | None = None, flags: int = 0, timeout: float = 5) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        future: asyncio.Future[int] = self._loop.create_future()
        self._pending[seq] = future
        self._outgoing.append(address_request(kind, index, address, prefixlen, seq, label,
                                              flags))
        if len(self._outgoing) == 1:  # the first of this turn: send them all at its end
            self._loop.call_soon(self._flush)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return errno.ETIMEDOUT
        finally:
            self._pending.pop(seq, None)

    def _flush(self) -> None:
        burst: list[bytes] = []
        size = 0
        for message in self._outgoing:
            if size + len(message) > MAX_BURST:
                self._send(b"".join(burst))
                burst, size = [], 0
            burst.append(message)
            size += len(message)
        self._outgoing.clear()
        if burst:
            self._send(b"".join(burst))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as e:  # nothing of the burst was taken: each request fails alike
            offset = 0
            while offset < len(data):
                length, _k, _f, seq, _p = HEADER.unpack_from(data, offset)
                future = self._pending.get(seq)
                if future is not None and not future.done():
                    future.set_result(e.errno or errno.EIO)
                offset += (length + 3) & ~3

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: acks were lost; their callers time out
                return
            for seq, code in acknowledgements(data):
                future = self._pending.get(seq)
                if future is not None and not future.done():
                    future.set_result(code)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
