"""The asyncio host: builds channels (one per interface) and instances (one per VHID), routes
netlink, health and operator events to them, and serves HTTP and the control socket.

Everything is built complete before the loop starts taking events (:meth:`Agent.start` is the
async factory); after that nothing is Optional. The protocol timers are the instances' own
``loop.call_at`` deadlines; there is no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from sidecar.config.runconfig import Check, RunConfig, Vhid, host_port
from sidecar.core.actions import Address, Resume
from sidecar.core.machine import State
from sidecar.net.caps import missing_capability, source_address
from sidecar.net.channel import Channel
from sidecar.net.netlink import (
    AddressEvent,
    InterfaceNotFound,
    Link,
    LinkEvent,
    Netlink,
)
from sidecar.runtime import keeper, operator, reloader, replicas, restart, signals, takeover
from sidecar.runtime.health import HealthMonitor, checks_for
from sidecar.runtime.instance import Instance, link_vips
from sidecar.runtime.linklocal import ipv6_source
from sidecar.runtime.maintenance import MaintenanceStore
from sidecar.runtime.reaper import reap_forever
from sidecar.runtime.resume import ResumeRecord
from sidecar.runtime.stale import HeldRecord, log_swept, remove_stale_vips
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import address_owner
from sidecar.runtime.vmac import abandon, place_vips, stop_instance, vmac_link_event
from sidecar.serve import logs
from sidecar.serve.control import ControlServer
from sidecar.serve.http import StatusServer
from sidecar.serve.metrics import Metrics, ReloadMetrics, RestartMetrics

if TYPE_CHECKING:  # loaded only when a path is configured (the agent's import contract)
    from sidecar.replica.service import Replication

log = logging.getLogger("carp-sidecar")


def check_capabilities(config: RunConfig) -> None:
    problem = missing_capability(any(not i.manages_vip_by_scripts for i in config.instances))
    if problem:
        raise StartupError(problem)


def open_channel(channel: Channel, link: Link) -> None:
    try:
        channel.open(link)
    except PermissionError:
        raise StartupError("missing capability NET_RAW for the packet socket") from None
    except OSError as e:
        raise StartupError(f"CARP_INTERFACE: cannot open {channel.name}: "
                           f"{e.strerror}") from None


def realtime() -> None:
    """SCHED_FIFO for the agent (CARP_REALTIME), with reset-on-fork so scripts and checks
    run at normal priority; needs CAP_SYS_NICE, else niceness -10, else nothing (logged)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
        log.info("Running with real-time scheduling (SCHED_FIFO 10)")
        return
    except PermissionError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        log.warning("CARP_REALTIME: no CAP_SYS_NICE for SCHED_FIFO; running at nice -10")
    except PermissionError:
        log.warning("CARP_REALTIME: no CAP_SYS_NICE: normal scheduling "
                    "(docker run --cap-add=SYS_NICE)")


class Agent:
    open_channel = staticmethod(open_channel)  # the reloader's too

    def __init__(self, config: RunConfig, nl: Netlink, registry: CollectorRegistry,
                 metrics: Metrics, loop: asyncio.AbstractEventLoop,
                 record: ResumeRecord | None = None) -> None:
        self.config, self.nl, self.registry, self.metrics, self.loop = (
            config, nl, registry, metrics, loop)
        self.channels: dict[str, Channel] = {}
        self.instances: list[Instance] = []
        self.monitors: dict[str, HealthMonitor] = {}
        self.monitor_tasks: dict[str, asyncio.Task[None]] = {}
        self.instance_tasks: dict[int, list[asyncio.Task[None]]] = {}  # id(instance) -> jobs
        self.reload_lock, self.watching_files = asyncio.Lock(), False
        self.reloads = ReloadMetrics(registry)
        self.http: StatusServer | None = None
        self.control: ControlServer | None = None
        self.store = None if config.state_dir is None else MaintenanceStore(config.state_dir)
        self.held: HeldRecord | None = None  # set by start
        self.failed = False
        self.not_running: list[str] = []  # configured instances a failed reload left stopped
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.replication: Replication | None = None  # only once a VHID has a sync path
        # restarts (sidecar.runtime.restart): this image, and what the one before left
        self.version, self.title, self.started, self.record = "0", "carp-sidecar", restart.STARTED, record
        self.restart_counts = takeover.carried(record)
        self.restarts = RestartMetrics(registry, dict(self.restart_counts))
        self.restarting = record is not None  # until resumed (sidecar.runtime.takeover)
        self.on_stop_until: tuple[float, float] | None = None  # (Unix, monotonic) when armed
        self.last_restart: dict[str, Any] | None = takeover.lost(record)

    @classmethod
    async def start(cls, config: RunConfig, registry: CollectorRegistry | None = None,
                    version: str = "0", record: ResumeRecord | None = None) -> Agent:
        """Open everything, or raise StartupError naming what to change (nothing left open).
        ``record``: what the process before a restart left (its VIPs are not swept)."""
        check_capabilities(config)
        registry = registry or CollectorRegistry()
        held = HeldRecord(config, registry,  # a dead run's swept; never fatal: a speed-up
                          frozenset(record.vips()) if record else frozenset())
        agent = cls(config, Netlink(held.vips), registry, Metrics(registry, version),
                    asyncio.get_running_loop(), record)
        agent.held, agent.version = held, version
        try:
            await agent._open()
        except BaseException:
            await abandon(agent.instances)  # CARP_VMAC's macvlans this start created
            await agent.close()
            raise
        return agent

    async def _open(self) -> None:
        links: dict[str, Link] = {}  # one lookup per interface, however many instances
        for settings in self.config.instances:
            await self.build(settings, self.config, links)
        for name, channel in self.channels.items():
            self.open_channel(channel, links[name])
        await self.remove_stale_vips(*self.instances)
        operator.restore_maintenance(self, resumed=self.record)
        await self._open_servers()
        for name, check in self.config.checks.items():
            self.monitors[name] = self.monitor(name, check)
            takeover.carry_check(self, name)

    async def build(self, settings: Vhid, config: RunConfig,
                     links: dict[str, Link]) -> Instance:
        """An instance and, if its interface is new, its channel (opened by the caller)."""
        channel = self.channels.get(settings.interface)
        if channel is None:
            channel = self.channels[settings.interface] = Channel(settings.interface, self.loop)
        if settings.interface not in links:
            links[settings.interface] = await self.link(settings)
        srcip = await self.source_ip(settings, links[settings.interface])
        try:
            instance = Instance(settings, srcip, channel, self.nl, self.metrics, self.loop,
                                several=len(config.instances) > 1,
                                script_extra=config.script_extra)
        except OSError as e:  # the unicast socket (CARP_PEERS) needs NET_RAW
            raise StartupError(f"CARP_PEERS: cannot open the unicast socket: "
                               f"{e.strerror or e}" + self._where(settings)) from None
        await place_vips(self.nl, instance, links[settings.interface].index, config.state_dir)
        channel.add(instance, srcip, None if settings.nomcast else settings.mcast,
                    *link_vips(settings))
        self.instances.append(instance)
        if settings.sync_paths:
            await replicas.attach(self, instance, links[settings.interface])
        return instance

    def monitor(self, name: str, check: Check) -> HealthMonitor:
        """One check, declared once, gating every instance that names it (now: a reload may
        change which)."""
        def gated() -> list[Instance]:
            return [i for i in self.instances if name in i.s.health]

        def result(ok: bool) -> None:
            for instance in gated():
                instance.m.health_checks[ok].inc()

        def changed(healthy: bool, error: str) -> None:
            for instance in gated():
                instance.check_changed(name, healthy, error, monitor.failed_since)

        monitor = HealthMonitor(checks_for(check), check.interval, check.timeout, check.rise,
                                check.fall, result, changed)
        return monitor

    async def link(self, s: Vhid) -> Link:
        try:
            return await self.nl.link(s.interface)
        except InterfaceNotFound:
            raise StartupError(f"CARP_INTERFACE: no interface named {s.interface!r}"
                               + self._where(s)) from None

    async def source_ip(self, s: Vhid, link: Link) -> Address:
        if s.ipv6:
            return await ipv6_source(self.nl, s, link.index, self.config.instances)
        addresses = [a.ip for a in await self.nl.ipv4_addresses(link.index)]
        vips = [] if address_owner(s) else [v.ip for v in s.vips]  # the owner's are its own
        srcip, problem = source_address(s.srcip, s.interface, addresses, vips)
        if srcip is None:
            raise StartupError(problem + self._where(s))
        return srcip

    def _where(self, s: Vhid) -> str:
        return "" if self.config.source == "environment" else f" ({self.config.source}: {s.name})"

    async def remove_stale_vips(self, *instances: Instance) -> None:
        """The new instances' (all at start, a reload's added ones): one address dump."""
        if self.held is not None:
            self.held.reserve(self.instances)  # a reload may have added VIPs
        keep = frozenset() if self.record is None else frozenset(
            (i, a) for i, a, _ in self.record.vips())  # a restart's: resumed, or removed then
        await remove_stale_vips(self.nl, instances, self.instances, keep)

    async def _open_servers(self) -> None:
        listen = self.config.metrics_listen
        if listen != "off":
            host, port = host_port(listen)
            self.http = StatusServer(self.registry, self.status, self.ready,
                                     self.metrics.http_refused.inc, self.alive)
            try:
                await self.http.start(host, port)
            except OSError as e:
                raise StartupError(f"CARP_METRICS_LISTEN: cannot listen on {listen}: "
                                   f"{e.strerror}") from None
        control = ControlServer(self.config.control_socket, functools.partial(operator.control, self))
        try:
            await control.start()
        except OSError as e:
            raise StartupError(f"CARP_CONTROL_SOCKET: cannot create {control.path}: "
                               f"{e.strerror or e}") from None
        self.control = control

    # ---- running ----
    async def run(self) -> int:
        """Run until a stop signal, then hand over and release everything; the exit status."""
        handled = signals.install(self.loop, self.config.as_ucarp, self._stopping, {
            signals.Meaning.RELOAD: self._reload_signal, signals.Meaning.STATUS: self._log_state,
            signals.Meaning.STEP_DOWN: self._step_down})
        self.spawn(self._netlink_events())
        if self.control is not None:
            self.spawn(self.control.watch())
        for name, monitor in self.monitors.items():
            self.monitor_tasks[name] = self.spawn(monitor.run())
        operator.watch_files_if_needed(self)
        if os.getpid() == 1:  # a container's entry point inherits every orphaned daemon
            self.spawn(reap_forever())
        # Everything built at start lives as long as the process: out of the collector's sight,
        # a full collection walks only what changes, and a sub-second master is not paused.
        gc.collect()
        gc.freeze()
        if self.config.realtime:
            realtime()
        resumes = {} if self.record is None else await takeover.resume_start(self, self.record)
        for instance in self.instances:
            self.start_instance(instance, resumes.get(restart.key(instance)))
        self.restarting = False  # resumed (or not) and started: reload, restart, demote again
        await self._stopping.wait()
        if not await restart.stop_for_restart(self):
            await self._stop_instances()
        log.info("Exiting")
        signals.ignore_from_now(self.loop, handled)  # the stop is done: the status stays
        return 1 if self.failed else 0

    async def _stop_instances(self) -> None:
        await asyncio.gather(*(stop_instance(i) for i in self.instances))
        # a reload under way when the stop came ends first (its child, then what it applies),
        # so no task of it outlives the loop and nothing it started keeps a VIP
        async with self.reload_lock:
            await asyncio.gather(*(stop_instance(i) for i in self.instances if not i.stopped.is_set()))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def start_instance(self, instance: Instance, resume: Resume | None = None) -> None:
        self.instance_tasks[id(instance)] = [self.spawn(job) for job in instance.start(resume)]

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # A helper that dies would leave the agent deaf or stuck: log it and stop cleanly.
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Internal task failed: %r; stopping", task.exception(),
                      exc_info=task.exception())
            self.failed = True
            self._stopping.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for instance in self.instances:
            instance.close()
        for server in (self.http, self.control):
            if server is not None:
                await server.close()  # the control socket: only if it is still ours
        for channel in self.channels.values():
            channel.close()
        if self.replication is not None:
            await self.replication.close()
        with contextlib.suppress(Exception):
            self.nl.close()

    async def _netlink_events(self) -> None:
        async for event in self.nl.events():
            if isinstance(event, LinkEvent):
                for channel in self.channels.values():
                    channel.link_event(event)
                for i in self.instances:
                    if i.s.vip_interface == event.name and (event.deleted
                                                            or event.index != i.vip_ifindex):
                        i.vip_link_changed(None if event.deleted else event.index)
                vmac_link_event(self, event)
            else:
                self._address_event(event)

    def _address_event(self, event: AddressEvent) -> None:
        for instance in self.instances:
            if event.index in (instance.channel.ifindex, instance.vip_index):
                instance.address_event(event)

    # ---- reload (SIGHUP, `carp-sidecar reload`) ----
    def _reload_signal(self) -> None:
        log.info("Received SIGHUP: reloading the configuration")
        self.spawn(self._reload_quietly())

    async def reload(self) -> str:
        if self._stopping.is_set() or self.restarting:
            return ("error: the agent is stopping: nothing reloaded" if self.stopping
                    else "error: restart in progress: nothing reloaded")
        return await reloader.reload(self)

    # ---- restart (`carp-sidecar restart [--on-stop]`: sidecar.runtime.restart) ----
    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def restart(self) -> str:
        return await restart.restart(self)

    def restart_on_stop(self, seconds: float | None) -> str:
        return restart.arm_on_stop(self, seconds)

    async def _reload_quietly(self) -> None:
        await self.reload()  # the outcome is logged and exported; nobody waits for the reply

    def _log_state(self) -> None:
        for instance, i in ((instance, instance.s) for instance in self.instances):
            # ucarp's SIGUSR1 line (an IPv6 one's VRID may also be an IPv4 one's)
            state = "MASTER" if instance.machine.state is State.MASTER else "BACKUP"
            log.info("%s on %s id %d%s", state, i.interface, i.vhid, " (IPv6)" * i.ipv6)

    def _step_down(self) -> None:
        """SIGUSR2, as in ucarp: a master goes BACKUP (downscript) and pauses 3 s; ours bows out
        first, so the backup takes over at once. Maintenance is `carp-sidecar demote`."""
        log.warning("Caught signal (USR2) considering going down")
        for instance in self.instances:
            instance.step_down()


    # ---- HTTP views ----
    def ready(self) -> bool:
        return not self.not_running and all(i.ready() for i in self.instances)

    def alive(self) -> str:  # /healthz fails while an instance does not run: a restart helps
        return "instance not running: " + ", ".join(self.not_running) if self.not_running else ""

    def status(self) -> dict[str, Any]:
        instances = [i.status() for i in self.instances]
        control = None if self.control is None else {
            "path": str(self.control.path), "ok": not self.control.problem,
            "problem": self.control.problem or None}
        # one instance (the environment's): its fields at the top level, as before
        top = dict(instances[0]) if len(instances) == 1 else {}
        return {**top, "instances": instances, "control_socket": control,
                "held_record": None if self.held is None else self.held.status(),
                "agent": restart.agent_status(self)}


def run_agent(config: RunConfig, version: str = "0",
              swept: list[tuple[str, str]] | None = None, record: ResumeRecord | None = None,
              title: str = "carp-sidecar") -> int:
    """Run in this process (tests, embedding); ``carp-sidecar run`` goes through :func:`main`.
    ``record``: a restart's (sidecar.runtime.resume), to resume from."""
    logs.setup(config.log_format, config.log_level, config.syslog)
    log_swept(swept or [])
    record = record or takeover.waiting_record(config)  # an on_stop restart's, if one waits

    async def main() -> int:
        agent = await Agent.start(config, version=version, record=record)
        agent.title = title
        try:
            return await agent.run()
        finally:
            await agent.close()

    try:
        return asyncio.run(main())
    except StartupError as e:
        print(f"carp-sidecar: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sidecar.runtime.agent --config-fd N [--version V]``: what ``carp-sidecar run`` execs
    once it has validated the configuration (see :mod:`runconfig`), and what an in-place
    restart execs (``--resume-fd``: the record, sidecar.runtime.resume)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sidecar.runtime.agent")
    p.add_argument("--config-fd", type=int, required=True)
    p.add_argument("--resume-fd", type=int, default=None)
    p.add_argument("--keeper-fd", type=int, default=None)  # an in-place restart's keeper
    p.add_argument("--keeper-pid", type=int, default=None)
    p.add_argument("--version", default="0")
    p.add_argument("--title", default='"carp-sidecar"', help="process title (JSON string)")
    p.add_argument("--swept", default="[]", help="stale VIPs `run` removed before validating "
                   "(JSON [[address, interface], ...]): logged once logging is set up")
    args = p.parse_args(argv)
    title = json.loads(args.title)
    keeper.set_title(title)
    with os.fdopen(args.config_fd, "rb") as f:
        config = RunConfig.from_json(f.read().decode())
    record = takeover.record_from_argv(args.resume_fd, args.keeper_fd, args.keeper_pid)
    return run_agent(config, version=args.version, record=record, title=title,
                     swept=[(a, i) for a, i in json.loads(args.swept)])


if __name__ == "__main__":
    sys.exit(main())
