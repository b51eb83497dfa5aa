"""Reload (SIGHUP, `carp-sidecar reload`): re-read every source, check the new configuration
against this host, and apply the difference live (sidecar.runtime.reload plans it)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from sidecar.config.runconfig import RunConfig
from sidecar.core.machine import State
from sidecar.net.netlink import Link
from sidecar.runtime import operator
from sidecar.runtime.instance import Instance
from sidecar.runtime.reload import Plan, ReloadRefused, plan, read_config
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import vip_link
from sidecar.serve import logs

if TYPE_CHECKING:
    from sidecar.runtime.agent import Agent

log = logging.getLogger("carp-sidecar")


async def reload(agent: Agent) -> str:
    """Re-read every source (env file, CARP_CONFIG, password file) and apply the difference
    live; a configuration that does not validate, or that this host cannot run, is refused
    whole and the running one kept. The reply lists what changed."""
    async with agent.reload_lock:
        try:
            new = await read_config(agent.config.origin, agent.config.environ_secrets)
            changes = plan(agent.config, new)
            problem = await check_host(agent, changes)
            if problem:
                raise ReloadRefused([problem])
        except ReloadRefused as e:
            for line in e.errors:
                log.error("Reload refused: %s", line)
            log.error("Reload refused: still running the previous configuration")
            agent.reloads.failed()
            return "error: reload refused, nothing changed: " + "; ".join(e.errors)
        try:
            done = await apply(agent, changes, new)
        except Exception as e:  # a bug or the host changing under us: say so, keep going
            log.exception("Reload failed part way: %r", e)
            agent.reloads.failed()
            return f"error: reload failed part way ({e!r}); see the agent's log"
        agent.reloads.succeeded()
        log.warning("Configuration reloaded: %s", "; ".join(done) or "no changes")
        return "reloaded: " + ("; ".join(done) if done else "no changes")


async def check_host(agent: Agent, p: Plan) -> str:
    """What the host would refuse of the new instances, before anything is changed."""
    for settings in [*p.added, *(new for _, new in p.replaced)]:
        try:
            link = await agent.link(settings)
            await agent.source_ip(settings, link)
            if settings.routed:
                await vip_link(agent.nl, settings)
        except StartupError as e:
            return str(e)
    return ""


async def apply(agent: Agent, p: Plan, new: RunConfig) -> list[str]:
    by_key = {(i.s.interface, i.s.vhid): i for i in agent.instances}
    for old in [*p.removed, *(old for old, _ in p.replaced)]:
        await remove(agent, by_key[(old.interface, old.vhid)])
    links: dict[str, Link] = {}
    added = [await agent.build(s, new, links) for s in [*p.added, *(n for _, n in p.replaced)]]
    for name, link in links.items():
        channel = agent.channels[name]
        if channel.attached is None:
            agent.open_channel(channel, link)
        else:
            channel.refresh()  # new groups joined, the filter knows the new VIPs
    for instance in added:
        await agent.remove_stale_vips(instance)
    operator.restore_maintenance(agent, added)
    for old, new_settings in p.updated:
        by_key[(old.interface, old.vhid)].update(new_settings, new.script_extra)
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


async def remove(agent: Agent, instance: Instance) -> None:
    """A removed (or replaced) instance leaves as at a stop: a master bows out first."""
    log.warning("Reload: leaving vhid %d on %s (%s)", instance.s.vhid, instance.s.interface,
                "handing the VIP over" if instance.machine.state is State.MASTER
                else "it holds no VIP")
    await instance.stop()
    for task in agent.instance_tasks.pop(id(instance), []):
        task.cancel()
    instance.close()
    instance.m.remove()
    agent.instances.remove(instance)
    channel = instance.channel
    channel.remove(instance)
    if not channel.receivers:
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
