"""Reload (SIGHUP, `carp-sidecar reload`): re-read every source, check the new configuration
against this host, and apply the difference live (sidecar.runtime.reload plans it)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.config.runconfig import RunConfig, Vhid
from sidecar.core.machine import State
from sidecar.net.netlink import Link
from sidecar.runtime import operator, replicas
from sidecar.runtime.instance import Instance
from sidecar.runtime.maintenance import (
    CounterMark,
    MaintenanceStore,
    Prepared,
    Record,
    StateError,
)
from sidecar.runtime.reload import Plan, ReloadRefused, key, plan, read_config
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import vip_link
from sidecar.runtime.vmac import abandon, check_vmac, macvlan_of, stop_instance
from sidecar.serve import logs

if TYPE_CHECKING:
    from sidecar.runtime.agent import Agent

log = logging.getLogger("carp-sidecar")


async def reload(agent: Agent) -> str:
    """Re-read every source (env file, CARP_CONFIG, password file) and apply the difference
    live; a configuration that does not validate, or that this host (its interfaces, its
    state directory) cannot run, is refused whole and the running one kept. The reply lists
    what changed."""
    async with agent.reload_lock:
        try:
            new = await read_config(agent.config.origin, agent.config.environ_secrets)
            # against what runs: an instance a failed roll back left not running is added again
            running = dataclasses.replace(agent.config,
                                          instances=tuple(i.s for i in agent.instances))
            changes = plan(running, new)
            problem = await check_host(agent, changes)
            if problem:
                raise ReloadRefused([problem])
            ready = prepare_state(agent, changes)
        except ReloadRefused as e:
            for line in e.errors:
                log.error("Reload refused: %s", line)
            log.error("Reload refused: still running the previous configuration")
            agent.reloads.failed()
            return "error: reload refused, nothing changed: " + "; ".join(e.errors)
        try:
            done = await apply(agent, changes, new, ready)
        except Exception as e:  # a bug or the host changing under us: say so, keep going
            log.exception("Reload failed part way: %r", e)
            agent.reloads.failed()
            missing = not_running(agent)
            return (f"error: reload failed part way ({e!r}), the previous instances restarted"
                    + (f" except {', '.join(missing)} (NOT RUNNING)" if missing else "")
                    + "; see the agent's log")
        finally:
            show_not_running(agent)
        agent.reloads.succeeded()
        log.warning("Configuration reloaded: %s", "; ".join(done) or "no changes")
        return "reloaded: " + ("; ".join(done) if done else "no changes")


async def check_host(agent: Agent, p: Plan) -> str:
    """What the host would refuse of the new instances, before anything is changed."""
    leaving = {key(old) for old in [*p.removed, *(old for old, _ in p.replaced)]}
    freed = {m.name for i in agent.instances  # CARP_VMAC names free once those have stopped
             if key(i.s) in leaving and (m := macvlan_of(i)) is not None}
    for settings in [*p.added, *(new for _, new in p.replaced)]:
        try:
            link = await agent.link(settings)
            await agent.source_ip(settings, link)
            if settings.routed:
                await vip_link(agent.nl, settings)
            await check_vmac(settings, link.index, freed)
        except StartupError as e:
            return str(e)
    return ""


@dataclass
class Ready:
    """What a started instance needs of the state directory, read and written before the
    running instances are touched: a full or broken directory refuses the reload whole."""
    record: Record | None = None  # the operator's maintenance record
    counters: Prepared | None = None  # strict mode's counter mark


def prepare_state(agent: Agent, p: Plan) -> dict[str, Ready]:
    """By instance name, for the instances a reload starts (a replaced one's old settings too:
    a roll back starts it again). Raises ReloadRefused naming the path and the error. A removed
    instance needs nothing: the disk does not stop a removal (a roll back reads its own)."""
    store, ready = agent.store, dict[str, Ready]()
    if store is None:
        return ready
    starting = [*p.added, *(v for pair in p.replaced for v in pair)]
    try:
        if any(s.strict for s in starting):  # as at start: only a counter mark needs the disk
            store.prepare()
        for s in starting:
            prepare(store, s, ready.setdefault(s.name, Ready()))
        for s in p.removed:  # best effort: its roll back then needs no write
            if s.strict:
                with contextlib.suppress(StateError, OSError):
                    prepare(store, s, ready.setdefault(s.name, Ready()))
    except StateError as e:
        raise ReloadRefused([str(e)]) from None
    except OSError as e:
        raise ReloadRefused([f"CARP_STATE_DIR: cannot write in {store.directory}: "
                             f"{e.strerror or e}"]) from None
    return ready


def prepare(store: MaintenanceStore, s: Vhid, r: Ready) -> Ready:
    """Raises StateError/OSError."""
    r.record = store.operator_record(s.name, s.strict)  # as at start
    if s.strict and r.counters is None:
        r.counters = CounterMark(store, s.name).prepare(time.time)
    return r


async def apply(agent: Agent, p: Plan, new: RunConfig, ready: dict[str, Ready]) -> list[str]:
    by_key = {key(i.s): i for i in agent.instances}
    gone: list[Vhid] = []
    try:
        for old in [*p.removed, *(old for old, _ in p.replaced)]:
            await remove(agent, by_key[key(old)])
            gone.append(old)
        added = await bring_up(agent, [*p.added, *(n for _, n in p.replaced)], new, ready)
    except Exception:
        await roll_back(agent, gone, ready)
        raise
    for old, new_settings in p.updated:
        instance = by_key[key(old)]
        instance.update(new_settings, new.script_extra)
        await resync(agent, instance, old, new_settings)
    if p.script_extra:
        for instance in agent.instances:
            if instance not in added:
                instance.update(instance.s, new.script_extra)
    reload_monitors(agent, p, new)
    if p.log_level is not None:
        logs.set_level(p.log_level)
    kept = {name: getattr(agent.config, name) for name in p.at_restart}
    agent.config = dataclasses.replace(new, **kept)
    for instance in added:
        agent.start_instance(instance)
    operator.watch_files_if_needed(agent)
    operator.check_maintenance_files(agent)
    return p.changes


async def bring_up(agent: Agent, settings: list[Vhid], config: RunConfig,
                   ready: dict[str, Ready]) -> list[Instance]:
    """Build the instances (not started yet), or none: what was built is taken apart again."""
    links: dict[str, Link] = {}
    built: list[Instance] = []
    try:
        for s in settings:
            built.append(await agent.build(s, config, links))
        for name, link in links.items():
            channel = agent.channels[name]
            if channel.attached is None:
                agent.open_channel(channel, link)
            else:
                channel.refresh()  # new groups joined, the filter knows the new VIPs
        await agent.remove_stale_vips(*built)  # one address dump, one record reservation
        for instance in built:
            state = ready.get(instance.s.name) or (
                Ready() if agent.store is None else prepare(agent.store, instance.s, Ready()))
            if state.record is not None and state.record.maintenance:
                instance.set_maintenance("operator", state.record.since)
            if state.counters is not None and agent.store is not None:
                instance.keep_counters(agent.store, state.counters)
    except BaseException:
        await abandon(built)  # CARP_VMAC's macvlans this reload created
        for instance in built:
            discard(agent, instance)
        raise
    return built


async def roll_back(agent: Agent, gone: list[Vhid], ready: dict[str, Ready]) -> None:
    """A reload failed after it stopped instances: start them again as they were, so a
    failure part way costs one election, never the VIP for good."""
    for s in gone:
        try:
            (instance,) = await bring_up(agent, [s], agent.config, ready)
        except Exception as e:
            log.error("Reload: cannot start vhid %d on %s again: %r", s.vhid, s.interface, e)
            continue
        log.warning("Reload: vhid %d on %s started again as it was", s.vhid, s.interface)
        agent.start_instance(instance)
    operator.check_maintenance_files(agent)


def not_running(agent: Agent) -> list[str]:
    """Instances of the running configuration that no instance runs (a failed roll back)."""
    running = {key(i.s) for i in agent.instances if id(i) in agent.instance_tasks}
    return [f"vhid {s.vhid} on {s.interface}" + " (IPv6)" * s.ipv6 for s in agent.config.instances
            if key(s) not in running]


def show_not_running(agent: Agent) -> None:
    agent.not_running = not_running(agent)
    agent.reloads.not_running.set(len(agent.not_running))
    for what in agent.not_running:
        log.error("Instance not running: %s (restart the agent)", what)


async def remove(agent: Agent, instance: Instance) -> None:
    """A removed (or replaced) instance leaves as at a stop: a master bows out first."""
    log.warning("Reload: leaving vhid %d on %s (%s)", instance.s.vhid, instance.s.interface,
                "handing the VIP over" if instance.machine.state is State.MASTER
                else "it holds no VIP")
    await stop_instance(instance)  # and its macvlan (CARP_VMAC) goes
    for task in agent.instance_tasks.pop(id(instance), []):
        task.cancel()
    discard(agent, instance)


async def resync(agent: Agent, instance: Instance, old: Vhid, new: Vhid) -> None:
    """Paths added or removed restart that VHID's replication, never its election: a
    master keeps the VIP and serves the new paths, a backup pulls them."""
    if old.sync_paths != new.sync_paths:
        await replicas.detach(agent, instance)
        if new.sync_paths:
            await replicas.attach(agent, instance, await agent.link(new))
            assert instance.replica is not None
            instance.replica.transition(instance.machine.state)
            log.info("Reload: vhid %d on %s replicates %s", new.vhid, new.interface,
                     ", ".join(f"{p.name}={p.path}" for p in new.sync_paths))
    elif instance.replica is not None:
        instance.replica.s = new  # CARP_SYNC_MAX_LAG: the next check uses it


def discard(agent: Agent, instance: Instance) -> None:
    """Take apart a stopped (or never started) instance: sockets, timer, series, routing."""
    if instance.replica is not None:
        agent.spawn(replicas.detach(agent, instance))
    instance.close()
    instance.m.remove()
    agent.instances.remove(instance)
    channel = instance.channel
    channel.remove(instance)
    if not channel.every():
        channel.close()
        del agent.channels[channel.name]


def reload_monitors(agent: Agent, p: Plan, new: RunConfig) -> None:
    for name in p.checks:
        task = agent.monitor_tasks.pop(name, None)
        if task is not None:
            task.cancel()
        agent.monitors.pop(name, None)
        if name in new.checks:
            agent.monitors[name] = agent.monitor(name, new.checks[name])
            agent.monitor_tasks[name] = agent.spawn(agent.monitors[name].run())
    for instance in agent.instances:  # results of checks that no longer gate it, or changed
        for name in list(instance.checks):
            if name in p.checks or name not in instance.s.health:
                instance.drop_check(name)
