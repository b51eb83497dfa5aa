"""One RTM_DELADDR, standard library only: what a restarted agent sends before anything else.

The agent's netlink goes through pyroute2 (sidecar.net.netlink), whose import alone costs
~100 ms; a killed master's VIP is held twice until the next run removes it, so that first
removal (sidecar.net.held) is a single request on a plain socket instead.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_address

RTM_DELADDR = 21
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFA_ADDRESS, IFA_LOCAL = 1, 2
_HEADER = struct.Struct("=LHHLL")  # nlmsghdr: length, type, flags, sequence, port
_IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefix length, flags, scope, index
_ATTR = struct.Struct("=HH")


def _attr(kind: int, data: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def delete_request(index: int, address: str, prefixlen: int, seq: int = 1) -> bytes:
    ip = ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _IFADDR.pack(family, prefixlen, 0, 0, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    return _HEADER.pack(_HEADER.size + len(body), RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK,
                        seq, 0) + body


def delete_address(index: int, address: str, prefixlen: int) -> bool:
    """Remove ``address/prefixlen`` from interface ``index``: True if it was there, False if
    not (or the interface is gone); OSError for anything else (EPERM without NET_ADMIN)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as s:
        s.settimeout(2)
        s.sendto(delete_request(index, address, prefixlen), (0, 0))
        while True:
            reply = s.recv(65536)
            _length, kind, _flags, seq, _port = _HEADER.unpack_from(reply)
            if kind == NLMSG_ERROR and seq == 1:
                code = -struct.unpack_from("=i", reply, _HEADER.size)[0]
                if code == 0:
                    return True
                if code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                    return False
                raise OSError(code, f"RTM_DELADDR {address}/{prefixlen}: {errno.errorcode.get(code, code)}")
