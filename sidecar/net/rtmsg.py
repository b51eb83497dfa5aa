"""Netlink route messages on a plain socket, standard library only, and the requests that
need no event loop: a killed run's VIP removed, an interface found, its IPv4 addresses listed.

This module imports neither pyroute2 (~100 ms) nor asyncio (~35 ms): the two callers come
before either is needed. A restarted agent's first act is removing a killed run's VIP
(sidecar.net.held), and the VIP is held twice until it has; `check-config` lists the addresses
its host checks look at. The agent's batched writer is sidecar.net.rtaddr.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from ipaddress import IPv4Interface, IPv6Interface, ip_address

RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH: every object of the kind
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # acknowledgements without the request echoed back
HEADER = struct.Struct("=LHHLL")  # nlmsghdr: length, type, flags, sequence, port
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
    return HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | create,
                       seq, 0) + body


def delete_request(index: int, address: str, prefixlen: int, seq: int = 1) -> bytes:
    return address_request(RTM_DELADDR, index, address, prefixlen, seq)


def acknowledgements(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of each NLMSG_ERROR in a datagram; errno 0 is success."""
    out, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _port = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            break
        if kind == NLMSG_ERROR and length >= HEADER.size + _ERROR.size:
            out.append((seq, -_ERROR.unpack_from(data, offset + HEADER.size)[0]))
        offset += (length + 3) & ~3
    return out


def open_socket(blocking: bool) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
    s.setblocking(blocking)
    s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    s.bind((0, 0))
    return s


def delete_address(index: int, address: str, prefixlen: int) -> bool:
    """Remove ``address/prefixlen`` from interface ``index``: True if it was there, False if
    not (or the interface is gone); OSError for anything else (EPERM without NET_ADMIN)."""
    with open_socket(blocking=True) as s:
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


def ipv4_addresses(index: int) -> list[IPv4Interface]:
    """Interface ``index``'s IPv4 addresses (IFA_LOCAL, as the agent's netlink reads them),
    from one RTM_GETADDR dump; an interface without any, or gone, has none."""
    return [a for a in if_addresses(index, socket.AF_INET) if isinstance(a, IPv4Interface)]


def if_addresses(index: int, family: int = socket.AF_UNSPEC
                 ) -> list[IPv4Interface | IPv6Interface]:
    """Interface ``index``'s addresses of ``family`` (both by default), one RTM_GETADDR dump."""
    request = HEADER.pack(HEADER.size + _IFADDR.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP,
                          1, 0) + _IFADDR.pack(family, 0, 0, 0, 0)
    out: list[IPv4Interface | IPv6Interface] = []
    with open_socket(blocking=True) as s:
        s.settimeout(2)
        s.send(request)
        while True:
            data = s.recv(1 << 16)
            offset = 0
            while offset + HEADER.size <= len(data):
                length, kind, _flags, _seq, _port = HEADER.unpack_from(data, offset)
                if length < HEADER.size or kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = -_ERROR.unpack_from(data, offset + HEADER.size)[0]
                    raise OSError(code, f"RTM_GETADDR: {errno.errorcode.get(code, code)}")
                if kind == RTM_NEWADDR:
                    out += _address_of(data[offset + HEADER.size:offset + length], index)
                offset += (length + 3) & ~3


def _ipv4_of(message: bytes, index: int) -> list[IPv4Interface]:
    return [a for a in _address_of(message, index) if isinstance(a, IPv4Interface)]


def _address_of(message: bytes, index: int) -> list[IPv4Interface | IPv6Interface]:
    family, prefixlen, _flags, _scope, owner = _IFADDR.unpack_from(message)
    if family not in (socket.AF_INET, socket.AF_INET6) or owner != index:
        return []
    found: dict[int, bytes] = {}
    offset = _IFADDR.size
    while offset + _ATTR.size <= len(message):
        length, kind = _ATTR.unpack_from(message, offset)
        if length < _ATTR.size:
            break
        found[kind] = message[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3
    address = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)  # IPv6: IFA_ADDRESS only
    if family == socket.AF_INET:
        return [IPv4Interface((address, prefixlen))] if address and len(address) == 4 else []
    return [IPv6Interface((address, prefixlen))] if address and len(address) == 16 else []


SIOCGIFFLAGS = 0x8913
_IFREQ_FLAGS = struct.Struct("16sh14x")  # struct ifreq: the name, then ifr_flags


def interface(name: str) -> tuple[int, int] | None:
    """``name``'s (index, IFF_* flags), None if this network namespace has no such interface.
    The flags come from SIOCGIFFLAGS: the low 16 (IFF_UP, IFF_LOOPBACK, IFF_NOARP...)."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            reply = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name.encode(), 0))
        except OSError:  # gone between the two calls
            return None
    return index, _IFREQ_FLAGS.unpack(reply)[1] & 0xFFFF


SIOCGIFHWADDR = 0x8927
_IFREQ_HWADDR = struct.Struct("16sH14s")  # struct ifreq: the name, then a sockaddr


def link(name: str) -> tuple[int, int, bytes] | None:
    """``name``'s (index, IFF_* flags, MAC), None if there is no such interface. The agent's
    lookup at start and at each reload: pyroute2's RTM_GETLINK left the kernel's acknowledgement
    of each request unread in its socket's queue, ~4 KB of memory apiece, for good."""
    found = interface(name)
    if found is None:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            reply = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR,
                                _IFREQ_HWADDR.pack(name.encode(), 0, b""))
        except OSError:  # gone meanwhile
            return None
    return found[0], found[1], _IFREQ_HWADDR.unpack(reply)[2][:6]


NLM_F_REPLACE = 0x100
IFA_CACHEINFO, IFA_FLAGS = 6, 8
IFA_F_NODAD = 0x02
FOREVER = 0xFFFFFFFF
_CACHEINFO = struct.Struct("=IIII")  # ifa_cacheinfo: preferred, valid, cstamp, tstamp


def lifetime_request(index: int, address: str, prefixlen: int, seconds: int | None,
                     seq: int = 1) -> bytes:
    """RTM_NEWADDR with NLM_F_REPLACE: the address's valid and preferred lifetimes set to
    ``seconds`` (None: forever), nothing else of it changed (its label stays)."""
    ip = ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    life = FOREVER if seconds is None else max(1, min(int(seconds), FOREVER - 1))
    body = _IFADDR.pack(family, prefixlen, 0, 0, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    body += _attr(IFA_CACHEINFO, _CACHEINFO.pack(life, life, 0, 0))
    if ip.version == 6:  # a replace sets the flags anew: keep the VIP's
        body += _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))
    return HEADER.pack(HEADER.size + len(body), RTM_NEWADDR,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE, seq, 0) + body


def set_lifetimes(vips: list[tuple[int, str, int]], seconds: int | None) -> list[str]:
    """Give each (ifindex, address, prefix length) a kernel lifetime (None: forever again),
    one burst on one socket; the problems, one line each. A replace *adds* an address that is
    missing (IPv4): pass only addresses found on the interface."""
    problems: list[str] = []
    if not vips:
        return problems
    with open_socket(blocking=True) as s:
        s.settimeout(2)
        s.send(b"".join(lifetime_request(i, a, p, seconds, seq)
                        for seq, (i, a, p) in enumerate(vips, start=1)))
        pending = set(range(1, len(vips) + 1))
        while pending:
            for seq, code in acknowledgements(s.recv(65536)):
                if seq in pending:
                    pending.discard(seq)
                    if code and code not in (errno.ENODEV, errno.EADDRNOTAVAIL):
                        _i, a, p = vips[seq - 1]
                        problems.append(f"{a}/{p}: {errno.errorcode.get(code, code)}")
    return problems
