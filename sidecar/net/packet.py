"""AF_PACKET socket for CARP on one interface: whole Ethernet frames out, IPv4 proto-112 packets in.

ucarp reads and writes through libpcap, i.e. a packet socket: adverts leave with the fixed source
MAC 00:00:5e:00:00:<vhid> and reach us whatever the IP stack thinks of their source address. We
do the same, which needs only CAP_NET_RAW. A classic BPF filter keeps everything but IPv4
protocol 112 in the kernel, so a busy web server's traffic never wakes the agent.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from ipaddress import IPv4Address

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26

# ldh [12]; jeq #0x800 else drop; ldb [23]; jeq #112 else drop; ret 65535; drop: ret 0
_CARP_FILTER = [
    (0x28, 0, 0, 12),
    (0x15, 0, 3, ETH_P_IP),
    (0x30, 0, 0, 23),
    (0x15, 0, 1, 112),
    (0x06, 0, 0, 0xFFFF),
    (0x06, 0, 0, 0),
]


def _attach_filter(sock: socket.socket) -> None:
    code = b"".join(struct.pack("HBBI", *ins) for ins in _CARP_FILTER)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(_CARP_FILTER), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class PacketSocket:
    """Non-blocking; register :meth:`fileno` with the event loop and call :meth:`receive`."""

    def __init__(self, ifname: str, ifindex: int, group: IPv4Address, join: bool) -> None:
        self.ifname = ifname
        # protocol 0 receives nothing until bind(), so no unfiltered packet can slip in first
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            _attach_filter(self._sock)
            self._sock.bind((ifname, ETH_P_IP))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._mcast: socket.socket | None = None
        if join:
            # Joining the group makes real NICs accept 01:00:5e:00:00:12 (ucarp does the same).
            self._mcast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            mreqn = struct.pack("4s4si", group.packed, b"\0" * 4, ifindex)
            try:
                self._mcast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            except OSError:
                self.close()
                raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` queued IPv4 packets (Ethernet header stripped), ours excluded."""
        packets: list[bytes] = []
        for _ in range(limit):
            try:
                frame, addr = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            packets.append(frame[14:])
        return packets

    def send(self, frame: bytes) -> None:
        self._sock.send(frame)

    def send_arp(self, frame: bytes) -> None:
        self._sock.sendto(frame, (self.ifname, ETH_P_ARP))

    def close(self) -> None:
        if self._mcast is not None:
            self._mcast.close()
        self._sock.close()
