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
from sidecar.net.packet import UnicastSender

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
        self.unicast = UnicastSender() if settings.peers else None
        self.multicast = not settings.peers or settings.peers_multicast

    def close(self) -> None:
        if self.unicast is not None:
            self.unicast.close()

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
            for peer in s.peers:
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
        if isinstance(src, IPv6Address):  # an IPv6 instance: multicast from the link-local
            packet6 = vrrp6.advert_for(params, a, vrid=s.vhid, vips=[v.ip for v in s.ipv6_vips],
                                       src=src)
            frame = vrrp6.vrrp6_frame(packet6, src_mac=self.advert_mac())
            return self._sent(functools.partial(self.channel.send, frame), result)
        vips = [v.ip for v in s.ipv4_vips]

        def packet(dst: IPv4Address) -> bytes:
            return vrrp.advert_for(params, a, vrid=s.vhid, vips=vips, password=s.secret,
                                   src=src, dst=dst, ident=random.getrandbits(16))
        unicast = self.unicast
        if unicast is not None:
            for peer in s.peers:
                result = self._sent(functools.partial(unicast.send, packet(peer), peer), result)
        if self.multicast:
            frame = vrrp.vrrp_frame(packet(s.mcast), src_mac=self.advert_mac(), group=s.mcast)
            result = self._sent(functools.partial(self.channel.send, frame), result)
        return result

    def advert_mac(self) -> bytes:
        """The source MAC of a VRRP instance's adverts to the group, IPv4 and IPv6: chosen
        here only. The interface's own (keepalived's default without use_vmac)."""
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
                v6_frame: Callable[[bytes, IPv6Address], bytes], what: str) -> bool:
        """One frame per VIP from our MAC (ARP for IPv4, ICMPv6 for IPv6); False if none could
        go out (no interface, or the kernel refused)."""
        attached = self.channel.attached
        if attached is None:
            return False
        try:
            for v4 in self.s.ipv4_vips:
                attached.sock.send_arp(v4_frame(attached.mac, v4.ip))
            for v6 in self.s.ipv6_vips:
                attached.sock.send_ipv6(v6_frame(attached.mac, v6.ip))
        except OSError as e:
            log.warning("%s failed: %s", what, e.strerror)
            return False
        return True

    def check(self) -> str | None:
        """Why adverts could not leave now, without sending one: unicast peers need a route
        from our source (a UDP connect does the lookup and sends nothing)."""
        if self.unicast is None:
            return None if self.channel.attached is not None else "the interface is missing"
        error = "no peers"
        for peer in self.s.peers:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind((str(self.srcip), 0))
                probe.connect((str(peer), 9))
                return None
            except OSError as e:
                error = f"sends fail: {e.strerror or e} (to {peer})"
            finally:
                probe.close()
        return error
