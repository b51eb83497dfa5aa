"""The operator's hand on the agent: maintenance (the control socket's demote and promote,
records kept in CARP_STATE_DIR across restarts, maintenance files) and the control verbs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from sidecar.runtime.instance import Instance
from sidecar.runtime.maintenance import Record, StateError, file_since
from sidecar.runtime.resume import ResumeRecord
from sidecar.runtime.startup import StartupError

if TYPE_CHECKING:
    from sidecar.runtime.agent import Agent

import logging

log = logging.getLogger("carp-sidecar")
MAINTENANCE_FILE_POLL = 0.5  # s: a maintenance file is noticed within a second


def restore_maintenance(agent: Agent, instances: list[Instance] | None = None,
                        resumed: ResumeRecord | None = None) -> None:
    """Before the first election: an operator's demotion and the maintenance file hold from
    the start, so a node restarted in its maintenance window stays out of it. Without
    CARP_STATE_DIR a restart's record (``resumed``) carries the operator's demotion instead."""
    instances = agent.instances if instances is None else instances
    if agent.store is None and resumed is not None:
        carried = {r.key: r.maintenance.get("operator") for r in resumed.instances}
        for instance in instances:
            since = carried.get(instance.s.key)
            if since is not None:
                instance.set_maintenance("operator", since)
    if agent.store is not None:
        strict = any(i.s.strict for i in instances)
        try:
            agent.store.prepare()
        except StateError as e:
            if strict:  # its counter mark truly needs the disk
                raise StartupError(str(e)) from None
            # availability first: only a demote or promote needs to write (and says so then)
            log.error("%s; running without it: maintenance records can be read but not "
                      "written until it is fixed", e)
        try:
            for instance in instances:
                record = agent.store.operator_record(instance.s.name, strict)
                if record is not None and record.maintenance:
                    instance.set_maintenance("operator", record.since)
                if instance.s.strict:
                    instance.keep_counters(agent.store)
        except StateError as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"CARP_STATE_DIR: cannot write in {agent.store.directory}: "
                               f"{e.strerror or e}") from None
    check_maintenance_files(agent)


def check_maintenance_files(agent: Agent) -> None:
    for instance in agent.instances:
        if instance.s.maintenance_file is not None:
            instance.set_maintenance("file", file_since(instance.s.maintenance_file))
        elif "file" in instance.maintenance:  # a reload removed the file setting
            instance.set_maintenance("file", None)


async def watch_maintenance_files(agent: Agent) -> None:
    while True:
        await asyncio.sleep(MAINTENANCE_FILE_POLL)
        check_maintenance_files(agent)


def watch_files_if_needed(agent: Agent) -> None:
    if not agent.watching_files and any(i.s.maintenance_file for i in agent.instances):
        agent.watching_files = True
        agent.spawn(watch_maintenance_files(agent))



# `restart` itself: refused (and counted) by sidecar.runtime.restart.refusal
BUSY_IN_RESTART = ("reload", "restart-on-stop", "demote", "promote")


async def control(agent: Agent, command: str) -> str:
    verb, _, arg = command.partition(" ")
    if verb in BUSY_IN_RESTART and agent.restarting:  # an exec pending, or resuming after one
        return f"error: restart in progress: {verb} refused; try again in a few seconds"
    if verb == "reload":
        return await agent.reload()
    if verb == "restart":
        return await agent.restart() if not arg else f"error: restart takes no argument: {arg!r}"
    if verb == "restart-on-stop":
        return on_stop(agent, arg)
    if verb == "status" and not arg:  # `carp-sidecar status` without HTTP: the whole view
        return json.dumps(agent.status(), separators=(",", ":"))
    targets = agent.instances
    if arg:
        if not arg.isdigit():
            return f"error: not a vhid: {arg!r}"
        targets = [i for i in agent.instances if i.s.vhid == int(arg)]
        if not targets:
            return f"error: no instance with vhid {arg}"
    unsaved = []
    if verb in ("demote", "promote"):
        since = time.time() if verb == "demote" else None
        for instance in targets:
            if instance.set_maintenance("operator", since) or verb == "demote":
                problem = persist(agent, instance, since)
                if problem:
                    unsaved.append(f"vhid {instance.s.vhid}{' (IPv6)' * instance.s.ipv6}: {problem}")
    reply = "; ".join(f"vhid {i.s.vhid}{' (IPv6)' * i.s.ipv6} {i.machine.state.name} maintenance="
                      f"{'on' if i.machine.maintenance else 'off'}" for i in targets)
    return reply + "".join(f"; NOT KEPT ACROSS RESTARTS ({u})" for u in unsaved)


def on_stop(agent: Agent, arg: str) -> str:
    """``restart-on-stop S`` (seconds, 1..86400) or ``restart-on-stop off``."""
    if arg == "off":
        return agent.restart_on_stop(None)
    try:
        seconds = float(arg or "300")
    except ValueError:
        return f"error: restart-on-stop takes seconds or off, not {arg!r}"
    return agent.restart_on_stop(seconds)


def persist(agent: Agent, instance: Instance, since: float | None) -> str:
    """Record the operator's decision; the problem if it could not be recorded."""
    if agent.store is None:
        return ""
    recorded = instance.maintenance.get("operator", since)
    try:
        agent.store.save(instance.s.name, Record(since is not None, recorded or time.time()))
    except OSError as e:
        log.error("Cannot record maintenance in %s: %s; a restart will forget it",
                  agent.store.directory, e.strerror or e)
        return f"cannot write {agent.store.path(instance.s.name)}: {e.strerror or e}"
    return ""
