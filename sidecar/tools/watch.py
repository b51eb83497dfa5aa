"""`carp-sidecar watch`: what is on the link, one line per CARP or VRRP advert, and who is who.

tcpdump shows protocol 112 but cannot tell a wrong password from a wrong VHID. This decodes each
advert with scapy (only this command imports it: the agent's start-up and memory stay as they
are), checks its HMAC against the configured password and VIP when they are set, and on the end
(Ctrl-C, ``--count``, ``--seconds``) prints a table of senders per VHID: who is master, who has
fallen silent, whose digest fails and the likely cause. VRRPv2/v3 adverts (keepalived's, or ours
with CARP_PROTOCOL=vrrp*) share protocol 112 and the group: told apart by
:func:`sidecar.core.protocol.vrrp_version`, decoded with scapy's VRRP layers, shown with their
priority and interval (priority 0: a resign); a v2 password is checked when one is configured.

:class:`Watch` is the pure part (frames and times in, lines out); :func:`run` sniffs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from sidecar.core.protocol import compute_hmac, vrrp_version

SILENT_AFTER = 3  # advert intervals without a word: a sender has fallen silent
RUN_GAP = 1.5  # advert intervals: a longer gap ends a sender's run of adverts
MAX_RUNS = 16  # runs remembered per sender


@dataclass(frozen=True)
class Key:
    """What authenticates one VHID's adverts: the password and the VIP the HMAC covers."""

    key: bytes
    vip: IPv4Address


@dataclass
class Sender:
    src: str
    mac: str
    vhid: int
    advbase: int = 0
    advskew: int = 0
    adverts: int = 0
    first: float = 0.0
    last: float = 0.0
    auth: dict[str, int] = field(default_factory=lambda: {"ok": 0, "bad": 0, "unknown": 0})
    runs: list[list[float]] = field(default_factory=list)  # [first, last] of advert runs
    bowed_out: bool = False  # its last advert was the bow-out (advbase = advskew = 255)
    protocol: str = "carp"  # or "vrrp2"/"vrrp3": then priority and vrrp_interval, not base/skew
    priority: int = 0
    vrrp_interval: float = 0.0

    @property
    def interval(self) -> float:
        return self.vrrp_interval if self.protocol != "carp" else self.advbase + self.advskew / 256

    @property
    def timing(self) -> str:
        return (f"{self.advbase}/{self.advskew}" if self.protocol == "carp"
                else f"p{self.priority}/{self.vrrp_interval:g}s")

    def silent(self, now: float) -> bool:
        return now - self.last > SILENT_AFTER * max(self.interval, 1 / 256)

    def advertising(self, now: float) -> bool:
        """Still sending at its pace (a master that bowed out stops at once)."""
        return not self.bowed_out and \
            now - self.last <= RUN_GAP * max(self.interval, 1 / 256) + 0.05

    def heard(self, when: float) -> None:
        if self.runs and when - self.runs[-1][1] <= RUN_GAP * max(self.interval, 1 / 256) + 0.05:
            self.runs[-1][1] = when
        else:
            self.runs.append([when, when])
            del self.runs[:-MAX_RUNS]


def overlap(a: Sender, b: Sender) -> float:
    """How long both advertised at the same time (CARP: only the master speaks)."""
    return sum(max(0.0, min(x[1], y[1]) - max(x[0], y[0])) for x in a.runs for y in b.runs)


@dataclass
class Advert:
    time: float
    src: str
    mac: str
    vhid: int
    advbase: int
    advskew: int
    counter: int
    auth: str
    since_previous: float | None
    protocol: str = "carp"
    priority: int = 0  # VRRP; 0 is a resign
    interval: float = 0.0  # VRRP's advertised interval, s


class Watch:
    def __init__(self, keys: dict[int, Key]) -> None:
        self.keys = keys
        self.senders: dict[tuple[int, str], Sender] = {}
        self.undecodable = 0

    def frame(self, when: float, raw: bytes) -> Advert | None:
        """One Ethernet frame; the advert it carries, or None (not CARP, or undecodable)."""
        CARP, IP, Ether = _scapy()

        packet = Ether(raw)
        if raw[12:14] == b"\x86\xdd" and len(raw) >= 62 and raw[20] == 112 and raw[54] >> 4 == 3:
            from scapy.layers.inet6 import IPv6

            return self._vrrp(when, packet, 3, packet[IPv6])  # VRRPv3 over IPv6
        if IP not in packet or packet[IP].proto != 112:
            return None
        ip_bytes = raw[14:]
        version = vrrp_version(ip_bytes, (ip_bytes[0] & 0x0F) * 4)
        if version is not None:
            return self._vrrp(when, packet, version)
        ip = packet[IP]
        payload = bytes(ip.payload)
        if len(payload) < 36:  # CARP's header (decoded explicitly: unicast ones too)
            self.undecodable += 1
            return None
        carp = CARP(payload)
        counter = (carp.counter1 << 32) | carp.counter2
        digest = b"".join(getattr(carp, f"hmac{i}").to_bytes(4, "big") for i in range(1, 6))
        key = self.keys.get(carp.vhid)
        if key is None:
            auth = "unknown"
        else:
            expected = compute_hmac(key.key, carp.vhid, key.vip, counter.to_bytes(8, "big"))
            auth = "ok" if expected == digest else "bad"
        sender = self.senders.setdefault((carp.vhid, ip.src), Sender(
            ip.src, packet[Ether].src, carp.vhid, first=when))
        previous = self._heard(sender, when, packet[Ether].src,
                               (carp.advbase, carp.advskew) == (255, 255))
        if not sender.bowed_out:  # a bow-out is the end of a run; its 255/255 no interval
            sender.advbase, sender.advskew = carp.advbase, carp.advskew
            sender.heard(when)
        sender.auth[auth] += 1
        return Advert(when, ip.src, packet[Ether].src, carp.vhid, carp.advbase, carp.advskew,
                      counter, auth, None if previous is None else when - previous)

    @staticmethod
    def _heard(sender: Sender, when: float, mac: str, bowed_out: bool) -> float | None:
        """Count an advert; when the sender's previous one came (None: its first)."""
        previous = sender.last if sender.adverts else None
        sender.adverts += 1
        sender.last, sender.mac, sender.bowed_out = when, mac, bowed_out
        return previous

    def _vrrp(self, when: float, packet: Any, version: int, ip: Any = None) -> Advert:
        """A VRRP advert: priority, interval (v2 s, v3 cs), v2's password if we know it;
        ``ip`` its IPv6 layer for VRRPv3 over IPv6 (else the IPv4 one)."""
        from scapy.layers.vrrp import VRRP, VRRPv3

        ip = packet["IP"] if ip is None else ip
        v = (VRRP if version == 2 else VRRPv3)(bytes(ip.payload))
        interval = float(v.adv) if version == 2 else v.adv / 100
        key = self.keys.get(v.vrid)
        auth = "none" if version == 3 else "unknown" if key is None else "ok" if (
            v.authtype == (1 if key.key else 0) and (not key.key or (
                v.auth1.to_bytes(4, "big") + v.auth2.to_bytes(4, "big")
                == key.key.ljust(8, b"\0")))) else "bad"
        sender = self.senders.setdefault((v.vrid, ip.src), Sender(
            ip.src, packet.src, v.vrid, first=when, protocol=f"vrrp{version}"))
        previous = self._heard(sender, when, packet.src, v.priority == 0)
        if not sender.bowed_out:  # a resign (priority 0) ends a run, like CARP's bow-out
            sender.priority, sender.vrrp_interval = v.priority, interval
            sender.heard(when)
        sender.auth[auth] = sender.auth.get(auth, 0) + 1
        return Advert(when, ip.src, packet.src, v.vrid, 0, 0, 0, auth,
                      None if previous is None else when - previous, f"vrrp{version}",
                      v.priority, interval)

    @staticmethod
    def line(a: Advert) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(a.time)) + f".{int(a.time % 1 * 1000):03d}"
        gap = "first" if a.since_previous is None else f"+{a.since_previous:.3f}s"
        if a.protocol != "carp":
            name = "VRRPv2" if a.protocol == "vrrp2" else "VRRPv3"
            return (f"{stamp} {a.src:<15} {a.mac} {name} vrid {a.vhid:<3} priority "
                    f"{a.priority:<3}{' (resign)' if a.priority == 0 else ''} interval "
                    f"{a.interval:g}s {gap:<9} auth={a.auth}")
        return (f"{stamp} {a.src:<15} {a.mac} vhid {a.vhid:<3} advbase {a.advbase:<3} "
                f"advskew {a.advskew:<3} counter {a.counter:<20} {gap:<9} auth={a.auth}")

    def summary(self, now: float) -> str:
        if not self.senders:
            return "no CARP advertisements seen"
        out = []
        for vhid in sorted({v for v, _ in self.senders}):
            senders = sorted((s for (v, _), s in self.senders.items() if v == vhid),
                             key=lambda s: (s.silent(now), s.advbase, s.advskew, s.src))
            out.append(f"vhid {vhid}: " + self._verdict_of_vhid(senders, now))
            out.append(f"  {'sender':<15} {'mac':<17} {'adverts':>7} {'base/skew':>9} "
                       f"{'last seen':>10}  auth / role")
            for s in senders:
                out.append(f"  {s.src:<15} {s.mac:<17} {s.adverts:>7} "
                           f"{s.timing:>9} {f'{now - s.last:.1f}s ago':>10}  "
                           f"{self._verdict(s, now)}")
        if self.undecodable:
            out.append(f"{self.undecodable} protocol-112 packets were not CARP or VRRP adverts")
        return "\n".join(out)

    @staticmethod
    def _verdict_of_vhid(senders: list[Sender], now: float) -> str:
        """A split brain is two senders advertising together for longer than an advert
        interval; a handover or a preemption crosses for a moment only."""
        speaking = [s for s in senders if s.advertising(now)]
        pairs = [(a, b, overlap(a, b)) for i, a in enumerate(speaking) for b in speaking[i + 1:]]
        long = [(a, b, t) for a, b, t in pairs if t > max(a.interval, b.interval, 1 / 256)]
        if long:
            a, b, t = max(long, key=lambda p: p[2])
            return (f"{len(speaking)} nodes advertise at once: split brain ({a.src} and {b.src} "
                    f"together for {t:.1f} s)")
        if not speaking:
            return "no master (every sender has fallen silent)"
        master = max(speaking, key=lambda s: s.runs[-1][0] if s.runs else s.first)
        before = [s for s in senders if s is not master and s.runs and not s.advertising(now)]
        handed = f" (took over from {before[0].src})" if before and not master.silent(now) and \
            master.runs and before[0].runs[-1][1] <= master.runs[-1][0] + master.interval else ""
        return f"master {master.src}{handed}"

    def _verdict(self, s: Sender, now: float) -> str:
        role = ("advertising (master)" if s.advertising(now) else
                ("resigned (priority 0)" if s.protocol != "carp" else "bowed out (handed over)")
                if s.bowed_out else "silent" if s.silent(now)
                else "stopped advertising (handed over, or going silent)")
        ok, bad, unknown = s.auth["ok"], s.auth["bad"], s.auth["unknown"]
        if s.protocol == "vrrp3":  # RFC 5798 has no authentication
            return f"none (VRRPv3); {role}"
        if s.vhid not in self.keys:
            why = ("another group (not the configured VHID)" if self.keys else
                   "not checked (no password and VIP configured)")
            return f"unknown: {why}; {role}"
        if bad and ok:
            return f"bad {bad} of {ok + bad}: its password or VIP changed while watched; {role}"
        if bad and s.protocol == "vrrp2":
            return f"bad: another VRRPv2 auth type or password than ours; {role}"
        if bad:
            return f"bad: password or VIP differ from ours (the digest covers both); {role}"
        return f"ok{'' if not unknown else f' ({unknown} unknown)'}; {role}"


def run(interface: str, keys: dict[int, Key], count: int, seconds: float | None,
        pcap: Path | None, out: Callable[[str], None] = print) -> int:
    """Sniff ``interface`` until Ctrl-C, ``count`` adverts or ``seconds``; the summary last."""
    _scapy()  # quiet, and its layers known before the first frame (no "Unable to guess type")
    from scapy.sendrecv import sniff
    from scapy.utils import PcapWriter

    watch = Watch(keys)
    writer = PcapWriter(str(pcap), sync=True) if pcap is not None else None
    seen = 0

    def handle(packet: Any) -> None:
        nonlocal seen
        advert = watch.frame(float(packet.time), bytes(packet))
        if advert is None:
            return
        seen += 1
        if writer is not None:
            writer.write(packet)
        out(Watch.line(advert))

    def done(_: Any) -> bool:
        return bool(count) and seen >= count

    try:
        sniff(iface=interface, prn=handle, store=False, timeout=seconds, stop_filter=done,
              lfilter=_is_carp)
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            writer.close()
    out("")
    out(watch.summary(time.time()))
    return 0


def _scapy() -> tuple[Any, Any, Any]:
    """scapy's CARP, IP and Ether, imported quietly: our output is the adverts, and a scapy
    warning first ("CARP overwrites VRRP": we know, protocol 112 is both; "Unable to guess
    type" on a sniffing socket) only makes people doubt it. scapy keeps a level set on its
    logger before its first import; only errors get through."""
    import logging
    import warnings

    logging.getLogger("scapy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"scapy(\.|$)")
    from scapy.contrib.carp import CARP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.layers.vrrp import VRRP, VRRPv3
    from scapy.packet import bind_layers, split_layers

    # importing CARP rebinds protocol 112 from scapy's VRRP layers to it, for the whole
    # process: put scapy's own binding back (frame() decodes CARP and VRRP explicitly)
    split_layers(IP, CARP, proto=112, dst="224.0.0.18")
    bind_layers(IP, VRRP, proto=112)
    bind_layers(IP, VRRPv3, proto=112)
    return CARP, IP, Ether


def _is_carp(packet: Any) -> bool:
    raw = bytes(packet)
    return (len(raw) > 34 and raw[12:14] == b"\x08\x00" and raw[23] == 112) or (
        len(raw) > 54 and raw[12:14] == b"\x86\xdd" and raw[20] == 112)  # VRRPv3 over IPv6


def keys_from(instances: Iterable[Any]) -> dict[int, Key]:
    """The configured instances' keys (runconfig.Vhid: secret and hmac_address)."""
    return {i.vhid: Key(i.secret, i.hmac_address) for i in instances}
