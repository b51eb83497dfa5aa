"""The replicated paths' metrics (``carp_sync_*``), registered only when a path is configured.

:class:`SyncFamilies` declares the families once per registry; :class:`SyncMetrics` binds one
instance's children (labels ``group``, ``vhid``, ``interface``, and ``path``: the path's name,
the same on every node) so every series exists from the start, counters at 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.serve.metrics import remove_series

RUN_RESULTS = ("ok", "failed", "fenced")  # fenced: the master's epoch is below ours
# epoch: a backup of a higher epoch, told to void its agreements (a healed split brain);
# busy: MAX_DAEMONS rsync daemons already running
REFUSED_REASONS = ("address", "auth", "protocol", "not_master", "epoch", "busy")


class SyncFamilies:
    def __init__(self, r: CollectorRegistry) -> None:
        base, per_path = ["group", "vhid", "interface"], ["group", "vhid", "interface", "path"]
        self.lag = Gauge("carp_sync_lag_seconds", "How long since this backup's replica last "
                         "matched the master's (0 while it matches; +Inf before its first "
                         "catch-up); 0 on the master", per_path, registry=r)
        self.last_success = Gauge("carp_sync_last_success_timestamp_seconds", "Unix time of "
                                  "the last successful pull; 0 before the first", per_path,
                                  registry=r)
        self.runs = Counter("carp_sync_runs", "rsync pulls by result (fenced: refused, the "
                            "master's epoch is below ours)", [*per_path, "result"], registry=r)
        self.bytes = Counter("carp_sync_bytes", "Bytes received by pulls", per_path, registry=r)
        self.conflicts = Counter("carp_sync_conflicts", "Files written here that the master "
                                 "does not hold, moved to .carp-sync/conflicts instead of "
                                 "being overwritten or deleted", per_path, registry=r)
        self.epoch = Gauge("carp_sync_epoch", "This node's replication epoch (a new one at "
                           "every takeover)", base, registry=r)
        self.fresh = Gauge("carp_sync_fresh", "1 while every replica is within "
                           "CARP_SYNC_MAX_LAG (or this node is MASTER); 0: it will not preempt",
                           base, registry=r)
        self.takeover_lag = Gauge("carp_sync_takeover_lag_seconds", "The largest replica lag "
                                  "this node took the VIP over with, at its last takeover "
                                  "(+Inf: before its first catch-up)", base, registry=r)
        self.refused = Counter("carp_sync_refused", "Connections to the sync port refused, by "
                               "reason (address: not a group member)", ["reason"], registry=r)
        for reason in REFUSED_REASONS:
            self.refused.labels(reason)


class PathMetrics:
    def __init__(self, f: SyncFamilies, labels: dict[str, str]) -> None:
        self.lag = f.lag.labels(**labels)
        self.last_success = f.last_success.labels(**labels)
        self.runs = {r: f.runs.labels(**labels, result=r) for r in RUN_RESULTS}
        self.bytes = f.bytes.labels(**labels)
        self.conflicts = f.conflicts.labels(**labels)


class SyncMetrics:
    def __init__(self, f: SyncFamilies, labels: dict[str, str], names: Iterable[str]) -> None:
        self.family, self.labels = f, labels
        self.epoch = f.epoch.labels(**labels)
        self.fresh = f.fresh.labels(**labels)
        self.takeover_lag = f.takeover_lag.labels(**labels)
        self.paths = {n: PathMetrics(f, {**labels, "path": n}) for n in names}

    def remove(self) -> None:
        """Drop this instance's series (the instance or its paths are gone after a reload)."""
        remove_series(vars(self.family).values(), tuple(self.labels.values()))
