"""A deterministic network of pure sessions: adverts are real packets (built and parsed by the
codec), the clock is a number we move, each node's disk and routes are dicts and flags."""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from sidecar.core import outputs as out
from sidecar.core import session as core
from sidecar.core.auth import carp_key
from sidecar.core.machine import Params, SendAdvert, SendGarp, State, Transition
from sidecar.core.protocol import Advert, Expect, build_ip_packet
from sidecar.core.vrrp import advert_for

KEY = carp_key("geheim")
VIP = IPv4Address("10.0.0.100")
GROUP = IPv4Address("224.0.0.18")


@dataclass
class Node:
    name: str
    session: core.Session
    wall: list[float]  # the node's Unix clock (a step moves it, not the simulated time)
    connected: bool = True
    send_errno: int = 0  # what the kernel answers to its sends (0: they leave)
    route_error: str | None = None  # what a route check finds
    mark: int | None = None  # strict: the counter mark on its disk
    outputs: list[tuple[float, Any]] = field(default_factory=list)
    sent: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def state(self) -> State:
        return self.session.machine.state

    @property
    def ip(self) -> IPv4Address:
        return self.session.config.srcip

    def of(self, kind: type) -> list[Any]:
        return [o for _, o in self.outputs if isinstance(o, kind)]

    def times(self, kind: type) -> list[float]:
        return [t for t, o in self.outputs if isinstance(o, kind)]


def config(ip: str, *, strict: bool = False, peers: tuple[str, ...] = (),
           password: bytes = b"", **params: Any) -> core.SessionConfig:
    """``protocol`` vrrp2/vrrp3 in ``params``: a VRRP node (``password``: VRRPv2's)."""
    extra = {k: params.pop(k) for k in ("probe_interval", "garp_refresh")
             if k in params}
    own = IPv4Address(ip)
    listed = frozenset(IPv4Address(p) for p in peers) or None
    protocol = params.get("protocol", "carp")
    key = KEY if protocol == "carp" else password
    expect = Expect(vhid=1, key=key, vip=VIP, group=GROUP, peers=listed,
                    own=own if listed else None, multicast=not listed, strict=strict,
                    protocol=protocol, vips=(VIP,),
                    advert_int_cs=params.get("advert_int_cs", 100))
    return core.SessionConfig(params=Params(own_ip=own, strict=strict, **params), expect=expect,
                              interface="eth0", **extra)


def node(name: str, ip: str, *, wall: float = 1.8e9, **kw: Any) -> Node:
    counter = itertools.count(1000)
    clock = [wall]
    session = core.Session(config(ip, **kw), wall=lambda: clock[0], rng=lambda: next(counter))
    return Node(name, session, clock)


class Net:
    def __init__(self, *nodes: Node) -> None:
        self.nodes = list(nodes)
        self.now = 0.0

    def start(self, *nodes: Node) -> None:
        for n in nodes or self.nodes:
            if n.session.config.params.strict:
                self.do(n, [out.ReserveCounters(n.session.counters.keep(n.mark))])
            self.do(n, n.session.start(self.now, present=True, running=True))

    def do(self, n: Node, outputs: list[Any]) -> None:
        """Carry out a node's outputs as the runtime would, feeding the answers back."""
        queue = list(outputs)
        while queue:
            o = queue.pop(0)
            n.outputs.append((self.now, o))
            follow: list[Any] = []
            if isinstance(o, SendAdvert):
                follow = self._send(n, o)
            elif isinstance(o, out.CheckSending):
                follow = n.session.sending_checked(self.now, n.route_error)
            elif isinstance(o, out.ReserveCounters):
                n.mark = o.upto
                n.session.counters.reserved = o.upto
            elif isinstance(o, out.SendProbe):
                n.session.probed(self.now)
            queue[:0] = follow

    def _send(self, n: Node, a: SendAdvert) -> list[Any]:
        if n.send_errno:
            return n.session.sent(self.now, False, "sends fail: refused", n.send_errno)
        advert = Advert(vhid=1, advbase=a.advbase, advskew=a.advskew, counter=a.counter)
        cfg = n.session.config
        dsts = sorted(cfg.expect.peers) if cfg.expect.peers else [GROUP]
        for dst in dsts:
            if cfg.params.protocol != "carp":
                packet = advert_for(cfg.params, a, vrid=1, vips=(VIP,), password=cfg.expect.key,
                                    src=n.ip, dst=dst)
            else:
                packet = build_ip_packet(advert, key=cfg.expect.key, vip=VIP, src=n.ip, dst=dst,
                                         strict=cfg.params.strict)
            n.sent.append((self.now, packet))
            if n.connected:
                for other in self.nodes:
                    if other is not n and other.connected and (dst == GROUP or dst == other.ip):
                        self.deliver(other, packet)
        return n.session.sent(self.now, True)

    def deliver(self, n: Node, packet: bytes) -> None:
        self.do(n, n.session.receive(self.now, packet))

    def run(self, until: float) -> None:
        while True:
            due = [(d, i) for i, n in enumerate(self.nodes)
                   if (d := n.session.next_deadline()) is not None]
            if not due:
                break
            t, i = min(due)
            if t > until:
                break
            self.now = max(self.now, t)
            n = self.nodes[i]
            self.do(n, n.session.timer(self.now))
        self.now = until

    @staticmethod
    def masters(*nodes: Node) -> list[str]:
        return [n.name for n in nodes if n.state is State.MASTER]


def transitions(n: Node) -> list[tuple[str, str]]:
    return [(t.new.name, t.reason.value) for t in n.of(Transition)]


def garps(n: Node) -> list[float]:
    return n.times(SendGarp)


__all__ = ["GROUP", "KEY", "VIP", "Net", "Node", "config", "errno", "garps", "node",
           "transitions"]
