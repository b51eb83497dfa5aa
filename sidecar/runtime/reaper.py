"""Reaping orphans when the agent is PID 1 (the container's entry point).

A script that starts a daemon (``cmd &``) exits and leaves the daemon to init — which, in a
container without ``--init``, is this agent. When such a daemon dies it stays a zombie unless
we collect it. asyncio waits for our own children by pid, so the reaper must never take one
of those: processes are spawned through :func:`spawn`, which records their pids, and a sweep
only collects zombies that are not ours and only while no spawn is half-way (a child that has
forked but whose pid is not yet recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

_ours: set[int] = set()
_spawning = 0


async def spawn(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` whose child the reaper leaves to asyncio."""
    global _spawning
    _spawning += 1
    try:
        proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
    finally:
        _spawning -= 1
    _ours.add(proc.pid)  # forgotten by a sweep once asyncio has collected it
    return proc


def reap_orphans() -> int:
    """Collect zombie children that are not ours; returns how many."""
    if _spawning:
        return 0
    me, reaped = os.getpid(), 0
    _ours.intersection_update(p for p in list(_ours) if os.path.exists(f"/proc/{p}"))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in _ours:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
                reaped += 1
    return reaped


async def reap_forever(interval: float = 2.0) -> None:
    while True:
        await asyncio.sleep(interval)
        reap_orphans()
