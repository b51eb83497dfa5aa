"""Up/down scripts, run like ucarp runs them but never blocking the protocol.

argv is ucarp's: ``[script, interface, vip(, xparam)]``, no shell, the agent's environment
(so UCARP_* from an env file are visible to scripts that used to source ucarp.conf). Each run
has a timeout after which its whole process group is killed. Output goes to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("carp-sidecar")


@dataclass(frozen=True, slots=True)
class ScriptResult:
    result: str  # ok | failed | timeout | error
    duration: float
    returncode: int | None = None


def script_argv(script: Path, interface: str, vip: str, xparam: str | None) -> list[str]:
    return [str(script), interface, vip] + ([xparam] if xparam is not None else [])


async def run_script(argv: list[str], timeout: float) -> ScriptResult:
    log.warning("Spawning [%s]", " ".join(argv))  # ucarp's words, at ucarp's level
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as e:
        log.error("Unable to exec %s: %s", " ".join(argv), e.strerror)
        return ScriptResult("error", time.monotonic() - started)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        log.error("Script [%s] timed out after %.1f s and was killed", argv[0], timeout)
        return ScriptResult("timeout", time.monotonic() - started)
    duration = time.monotonic() - started
    for line in output.decode(errors="replace").splitlines():
        log.info("%s: %s", os.path.basename(argv[0]), line)
    if proc.returncode != 0:
        log.error("Script [%s] exited with status %s", argv[0], proc.returncode)
        return ScriptResult("failed", duration, proc.returncode)
    return ScriptResult("ok", duration, 0)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
