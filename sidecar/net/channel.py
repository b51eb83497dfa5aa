"""One interface as the agent uses it: its packet socket, the instances (VHIDs) on it, and the
frames it dispatches to them.

Adverts are routed by the VHID byte to the instance that owns it, which runs the full checks
with its own key; a packet that cannot be attributed to one of our VHIDs (too short to say, or
another VHID) is counted as a drop by every instance on the interface of its family, as each
ucarp process would. IPv4 adverts go to the IPv4 instances (CARP, VRRP), IPv6 ones to the IPv6
VRRP instances: one VRID may be both (keepalived's IPv4 and IPv6 instances sharing it). ARP
frames whose sender address is one of our IPv4 VIPs go to the instance owning it.

The interface may be deleted and come back under a new index: :meth:`Channel.link_event`
closes the dead socket, opens a new one on the new index (re-joining the multicast groups)
and tells every instance whether the interface is there and its carrier up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from sidecar.core.actions import Address
from sidecar.core.protocol import CARP_PROTO, AdvertError, Expect, parse_packet
from sidecar.core.vrrp6 import VRRP6_GROUP, parse_packet6
from sidecar.net.netlink import Link, LinkEvent
from sidecar.net.packet import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Attached, PacketSocket

log = logging.getLogger("carp-sidecar")
# VRRP's virtual MACs (IPv4's, IPv6's; CARP's are IPv4's): a reflection of ours may carry one
_VIRTUAL = (bytes.fromhex("00005e0001"), bytes.fromhex("00005e0002"))


class Receiver(Protocol):
    """What a channel needs of an instance."""

    @property
    def vhid(self) -> int: ...

    @property
    def expect(self) -> Expect: ...

    def advert_packet(self, packet: bytes) -> None: ...

    def dropped(self, error: AdvertError) -> None: ...

    def arp_claim(self, sender_mac: bytes, probe_reply: bool = False) -> None: ...

    def na_claim(self, sender_mac: bytes) -> None: ...

    def interface_changed(self, present: bool, running: bool, reattached: bool) -> None: ...


class Channel:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name, self.loop = name, loop
        self.attached: Attached | None = None
        self.running = False
        # by VHID: the instances advertising over IPv4 (CARP, VRRP), and the IPv6 VRRP ones,
        # apart: keepalived lets an IPv4 and an IPv6 instance share a VRID on one interface
        self.receivers: dict[int, Receiver] = {}
        self.receivers6: dict[int, Receiver] = {}  # their frames pass the filter
        self._own: set[bytes] = set()  # our source addresses: our own adverts come back
        self._groups: list[IPv4Address | IPv6Address] = []
        self._arp: dict[bytes, Receiver] = {}  # IPv4 VIP (packed) -> its instance
        self._nd: dict[bytes, Receiver] = {}  # IPv6 VIP (packed) -> its instance
        self._strangers: set[bytes] = set()  # MACs sending from our own IPv6 source (logged)

    def add(self, receiver: Receiver, srcip: Address, group: IPv4Address | None,
            arp_vips: Iterable[IPv4Address], nd_vips: Iterable[IPv6Address] = ()) -> None:
        group6 = VRRP6_GROUP if isinstance(srcip, IPv6Address) else None  # from a link-local
        (self.receivers if group6 is None else self.receivers6)[receiver.vhid] = receiver
        self._own.add(srcip.packed)
        for g in (group6 or group,):
            if g is not None and g not in self._groups:
                self._groups.append(g)
        for vip in arp_vips:
            self._arp[vip.packed] = receiver
        for vip6 in nd_vips:
            self._nd[vip6.packed] = receiver

    def set_source(self, old: Address, new: Address) -> None:
        """An instance advertises from another address now (a new link-local): ours come back
        from that one. Another instance may still send from the old one (its CARP_SRCIP)."""
        if sum(getattr(r, "srcip", None) == old for r in self.every()) <= 1:
            self._own.discard(old.packed)
        self._own.add(new.packed)

    def set_vips(self, receiver: Receiver, arp_vips: Iterable[IPv4Address],
                 nd_vips: Iterable[IPv6Address]) -> None:
        """A reload changed ``receiver``'s VIPs: route their ARP/NA to it, and filter anew."""
        self._forget(receiver)
        for vip in arp_vips:
            self._arp[vip.packed] = receiver
        for vip6 in nd_vips:
            self._nd[vip6.packed] = receiver
        if self.attached is not None:
            self._set_filter(self.attached.sock)

    def _set_filter(self, sock: PacketSocket) -> None:
        sock.set_filter([IPv4Address(v) for v in self._arp], bool(self._nd),
                        bool(self.receivers6))

    def refresh(self) -> None:
        """A reload added instances to this open channel: join their groups, filter anew."""
        if self.attached is not None:
            self.attached.sock.join(self._groups, self.attached.index)
            self._set_filter(self.attached.sock)

    def remove(self, receiver: Receiver) -> None:
        """A reload removed the instance (it has stopped)."""
        for table in (self.receivers, self.receivers6):
            if table.get(receiver.vhid) is receiver:
                del table[receiver.vhid]
        self._forget(receiver)

    def every(self) -> list[Receiver]:
        """Every instance on the interface, either family."""
        return [*self.receivers.values(), *self.receivers6.values()]

    def _forget(self, receiver: Receiver) -> None:
        """No ARP or NA is routed to ``receiver`` any more."""
        for table in (self._arp, self._nd):
            for packed in [k for k, r in table.items() if r is receiver]:
                del table[packed]

    @property
    def ifindex(self) -> int | None:
        return self.attached.index if self.attached is not None else None

    def open(self, link: Link) -> None:
        """Bind to the interface (raises OSError); the caller reports problems at start."""
        sock = PacketSocket(self.name, link.index, self._groups,
                            [IPv4Address(v) for v in self._arp], neighbour_adverts=bool(self._nd),
                            vrrp6=bool(self.receivers6))
        self.attached = Attached(link.index, link.mac, sock)
        self.running = link.running
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self.attached is not None:
            self.loop.remove_reader(self.attached.sock.fileno())
            with contextlib.suppress(OSError):
                self.attached.sock.close()
            self.attached = None

    # ---- sending ----
    def send(self, frame: bytes) -> None:
        self._sock().send(frame)

    def _sock(self) -> PacketSocket:
        if self.attached is None:
            raise OSError(errno.ENODEV, f"interface {self.name} is missing")
        return self.attached.sock

    # ---- receiving ----
    def _on_readable(self) -> int:
        """Dispatch one batch of what is queued; how many frames it held."""
        if self.attached is None:
            return 0
        frames = self.attached.sock.receive()
        for frame in frames:
            ethertype = int.from_bytes(frame[12:14], "big")
            if ethertype == ETH_P_IP:
                self.ip_packet(frame[14:])
            elif ethertype == ETH_P_ARP and len(frame) >= 42:
                self.arp_frame(frame)
            elif ethertype == ETH_P_IPV6 and len(frame) > 20 and frame[20] == CARP_PROTO:
                self.ip6_packet(frame[14:], frame[6:12])  # a short one is counted too
            elif ethertype == ETH_P_IPV6 and len(frame) >= 78:
                self.nd_frame(frame)
        return len(frames)

    def drain(self, limit: int = 1024) -> int:
        """Dispatch everything queued now, before the event loop would (a late timer must see
        what came before its deadline); at most ``limit`` frames. How many there were."""
        total = 0
        while total < limit:
            got = self._on_readable()
            if not got:
                return total
            total += got
        return total

    def ip_packet(self, packet: bytes) -> None:
        if packet[12:16] in self._own:
            return
        ihl = (packet[0] & 0x0F) * 4 if packet else 0
        vhid = packet[ihl + 1] if 20 <= ihl < len(packet) - 1 else None
        receiver = None if vhid is None else self.receivers.get(vhid)
        if receiver is None and vhid in self.receivers6:
            return  # an IPv4 instance of the VRID elsewhere (keepalived's v4/v6 pairs share it)
        if receiver is not None:
            receiver.advert_packet(packet)
            return
        # not attributable to one of our VHIDs: every IPv4 instance counts the drop (an IPv6
        # one no more sees IPv4 adverts than keepalived's does)
        ipv4 = list(self.receivers.values())
        if not ipv4:  # a reload removed every IPv4 instance on this interface
            return
        try:
            parse_packet(packet, ipv4[0].expect)
        except AdvertError as e:
            for r in ipv4:
                r.dropped(e)

    def ip6_packet(self, packet: bytes, src_mac: bytes = b"") -> None:
        """A VRRPv3 advert over IPv6 (the filter passes these only with an IPv6 instance here):
        routed by VRID to an IPv6 instance; one of another VRID, or too short to say, is
        counted by every IPv6 instance as a drop (the IPv4 ones never see IPv6 adverts, as
        keepalived's)."""
        if packet[8:24] in self._own:
            self._own_source(packet[8:24], src_mac)
            return
        vrid = packet[41] if len(packet) > 41 else None
        receiver = self.receivers6.get(vrid) if vrid is not None else None
        if receiver is not None:
            receiver.advert_packet(packet)
            return
        for r in self.receivers6.values():
            try:
                parse_packet6(packet, r.expect)
            except AdvertError as e:
                r.dropped(e)

    def _own_source(self, src: bytes, src_mac: bytes) -> None:
        """An IPv6 advert from our own source address: ours reflected (our MAC, a VRRP
        virtual one) is ignored; from another MAC, another host uses our address (a duplicate
        link-local, a forgery): said once per MAC, and ignored."""
        mine = self.attached.mac if self.attached is not None else b""
        if (not src_mac or src_mac == mine or src_mac[:5] in _VIRTUAL
                or src_mac in self._strangers or len(self._strangers) >= 16):
            return
        self._strangers.add(src_mac)
        log.warning("An advert on %s from our own address %s comes from MAC %s, not ours: "
                    "another host uses that address (or forges it); ignored", self.name,
                    IPv6Address(src), src_mac.hex(":"))

    def arp_frame(self, frame: bytes) -> None:
        receiver = self._arp.get(frame[28:32])
        if receiver is None or (self.attached is not None and frame[22:28] == self.attached.mac):
            return
        # a reply to an RFC 5227 probe (ours: target address 0.0.0.0) comes from a host that
        # still has the VIP configured, not from one that merely cached or announced it
        probe_reply = frame[20:22] == b"\x00\x02" and frame[38:42] == bytes(4)
        receiver.arp_claim(frame[22:28], probe_reply)

    def nd_frame(self, frame: bytes) -> None:
        """A neighbour advertisement (the filter passes only those) for one of our IPv6 VIPs
        from another MAC: another host answers for it."""
        if frame[20] != 58 or frame[54] != 136:
            return
        receiver = self._nd.get(frame[62:78])
        if receiver is None or (self.attached is not None and frame[6:12] == self.attached.mac):
            return
        receiver.na_claim(frame[6:12])

    # ---- the interface coming and going ----
    def link_event(self, event: LinkEvent) -> None:
        ours = self.attached is not None and event.index == self.attached.index
        if ours and (event.deleted or event.name != self.name):
            self._detach("deleted" if event.deleted else f"renamed to {event.name}")
            return
        if not ours and event.name == self.name and not event.deleted:
            if self.attached is not None:
                self._detach("replaced")  # the deletion of the old one was not seen
            self._attach(event)
            return
        if ours and event.running != self.running:
            self.running = event.running
            log.warning("Link %s on %s", "up" if event.running else "down", self.name)
            for r in self.every():
                r.interface_changed(True, event.running, reattached=False)

    def _detach(self, why: str) -> None:
        log.warning("Interface %s %s: leaving MASTER state if held, waiting for it to return",
                    self.name, why)
        self.close()
        self.running = False
        for r in self.every():
            r.interface_changed(False, False, reattached=False)

    def _attach(self, event: LinkEvent) -> None:
        try:
            self.open(Link(event.index, event.mac, event.running))
        except OSError as e:
            log.error("Interface %s is back (index %d) but cannot be opened: %s; retrying on its "
                      "next change", self.name, event.index, e.strerror or e)
            return
        log.warning("Interface %s is back (index %d): taking part again", self.name, event.index)
        for r in self.every():
            r.interface_changed(True, event.running, reattached=True)
