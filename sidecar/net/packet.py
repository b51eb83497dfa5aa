"""AF_PACKET socket for CARP on one interface: whole Ethernet frames out; CARP packets and ARP
announcements of our VIPs in.

ucarp reads and writes through libpcap, i.e. a packet socket: adverts leave with the fixed source
MAC 00:00:5e:00:00:<vhid> and reach us whatever the IP stack thinks of their source address. We
do the same, which needs only CAP_NET_RAW. A classic BPF filter keeps everything but IPv4
protocol 112 and ARP from our VIPs' addresses in the kernel, so a busy web server's traffic
never wakes the agent. If the interface is deleted the socket is dead for good (the kernel
unbinds it): the agent opens a new one when an interface of that name comes back.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
ARP_SPA_OFFSET = 28  # 14 Ethernet + 8 ARP fixed fields + 6 sender MAC

# classic BPF opcodes
_LDH_ABS, _LDB_ABS, _LD_ABS, _JEQ_K, _RET_K = 0x28, 0x30, 0x20, 0x15, 0x06


MAX_FILTERED_VIPS = 64  # classic BPF jumps are 8-bit: beyond this, pass all ARP


def carp_and_arp_filter(vips: list[IPv4Address], neighbour_adverts: bool = False,
                        vrrp6: bool = False) -> list[tuple[int, int, int, int]]:
    """Pass IPv4 protocol 112, ARP whose sender address is one of ``vips`` (any ARP when there
    are more than MAX_FILTERED_VIPS of them), with ``neighbour_adverts`` ICMPv6 neighbour
    advertisements (IPv6 VIPs: another holder answers for them), with ``vrrp6`` IPv6 next
    header 112 (an IPv6 VRRP instance on the interface); drop the rest."""
    # (opcode, jump-if-true label, jump-if-false label, k); labels resolve to relative jumps
    prog: list[tuple[int, str | None, str | None, int]] = [
        (_LDH_ABS, None, None, 12),
        (_JEQ_K, None, "not_ip", ETH_P_IP),
        (_LDB_ABS, None, None, 23),
        (_JEQ_K, "accept", "drop", 112),
        (_JEQ_K, None, "not_arp", ETH_P_ARP),  # label not_ip
    ]
    labels = {"not_ip": 4}
    if len(vips) > MAX_FILTERED_VIPS or not vips:
        prog.append((_JEQ_K, "accept", "accept", 0) if vips else (_RET_K, None, None, 0))
    else:
        prog.append((_LD_ABS, None, None, ARP_SPA_OFFSET))
        for i, vip in enumerate(vips):
            prog.append((_JEQ_K, "accept", None if i < len(vips) - 1 else "drop", int(vip)))
    labels["not_arp"] = len(prog)
    if neighbour_adverts or vrrp6:  # Ethernet 14 + IPv6 40: next header at 20
        prog += [(_JEQ_K, None, "drop", ETH_P_IPV6), (_LDB_ABS, None, None, 20)]
    if vrrp6:  # VRRPv3 over IPv6: next header 112 (no extension headers, as keepalived)
        prog.append((_JEQ_K, "accept", None if neighbour_adverts else "drop", 112))
    if neighbour_adverts:  # ICMPv6 type at 54
        prog += [(_JEQ_K, None, "drop", 58), (_LDB_ABS, None, None, 54),
                 (_JEQ_K, "accept", "drop", 136)]
    labels["drop"] = len(prog)
    prog.append((_RET_K, None, None, 0))
    labels["accept"] = len(prog)
    prog.append((_RET_K, None, None, 0xFFFF))

    def jump(here: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - here - 1

    return [(op, jump(i, jt), jump(i, jf), k) for i, (op, jt, jf, k) in enumerate(prog)]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class PacketSocket:
    """Non-blocking; register :meth:`fileno` with the event loop and call :meth:`receive`."""

    def __init__(self, ifname: str, ifindex: int, groups: list[IPv4Address | IPv6Address],
                 vips: list[IPv4Address], neighbour_adverts: bool = False,
                 vrrp6: bool = False) -> None:
        self.ifname = ifname
        self.errors = 0  # receive errors (ENETDOWN when the interface goes away)
        # protocol 0 receives nothing until bind(), so no unfiltered packet can slip in first
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            _attach_filter(self._sock, carp_and_arp_filter(vips, neighbour_adverts, vrrp6))
            self._sock.bind((ifname, ETH_P_ALL))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._mcast: socket.socket | None = None
        self._mcast6: socket.socket | None = None
        self._joined: set[IPv4Address | IPv6Address] = set()
        try:
            self.join(groups, ifindex)
        except OSError:
            self.close()
            raise

    def join(self, groups: list[IPv4Address | IPv6Address], ifindex: int) -> None:
        """Joining the group makes real NICs accept 01:00:5e:00:00:12 (ucarp does the same);
        for ff02::12 the kernel's MLD report also tells snooping switches to forward it."""
        for group in groups:
            if group in self._joined:
                continue
            if isinstance(group, IPv6Address):
                if self._mcast6 is None:
                    self._mcast6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                mreq6 = group.packed + struct.pack("@I", ifindex)
                self._mcast6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            else:
                if self._mcast is None:
                    self._mcast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                mreqn = struct.pack("4s4si", group.packed, b"\0" * 4, ifindex)
                self._mcast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            self._joined.add(group)

    def fileno(self) -> int:
        return self._sock.fileno()

    def set_filter(self, vips: list[IPv4Address], neighbour_adverts: bool,
                   vrrp6: bool = False) -> None:
        """Replace the kernel filter (a reload changed the VIPs); atomic for the socket."""
        _attach_filter(self._sock, carp_and_arp_filter(vips, neighbour_adverts, vrrp6))

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` queued Ethernet frames, our own outgoing ones excluded. A socket
        error (the interface went down or away) ends the batch and is counted, never raised:
        netlink tells the agent what happened to the interface."""
        frames: list[bytes] = []
        for _ in range(limit):
            try:
                frame, addr = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.errors += 1
                break
            if addr[2] != PACKET_OUTGOING:
                frames.append(frame)
        return frames

    def send(self, frame: bytes) -> None:
        self._sock.send(frame)

    def send_arp(self, frame: bytes) -> None:
        self._sock.sendto(frame, (self.ifname, ETH_P_ARP))

    def send_ipv6(self, frame: bytes) -> None:
        self._sock.sendto(frame, (self.ifname, ETH_P_IPV6))

    def close(self) -> None:
        for mcast in (self._mcast, self._mcast6):
            if mcast is not None:
                mcast.close()
        self._sock.close()


@dataclass(slots=True)
class Attached:
    """The interface as the agent holds it now; replaced when the interface is re-created."""

    index: int
    mac: bytes
    sock: PacketSocket


class UnicastSender:
    """Adverts to listed peers (CARP_PEERS) as unicast IP: the kernel routes them and resolves
    the next hop, so peers behind a router work and no multicast membership is needed.

    A raw IPPROTO 112 socket with IP_HDRINCL sends our own IP packets. Having it open also
    keeps the kernel from answering peers' unicast adverts with ICMP "protocol unreachable";
    it never queues what it receives (a drop-all filter): the packet socket reads adverts.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            self.sock.setblocking(False)
            _attach_filter(self.sock, [(0x06, 0, 0, 0)])  # BPF_RET|BPF_K 0: keep nothing
        except OSError:
            self.sock.close()
            raise

    def send(self, packet: bytes, peer: IPv4Address) -> None:
        self.sock.sendto(packet, (str(peer), 0))

    def close(self) -> None:
        self.sock.close()


class UnicastSender6:
    """An IPv6 VRRP instance's adverts to its listed peers, as keepalived sends them: a raw
    next-header-112 socket, hop limit 255, traffic class 0xc0; the VRRP bytes (checksummed by
    the caller over our source) leave from ``src`` (IPV6_PKTINFO), on the interface for a
    link-local peer. It keeps nothing it receives (the packet socket reads adverts)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 112)
        try:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0)
            self.sock.setblocking(False)
            _attach_filter(self.sock, [(0x06, 0, 0, 0)])
        except OSError:
            self.sock.close()
            raise

    def send(self, vrrp: bytes, src: IPv6Address, peer: IPv6Address, ifindex: int) -> None:
        info = src.packed + struct.pack("@I", ifindex)
        scope = ifindex if peer.is_link_local else 0
        self.sock.sendmsg([vrrp], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0,
                          (str(peer), 0, 0, scope))

    def close(self) -> None:
        self.sock.close()
