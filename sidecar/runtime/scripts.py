"""Up/down scripts, run like ucarp runs them but never blocking the protocol.

argv is ucarp's: ``[script, interface, vip(, xparam)]``, no shell. Like ucarp, the agent waits
for the script *process* and nothing else: a script that starts a daemon (``service x start``,
``cmd &``) has finished when its own process exits, and the daemon lives on. The script's
output goes where the agent's own log goes (inherited stderr), as with ucarp, so a daemon
that keeps writing never holds a pipe the agent would have to drain.

Environment: the agent's own, without any CARP_*/UCARP_* variable (the password never reaches a
script), plus the env file's other variables, plus the effective settings under both their
CARP_* and UCARP_* names (so a classic up script can use ``$UCARP_IF_ALIAS`` without sourcing
ucarp.conf), plus the event: ``CARP_STATE`` (MASTER, BACKUP, FAULT, STOP), ``CARP_REASON``,
``CARP_PEER`` (when one caused it), ``CARP_VIPS``, ``CARP_INSTANCE`` — what a cloud hook needs
to move an address through a provider's API.

A run ends in one of: ``ok``, ``failed`` (non-zero exit), ``error`` (cannot exec), ``timeout``
(the script's process group is killed), ``superseded`` (the agent left the state the script was
moving to, e.g. demoted while the upscript still ran: the group gets SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.runtime.reaper import spawn
from sidecar.runtime.serial import SerialWork
from sidecar.serve.logs import fields

log = logging.getLogger("carp-sidecar")
SUPERSEDE_GRACE = 0.5  # s between SIGTERM and SIGKILL for a superseded script's process group


@dataclass(frozen=True, slots=True)
class ScriptResult:
    result: str  # ok | failed | error | timeout | superseded
    duration: float
    returncode: int | None = None


def script_argv(script: Path, interface: str, vip: str, xparam: str | None) -> list[str]:
    return [str(script), interface, vip] + ([xparam] if xparam is not None else [])


def base_environment(extra: dict[str, str], settings: tuple[tuple[str, str], ...]
                     ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    env.update(extra)
    env.update(settings)
    return env


async def run_script(argv: list[str], timeout: float, abort: asyncio.Event | None = None,
                     env: dict[str, str] | None = None,
                     failure_note: str | None = None) -> ScriptResult:
    """Run ``argv`` to its end, its timeout, or until ``abort`` is set. With ``failure_note``
    (why a non-zero exit is harmless), a non-zero exit is told at INFO with that note: an
    ERROR at every start teaches operators to ignore ERRORs."""
    log.warning("Spawning [%s]", " ".join(argv), extra=fields(script=argv[0]))  # ucarp's words
    started = time.monotonic()
    try:
        proc = await spawn(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=2, stderr=2,
                           start_new_session=True, env=env)
    except OSError as e:
        log.error("Unable to exec %s: %s", " ".join(argv), e.strerror,
                  extra=fields(script=argv[0], result="error"))
        return ScriptResult("error", time.monotonic() - started)
    exited: asyncio.Future[int] = asyncio.ensure_future(proc.wait())
    aborted = asyncio.ensure_future(abort.wait()) if abort is not None else None
    waiters: set[asyncio.Future[object]] = {exited}  # type: ignore[arg-type]
    if aborted is not None:
        waiters.add(aborted)  # type: ignore[arg-type]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the agent is stopping: leave no half-run script behind
        _signal_group(proc.pid, signal.SIGKILL)
        raise
    finally:
        if aborted is not None:
            aborted.cancel()
    if not exited.done():
        if aborted is not None and aborted in done:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), SUPERSEDE_GRACE)
            _signal_group(proc.pid, signal.SIGKILL)
            await exited
            log.warning("Script [%s] superseded by a newer state change and stopped", argv[0],
                        extra=fields(script=argv[0], result="superseded"))
            return ScriptResult("superseded", time.monotonic() - started)
        _signal_group(proc.pid, signal.SIGKILL)
        await exited
        log.error("Script [%s] timed out after %.1f s and was killed", argv[0], timeout,
                  extra=fields(script=argv[0], result="timeout"))
        return ScriptResult("timeout", time.monotonic() - started)
    duration = time.monotonic() - started
    if proc.returncode != 0:
        log.log(logging.ERROR if failure_note is None else logging.INFO,
                "Script [%s] exited with status %s%s", argv[0], proc.returncode,
                "" if failure_note is None else f" ({failure_note})",
                extra=fields(script=argv[0], result="failed"))
        return ScriptResult("failed", duration, proc.returncode)
    return ScriptResult("ok", duration, 0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Notifier(SerialWork[tuple[list[str], dict[str, str]]]):
    """The notify script (keepalived's ``notify``): ``script VHID STATE REASON`` on every state
    change, in order, one at a time, off the protocol's path. A script slower than the changes
    it reports cannot queue without bound: beyond ``capacity`` the oldest waiting call goes."""

    def __init__(self, script: Path, vhid: int, timeout: float,
                 on_result: Callable[[ScriptResult], None], capacity: int = 32) -> None:
        super().__init__(capacity)
        self.script, self.vhid, self.timeout, self.on_result = script, vhid, timeout, on_result

    def notify(self, state: str, reason: str, env: dict[str, str]) -> None:
        if len(self._pending) == self._pending.maxlen:
            log.warning("Notify script [%s] falls behind: dropping its oldest waiting call",
                        self.script)
        self._put(([str(self.script), str(self.vhid), state, reason], env))

    async def _handle(self, item: tuple[list[str], dict[str, str]]) -> None:
        argv, env = item
        self.on_result(await run_script(argv, self.timeout, env=env))
