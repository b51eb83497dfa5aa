"""Where one instance's frames leave: adverts to the group and to each listed peer, the
per-VIP announcements and probes, and the route check of unicast mode. It reports what the
kernel said; what that means (a fault, or not yet) is the session's rule."""

from __future__ import annotations

import functools
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from sidecar.config.runconfig import Vhid, vrrp_params
from sidecar.core import vrrp, vrrp6
from sidecar.core.actions import Address, Params
from sidecar.core.machine import SendAdvert
from sidecar.core.protocol import Advert, build_frame, build_ip_packet
from sidecar.net.channel import Channel
from sidecar.net.packet import UnicastSender, UnicastSender6

log = logging.getLogger("carp-sidecar")


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool  # it left by at least one way
    error: str = ""  # the last failure, for the log and /status
    errno: int = 0


class SendPort:
    def __init__(self, settings: Vhid, srcip: Address, channel: Channel,
                 on_error: Callable[[], None], params: Callable[[], Params] | None = None
                 ) -> None:
        self.s, self.srcip, self.channel = settings, srcip, channel
        # VRRP: the session's (priority, interval) at send time; without a session, the
        # settings' own (a reload changes both together)
        self._params = params or (lambda: Params(
            advbase=self.s.advbase, advskew=self.s.advskew, **vrrp_params(self.s)))
        self._on_error = on_error  # counts carp_advert_send_errors_total
        self.unicast = UnicastSender() if settings.peers and not settings.ipv6 else None
        self.unicast6 = UnicastSender6() if settings.peers and settings.ipv6 else None
        self.multicast = not settings.peers or settings.peers_multicast

    def close(self) -> None:
        for sender in (self.unicast, self.unicast6):
            if sender is not None:
                sender.close()

    def advert(self, a: SendAdvert) -> SendResult:
        s = self.s
        if s.protocol != "carp":
            return self._vrrp_advert(a, self._params())
        src = self.srcip
        assert isinstance(src, IPv4Address)  # CARP is IPv4 only (the config's family rules)
        advert = Advert(vhid=s.vhid, advbase=a.advbase, advskew=a.advskew, counter=a.counter)
        result = SendResult(False)
        unicast = self.unicast
        if unicast is not None:  # to each listed peer; the kernel routes
            for peer in self._peers4():
                packet = build_ip_packet(advert, key=s.secret, vip=s.hmac_address, src=src,
                                         dst=peer, ident=random.getrandbits(16), strict=s.strict)
                result = self._sent(functools.partial(unicast.send, packet, peer), result)
        if self.multicast:
            packet = build_ip_packet(advert, key=s.secret, vip=s.hmac_address, src=src,
                                     dst=s.mcast, ident=random.getrandbits(16), strict=s.strict)
            frame = build_frame(packet, vhid=s.vhid, group=s.mcast, broadcast=s.nomcast)
            result = self._sent(functools.partial(self.channel.send, frame), result)
        return result

    def _vrrp_advert(self, a: SendAdvert, params: Params) -> SendResult:
        """VRRP: one packet per destination (v3's checksum covers it), TTL 255; to the group
        from :meth:`advert_mac`, to each peer as unicast IP (keepalived's unicast_peer)."""
        s, result, src = self.s, SendResult(False), self.srcip
        if isinstance(src, IPv6Address):
            return self._vrrp6_advert(a, params, src)
        vips = [v.ip for v in s.ipv4_vips]

        def packet(dst: IPv4Address) -> bytes:
            return vrrp.advert_for(params, a, vrid=s.vhid, vips=vips, password=s.secret,
                                   src=src, dst=dst, ident=random.getrandbits(16))
        unicast = self.unicast
        if unicast is not None:
            for peer in self._peers4():
                result = self._sent(functools.partial(unicast.send, packet(peer), peer), result)
        if self.multicast:
            frame = vrrp.vrrp_frame(packet(s.mcast), src_mac=self.advert_mac(), group=s.mcast)
            result = self._sent(functools.partial(self.channel.send, frame), result)
        return result

    def _vrrp6_advert(self, a: SendAdvert, params: Params, src: IPv6Address) -> SendResult:
        """An IPv6 instance: to ff02::12 from the link-local address, or to each listed peer
        from CARP_SRCIP (keepalived's unicast_src_ip), as keepalived sends them."""
        s, result = self.s, SendResult(False)
        vips = [v.ip for v in s.ipv6_vips]
        unicast, ifindex = self.unicast6, self.channel.ifindex
        if unicast is not None:
            for peer in (p for p in s.peers if isinstance(p, IPv6Address)):
                vrrp = vrrp6.advert_for(params, a, vrid=s.vhid, vips=vips, src=src, dst=peer)
                send = functools.partial(unicast.send, vrrp[vrrp6.IP6_HEADER_LEN:], src, peer,
                                         ifindex or 0)
                result = self._sent(send, result)
        if self.multicast:
            frame = vrrp6.vrrp6_frame(vrrp6.advert_for(params, a, vrid=s.vhid, vips=vips,
                                                       src=src), src_mac=self.advert_mac())
            result = self._sent(functools.partial(self.channel.send, frame), result)
        return result

    def _peers4(self) -> list[IPv4Address]:
        return [p for p in self.s.peers if isinstance(p, IPv4Address)]  # (config: all IPv4)

    def advert_mac(self, announce: bool = False) -> bytes:
        """The one place a VRRP instance's source MAC is chosen, for its adverts (IPv4 and
        IPv6) and, ``announce``, its GARPs/NAs: CARP_VMAC's virtual MAC (keepalived's use_vmac
        sends from the macvlan; with CARP_VMAC_XMIT_BASE, its vmac_xmit_base, adverts from
        the base), else the interface's own (keepalived's default; CARP's adverts carry
        00:00:5e:00:00:VHID, chosen in build_frame)."""
        if self.s.vmac_address is not None and (announce or not self.s.vmac_xmit_base):
            return self.s.vmac_address
        attached = self.channel.attached
        return attached.mac if attached is not None else bytes(6)  # absent: send() says so

    def _sent(self, send: Callable[[], None], so_far: SendResult) -> SendResult:
        try:
            send()
        except OSError as e:
            self._on_error()
            log.warning("write() has failed: %s", e.strerror)
            return SendResult(so_far.ok, f"sends fail: {e.strerror or e}", e.errno or 0)
        return SendResult(True, so_far.error, so_far.errno)

    def per_vip(self, v4_frame: Callable[[bytes, IPv4Address], bytes],
                v6_frame: Callable[[bytes, IPv6Address], bytes], what: str,
                announce: bool = True) -> bool:
        """One frame per VIP from our MAC (ARP for IPv4, ICMPv6 for IPv6); announcements from
        the virtual one with CARP_VMAC, probes never (a frame from it would pull a switch's
        entry for it to us, away from a master that sends from it only in its GARPs); False
        if none could go out (no interface, or the kernel refused)."""
        attached = self.channel.attached
        if attached is None:
            return False
        mac = self.advert_mac(announce=True) if announce else attached.mac
        try:
            for v4 in self.s.ipv4_vips:
                attached.sock.send_arp(v4_frame(mac, v4.ip))
            for v6 in self.s.ipv6_vips:
                attached.sock.send_ipv6(v6_frame(mac, v6.ip))
        except OSError as e:
            log.warning("%s failed: %s", what, e.strerror)
            return False
        return True

    def check(self) -> str | None:
        """Why adverts could not leave now, without sending one: unicast peers need a route
        from our source (a UDP connect does the lookup and sends nothing)."""
        if self.unicast is None and self.unicast6 is None:
            return None if self.channel.attached is not None else "the interface is missing"
        error = "no peers"
        scope = self.channel.ifindex or 0  # a link-local source or peer (IPv6)
        for peer in self.s.peers:
            v6 = isinstance(peer, IPv6Address)
            probe = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind((str(self.srcip), 0, 0, scope) if v6 else (str(self.srcip), 0))
                probe.connect((str(peer), 9, 0, scope) if v6 else (str(peer), 9))
                return None
            except OSError as e:
                error = f"sends fail: {e.strerror or e} (to {peer})"
            finally:
                probe.close()
        return error
