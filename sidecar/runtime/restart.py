"""``carp-sidecar restart``: the agent replaces itself by the installed version in its own
process (execve: same PID) without moving the VIP (docs/architecture.md, "Restart without a
move"). The old side (:func:`restart`): refusals, the new code's pre-flight, the record
(sidecar.runtime.resume), the kernel leases on the VIPs, the keeper (sidecar.runtime.keeper),
the reply and the exec. The new image's side is sidecar.runtime.takeover; the arming of a
restart on stop is here too (the stop itself: sidecar.runtime.onstop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sidecar.core.machine import State
from sidecar.net.held import identity
from sidecar.net.rtmsg import set_lifetimes
from sidecar.runtime import keeper, resume, signals, status
from sidecar.runtime.reload import ReloadRefused, read_raw_config
from sidecar.runtime.reporter import utc
from sidecar.runtime.resume import ResumedCheck, ResumedInstance, ResumeRecord, keeper_key

if TYPE_CHECKING:
    from sidecar.runtime.agent import Agent
    from sidecar.runtime.instance import Instance

log = logging.getLogger("carp-sidecar")
Vip = tuple[int, str, int]
KIND = "in_place"
STARTED = time.time()  # this process image (loaded with the agent): an exec starts a new one
SUCCESSOR_START = 10.0  # s the new image has to take over from the keeper, which advertises


@dataclass
class Prepared:
    """What the exec needs, ready before the reply: undone if the exec fails."""

    config_fd: int
    record_fd: int
    keeper: socket.socket
    keeper_pid: int
    leased: list[Vip]
    version: str


def count(agent: Agent, kind: str, result: str) -> None:
    key = f"{kind}/{result}"  # carried in the record: increase() works across restarts
    agent.restart_counts[key] = agent.restart_counts.get(key, 0) + 1
    agent.restarts.count(kind, result)


def refusal(agent: Agent) -> str | None:
    if agent.stopping:
        return "the agent is stopping"
    if agent.restarting:
        return "restart in progress"
    if agent.reload_lock.locked():
        return "a reload is under way"
    scripted = [f"{i.s.interface} vhid {i.s.vhid}" for i in agent.instances
                if i.s.manages_vip_by_scripts and i.machine.state is State.MASTER]
    if scripted:  # no kernel lifetime ends what a script added if the new image dies
        return (f"the VIPs of {', '.join(scripted)} are its scripts' (CARP_UPSCRIPT/"
                "CARP_DOWNSCRIPT): if the new version failed, nothing would remove them "
                "beside the backup's; restart the service instead (`systemctl restart`: "
                "it bows out and hands over)")
    return None


async def restart(agent: Agent) -> str:
    """The control verb ``restart``: its reply. On success the exec follows the reply."""
    why = refusal(agent)
    if why is not None:
        return _refused(agent, why)
    agent.restarting = True
    try:
        async with agent.reload_lock:  # no reload starts meanwhile
            text, version = await read_raw_config(agent.config.origin,
                                                  agent.config.environ_secrets)
            json.loads(text)  # whole, not read: the new version's fields are its own
            present = {key(i): await present_vips(agent, i) for i in agent.instances}
    except ReloadRefused as e:
        agent.restarting = False
        return _refused(agent, "the new version does not accept the configuration: "
                        + "; ".join(e.errors))
    except (OSError, ValueError) as e:
        agent.restarting = False
        return _refused(agent, f"pre-flight failed: {e}")
    if agent.stopping:  # a stop came meanwhile: it wins
        agent.restarting = False
        return _refused(agent, "the agent is stopping")
    try:
        prepared = prepare(agent, text, version, present)
    except OSError as e:
        agent.restarting = False
        count(agent, KIND, "failed")
        log.error("Restart in place failed: %s; running on", e.strerror or e)
        return f"error: restart failed: {e.strerror or e}"
    quiesce(agent)
    agent.loop.call_soon(execute, agent, prepared)
    return (f"ok: restarting in place (pid {os.getpid()}, version {agent.version} -> "
            f"{version})")


def _refused(agent: Agent, why: str) -> str:
    count(agent, KIND, "refused")
    log.warning("Restart in place refused: %s", why)
    return f"error: restart refused: {why}"


async def present_vips(agent: Agent, instance: Instance) -> list[Vip]:
    """The instance's VIPs on its VIP interface now, with the prefix the kernel has."""
    index = instance.vip_index
    if index is None:
        return []
    mine = {v.ip for v in instance.s.vips}
    return [(index, str(a.ip), a.network.prefixlen) for a in await agent.nl.addresses(index)
            if a.ip in mine]


def record_for(agent: Agent, present: dict[tuple[str, int, bool], list[Vip]], now: float,
               kind: str = KIND) -> ResumeRecord:
    """The record of every instance and health check as they are now."""
    instances = [ResumedInstance(
        interface=i.s.interface, vhid=i.s.vhid, state=state_of(i),
        vips=present.get(key(i), []), master_since=i.reporter.master_since,
        sent_at=i.session.link.sent_at, advert_interval=interval(i),
        maintenance=dict(i.maintenance), epoch=epoch_of(i), ipv6=i.s.ipv6)
        for i in agent.instances]
    checks = {name: ResumedCheck(m.healthy, m.failed_since) for name, m in agent.monitors.items()}
    me = identity()
    deadratio = min((i.s.deadratio for i in agent.instances if i.machine.state is State.MASTER),
                    default=3)
    return ResumeRecord(kind=kind, pid=os.getpid(), version=agent.version,
                        boot_id=me["boot_id"], netns=me["netns"],
                        until=resume.until_for(instances, now, deadratio),
                        restarts=dict(agent.restart_counts),
                        started=agent.started, instances=instances, checks=checks,
                        booted=resume.boot_time(), written=now,
                        on_stop_until=None if agent.on_stop_until is None
                        else list(agent.on_stop_until))


def state_of(instance: Instance) -> str:
    """A MASTER already bowing out is no MASTER to resume."""
    machine = instance.machine
    return "BACKUP" if machine.state is State.MASTER and machine.stopping else machine.state.name


def epoch_of(instance: Instance) -> int:
    """Its replication epoch: a resumed master serves on in it (no new one: nothing moved)."""
    return 0 if instance.replica is None else instance.replica.epochs.epoch


def key(instance: Instance) -> tuple[str, int, bool]:  # what the record matches on
    return instance.s.key


def interval(instance: Instance) -> float:
    return instance.machine.advert_interval_us / 1e6


def send_fds(instance: Instance) -> list[int]:
    """The sockets adverts leave by (the keeper keeps them open): IPv4's or IPv6's unicast."""
    attached, port = instance.channel.attached, instance.port
    return ([attached.sock.fileno()] if attached is not None else []) + [
        u.sock.fileno() for u in (port.unicast, port.unicast6) if u is not None]


def leased_vips(agent: Agent, record: ResumeRecord) -> list[Vip]:
    """The present VIPs of the MASTERs the agent manages by netlink (the scripts' are theirs;
    a BACKUP's, a neutral one's, are no successor's to renew: no lease on those)."""
    by_key = {key(i): i for i in agent.instances}
    return [v for r in record.instances if r.key in by_key and r.state == "MASTER"
            and not by_key[r.key].s.manages_vip_by_scripts for v in r.vips]


def prepare(agent: Agent, text: str, version: str,
            present: dict[tuple[str, int, bool], list[Vip]]) -> Prepared:
    """Record, memfds, leases and the keeper (raises OSError, having undone its part)."""
    now = time.monotonic()
    record = record_for(agent, present, now)
    # The keeper advertises: the backups wait as long as it does. Its deadline gives the new
    # image time to start, even when adverts go every 100 ms; the kernel lease, renewed
    # with each advert, is what bounds a second holder if the keeper is killed too.
    slowest = max((interval(i) for i in agent.instances), default=1.0)
    lease = max(resume.lifetime_for(record.until + 0.999, now),  # rounded up, and with
                math.ceil(2 * slowest) + 1)  # room for a renewal (whole seconds, kernel timer)
    record = replace(record, until=max(record.until, now + SUCCESSOR_START))
    leased = leased_vips(agent, record)
    kept = [kept_for(i, [v for v in leased if v in present.get(key(i), [])], lease)
            for i in agent.instances if i.machine.state is State.MASTER and i.last_advert]
    config_fd = _memfd(text)
    sock: socket.socket | None = None
    try:
        for p in set_lifetimes(leased, lease):
            log.warning("Restart: cannot set a lifetime on VIP %s (kept forever)", p)
        sock, pid = keeper.fork(kept, record.until, [fd for i in agent.instances
                                                     for fd in send_fds(i)])
        record_fd = resume.to_memfd(record)
        os.set_inheritable(record_fd, True)
    except OSError:
        os.close(config_fd)
        if sock is not None:
            keeper.stop(sock, pid, 2.0)
        with contextlib.suppress(OSError):
            set_lifetimes(leased, None)
        raise
    return Prepared(config_fd, record_fd, sock, pid, leased, version)


def kept_for(instance: Instance, vips: list[Vip], lease: int = 0) -> keeper.Kept:
    last = instance.last_advert
    assert last is not None
    sent_at = instance.session.link.sent_at  # the loop's clock: time.monotonic()
    sent_at = time.monotonic() if sent_at is None else sent_at
    return keeper.Kept(key=keeper_key(key(instance)),
                       send=keeper.quiet_port(instance.port), advbase=last.advbase,
                       advskew=last.advskew, counter=last.counter,
                       interval=interval(instance), sent_at=sent_at, vips=vips, lease=lease)


def _memfd(text: str) -> int:
    fd = os.memfd_create("carp-sidecar-config", 0)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def quiesce(agent: Agent) -> None:
    """From the fork on the keeper advertises: the old image sends nothing more."""
    for instance in agent.instances:
        instance.timer.cancel()


def execute(agent: Agent, p: Prepared) -> None:
    """After the reply: the exec; if it fails, the keeper stopped and everything as before."""
    argv = [sys.executable, "-m", "sidecar.runtime.agent", "--config-fd", str(p.config_fd),
            "--resume-fd", str(p.record_fd), "--keeper-fd", str(p.keeper.fileno()),
            "--keeper-pid", str(p.keeper_pid), "--version", p.version,
            "--title", json.dumps(agent.title), "--swept", "[]"]
    if agent.stopping:  # a stop signal came after the reply: it wins (bow out as usual)
        undo(agent, p)
        log.warning("Restart in place abandoned: the agent is stopping")
        return
    log.info("Restarting in place: version %s -> %s, VIPs kept", agent.version, p.version)
    for handler in logging.getLogger().handlers:
        handler.flush()
    # a stop signal in the exec window waits, pending, for the new image's handlers (the mask
    # survives the exec; the new image unblocks once signals.install has run)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals.RESTART_BLOCKED)
    try:
        os.execve(sys.executable, argv, os.environ)
    except OSError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        undo(agent, p)
        count(agent, KIND, "failed")
        log.error("Restart in place failed: cannot exec %s: %s; running on", sys.executable,
                  e.strerror or e)


def undo(agent: Agent, p: Prepared) -> None:
    """No exec after all: the keeper stopped, the leases forever again, the timers back."""
    keeper.stop(p.keeper, p.keeper_pid, 2.0)
    try:
        for problem in set_lifetimes(p.leased, None):
            log.error("Cannot renew VIP %s: the kernel will remove it", problem)
    except OSError as e:
        log.error("Cannot renew the VIPs: %s; the kernel will remove them", e.strerror or e)
    for fd in (p.config_fd, p.record_fd):
        os.close(fd)
    for instance in agent.instances:
        instance.timer.reschedule()
    agent.restarting = False


# ---- on stop (`carp-sidecar restart --on-stop`): the arming here, the stop in onstop ----
ON_STOP_MAX = 86400.0


def arm_on_stop(agent: Agent, seconds: float | None) -> str:
    """The control verb ``restart-on-stop S|off``: the next stop keeps the VIPs for the next
    process on CARP_STATE_DIR, if it comes within ``seconds`` (None: disarmed)."""
    if seconds is None:
        was, agent.on_stop_until = agent.on_stop_until, None
        if was is not None:
            log.info("Restart on stop cancelled: a stop bows out again")
        return "ok: restart on stop off: a stop bows out and hands over"
    if agent.config.state_dir is None:
        return ("error: restart on stop needs CARP_STATE_DIR (the record waits there for the "
                "next process, on a volume kept across the restart)")
    if not 1 <= seconds <= ON_STOP_MAX:
        return f"error: restart on stop: {seconds:g} s is not within 1..{ON_STOP_MAX:g}"
    if agent.stopping:
        return "error: the agent is stopping"
    wall = time.time() + seconds
    agent.on_stop_until = (wall, time.monotonic() + seconds)
    log.info("Restart on stop armed: a stop within %g s keeps the VIPs for the next process "
             "on %s (until %s)", seconds, agent.config.state_dir, utc(wall))
    return f"ok: restart on stop armed until {utc(wall)}: the next stop keeps the VIPs"


async def stop_for_restart(agent: Agent) -> bool:
    """At a stop: armed and not expired, stop holding the VIPs for the next process
    (sidecar.runtime.onstop); False: stop as usual (bow out)."""
    armed = agent.on_stop_until
    if armed is None or time.monotonic() >= armed[1]:
        return False
    from sidecar.runtime import onstop  # only on this path
    return await onstop.stop_for_restart(agent)


def agent_status(agent: Agent) -> dict[str, Any]:
    """/status ``agent``: this process image, and its restarts."""
    armed = agent.on_stop_until
    restarts = sum(n for k, n in agent.restart_counts.items()
                   if k.endswith(("/resumed", "/afresh")))  # the ones that happened
    return status.agent_status(agent.version, agent.started, restarts,
                               None if armed is None else armed[0], agent.last_restart)
