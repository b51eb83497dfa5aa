"""The machine's vocabulary (sidecar.core.machine): its states, the reasons it moves, its
parameters, and the actions it returns for the caller to carry out in order. Pure values."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address, IPv6Address

# a VRRPv3 instance over IPv6 (sidecar.core.vrrp6) has IPv6 sources and peers
Address = IPv4Address | IPv6Address
UNSPECIFIED = IPv4Address("0.0.0.0")


class State(IntEnum):
    """keepalived-exporter compatible encoding: 0 INIT, 1 BACKUP, 2 MASTER."""

    INIT = 0
    BACKUP = 1
    MASTER = 2


class Reason(StrEnum):
    STARTUP = "startup"
    MASTER_DOWN = "master_down"
    PREEMPT = "preempt"
    MASTER_TIMEOUT = "master_timeout"
    HANDOVER = "handover"
    PREFERRED_MASTER = "preferred_master"
    LINK_DOWN = "link_down"
    MAINTENANCE = "maintenance"  # demoted by an operator or the maintenance file: planned
    UNHEALTHY = "unhealthy"  # demoted by a failing health check
    STEP_DOWN = "step_down"  # SIGUSR2, ucarp's "considering going down"
    CANNOT_ADVERTISE = "cannot_advertise"  # source address gone or sends failing: like link down
    STOP = "stop"
    # the preempt a node's replicas held back (sync_behind), once they caught up: planned
    SYNC_CAUGHT_UP = "sync_caught_up"
    # MASTER where the agent's previous process left it (a restart without a move): why a
    # session is master, never a transition's reason (nothing moved)
    RESUMED = "resumed"


@dataclass(frozen=True, slots=True)
class Params:
    advbase: int = 1
    advskew: int = 0
    deadratio: int = 3
    preempt: bool = False
    neutral: bool = False
    ignoreifstate: bool = False
    garp_repeat: int = 2  # GARPs per takeover: one at once, the rest with later adverts
    own_ip: Address = UNSPECIFIED  # srcip, for the equal-interval tie-break
    preempt_delay: float = 0.0  # s after start or link up before preempting a working master
    # Sub-second mode's dead timer (VRRPv3's): deadratio x the master's advertised interval +
    # own skew, instead of ucarp's advbase x deadratio + skew, which at advbase 0 is the own
    # skew alone. The configuration turns it on for advbase 0 (docs/protocol.md §5.4).
    vrrp3_dead_timer: bool = False
    strict: bool = False  # never adopt a peer's counter: each node's own counter only increases
    # "carp", or VRRP ("vrrp2": RFC 3768, "vrrp3": RFC 5798; sidecar.core.vrrp_rules): then
    # ``priority`` (1..255, 255 the address owner) and ``advert_int_cs`` (centiseconds; v2:
    # whole seconds) are the timers and the election key; advbase/advskew are unused
    protocol: str = "carp"
    priority: int = 100
    advert_int_cs: int = 100

    def __post_init__(self) -> None:
        if self.protocol != "carp":
            _check_vrrp(self)
        if not (0 <= self.advbase <= 255 and 0 <= self.advskew <= 255):
            raise ValueError("advbase and advskew are 0..255")
        if self.advbase == 0 and self.advskew == 0:
            raise ValueError("advbase and advskew cannot both be 0")
        if self.deadratio < 1:
            raise ValueError("deadratio must be at least 1")
        if self.garp_repeat < 1:
            raise ValueError("garp_repeat must be at least 1")
        if self.preempt_delay < 0:
            raise ValueError("preempt_delay cannot be negative")


def _check_vrrp(p: Params) -> None:
    if p.protocol not in ("vrrp2", "vrrp3"):
        raise ValueError(f"protocol is carp, vrrp2 or vrrp3, not {p.protocol!r}")
    if not 1 <= p.priority <= 255:
        raise ValueError("priority is 1..255")
    most = 25500 if p.protocol == "vrrp2" else 4095
    if not 1 <= p.advert_int_cs <= most or (p.protocol == "vrrp2" and p.advert_int_cs % 100):
        raise ValueError("advert_int_cs is whole seconds 1..255 (vrrp2) or 1..4095 cs (vrrp3)")


@dataclass(frozen=True, slots=True)
class Resume:
    """What the agent's previous process left of this VHID (a restart without a move,
    sidecar.runtime.resume): ``master``, it was MASTER and its VIPs are still in place;
    ``next_advert``, when its next advert is due in the session's clock (None: at once);
    ``counter``, the last advert counter it (or its keeper) sent, so ours go on above it;
    ``master_since``, Unix time it became MASTER (for /status)."""

    master: bool
    next_advert: float | None = None
    counter: int | None = None
    master_since: float | None = None


# ---- actions (what the caller must do, in order) ----
@dataclass(frozen=True, slots=True)
class SendAdvert:
    advbase: int
    advskew: int
    counter: int
    handover: bool = False  # the bow-out advert sent when leaving MASTER on purpose


@dataclass(frozen=True, slots=True)
class AddVip:
    pass


@dataclass(frozen=True, slots=True)
class DropVip:
    pass


@dataclass(frozen=True, slots=True)
class SendGarp:
    pass


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    reason: Reason
    peer: Address | None = None
    # filled by the session (sidecar.core.session), which knows whether a master was heard
    # before a takeover; None from the machine alone: see planned()
    planned: bool | None = None


@dataclass(frozen=True, slots=True)
class Resumed:
    """The machine started in ``state`` where the previous process left it: nothing moved (no
    VIP added, no GARP, no script, no transition counted). ``master_since``: Unix, if known."""

    state: State
    master_since: float | None = None


@dataclass(frozen=True, slots=True)
class Stopped:
    """The instance has finished stopping: nothing more will come from it."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """Another MASTER kept advertising more than an advert interval after our takeover (so it
    is not the routine crossing of a preemption): split-brain evidence. ``announce`` is set at
    most once per advert interval, for the log line."""

    peer: Address
    announce: bool


Action = SendAdvert | AddVip | DropVip | SendGarp | Transition | Resumed | Conflict | Stopped

# The moves of the VIP nobody planned, each counted once: a backup that took over because the
# master fell silent (it died, lost its link or its adverts: it may not be able to say so) and
# a master whose service failed (it bows out; its successor sees a planned-looking handover).
# Operator moves (demote/promote, the maintenance file, SIGUSR2, a stop or reload), the preempt
# that follows and the bow-out handover are planned.
UNPLANNED = frozenset({(State.MASTER, Reason.MASTER_DOWN), (State.MASTER, Reason.MASTER_TIMEOUT),
                       (State.BACKUP, Reason.UNHEALTHY)})


def planned(to: State, reason: Reason) -> bool:
    """Whether a move to ``to`` for ``reason`` counts as planned (flapping counts the others)."""
    return (to, reason) not in UNPLANNED
