"""A stop that keeps the VIPs for the next process (`carp-sidecar restart --on-stop`, then a
SIGTERM: `podman restart`, `docker compose up -d` on the same state volume), and the record
both ways of restarting carry (docs/architecture.md, "Restart without a move").

A plain stop bows out, drops the VIPs and runs the downscript. Armed, the stop does none of
that: it writes the record (sidecar.runtime.resume) in CARP_STATE_DIR, gives the VIPs a kernel
lifetime ending when the backups would take over anyway, and leaves. The next process on that
state directory resumes from the record; if none comes, the kernel removes the VIPs and the
backups take over, as after a crash, but with no second holder. Whatever cannot be done (no
state directory, a full disk, a lease refused) makes it a plain stop: never a VIP held with
nobody to let it go.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.core.machine import State
from sidecar.net.rtmsg import set_lifetimes
from sidecar.runtime import resume
from sidecar.runtime.restart import key, leased_vips, present_vips, record_for
from sidecar.runtime.resume import ResumeRecord

if TYPE_CHECKING:
    from sidecar.runtime.agent import Agent

log = logging.getLogger("carp-sidecar")
Held = tuple[int, str, int]  # (interface index, address, prefix length), as the record lists


async def stop_for_restart(agent: Agent) -> bool:
    """Stop holding the VIPs for the next process on CARP_STATE_DIR (the restart intent was
    armed); True once done. False, with the reason logged, when it cannot be done safely:
    the caller then stops as usual (bow-out, VIPs dropped, downscript)."""
    state_dir = agent.config.state_dir
    if state_dir is None:  # arming refuses this; a reload may have turned it off since
        log.error("Stopping for a restart needs CARP_STATE_DIR: stopping as a plain stop "
                  "(bow-out, VIPs released)")
        return False
    scripted = [f"{i.s.interface} vhid {i.s.vhid}" for i in agent.instances
                if i.s.manages_vip_by_scripts and i.machine.state is State.MASTER]
    if scripted:  # no kernel lifetime ends what a script added if no successor comes
        log.error("Stopping for a restart: the VIPs of %s are its scripts' (the kernel cannot "
                  "end them if no successor comes): stopping as a plain stop (bow-out, "
                  "downscript)", ", ".join(scripted))
        return False
    async with agent.reload_lock:  # a reload under way ends first: nothing changes after
        try:
            present = {key(i): await present_vips(agent, i) for i in agent.instances}
            now = time.monotonic()
            record = record_for(agent, present, now, kind="on_stop")
            resume.write_state_dir(state_dir, record)
        except Exception as e:  # OSError: a full or read-only disk; anything else: a bug
            log.error("Cannot write the restart record in %s (%s): stopping as a plain stop "
                      "(bow-out, VIPs released)", state_dir, getattr(e, "strerror", None) or e)
            return False
        # rounded up, not down: a lease ending before ``until`` would take the VIP from a
        # successor still on its way; the backups wait SAFETY s and their skew beyond it
        seconds = resume.lifetime_for(record.until + 0.999, now)
        if not _lease(agent, record, seconds, state_dir):
            return False
        freeze(agent)
    if record.vips():
        log.info("Stopping for a restart: VIPs kept until the next process on %s (for at most "
                 "%d s): %s", state_dir, seconds, _held(record))
    else:
        log.info("Stopping for a restart: no VIP held here; the next process on %s carries "
                 "on (maintenance, health, counts)", state_dir)
    return True


def _lease(agent: Agent, record: ResumeRecord, seconds: int, state_dir: Path) -> bool:
    """The kernel's lifetime on the VIPs: without it, a successor that never comes would leave
    them here forever beside the backup's. Any failure undoes the lot."""
    vips = leased_vips(agent, record)
    try:
        problems = set_lifetimes(vips, seconds)
    except OSError as e:
        problems = [f"netlink: {e.strerror or e}"]
    if not problems:
        return True
    resume.discard_state_dir(state_dir)
    with contextlib.suppress(OSError):  # the bow-out that follows removes them anyway
        set_lifetimes(vips, None)
    log.error("Cannot set a lifetime on the VIPs (%s): stopping as a plain stop (bow-out, "
              "VIPs released)", "; ".join(problems))
    return False


def freeze(agent: Agent) -> None:
    """End every instance where it stands: no advert, no VIP change, no script from now on
    (no bow-out, no downscript). The agent's close() releases the rest; its held-VIP record
    stays on disk, listing the VIPs, for the successor's sweep to keep."""
    for task in agent.monitor_tasks.values():
        task.cancel()  # a check turning bad now must not make a master bow out
    for instance in agent.instances:
        for task in agent.instance_tasks.get(id(instance), []):
            task.cancel()  # its effects (a VIP change queued) and script jobs
        instance.close()  # its timer (adverts) and sockets
    for channel in agent.channels.values():
        channel.close()  # nothing heard: nothing to answer


def _held(record: ResumeRecord) -> str:
    kept = [f"{i.interface} vhid {i.vhid} {i.state} with {', '.join(a for _, a, _ in i.vips)}"
            for i in record.instances if i.vips]
    return "; ".join(kept)


def resume_from_state_dir(state_dir: Path,
                          afresh: Callable[[str], None] | None = None) -> ResumeRecord | None:
    """The on_stop record the previous process left in ``state_dir`` if it can be used here
    and now, else None. Read once: deleted whatever it says. One that cannot be used is
    logged with why, and ``afresh`` (the agent counts it) called with the reason."""
    path = state_dir / resume.RESUME_FILE
    try:
        record = resume.read_state_dir(state_dir)
    except ValueError as e:
        why: str | None = str(e)
        record = None
    else:
        if record is None:
            return None
        why = ("not an on-stop record" if record.kind != "on_stop" else record.why_not())
    resume.discard_state_dir(state_dir)
    if why is None:
        return record
    who = "" if record is None else f" (pid {record.pid}, version {record.version})"
    log.warning("Restart record %s%s not used: %s; starting afresh (its VIPs removed as "
                "stale)", path, who, why)
    if afresh is not None:
        afresh(why)
    return None
