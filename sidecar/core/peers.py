"""Who else claims our VHID and our VIP: bounded tables fed by unauthenticated input. Pure.

CARP authenticates neither the sender's address nor its skew, and ARP authenticates nothing,
so every table here is sized against a flood: entries expire, the table is capped (the least
recently heard entry is evicted and counted), and what an entry can make us do is rate limited.

- :class:`PeerTable` — senders of adverts for our VHID, valid or not. Only masters advertise,
  so a sender that falls silent has stepped down (or died), and whatever ARP entries it held
  for the VIP are now wrong: :meth:`PeerTable.fallen_silent` reports it once, and a MASTER
  re-announces the VIP.
- :class:`ReplayGuard` — strict mode's rule: each listed peer's counter must increase. It never
  accepts a lower one (that is the replay attack strict mode stops), but it tells when a peer
  has sent nothing else for a while: a peer restarted with its clock behind, not an attacker.
- :class:`ArpClaims` — other MACs announcing the VIP (a GARP, or an ARP from a host that holds
  it): the split-brain signal that works even when adverts cannot be authenticated. Each MAC
  earns a re-announcement with exponential back-off, so two masters that cannot hear each
  other's adverts do not ping-pong GARPs forever.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

BOW_OUT_SILENCE = 1.0  # s: a stopping master keeps the VIP at most 0.8 s after its bow-out


@dataclass(slots=True)
class Peer:
    last_seen: float  # caller's clock
    wall: float  # Unix time, for /status and metrics
    advbase: int
    advskew: int
    valid: bool  # its last advert passed the HMAC check
    quiet_after: float  # silence beyond this means it stopped advertising
    silent: bool = False


class PeerTable:
    def __init__(self, capacity: int, expire_after: float) -> None:
        self.capacity, self.expire_after = capacity, expire_after
        self._peers: OrderedDict[str, Peer] = OrderedDict()

    def next_deadline(self) -> float | None:
        """When :meth:`fallen_silent` or :meth:`expire` may next have something to report."""
        times = [p.last_seen + self.expire_after for p in self._peers.values()]
        times += [p.quiet_after for p in self._peers.values() if not p.silent]
        return min(times, default=None)

    def __len__(self) -> int:
        return len(self._peers)

    def heard(self, now: float, wall: float, src: str, advbase: int, advskew: int,
              valid: bool) -> list[str]:
        """Record an advert from ``src``; returns the peers evicted to make room."""
        interval = advbase + advskew / 256
        bow_out = advbase == 255 and advskew == 255
        quiet = BOW_OUT_SILENCE if bow_out else max(2.5 * interval, 0.05)
        self._peers.pop(src, None)
        self._peers[src] = Peer(now, wall, advbase, advskew, valid, now + quiet)
        evicted = []
        while len(self._peers) > self.capacity:
            evicted.append(self._peers.popitem(last=False)[0])
        return evicted

    def fallen_silent(self, now: float) -> list[str]:
        """Peers that stopped advertising since the last call (each reported once)."""
        gone = []
        for src, peer in self._peers.items():
            if not peer.silent and now > peer.quiet_after:
                peer.silent = True
                gone.append(src)
        return gone

    def expire(self, now: float) -> list[str]:
        """Forget peers not heard for ``expire_after``; returns them."""
        old = [src for src, p in self._peers.items() if now - p.last_seen > self.expire_after]
        for src in old:
            del self._peers[src]
        return old

    def get(self, src: str) -> Peer | None:
        return self._peers.get(src)

    def valid_peers(self) -> dict[str, Peer]:
        return {src: p for src, p in self._peers.items() if p.valid}

    def advertising(self, now: float) -> bool:
        """Whether another master speaks: a valid advert heard and its sender not fallen
        silent yet (2.5 of its intervals; 1 s after a bow-out)."""
        return any(p.valid and now <= p.quiet_after for p in self._peers.values())


SWEEP_MIN, SWEEP_MAX = 0.05, 1.0  # s between peer-table sweeps: as needed, bounded both ways


class PeerWatch:
    """A peer table and when to sweep it: when the table says something is due, and at least
    once a second (a peer heard meanwhile is due 2.5 of its intervals later at the earliest,
    1 s after a bow-out); never with nobody to watch (a lone master sleeps)."""

    def __init__(self, table: PeerTable) -> None:
        self.table = table
        self.sweep_at: float | None = None
        self._pending: list[str] = []  # former masters not yet answered by a re-announce

    def heard(self, now: float, wall: float, src: str, advbase: int, advskew: int,
              valid: bool) -> list[str]:
        """Per packet only the table is touched (a flood brings 20k a second); returns the
        peers evicted to make room."""
        evicted = self.table.heard(now, wall, src, advbase, advskew, valid)
        if self.sweep_at is None:
            self.sweep_at = now + self._wait(now)
        return evicted

    def sweep(self, now: float, master: bool) -> list[str]:
        """Expire old peers; the former masters a MASTER should re-announce the VIP for (until
        :meth:`answered`). A backup owes them nothing."""
        self.table.expire(now)
        silent = self.table.fallen_silent(now)
        if silent:
            self._pending = silent
        if not master:
            self._pending = []
        return self._pending

    def answered(self) -> None:
        self._pending = []

    def reschedule(self, now: float) -> None:
        idle = self.table.next_deadline() is None and not self._pending
        self.sweep_at = None if idle else now + self._wait(now)

    def _wait(self, now: float) -> float:
        deadline = self.table.next_deadline()
        return SWEEP_MAX if deadline is None else min(max(deadline - now, SWEEP_MIN), SWEEP_MAX)


class ArpClaims:
    def __init__(self, capacity: int, interval: float, max_backoff: int = 64) -> None:
        self.capacity, self.interval, self.max_backoff = capacity, interval, max_backoff
        self._claims: OrderedDict[bytes, tuple[float, float, int]] = OrderedDict()

    def claimed(self, now: float, mac: bytes) -> bool:
        """Another MAC announced the VIP: True when it is time to re-announce ours."""
        _, next_at, backoff = self._claims.pop(mac, (now, now, 1))
        if now - next_at > 2 * self.max_backoff * self.interval:
            next_at, backoff = now, 1  # quiet for long: a new episode
        answer = now >= next_at
        if answer:
            next_at, backoff = now + backoff * self.interval, min(backoff * 2, self.max_backoff)
        self._claims[mac] = (now, next_at, backoff)
        while len(self._claims) > self.capacity:
            self._claims.popitem(last=False)
        return answer


@dataclass(frozen=True, slots=True)
class Counted:
    """What :meth:`ReplayGuard.check` decided about one advert."""

    accepted: bool
    last: int | None  # the counter it had to beat
    stuck_for: float | None = None  # set once: every advert a replay for this long (s)
    recovered: bool = False  # accepted again after having been reported stuck


class ReplayGuard:
    """Per-peer increasing counters (strict mode). Keys are listed peers only (the codec has
    dropped everyone else as not_a_peer), so the tables are bounded by the configuration."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after  # s: a master-down interval
        self._last: dict[object, int] = {}
        self._replaying: dict[object, float] = {}  # peer -> first replay since last accepted
        self.stuck: set[object] = set()

    def check(self, peer: object, counter: int, now: float) -> Counted:
        last = self._last.get(peer)
        if last is not None and counter <= last:
            since = self._replaying.setdefault(peer, now)
            if peer not in self.stuck and now - since >= self.stuck_after:
                self.stuck.add(peer)
                return Counted(False, last, stuck_for=now - since)
            return Counted(False, last)
        self._last[peer] = counter
        self._replaying.pop(peer, None)
        if peer in self.stuck:
            self.stuck.discard(peer)
            return Counted(True, last, recovered=True)
        return Counted(True, last)


class StaleHolders:
    """MACs that answered our VIP probe (hosts that still have the VIP configured, or answer
    ARP probes for addresses they do not hold) while no other master advertised: an answer
    while one does is that master handing over (its VIP goes when it hears us; after a freeze
    we hear its queued adverts first). Each is reported once per ``backoff``; the table is
    bounded (a flood of forged answers clears it)."""

    def __init__(self, capacity: int, backoff: float) -> None:
        self.capacity, self.backoff = capacity, backoff
        self._reported: dict[bytes, float] = {}  # MAC -> last reported

    def seen(self, now: float, mac: bytes) -> bool:
        """True when this answer is to be reported."""
        if now - self._reported.get(mac, -1e9) < self.backoff:
            return False
        if len(self._reported) >= self.capacity:
            self._reported.clear()
        self._reported[mac] = now
        return True

    def current(self, now: float) -> list[bytes]:
        return sorted(mac for mac, at in self._reported.items() if now - at < self.backoff)
