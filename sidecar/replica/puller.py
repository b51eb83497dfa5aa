"""A BACKUP's side of a VHID's replicated paths: follow the master's watch channel, pull.

One :class:`Puller` per VHID while this node is BACKUP. It keeps one watch connection to the
current master (:mod:`sidecar.core.syncwire`), authenticated both ways; a ``GEN`` above what a
path holds starts an rsync pull of it (:mod:`sidecar.replica.rsync`), one at a time per path and
again while the master moved on; a pull that succeeded is confirmed (``SYNCED``) with the
generation seen when it *started*, and its displaced files are judged
(:mod:`sidecar.replica.displaced`). The rules of freshness are pure and live in
:class:`sidecar.core.replica.Freshness`; this module feeds it what happened and when.

The epoch fence: a master whose epoch is below ours gets no pull (result ``fenced``), since it
is a former master that may not hold what was written after it left; a successful pull adopts
the master's epoch. A new master (or none) closes the channel and kills the runs: a pull from a
node that is no longer master must not go on writing here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets as random
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from sidecar.core import syncwire as wire
from sidecar.core.replica import Freshness, accepts
from sidecar.replica.displaced import Settled, after_pull
from sidecar.replica.epoch import EpochStore
from sidecar.replica.manifest import private_dir
from sidecar.replica.pullio import (
    BadProof,
    Refused,
    answer,
    describe,
    forget_agreements,
    readline,
    record_tree,
    uncancellable,
)
from sidecar.replica.rsync import (
    Itemized,
    RsyncResult,
    Spawn,
    module_name,
    pull_argv,
    run_rsync,
    source_url,
)
from sidecar.replica.secret import Secrets
from sidecar.serve.logs import fields
from sidecar.serve.syncmetrics import PathMetrics, SyncMetrics

log = logging.getLogger("carp-sidecar")
Address = IPv4Address | IPv6Address
BACKOFF_MIN, BACKOFF_MAX = 0.2, 2.0  # s between reconnects, doubling
REFUSED_RETRY = 1.0  # s after NOTMASTER / DENIED (the VIP may be moving: ask again soon)
CONNECT_TIMEOUT = 2.0
NAMES_LOGGED = 20
RETRY_MIN, RETRY_MAX = 0.5, 5.0  # s before pulling again after a failed pull, doubling: a full
# disk or a refusing daemon must not turn into rsync in a tight loop


class _Session:
    """One authenticated watch connection; generations are only comparable within one."""

    def __init__(self, writer: asyncio.StreamWriter, master_epoch: int) -> None:
        self.writer, self.master_epoch = writer, master_epoch

    def send(self, line: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(line)


class _Path:
    """One replicated path's pulls and what is known of them."""

    def __init__(self, name: str, root: Path, metrics: PathMetrics | None,
                 first_sync: bool) -> None:
        self.name, self.root, self.metrics = name, root, metrics
        self.fresh = Freshness()
        self.first_sync = first_sync  # before-first-sync rule (see displaced) until a pull works
        self.task: asyncio.Task[None] | None = None
        self.seen: int | None = None  # the master's generation, this session
        self.synced: int | None = None  # the generation the last successful pull started at
        self.last_success: float | None = None  # unix time
        self.failing = False  # a failure streak is logged once
        self.sweep = True  # rsync's holding folders may hold a killed pull's leftovers
        self.retry_at = 0.0  # monotonic: no pull before (after a failure)
        self.retry_delay = RETRY_MIN
        self.retry_timer: asyncio.TimerHandle | None = None
        # the manifest's agreements were voided (a healed split brain: this node's epoch line
        # lost) or are absent (a first pull): the next good pull records the whole tree
        self.record_all = True
        self.first_started: float | None = None  # monotonic: this follower's first pull began
        self.first_catch_up: float | None = None  # s from then to the first success

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def view(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.root), "lag_seconds": self.fresh.lag(now),
                "caught_up": self.fresh.caught_up, "last_success": self.last_success,
                "generation": self.seen, "synced_generation": self.synced,
                "running": self.running, "first_catch_up_seconds": self.first_catch_up}


class Puller:
    def __init__(self, vhid: int, paths: dict[str, Path], port: int, secrets: Secrets,
                 epochs: EpochStore, metrics: SyncMetrics | None,
                 on_change: Callable[[], None], first_sync_free: bool, *,
                 spawn: Spawn | None = None,
                 after: asyncio.Task[None] | None = None) -> None:
        self.vhid, self.port, self.secrets, self.epochs = vhid, port, secrets, epochs
        self.on_change, self.spawn = on_change, spawn
        self.paths = {n: _Path(n, root, metrics.paths.get(n) if metrics else None,
                               first_sync_free) for n, root in paths.items()}
        self.master: Address | None = None
        self._follower: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._fence_logged: int | None = None  # the master epoch last logged as fenced
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = False  # the current connection got through its handshake
        self._closed = False
        self.highest_epoch = 0  # the highest master epoch heard: a takeover goes above it
        self.voided = False  # our epoch line lost a healed split brain: AUTH offers 0
        self._previous = after  # the previous puller's close: no two pullers on one tree

    # ---- the lead's calls ----
    def follow(self, master: Address | None) -> None:
        """The current master (the advert's source); None: no master known, stop."""
        if master == self.master or self._closed:
            return
        self.master = master
        self._stop()
        if master is not None:
            self._follower = self._spawn_task(self._follow(master))
        self._changed()

    async def close(self) -> None:
        self._closed = True
        self.master = None
        self._stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def lags(self, now: float) -> dict[str, float | None]:
        """Each path's lag (None: never caught up); refreshes the lag gauges too."""
        lags = {name: p.fresh.lag(now) for name, p in self.paths.items()}
        for name, lag in lags.items():
            if (m := self.paths[name].metrics) is not None:
                m.lag.set(math.inf if lag is None else lag)
        return lags

    def contact_lags(self) -> dict[str, float | None]:
        """Each path's lag when the master was last heard (a takeover's: see Freshness)."""
        return {name: p.fresh.lag_at_contact() for name, p in self.paths.items()}

    def view(self) -> dict[str, Any]:
        now, s = time.monotonic(), self._session
        return {"master": None if self.master is None else str(self.master),
                "connected": s is not None, "master_epoch": None if s is None else s.master_epoch,
                "epoch": self.epochs.epoch, "fenced": s is not None and self._fenced(s),
                "paths": [p.view(now) for p in self.paths.values()]}

    # ---- the channel ----
    def _stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
        self._drop_session()
        for p in self.paths.values():
            if p.task is not None:
                p.task.cancel()  # rsync killed (TERM, then KILL), its displaced files settled
            if p.retry_timer is not None:
                p.retry_timer.cancel()
                p.retry_timer = None
            p.retry_at, p.retry_delay = 0.0, RETRY_MIN  # a new master is tried at once

    async def _follow(self, master: Address) -> None:
        if self._previous is not None:
            await asyncio.gather(self._previous, return_exceptions=True)
        delay, failures = BACKOFF_MIN, 0
        while asyncio.current_task() is self._follower:  # else: stopped, or a new master
            self._opened, pause = False, delay
            try:
                await self._watch(master)
            except Refused as e:
                why, pause = str(e), REFUSED_RETRY
                if why == "DENIED epoch":  # our epoch line lost the election: see _void
                    await uncancellable(self._void())
                    why, pause = "our epoch line lost the election: agreements voided", 0.0
            except BadProof:
                why = "its OK did not prove the sync secret (not this group's master?)"
            except (OSError, EOFError, ValueError, TimeoutError) as e:
                why = describe(e)
            extra = fields(vhid=self.vhid, peer=str(master))
            if self._opened:  # it was up: reconnect at once (a master that raised its epoch
                delay, failures, pause = BACKOFF_MIN, 0, BACKOFF_MIN  # closes us on purpose)
                log.info("Sync channel to master %s (vhid %d) closed: %s", master, self.vhid,
                         why, extra=extra)
            else:
                failures, delay = failures + 1, min(delay * 2, BACKOFF_MAX)
                if failures == 1:
                    log.warning("Sync channel to master %s (vhid %d): %s; retrying", master,
                                self.vhid, why, extra=extra)
            await asyncio.sleep(pause)

    async def _watch(self, master: Address) -> None:
        """One connection: handshake, then lines until it ends (EOF, silence, a bad line)."""
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(str(master), self.port,
                                                           limit=4 * wire.MAX_LINE)
        try:
            session = _Session(writer, await self._handshake(reader, writer))
            self._open(master, session)
            while line := await readline(reader):
                self._line(wire.parse_server(line), time.monotonic())
            raise EOFError("closed by the master")
        finally:
            if self._session is not None and self._session.writer is writer:
                self._drop_session()
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> int:
        mine, secret = random.token_hex(16), self.secrets.secret
        epoch = 0 if self.voided else self.epochs.epoch
        writer.write(wire.hello(self.vhid, mine))
        theirs = wire.parse_challenge(await answer(reader))
        writer.write(wire.auth(epoch, wire.client_proof(secret, self.vhid, theirs, mine, epoch)))
        master_epoch, proof = wire.parse_ok(await answer(reader))
        expected = wire.server_proof(secret, self.vhid, mine, theirs, master_epoch)
        if not wire.proven(expected, proof):
            raise BadProof
        return master_epoch

    async def _void(self) -> None:
        """A master of a lower epoch won (a healed split brain): what our manifests say was
        agreed was agreed in the losing epoch line. They are emptied now (on disk: a restart
        keeps it so), so the next pull keeps every file it displaces as a conflict, then
        records the tree; until a pull adopts the master's epoch we offer epoch 0 (ours is
        void), which the master accepts without moving again."""
        for p in self.paths.values():
            log.warning("Sync path %s (vhid %d): this node's epoch %d lost the election; its "
                        "next pull keeps every file it replaces as a conflict", p.name,
                        self.vhid, self.epochs.epoch, extra=fields(vhid=self.vhid, path=p.name))
            await asyncio.to_thread(forget_agreements, p.root)
            p.record_all = True
        self.voided = True

    def _open(self, master: Address, session: _Session) -> None:
        now = time.monotonic()
        self._session, self._opened = session, True
        self.highest_epoch = max(self.highest_epoch, session.master_epoch)
        for p in self.paths.values():
            p.fresh.connected(now, session.master_epoch)
            p.seen = None
        log.info("Sync channel to master %s (vhid %d) up, master epoch %d (ours %d)", master,
                 self.vhid, session.master_epoch, self.epochs.epoch,
                 extra=fields(vhid=self.vhid, peer=str(master), epoch=session.master_epoch))
        self._changed()

    def _drop_session(self) -> None:
        if self._session is None:
            return
        self._session.writer.close()
        self._session, now = None, time.monotonic()
        for p in self.paths.values():
            p.fresh.disconnected(now)
        self._changed()

    def _line(self, gen: wire.Gen | None, now: float) -> None:
        before = self._gate_key(now)
        for p in self.paths.values():
            if gen is not None and p.name == gen.name:
                p.fresh.master_gen(now, gen.gen)
                p.seen = gen.gen
            else:
                p.fresh.heartbeat(now)  # any line says the channel is alive
        if gen is not None and (target := self.paths.get(gen.name)) is not None:
            self._kick(target)
        if gen is not None or self._gate_key(now) != before:
            self._changed()

    # ---- pulls ----
    def _fenced(self, session: _Session) -> bool:
        return not accepts(session.master_epoch, self.epochs.epoch)

    def _kick(self, p: _Path) -> None:
        """Start a pull of ``p`` if one is due and none is running."""
        s, now = self._session, time.monotonic()
        if s is None or p.running or not p.fresh.needs_run:
            return
        if now < p.retry_at:
            if p.retry_timer is None:
                p.retry_timer = asyncio.get_running_loop().call_later(
                    p.retry_at - now, self._retry, p)
            return
        if self._fenced(s):
            if p.metrics is not None:
                p.metrics.runs["fenced"].inc()
            if self._fence_logged != s.master_epoch:
                self._fence_logged = s.master_epoch
                log.warning("Sync from master %s (vhid %d) refused: its epoch %d is below ours "
                            "(%d); it may not hold what was written after it left", self.master,
                            self.vhid, s.master_epoch, self.epochs.epoch,
                            extra=fields(vhid=self.vhid, result="fenced"))
            return
        p.task = self._spawn_task(self._pull(p, s))
        p.task.add_done_callback(lambda _: self._kick(p))  # re-run while behind

    def _retry(self, p: _Path) -> None:
        p.retry_timer = None
        self._kick(p)

    async def _pull(self, p: _Path, s: _Session) -> None:
        assert self.master is not None
        gen = p.fresh.run_started(time.monotonic())
        if p.first_started is None:
            p.first_started = time.monotonic()
        self._changed()
        run = f"{time.time_ns()}"
        result: RsyncResult | None = None
        try:
            private_dir(p.root)  # 0700 before rsync creates the displaced folder in it
            argv = pull_argv(source_url(self.master, self.port, module_name(self.vhid, p.name)),
                             p.root, run, self.secrets.password_file)
            result = await run_rsync(argv, self.spawn)
        except OSError as e:
            result = RsyncResult(False, None, Itemized(), f"{p.root}: {e.strerror}")
        finally:
            # also when killed: what rsync displaced is settled before the next run starts
            settled = await uncancellable(asyncio.to_thread(
                _after, p, result, s.master_epoch))
            if result is None:
                p.fresh.run_failed(time.monotonic())
                p.sweep = True
                self._changed()
        if result.ok and p.record_all:  # the tree is the master's now: all of it agreed
            p.record_all = not await uncancellable(asyncio.to_thread(record_tree, p.root))
        if settled is None and result.ok:  # rsync did its part; ours failed: retry later
            result = RsyncResult(False, result.returncode, result.items,
                                 "displaced files or manifest not updated")
        self._report(p, s, gen, result, settled)

    def _report(self, p: _Path, s: _Session, gen: int, result: RsyncResult,
                settled: Settled | None) -> None:
        now, m = time.monotonic(), p.metrics
        if settled is not None:
            _log_settled(p, settled, s.master_epoch)
            if m is not None and settled.conflicts:
                m.conflicts.inc(len(settled.conflicts))
        if not result.ok:
            p.fresh.run_failed(now)
            if not p.failing:
                log.error("Sync of path %s (vhid %d) from %s failed: %s", p.name, self.vhid,
                          self.master, result.error,
                          extra=fields(vhid=self.vhid, path=p.name, result="failed"))
            p.failing = p.sweep = True
            p.retry_at, p.retry_delay = now + p.retry_delay, min(p.retry_delay * 2, RETRY_MAX)
        else:
            if p.failing:
                log.info("Sync of path %s (vhid %d) works again", p.name, self.vhid,
                         extra=fields(vhid=self.vhid, path=p.name, result="ok"))
            p.failing, p.first_sync, p.sweep, p.retry_delay = False, False, False, RETRY_MIN
            p.synced, p.last_success = gen, time.time()
            if p.first_catch_up is None and p.first_started is not None:
                p.first_catch_up = now - p.first_started
                log.info("Sync of path %s (vhid %d) caught up in %.2f s (%d bytes received)",
                         p.name, self.vhid, p.first_catch_up, result.items.bytes_received,
                         extra=fields(vhid=self.vhid, path=p.name))
            self.epochs.raise_to(s.master_epoch)
            self.voided = False
            p.fresh.run_succeeded(now, gen)  # ignored by Freshness if the channel was renewed
            if s is self._session:  # generations are the connection's: only it may hear them
                s.send(wire.synced(p.name, gen))
        if m is not None:
            m.runs["ok" if result.ok else "failed"].inc()
            m.bytes.inc(result.items.bytes_received)
            if result.ok and p.last_success is not None:
                m.last_success.set(p.last_success)
        self._changed()

    # ---- helpers ----
    def _gate_key(self, now: float) -> tuple[tuple[bool, float | None], ...]:
        # what a PING may change for the gate: caught up; lag none, 0 or growing
        return tuple((p.fresh.caught_up, _lag_kind(p.fresh.lag(now)))
                     for p in self.paths.values())

    def _changed(self) -> None:
        self.lags(time.monotonic())
        self.on_change()

    def _spawn_task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _after(p: _Path, result: RsyncResult | None, epoch: int) -> Settled | None:
    """Settle and record (a worker thread); None when that failed, for any reason (logged): an
    exception escaping would end the pull task unreported, and the next pull start at once."""
    items, ok = (result.items, result.ok) if result is not None else (Itemized(), False)
    try:
        return after_pull(p.root, items, ok, epoch, p.first_sync, p.sweep)
    except Exception as e:
        log.error("Sync path %s (%s): displaced files or manifest not updated (%s: %s); kept "
                  "as they are, judged after the next pull", p.name, p.root, type(e).__name__,
                  e, extra=fields(path=p.name))
        return None


def _log_settled(p: _Path, settled: Settled, epoch: int) -> None:
    if settled.conflicts:
        log.warning("Sync path %s: %d file(s) written here and not on the master kept in "
                    "%s/.carp-sync/conflicts/%d: %s", p.name, len(settled.conflicts), p.root,
                    epoch, _names(settled.conflicts),
                    extra=fields(path=p.name, conflicts=len(settled.conflicts)))
    if settled.set_aside:
        log.info("Sync path %s: %d file(s) held here before the first sync kept in "
                 "%s/.carp-sync/before-first-sync: %s", p.name, len(settled.set_aside), p.root,
                 _names(settled.set_aside), extra=fields(path=p.name))
    if settled.stuck:
        log.error("Sync path %s: %d displaced file(s) could not be moved, left in "
                  "%s/.carp-sync/displaced: %s", p.name, len(settled.stuck), p.root,
                  _names(settled.stuck), extra=fields(path=p.name))


def _lag_kind(lag: float | None) -> float | None:
    return None if lag is None else float(lag > 0)


def _names(rels: list[str]) -> str:
    shown = ", ".join(rels[:NAMES_LOGGED])
    return shown + (f" and {len(rels) - NAMES_LOGGED} more" if len(rels) > NAMES_LOGGED else "")
