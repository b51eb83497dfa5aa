"""A stand-in for ``sidecar.core.replica`` (the CORE helper's module), used only until it is
in this branch: :func:`install` puts it in place when the import fails. Its ``Freshness``,
``accepts`` and ``is_conflict`` are a copy of the CORE helper's commit 6de6c4a (the puller's
tests then run against the rules they will meet); delete this folder once it has landed."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable

from sidecar.core.syncwire import PING_INTERVAL

LIVENESS = 3 * PING_INTERVAL  # s: a channel with no line for longer is not known to be alive


class Freshness:
    """One replicated path on a backup: what its master holds, what this replica matches.

    The lag is how long since the replica last *known* to match the master: 0 while it holds
    the master's current generation and the channel is alive; otherwise ``now`` minus the last
    moment it was known to match (the last line heard while matching, or the moment the master
    announced a generation beyond the one the replica holds); None before the first catch-up.
    Generations are the master's numbers and mean nothing across connections: a new
    connection needs a pull before the replica is known to match again."""

    def __init__(self) -> None:
        self.master_epoch: int | None = None  # the epoch the connected master proved
        self.connected_now = False
        self.master_generation: int | None = None  # the master's, on this connection
        self.synced_generation: int | None = None  # what the replica holds, on this connection
        self.running = False  # a run is under way (started on this connection or before)
        self._heard_at: float | None = None  # the last line from the master
        self._matched_at: float | None = None  # the last moment known to match
        self._run_gen: int | None = None  # what the run under way syncs to; None: stale run
        self._moved_at: float | None = None  # when the master first went beyond _run_gen

    # ---- the watch channel ----
    def connected(self, now: float, master_epoch: int) -> None:
        """The channel is up (OK received): generations start afresh."""
        self.connected_now, self.master_epoch, self._heard_at = True, master_epoch, now
        self.master_generation = self.synced_generation = None
        self._run_gen = None  # a run still going pulled from the old connection's master

    def disconnected(self, now: float) -> None:
        self.connected_now = False

    def master_gen(self, now: float, gen: int) -> None:
        """A GEN line: the master is at ``gen``."""
        self.heartbeat(now)
        if self.master_generation is not None and gen <= self.master_generation:
            return
        if self.matching:
            self._matched_at = now  # matched until the master moved on, just now
        self.master_generation = gen
        if self._run_gen is not None and gen > self._run_gen and self._moved_at is None:
            self._moved_at = now

    def heartbeat(self, now: float) -> None:
        """Any line from the master (a PING): it is alive, and the replica still matches."""
        self._heard_at = now
        if self.matching:
            self._matched_at = now

    # ---- rsync runs ----
    def run_started(self, now: float) -> int:
        """A pull begins: it syncs to the master's current generation, returned (SYNCED says
        this one after success, whatever arrived during the run)."""
        if self.master_generation is None:
            raise ValueError("no generation from a master to sync to")
        self.running, self._run_gen, self._moved_at = True, self.master_generation, None
        return self.master_generation

    def run_succeeded(self, now: float, gen: int) -> None:
        """The pull started at ``gen`` succeeded: the replica matched the master at least
        until the master announced a later generation (or until now, if it did not)."""
        self.running = False
        if self._run_gen is None or gen != self._run_gen:
            return  # a run of an earlier connection: its numbers are not this master's
        self._run_gen = None
        self.synced_generation = gen
        if self.master_generation == gen:
            known = now if self._alive(now) else self._heard_at
        else:
            known = self._moved_at
        if known is not None and (self._matched_at is None or known > self._matched_at):
            self._matched_at = known

    def run_failed(self, now: float) -> None:
        self.running, self._run_gen = False, None

    # ---- verdicts ----
    @property
    def matching(self) -> bool:
        """The replica holds the master's current generation (as far as the channel said)."""
        return (self.connected_now and self.synced_generation is not None
                and self.synced_generation == self.master_generation)

    @property
    def caught_up(self) -> bool:
        """The first catch-up is done: the replica has matched a master at least once."""
        return self._matched_at is not None

    @property
    def needs_run(self) -> bool:
        """The connected master is beyond what the replica holds (a run under way aside)."""
        return (self.connected_now and self.master_generation is not None
                and (self.synced_generation is None
                     or self.master_generation > self.synced_generation))

    def lag(self, now: float) -> float | None:
        if self._matched_at is None:
            return None
        if self.matching and self._alive(now):
            return 0.0
        return max(now - self._matched_at, 0.0)

    def _alive(self, now: float) -> bool:
        return (self.connected_now and self._heard_at is not None
                and now - self._heard_at <= LIVENESS)


def fresh(lags: Iterable[float | None], max_lag: float) -> bool:
    """Every path caught up and within ``max_lag`` (no paths: nothing to be behind on)."""
    return all(lag is not None and lag <= max_lag for lag in lags)


def accepts(master_epoch: int, own_epoch: int) -> bool:
    """A backup takes data only from a master at least as recent as what it holds: a former
    master back from a split brain or a cable pull (an older epoch) must not overwrite it."""
    return master_epoch >= own_epoch


def next_epoch(own: int, highest_seen: int) -> int:
    """A takeover's epoch: above every epoch this node has held or heard."""
    return max(own, highest_seen) + 1


def is_conflict(displaced: tuple[int, int], agreed: tuple[int, int] | None) -> bool:
    """A file a pull displaced, ``(size, mtime_ns)``, against the manifest's entry: unless
    it is exactly what the group agreed on, it was written here only, and is kept."""
    return agreed is None or displaced != agreed


def install() -> None:
    """Make ``sidecar.core.replica`` importable with this stand-in, unless the real one is."""
    try:
        import sidecar.core.replica  # noqa: F401
    except ImportError:
        module = types.ModuleType("sidecar.core.replica")
        for name in ("Freshness", "fresh", "accepts", "next_epoch", "is_conflict", "LIVENESS"):
            setattr(module, name, globals()[name])
        sys.modules["sidecar.core.replica"] = module
