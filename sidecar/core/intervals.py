"""CARP's timers as arithmetic (docs/protocol.md §5): the advert interval, the master-down
interval, a bow-out's handover delay, in integer microseconds. The state machine runs on them
and `check-config` prints them, so both say the same; this module imports nothing, which keeps
check-config from loading the machine and its actions."""

from __future__ import annotations

US = 1_000_000


def to_us(seconds: float) -> int:
    """Seconds as the integer µs the machine's deadlines are kept in."""
    return round(seconds * US)


def skew_us(advskew: int) -> int:
    return advskew * US // 256


def advert_interval_us(advbase: int, advskew: int) -> int:
    return advbase * US + skew_us(advskew)


def master_down_interval_us(advbase: int, advskew: int, deadratio: int, vrrp3_dead_timer: bool,
                            master_interval_us: int | None = None) -> int:
    """ucarp's rule: advbase x deadratio + own skew. VRRPv3's (advbase 0): deadratio x the
    master's advertised interval (ours until one is heard) + own skew."""
    if vrrp3_dead_timer:
        interval = master_interval_us or advert_interval_us(advbase, advskew)
        return deadratio * interval + skew_us(advskew)
    return advbase * deadratio * US + skew_us(advskew)


def handover_delay_us(advskew: int) -> int:
    """How long a backup waits after a bow-out advert: advskew/2048 s, at most 125 ms. Short
    enough for a planned handover to stay far below 100 ms of downtime with typical skews, long
    enough (about 5 ms per 10 skew units) for the best backup's advert to cross a LAN first."""
    return skew_us(advskew) // 8


CS_US = 10_000  # a centisecond, VRRPv3's interval unit


def vrrp_skew_us(version: int, priority: int, master_interval_us: int) -> int:
    """Skew_Time. v2 (RFC 3768): (256 - priority)/256 s whatever the interval; v3 (RFC 5798):
    (256 - priority) x Master_Adver_Interval / 256, as keepalived 2.2.7 computes it."""
    if version == 2:
        return (256 - priority) * US // 256
    return (256 - priority) * master_interval_us // 256


def vrrp_master_down_us(version: int, priority: int, master_interval_us: int,
                        adverts: int = 3) -> int:
    """Master_Down_Interval: 3 x Master_Adver_Interval + Skew_Time (v2's Master_Adver_Interval
    is the configured one: keepalived drops v2 adverts with another)."""
    return adverts * master_interval_us + vrrp_skew_us(version, priority, master_interval_us)


QUEUE_FIRST_US = 10_000  # later than the loop's ordinary jitter: adverts may wait unread
STALL_MIN_US = 100_000


def read_queue_first(lateness_us: int) -> bool:
    """A late timer reads what is queued on its sockets before it acts: an advert that came
    before the deadline is unread only if the loop was not running, and the timer must see it
    (a frozen backup would take over from a master that never stopped advertising)."""
    return lateness_us > QUEUE_FIRST_US


def stalled(lateness_us: int, advbase: int, advskew: int) -> bool:
    """Over an advert interval late: the process stood still (SIGSTOP, a VM snapshot or
    migration, `docker pause`), not merely busy; worth a line in the log."""
    return lateness_us > max(advert_interval_us(advbase, advskew), STALL_MIN_US)
