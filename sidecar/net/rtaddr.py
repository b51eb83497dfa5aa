"""RTM_NEWADDR and RTM_DELADDR on a plain netlink socket, standard library only.

Two callers need what pyroute2's request/response API does not give them:

- A restarted agent's first act (sidecar.net.held) is removing a killed run's VIP. pyroute2's
  import alone costs ~100 ms, and the VIP is held twice meanwhile: :func:`delete_address` is
  one request on a socket of its own.
- 255 VHIDs becoming MASTER in the same instant add 255 addresses. pyroute2 answers a second
  request on a busy socket with EBUSY, so they went one at a time (~2 ms each, the last VIP
  ~0.5 s after the first). :class:`AddressWriter` sends every request made in one turn of the
  event loop in a single ``send`` (the kernel handles each message of it in turn, acknowledging
  each) and matches the acknowledgements by sequence number.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from ipaddress import ip_address

RTM_NEWADDR, RTM_DELADDR = 20, 21
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # acknowledgements without the request echoed back
_HEADER = struct.Struct("=LHHLL")  # nlmsghdr: length, type, flags, sequence, port
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefix length, flags, scope, index
_ATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")
MAX_BURST = 32 * 1024  # bytes per send: ~500 requests


def _attr(kind: int, data: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def address_request(kind: int, index: int, address: str, prefixlen: int, seq: int,
                    label: str | None = None, flags: int = 0) -> bytes:
    """One RTM_NEWADDR (create, failing with EEXIST if present) or RTM_DELADDR message."""
    ip = ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _IFADDR.pack(family, prefixlen, flags, 0, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    if label is not None:
        body += _attr(IFA_LABEL, label.encode() + b"\0")
    create = NLM_F_CREATE | NLM_F_EXCL if kind == RTM_NEWADDR else 0
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | create,
                        seq, 0) + body


def delete_request(index: int, address: str, prefixlen: int, seq: int = 1) -> bytes:
    return address_request(RTM_DELADDR, index, address, prefixlen, seq)


def acknowledgements(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of each NLMSG_ERROR in a datagram; errno 0 is success."""
    out, offset = [], 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR and length >= _HEADER.size + _ERROR.size:
            out.append((seq, -_ERROR.unpack_from(data, offset + _HEADER.size)[0]))
        offset += (length + 3) & ~3
    return out


def _socket(blocking: bool) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
    s.setblocking(blocking)
    s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    s.bind((0, 0))
    return s


def delete_address(index: int, address: str, prefixlen: int) -> bool:
    """Remove ``address/prefixlen`` from interface ``index``: True if it was there, False if
    not (or the interface is gone); OSError for anything else (EPERM without NET_ADMIN)."""
    with _socket(blocking=True) as s:
        s.settimeout(2)
        s.send(delete_request(index, address, prefixlen))
        while True:
            for seq, code in acknowledgements(s.recv(65536)):
                if seq != 1:
                    continue
                if code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                    return False
                if code:
                    raise OSError(code, f"RTM_DELADDR {address}/{prefixlen}: "
                                  f"{errno.errorcode.get(code, code)}")
                return True


class AddressWriter:
    """Address requests of one event loop, sent in bursts; each caller awaits its errno."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sock = _socket(blocking=False)
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
                length, _k, _f, seq, _p = _HEADER.unpack_from(data, offset)
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
