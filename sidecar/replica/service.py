"""Replication for a whole agent: which side each VHID's paths are on, and what the protocol
learns of it (docs/sync.md).

A VHID's MASTER serves its paths (:class:`MasterSide` on the agent's :class:`SyncServer`); a
BACKUP pulls them from the master it hears (:class:`Puller`). A takeover starts a new epoch.
The backup's freshness gates its promotion: :meth:`VhidReplica.gate` says whether the session
must hold it back (``sync_behind``), evaluated on every change the puller reports and every
:data:`RECHECK` while BACKUP (a lag grows with time alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.config.runconfig import RunConfig, Vhid
from sidecar.config.sync import read_sync_secret
from sidecar.core.machine import State
from sidecar.core.replica import fresh, next_epoch
from sidecar.replica.epoch import EpochStore
from sidecar.replica.manifest import PRIVATE, SYNCED
from sidecar.replica.puller import Puller
from sidecar.replica.rsync import Spawn
from sidecar.replica.secret import Secrets
from sidecar.replica.server import SyncServer
from sidecar.replica.watcher import MasterSide
from sidecar.serve.syncmetrics import SyncFamilies, SyncMetrics

log = logging.getLogger("carp-sidecar")

RECHECK = 0.25  # s between freshness checks while BACKUP
FOLLOW_GRACE = 2.0  # s a better master we follow may be silent before a worse one is followed
Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


class VhidReplica:
    """One VHID's replicated paths on this node."""

    def __init__(self, s: Vhid, owner: Replication, network: Network,
                 set_behind: Callable[[bool], None]) -> None:
        self.s, self.owner, self._set_behind = s, owner, set_behind
        self.paths = {p.name: p.path for p in s.sync_paths}
        self.allowed: list[Network] = ([IPv4Network(p) for p in s.peers] if s.peers
                                       else [network])
        state_dir = owner.config.state_dir
        self.epochs = EpochStore(state_dir / f"{s.name.replace('/', '-')}.epoch"
                                 if state_dir is not None else None)
        self.m = SyncMetrics(owner.families, {"group": s.group_name, "vhid": str(s.vhid),
                                              "interface": s.interface}, self.paths)
        self.m.epoch.set(self.epochs.epoch)
        self.state = State.INIT
        self.master: Address | None = None
        self.side: MasterSide | None = None
        self.puller: Puller | None = None
        self.behind: bool | None = None
        self.took_over_with_lag = 0.0  # the largest lag of the last takeover (inf: never caught up)
        self._server = owner.server_for(s)
        self._server.allow(s.vhid, self.allowed)
        self._recheck: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None  # the last puller's close
        self.void: tuple[int, int] | None = None  # epochs of a line that lost a healed split
        self._master_key: tuple[int, int] = (256, 256)  # the followed master's (advbase, skew)
        self._master_heard = 0.0  # monotonic
        self.closed = False

    # ---- from the instance ----
    def transition(self, new: State) -> None:
        if self.closed:  # told after a reload detached it, in the same loop turn
            return
        old, self.state = self.state, new
        if new is State.MASTER and old is not State.MASTER:
            self._become_master()
        elif new is not State.MASTER and old is State.MASTER:
            self._leave_master()
        if new is State.BACKUP:
            self._start_puller()
        elif new is State.INIT:
            self.master = None
            self._stop_puller()

    def resume_master(self) -> None:
        """The instance resumed as MASTER after a restart in place or on stop: nothing moved,
        so the paths are served again in the same epoch (carried by the restart record, or
        read from CARP_STATE_DIR), not a new one: the backups' pulls carry on as before."""
        if self.closed or self.state is State.MASTER:
            return
        self.state = State.MASTER
        self._stop_puller()
        self.master = None
        self.m.epoch.set(self.epochs.epoch)
        self.m.fresh.set(1)
        log.info("Serving vhid %d's replicated paths again after the restart (epoch %d)",
                 self.s.vhid, self.epochs.epoch)
        self._serve()
        self._gate(False)

    def heard(self, src: Address, key: tuple[int, int]) -> None:
        """A valid advert of our VHID (not a bow-out) while BACKUP, ``key`` its (advbase,
        advskew): the master to pull from — unless the one we follow is better and alive (two
        masters for a moment: a preempt, a healed split brain; a pull is not given up for
        the one about to step down)."""
        now = time.monotonic()
        if self.closed or self.state is not State.BACKUP:
            return
        if src == self.master:
            self._master_key, self._master_heard = key, now
            return
        if self.master is not None and key >= self._master_key \
                and now - self._master_heard < FOLLOW_GRACE:
            return
        self.master, self._master_key, self._master_heard = src, key, now
        if self.puller is not None:
            self.puller.follow(src)

    # ---- sides ----
    def _become_master(self) -> None:
        # how far behind the former master when it was last heard (its silence is not lag)
        lags = self.puller.contact_lags() if self.puller is not None else {}
        worst = max((math.inf if v is None else v for v in lags.values()), default=0.0)
        seen = self.puller.highest_epoch if self.puller is not None else 0
        self._stop_puller()
        self.master = None
        self.epochs.raise_to(next_epoch(self.epochs.epoch, seen))
        self.m.epoch.set(self.epochs.epoch)
        self.took_over_with_lag = worst
        self.m.takeover_lag.set(worst)
        for pm in self.m.paths.values():
            pm.lag.set(0)
        self.m.fresh.set(1)
        if math.isinf(worst):
            log.warning("Took over vhid %d before its replicas ever caught up (epoch %d)",
                        self.s.vhid, self.epochs.epoch)
        elif worst > 0:
            log.warning("Took over vhid %d with replicas %.2f s behind the former master when "
                        "it was last heard (epoch %d)", self.s.vhid, worst, self.epochs.epoch)
        else:
            log.info("Took over vhid %d with current replicas (epoch %d)", self.s.vhid,
                     self.epochs.epoch)
        self._serve()
        self._gate(False)

    def _serve(self) -> None:
        self.side = MasterSide(self.s.vhid, self.epochs.epoch, self.paths, self._higher_epoch)
        self.side.void = self.void
        self.owner.spawn(self._start_side(self.side, self._stopping))

    async def _start_side(self, side: MasterSide, puller_gone: asyncio.Task[None] | None
                          ) -> None:
        """Serve once the last pull is over (no rsync renaming into the tree we now serve)
        and the paths are watched. A path that cannot be opened (unmounted, read-only, full)
        serves nothing — backups are told NOTMASTER — but the VIP stays: availability."""
        if puller_gone is not None:
            await asyncio.gather(puller_gone, return_exceptions=True)
        try:
            await side.start()
        except (OSError, sqlite3.Error) as e:
            log.error("vhid %d: cannot serve the replicated paths (%s): backups get nothing "
                      "until the next takeover or reload", self.s.vhid, e)
            await side.close()
            return
        if side is self.side:
            self._server.serve(side)
            for path in self.paths.values():  # served once: never a new node again
                with contextlib.suppress(OSError):
                    (path / PRIVATE / SYNCED).touch()
        else:
            await side.close()

    def _higher_epoch(self, epoch: int) -> None:
        """A backup proved an epoch above ours (a healed split brain): ours moves above it, so
        it accepts our data, and what it wrote alone becomes its conflicts, kept aside."""
        if self.side is None or epoch < self.epochs.epoch:
            return
        lo = self.epochs.epoch + 1 if self.void is None else min(self.void[0],
                                                                 self.epochs.epoch + 1)
        self.void = (lo, epoch)
        self.epochs.raise_to(epoch + 1)
        self.m.epoch.set(self.epochs.epoch)
        log.warning("A backup of vhid %d holds epoch %d: serving as epoch %d from now on",
                    self.s.vhid, epoch, self.epochs.epoch)
        old = self.side
        self._server.unserve(self.s.vhid)
        self.owner.spawn(old.close())
        self._serve()

    def _leave_master(self) -> None:
        self._server.unserve(self.s.vhid)
        if self.side is not None:
            self.owner.spawn(self.side.close())
            self.side = None

    def _start_puller(self) -> None:
        if self.puller is None:
            self.puller = Puller(self.s.vhid, self.paths, self.owner.config.sync_port,
                                 self.owner.secrets, self.epochs, self.m, self._changed,
                                 first_sync_free=self._never_synced(),
                                 spawn=self.owner.process_spawn, after=self._stopping)
            self._recheck = self.owner.spawn(self._recheck_forever())
        if self.master is not None:
            self.puller.follow(self.master)
        self._changed()

    def _never_synced(self) -> bool:
        """No epoch and no manifest in any path: a new node, whose first catch-up sets aside
        what it finds (before-first-sync) rather than calling it conflicts. A wiped state
        directory alone does not make a former master new: its manifests remain."""
        return self.epochs.epoch == 0 and not any(
            (path / PRIVATE / SYNCED).exists() for path in self.paths.values())

    def _stop_puller(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self.puller is not None:  # closes run one after the other, never two on one tree
            self._stopping = self.owner.spawn(_close_after(self._stopping, self.puller))
            self.puller = None

    # ---- the gate ----
    def _changed(self) -> None:
        if self.puller is None or self.state is not State.BACKUP:
            return
        lags = self.puller.lags(time.monotonic())  # sets the lag gauges too
        self.m.epoch.set(self.epochs.epoch)  # adopted from the master after a pull
        ok = fresh(lags.values(), self.s.sync_max_lag)
        self.m.fresh.set(1 if ok else 0)
        self._gate(not ok)

    def _gate(self, behind: bool) -> None:
        if behind != self.behind:
            self.behind = behind
            self._set_behind(behind)

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(RECHECK)
            self._changed()

    async def close(self) -> None:
        self.closed = True
        self._stop_puller()
        if self._stopping is not None:  # a reload's new replica must not pull beside it
            await asyncio.gather(self._stopping, return_exceptions=True)
        self._leave_master()
        self.m.remove()

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        pulled = {p["name"]: p for p in (self.puller.view()["paths"] if self.puller else [])}
        lags = self.puller.lags(now) if self.puller is not None else {}
        paths = []
        for name, path in self.paths.items():
            entry: dict[str, Any] = {"name": name, "path": str(path),
                                     "role": "source" if self.side is not None else "replica"}
            if self.side is not None:
                entry.update(lag_seconds=0.0, caught_up=True,
                             generation=self.side.generation(name))
            else:
                entry.update({k: v for k, v in pulled.get(name, {}).items()
                              if k not in ("name", "path")})
                entry["lag_seconds"] = lags.get(name)
            paths.append(entry)
        return {"epoch": self.epochs.epoch, "fresh": not self.behind,
                "held_back": "sync_behind" if self.behind and self.state is State.BACKUP
                else None,
                "master": None if self.master is None else str(self.master),
                "took_over_with_lag": None if math.isinf(self.took_over_with_lag)
                else self.took_over_with_lag, "paths": paths}


async def _close_after(before: asyncio.Task[None] | None, puller: Puller) -> None:
    if before is not None:
        await asyncio.gather(before, return_exceptions=True)
    await puller.close()


class Replication:
    """The agent's replication: its secret copies, one sync server per source address, and a
    :class:`VhidReplica` per VHID with paths. Built only when a path is configured."""

    def __init__(self, config: RunConfig, registry: CollectorRegistry,
                 spawn: Callable[[Any], asyncio.Task[None]],
                 process_spawn: Spawn | None = None) -> None:
        assert config.sync_secret_file is not None  # the configuration requires it
        # process_spawn: the agent's, which a PID 1 reaper knows not to reap under asyncio
        self.config, self.spawn, self.process_spawn = config, spawn, process_spawn
        self.secrets = Secrets(read_sync_secret(config.sync_secret_file))  # the start-up check's rule
        self.families = SyncFamilies(registry)
        self.servers: dict[Address, SyncServer] = {}
        self.vhids: dict[str, VhidReplica] = {}
        self._binds: dict[str, Address] = {}
        self._started: set[Address] = set()

    def bind(self, s: Vhid, srcip: Address) -> None:
        self._binds[s.name] = srcip
        if srcip not in self.servers:
            self.servers[srcip] = SyncServer(srcip, self.config.sync_port, self.secrets,
                                             lambda r: self.families.refused.labels(r).inc(),
                                             self.process_spawn)

    def server_for(self, s: Vhid) -> SyncServer:
        return self.servers[self._binds[s.name]]

    async def start(self) -> None:
        """Start the servers not started yet (a reload may bind a new source address)."""
        for address, server in self.servers.items():
            if address not in self._started:
                await server.start()
                self._started.add(address)

    def add(self, s: Vhid, network: Network, set_behind: Callable[[bool], None]) -> VhidReplica:
        replica = self.vhids[s.name] = VhidReplica(s, self, network, set_behind)
        return replica

    async def remove(self, name: str) -> None:
        replica = self.vhids.pop(name, None)
        if replica is not None:
            await replica.close()

    async def close(self) -> None:
        for replica in list(self.vhids.values()):
            with contextlib.suppress(Exception):
                await replica.close()
        self.vhids.clear()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await server.close()
        self.secrets.remove()
