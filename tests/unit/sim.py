"""A deterministic, in-memory CARP (or VRRP: Params.protocol) network of pure machines: the
clock is a number we move."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from sidecar.core.machine import (
    Action,
    AddVip,
    Conflict,
    DropVip,
    Machine,
    Params,
    SendAdvert,
    SendGarp,
    State,
    Transition,
)


@dataclass
class Node:
    name: str
    machine: Machine
    connected: bool = True
    holds_vip: bool = False
    transitions: list[tuple[float, Transition]] = field(default_factory=list)
    adverts: list[tuple[float, SendAdvert]] = field(default_factory=list)
    garps: list[float] = field(default_factory=list)
    conflicts: list[float] = field(default_factory=list)
    heard: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        return self.machine.params.own_ip

    @property
    def state(self) -> State:
        return self.machine.state


def node(name: str, ip: str, **params: object) -> Node:
    counter = itertools.count(1000)
    machine = Machine(Params(own_ip=ip_address(ip), **params), rng=lambda: next(counter))  # type: ignore[arg-type]
    return Node(name, machine)


class Sim:
    """Adverts are delivered instantly to every connected node but the sender."""

    def __init__(self, *nodes: Node) -> None:
        self.nodes = list(nodes)
        self.now = 0.0
        self._queue: deque[tuple[Node, list[Action]]] = deque()

    def start(self, *nodes: Node) -> None:
        for n in nodes or self.nodes:
            self._run(n, n.machine.start(self.now))

    def do(self, n: Node, actions: list[Action]) -> None:
        self._run(n, actions)

    def run_until(self, t: float) -> None:
        while True:
            due = [(d, i) for i, n in enumerate(self.nodes)
                   if (d := n.machine.next_deadline()) is not None and d <= t]
            if not due:
                break
            deadline, i = min(due)
            self.now = max(self.now, deadline)
            n = self.nodes[i]
            self._run(n, n.machine.timer_expired(self.now))
        self.now = t

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def _run(self, n: Node, actions: list[Action]) -> None:
        self._queue.append((n, actions))
        while self._queue:
            who, acts = self._queue.popleft()
            for a in acts:
                self._apply(who, a)

    def _apply(self, n: Node, a: Action) -> None:
        if isinstance(a, Transition):
            n.transitions.append((self.now, a))
        elif isinstance(a, AddVip):
            n.holds_vip = True
        elif isinstance(a, DropVip):
            n.holds_vip = False
        elif isinstance(a, SendGarp):
            n.garps.append(self.now)
        elif isinstance(a, Conflict):
            n.conflicts.append(self.now)
        elif isinstance(a, SendAdvert):
            n.adverts.append((self.now, a))
            if not n.connected:
                return
            p = n.machine.params
            # a VRRP node's advert carries its priority (0: resign) and interval instead
            vrrp = () if p.protocol == "carp" else (0 if a.handover else p.priority,
                                                    p.advert_int_cs)
            for other in self.nodes:
                if other is not n and other.connected:
                    other.heard.append((self.now, n.name))
                    self._queue.append((other, other.machine.advert_received(
                        self.now, n.ip, a.advbase, a.advskew, a.counter, *vrrp)))

    def masters(self) -> list[str]:
        return [n.name for n in self.nodes if n.state is State.MASTER]
