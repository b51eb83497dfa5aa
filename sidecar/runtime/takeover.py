"""The new image's side of a restart without a move (docs/architecture.md, "Restart without a
move"): the record it starts from (``--resume-fd`` after an exec in place; an on_stop record
waiting in CARP_STATE_DIR), the keeper stopped, which instances resume as MASTER with their
VIPs, the leases back to forever, health carried over, the log line and the counts. The old
image's side is sidecar.runtime.restart.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from sidecar.core.actions import Resume
from sidecar.net.rtmsg import delete_address, set_lifetimes
from sidecar.runtime import keeper, resume, stale
from sidecar.runtime.restart import KIND, Vip, count, key, present_vips
from sidecar.runtime.resume import ResumeRecord, from_fd, keeper_key

if TYPE_CHECKING:
    from sidecar.config.runconfig import RunConfig
    from sidecar.runtime.agent import Agent

log = logging.getLogger("carp-sidecar")

Resumes = dict[tuple[str, int, bool], Resume]
Sent = dict[tuple[str, int, bool], tuple[float | None, int | None]]  # -> last advert: (at, counter)


async def resume_start(agent: Agent, record: ResumeRecord) -> Resumes:
    """Once everything is open, before the instances start: the keeper stopped, and which
    instances resume as MASTER (same interface and VHID, MASTER before, its VIPs still there).
    The others' VIPs the record kept are removed now: they start as today."""
    sent, why = judge(agent, record)
    resumes: Resumes = {}
    renew: list[Vip] = []
    by_key = {key(i): i for i in agent.instances}
    now = time.monotonic()
    for r in record.instances:
        instance = by_key.get(r.key)
        if instance is None:  # no longer configured: nobody here will hold or renew them
            _remove(r.interface, r.vhid, r.vips)
            continue
        if not r.vips:
            continue
        present = await present_vips(agent, instance)
        kept = {a for _, a, _ in present} >= {a for _, a, _ in r.vips}
        if sent is not None and r.state == "MASTER" and kept:
            at, counter = sent.get(r.key, (r.sent_at, None))
            resumes[r.key] = Resume(True, next_advert(at, r.advert_interval, now), counter,
                                    r.master_since)
            if instance.replica is not None:  # the same epoch served on (none in memory
                instance.replica.epochs.raise_to(r.epoch)  # without CARP_STATE_DIR)
            if not instance.s.manages_vip_by_scripts:
                renew += present
                hold(agent, present)
        elif not instance.s.manages_vip_by_scripts and not instance.s.neutral:
            await stale.remove_stale_vips(agent.nl, [instance], agent.instances)
    try:
        for p in set_lifetimes(renew, None):
            log.warning("Restart: cannot renew VIP %s: the kernel will remove it", p)
    except OSError as e:
        log.error("Restart: cannot renew the VIPs (%s): the kernel will remove them",
                  e.strerror or e)
    carry_intent(agent, record)
    # a master in the record that none here could resume: started afresh (a backup's record,
    # carrying its maintenance and health, is resumed as such)
    masters = any(r.state == "MASTER" and r.key in by_key for r in record.instances)
    result = "afresh" if why is not None or (masters and not resumes) else "resumed"
    count(agent, record.kind, result)
    seconds = None if record.written is None else round(max(0.0, now - record.written), 2)
    agent.last_restart = {"kind": record.kind, "from_version": record.version,
                          "seconds": seconds, "result": result}
    if why is not None:
        log.warning("Restart record of pid %d (version %s) not used: %s; starting afresh",
                    record.pid, record.version, why)
        return {}
    took = "" if seconds is None else f" in {seconds:.2f} s"
    log.info("Restarted %s%s (pid %d, version %s -> %s): %s",
             "in place" if record.kind == KIND else "after a stop", took, os.getpid(),
             record.version, agent.version, outcome(agent, resumes))
    return resumes


def judge(agent: Agent, record: ResumeRecord) -> tuple[Sent | None, str | None]:
    """The keeper stopped first, whatever follows: each instance's last advert, or None with
    why nothing may be resumed. In place, a record of another boot or namespace has its
    keeper bow out (the backups take over at once); once the keeper has answered, the
    backups' patience runs from its last advert, not from the record's ``until``."""
    if record.kind != KIND:  # on_stop: no keeper, the record's own times
        why = record.why_not()
        return (None if why else {r.key: (r.sent_at, None) for r in record.instances}), why
    why = record.why_not(until=math.inf)
    if why is not None:
        if record.keeper_fd is not None and record.keeper_pid is not None:
            keeper.release(record.keeper_fd, record.keeper_pid)
        return None, why
    sent = take_over(record)
    if sent is None:
        return None, "the keeper had gone (too late: it bowed out and the backups took over)"
    deadratio = {key(i): i.s.deadratio for i in agent.instances}
    masters = [replace(r, sent_at=sent[r.key][0]) for r in record.instances
               if r.state == "MASTER"]
    until = min((resume.until_for([m], time.monotonic(), deadratio.get(m.key, 3))
                 for m in masters), default=math.inf)
    why = record.why_not(until=until)
    return (None if why else sent), why


def carry_intent(agent: Agent, record: ResumeRecord) -> None:
    """An armed --on-stop outlives an in-place restart (a later stop still keeps the VIPs)."""
    armed = record.on_stop_until
    if record.kind == KIND and armed is not None and len(armed) == 2 \
            and time.monotonic() < armed[1]:
        agent.on_stop_until = (armed[0], armed[1])


def _remove(interface: str, vhid: int, vips: list[Vip]) -> None:
    for index, address, prefixlen in vips:
        try:
            if delete_address(index, address, prefixlen):
                log.warning("Removed VIP %s of %s vhid %d (no longer configured)",
                            address, interface, vhid)
        except OSError as e:  # its lease ends it soon all the same
            log.error("Cannot remove VIP %s: %s", address, e.strerror or e)


def record_from_argv(resume_fd: int | None, keeper_fd: int | None,
                     keeper_pid: int | None) -> ResumeRecord | None:
    """The agent's main after an exec in place: the record, with the keeper given apart (so a
    record this version cannot read never strands the keeper). Without a usable record the
    keeper is released now: it bows out (bow-out adverts, its VIPs deleted) and this image
    starts afresh as BACKUP, the backup taking over at once: never two holders."""
    record: ResumeRecord | None = None
    if resume_fd is not None:
        try:
            record = from_fd(resume_fd)
        except (OSError, ValueError) as e:  # logging is not set up yet
            UNUSABLE.append(str(e))
            print(f"carp-sidecar: restart record not used: {e}", file=sys.stderr)
    if record is not None and record.kind != KIND:
        UNUSABLE.append(f"kind {record.kind!r} after an exec")
        print(f"carp-sidecar: restart record not used: {UNUSABLE[-1]}", file=sys.stderr)
        record = None
    if keeper_fd is None or keeper_pid is None:
        return record  # an in-place record without its keeper resumes nothing (take_over)
    if record is None:
        keeper.release(keeper_fd, keeper_pid)
        return None
    return replace(record, keeper_fd=keeper_fd, keeper_pid=keeper_pid)


def hold(agent: Agent, vips: list[Vip]) -> None:
    """This process's held-VIP record lists what it kept (no add went through netlink)."""
    held = None if agent.held is None else agent.held.vips
    if held is not None:
        for index, address, prefixlen in vips:
            held.adding(index, address, prefixlen)
        held.flush()


def outcome(agent: Agent, resumes: Resumes) -> str:
    parts = []
    for i in agent.instances:
        if key(i) in resumes:
            parts.append(f"{i.s.interface} vhid {i.s.vhid} kept MASTER with "
                         + ", ".join(str(v.ip) for v in i.s.vips))
        else:
            parts.append(f"{i.s.interface} vhid {i.s.vhid} starts afresh")
    return "; ".join(parts)


def take_over(record: ResumeRecord, now: float | None = None) -> Sent | None:
    """Stop the keeper; each instance's last advert (monotonic) and counter, by (interface,
    vhid), or None if the keeper has gone (it bowed out: nothing may be resumed)."""
    if record.kind != KIND or record.keeper_fd is None or record.keeper_pid is None:
        return None
    now = time.monotonic() if now is None else now
    try:
        sock = socket.socket(fileno=record.keeper_fd)
    except OSError:
        return None
    reply = keeper.stop(sock, record.keeper_pid, record.until - now + 0.5)
    if reply is None:
        return None
    sent: Sent = {}
    for r in record.instances:
        k = reply.get(keeper_key(r.key))
        sent[r.key] = (r.sent_at, None) if k is None else (float(k["sent_at"]), int(k["counter"]))
    return sent


def next_advert(sent_at: float | None, interval: float, now: float) -> float | None:
    """A resumed MASTER's first advert: one interval after the last one sent, or at once."""
    if sent_at is None or sent_at + interval <= now:
        return None
    return sent_at + interval


def carry_check(agent: Agent, name: str) -> None:
    """A health check's state before the restart, given to its monitor and the instances it
    gates before they start: a failing service stays failing, a passing one is not unknown."""
    carried = None if agent.record is None else agent.record.checks.get(name)
    if carried is None or carried.healthy is None:
        return
    agent.monitors[name].carry(carried.healthy, carried.failed_since)
    for instance in agent.instances:
        if name in instance.s.health:
            instance.check_changed(name, carried.healthy, "" if carried.healthy
                                   else "failing before the restart", carried.failed_since)


def waiting_record(config: RunConfig) -> ResumeRecord | None:
    """`carp-sidecar run` on a state directory where a stop for a restart left a record (used
    once: sidecar.runtime.onstop reads it, says why if it cannot be used, and deletes it)."""
    if config.state_dir is None:
        return None
    from sidecar.runtime import onstop  # only with a state directory
    return onstop.resume_from_state_dir(config.state_dir, AFRESH.append)


AFRESH: list[str] = []  # why an on_stop record found at start was not used (counted then)
UNUSABLE: list[str] = []  # why an exec in place's record was not (this image: at most one)


def carried(record: ResumeRecord | None) -> dict[str, int]:
    """carp_restarts_total so far: the record's, or the on_stop records this start could not
    use (their counts are lost with them)."""
    if record is not None:
        return dict(record.restarts)
    counts = {"on_stop/afresh": len(AFRESH)} if AFRESH else {}
    return {**counts, f"{KIND}/afresh": 1} if UNUSABLE else counts


def lost(record: ResumeRecord | None) -> dict[str, object] | None:
    """/status ``agent.last_restart`` of an image that could not read its record: a restart
    in place happened all the same (`carp-sidecar restart` waits for it), started afresh."""
    if record is not None or not UNUSABLE:
        return None
    return {"kind": KIND, "from_version": None, "seconds": None, "result": "afresh"}
