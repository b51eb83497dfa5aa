"""Replicated paths' rules, pure (docs/architecture.md, "Replication"): how fresh a backup's
replica is, whether it may take data from a master, which epoch a takeover starts, whether a
displaced file is a conflict, and what the master's group has agreed on.

The runtime feeds these with what happened (the watch channel's lines, rsync runs ending) and
the time; nothing here reads a clock or a file. Two clocks appear: ``now`` is the caller's
monotonic clock (lag is a duration), ``at`` a wall time (it is compared with files' ctime).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from sidecar.core.syncwire import PING_INTERVAL

LIVENESS = 3 * PING_INTERVAL  # s: a channel with no line for longer is not known to be alive
# Bounds on the master's memory with a backup away or stuck (session files come and go): past
# MAX_PENDING the changed files are forgotten and the tree walked again instead; past
# MAX_TIMES the oldest generations' times go, and a backup confirming one agrees nothing.
MAX_PENDING = 100_000
MAX_TIMES = 10_000


class Freshness:
    """One replicated path on a backup: what its master holds, what this replica matches.

    The lag is how long since the replica was last *known* to match the master: 0 while it holds
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

    def lag_at_contact(self) -> float | None:
        """How far behind the master the replica was when the master was last heard: what a
        takeover after its death takes over with (0: it held the master's last generation).
        None before the first catch-up."""
        if self._matched_at is None:
            return None
        return max((self._heard_at or self._matched_at) - self._matched_at, 0.0)

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


class Confirmations:
    """The master's side of one path: which changed files every connected backup now holds.

    A file is agreed once every connected backup has confirmed (SYNCED) a generation at least
    that of the file's last change. The caller then records it in the manifest if its ctime
    is older than the cutoff (the wall time of the generation all have confirmed): a newer
    ctime means a change the watcher has not reported yet, which a later generation covers.
    A backup that connected and has not confirmed yet holds everything back.

    Why the cutoff is enough: a backup's pull that it confirms for generation G started after
    G was announced, so it read every file after G's time; a file last changed before then
    is in it as it is now."""

    def __init__(self, gen: int = 0, at: float = 0.0) -> None:
        """``gen``: the path's generation when watching began, at wall time ``at``."""
        self._pending: dict[str, int] = {}  # rel path -> generation of its last change
        self._times: dict[int, float] = {gen: at}  # generation -> wall time it was assigned
        self._confirmed: dict[Hashable, int | None] = {}  # connected client -> its generation
        self._full_done = False

    # ---- what happens ----
    def changed(self, gen: int, rel_paths: Iterable[str], at: float) -> None:
        """The watcher bumped the generation to ``gen`` at wall time ``at`` for these files."""
        self._times[gen] = at
        if len(self._times) > MAX_TIMES or not self._confirmed:  # nobody asks for older ones
            self._times = dict(list(self._times.items())[-(MAX_TIMES if self._confirmed else 1):])
        for rel in rel_paths:
            self._pending[rel] = gen
        if len(self._pending) > MAX_PENDING:
            self._pending.clear()
            self._full_done = False  # the next full agreement walks the tree again

    def connected(self, client_id: Hashable) -> None:
        """A backup's watch channel is up: until it confirms, nothing is agreed."""
        self._confirmed.setdefault(client_id, None)

    def confirm(self, client_id: Hashable, gen: int) -> None:
        old = self._confirmed.get(client_id)
        self._confirmed[client_id] = gen if old is None else max(old, gen)

    def forget(self, client_id: Hashable) -> None:
        """The backup disconnected: it no longer holds anything back."""
        self._confirmed.pop(client_id, None)

    # ---- verdicts ----
    @property
    def clients(self) -> frozenset[Hashable]:
        return frozenset(self._confirmed)

    @property
    def pending(self) -> frozenset[str]:
        """Files changed and not agreed yet (a tree walk must leave them out)."""
        return frozenset(self._pending)

    def agreed_generation(self) -> int | None:
        """The generation every connected backup has confirmed; None: none, or one has not."""
        gens = list(self._confirmed.values())
        if not gens or any(g is None for g in gens):
            return None
        return min(g for g in gens if g is not None)

    def agreed(self) -> tuple[list[str], float | None]:
        """The files agreed since the last call (each returned once; sorted) and the cutoff
        their ctime must be below; ``([], None)`` while nothing can be agreed."""
        gen = self.agreed_generation()
        cutoff = None if gen is None else self._time_of(gen)
        if gen is None or cutoff is None:
            return [], None
        done = sorted(rel for rel, g in self._pending.items() if g <= gen)
        for rel in done:
            del self._pending[rel]
        self._prune(gen)
        return done, cutoff

    def first_full(self) -> float | None:
        """The first time every connected backup has confirmed: the cutoff for recording the
        whole tree (files not pending, ctime below it). None before, and every time after
        (unless the pending files overflowed MAX_PENDING: then once more)."""
        gen = self.agreed_generation()
        if self._full_done or gen is None:
            return None
        cutoff = self._time_of(gen)
        self._full_done = cutoff is not None
        return cutoff

    def _time_of(self, gen: int) -> float | None:
        """When the tree was as of ``gen``: the latest generation assigned up to it."""
        known = [g for g in self._times if g <= gen]
        return self._times[max(known)] if known else None

    def _prune(self, gen: int) -> None:
        """Times below the agreed generation's are never asked again (confirmations only grow
        and a new backup confirms what it heard when it connected, at least this)."""
        floor = max((g for g in self._times if g <= gen), default=None)
        if floor is not None:
            self._times = {g: t for g, t in self._times.items() if g >= floor}
