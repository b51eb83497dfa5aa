"""What a session (sidecar.core.session) hands back: requests the runtime answers, and events
for whoever reports them. Plain values: the runtime matches on their type."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.actions import Address
from sidecar.core.machine import Action
from sidecar.core.protocol import AdvertError


# ---- requests to the runtime (it answers through the matching method) ----
@dataclass(frozen=True, slots=True)
class SendProbe:
    """Probe each VIP for a stale holder (ARP probe / NS from ::); answer: :meth:`Session.probed`."""


@dataclass(frozen=True, slots=True)
class CheckSending:
    """Can adverts leave now (a route to a listed peer)? Answer: :meth:`Session.sending_checked`."""


@dataclass(frozen=True, slots=True)
class ReserveCounters:
    """Strict: write the counter mark ``upto`` before the next advert leaves; answer:
    :attr:`StrictCounter.reserved` (until then each advert asks again)."""

    upto: int


# ---- events, for the reporter ----
@dataclass(frozen=True, slots=True)
class Dropped:
    error: AdvertError
    src: bytes | None  # the packet's source address bytes, when it had one


@dataclass(frozen=True, slots=True)
class Accepted:
    peer: Address
    advbase: int
    advskew: int
    counter: int
    handover: bool  # a bow-out advert
    by_next_key: bool = False  # authenticated by CARP_PASS_NEXT: a peer already rotated
    # VRRP: the advert's priority (0: the master resigns, then ``handover``) and interval (s);
    # advbase/advskew are then its interval as CARP's fields (protocol.carp_view), counter 0
    priority: int | None = None
    interval: float | None = None


@dataclass(frozen=True, slots=True)
class PeersEvicted:
    count: int


@dataclass(frozen=True, slots=True)
class PeersSwept:
    """The peer table was swept: its valid peers are what the series should show."""


@dataclass(frozen=True, slots=True)
class PeerCounterBehind:
    """Strict: every advert from ``peer`` for ``stuck_for`` s was a replay (reported once)."""

    peer: Address
    stuck_for: float
    counter: int
    last: int


@dataclass(frozen=True, slots=True)
class PeerCounterBack:
    peer: Address
    last: int


@dataclass(frozen=True, slots=True)
class ClaimSeen:
    """Another MAC announced one of our VIPs (kind "arp" or "na"); ``reannounced``: ours went out."""

    kind: str
    mac: bytes
    reannounced: bool


@dataclass(frozen=True, slots=True)
class StaleHolder:
    """A host answered our probe: it still has the VIP configured. ``report``: first time in
    STALE_LOG_BACKOFF for this MAC."""

    mac: bytes
    report: bool


@dataclass(frozen=True, slots=True)
class FormerMasterSilent:
    peers: list[str]
    # how they made way for us: "bowed out" (a handover: their last advert was the bow-out)
    # or "preempted" (we took over by preemption); None: they fell silent unasked
    gave_way: str | None = None


@dataclass(frozen=True, slots=True)
class AdvertisableChanged:
    ok: bool
    why: str | None  # when not ok
    grace: float | None = None  # s a MASTER keeps the VIP, until its backups would take over


@dataclass(frozen=True, slots=True)
class HealthChanged:
    healthy: bool
    error: str
    report: bool  # a change of the machine's verdict (not a dropped check)


@dataclass(frozen=True, slots=True)
class MaintenanceChanged:
    source: str  # "operator" or "file"
    since: float | None  # Unix time it began, None: ended
    at_start: bool  # before the machine started


@dataclass(frozen=True, slots=True)
class SyncGateChanged:
    """The replicated paths went behind (not fresh: this node holds back from the VIP while a
    master lives) or caught up again."""

    behind: bool


@dataclass(frozen=True, slots=True)
class SteppingDown:
    pass


@dataclass(frozen=True, slots=True)
class TookOver:
    """We became MASTER; ``heard_at`` (the caller's clock): the last advert of the old master
    (or its bow-out), where the outage a client sees began. None: no master was ever heard."""

    reason: str
    heard_at: float


@dataclass(frozen=True, slots=True)
class Notify:
    """The notify script's state (MASTER, BACKUP, FAULT, STOP) changed."""

    state: str
    reason: str
    peer: Address | None


Event = (Dropped | Accepted | PeersEvicted | PeersSwept | PeerCounterBehind | PeerCounterBack
         | ClaimSeen | StaleHolder | FormerMasterSilent | AdvertisableChanged | HealthChanged
         | MaintenanceChanged | SyncGateChanged | SteppingDown | TookOver | Notify)
Output = Action | SendProbe | CheckSending | ReserveCounters | Event
