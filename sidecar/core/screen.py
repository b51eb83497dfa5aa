"""What a received packet is, before it may do anything: the codec's checks (sidecar.core.protocol,
or sidecar.core.vrrp for an Expect whose ``protocol`` is vrrp2/vrrp3) and, in strict mode, the
replay window (sidecar.core.peers.ReplayGuard). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from sidecar.core.actions import Address
from sidecar.core.outputs import Accepted, Dropped, Output, PeerCounterBack, PeerCounterBehind
from sidecar.core.peers import ReplayGuard
from sidecar.core.protocol import (
    BOW_OUT,
    AdvertError,
    DropReason,
    Expect,
    Received,
    parse_packet,
)
from sidecar.core.vrrp import parse_packet as parse_vrrp
from sidecar.core.vrrp6 import parse_packet6


@dataclass(frozen=True, slots=True)
class Screened:
    received: Received | None  # an advert the machine may act on
    outputs: tuple[Output, ...]  # drops, replay reports, the acceptance
    # a sender of our vhid with another key, (source, advbase, advskew): a master that stops
    # claiming may leave clients on its MAC, so the claim is remembered
    claim: tuple[str, int, int] | None = None


def screen(packet: bytes, expect: Expect, replays: ReplayGuard | None, now: float) -> Screened:
    """``replays``: strict mode's window (None: ucarp's rules, no counter check)."""
    ipv6 = expect.ipv6  # a VRRPv3 instance over IPv6: the channel gives it IPv6 packets only
    try:
        parse = parse_packet6 if ipv6 else parse_packet if expect.protocol == "carp" \
            else parse_vrrp
        received = parse(packet, expect)
    except AdvertError as e:
        claim = None
        if e.reason is DropReason.BAD_HMAC:
            carp = (packet[0] & 0x0F) * 4  # parse_packet has checked the lengths
            claim = (str(IPv4Address(packet[12:16])), packet[carp + 5], packet[carp + 2])
        return Screened(None, (Dropped(e, packet[8:24] if ipv6 else packet[12:16]),), claim)
    ad, src = received.advert, received.src
    out: list[Output] = []
    if replays is not None and not _counted(replays, now, src, ad.counter, out):
        return Screened(None, tuple(out))
    interval = None if received.interval_cs is None else received.interval_cs / 100
    out.append(Accepted(src, ad.advbase, ad.advskew, ad.counter,
                        handover=ad.advbase == BOW_OUT and ad.advskew == BOW_OUT,
                        by_next_key=received.by_next_key, priority=received.priority,
                        interval=interval))
    return Screened(received, tuple(out))


def _counted(replays: ReplayGuard, now: float, src: Address, counter: int,
             out: list[Output]) -> bool:
    """Strict mode: is the counter above the peer's last one? A listed peer whose every
    advert is a "replay" for a master-down interval restarted with its clock behind and lost
    its counter mark: both may hold the VIP, so it is reported (once)."""
    verdict = replays.check(src, counter, now)
    if verdict.recovered and verdict.last is not None:
        out.append(PeerCounterBack(src, verdict.last))
    if verdict.accepted:
        return True
    out.append(Dropped(AdvertError(DropReason.REPLAY, f"counter not above {verdict.last}"),
                       src.packed))
    if verdict.stuck_for is not None and verdict.last is not None:
        out.append(PeerCounterBehind(src, verdict.stuck_for, counter, verdict.last))
    return False
