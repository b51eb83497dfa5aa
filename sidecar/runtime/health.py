"""Checks of the co-located service (HTTP, TCP, exec) with rise/fall, off the protocol's path.

Each check runs as its own asyncio task with a hard timeout, so a hanging check can never delay
an advertisement. The first result sets the status at once; after that a change needs ``rise``
consecutive successes or ``fall`` consecutive failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from sidecar.config.runconfig import Check as CheckConfig
from sidecar.config.runconfig import host_port
from sidecar.net.httpclient import HttpError, fetch
from sidecar.runtime.reaper import spawn
from sidecar.runtime.scripts import base_environment

Check = Callable[[], Awaitable[bool]]


def http_check(url: str, expect_status: int, host: str | None = None, body: str | None = None,
               verify: bool = True, timeout: float = 1.0) -> Check:
    """GET ``url`` (no redirects followed): the status must be ``expect_status`` and the body
    contain ``body`` when given. The blocking client runs in this module's own small thread
    pool, so checks that hang cannot starve anything else (the /metrics renderer)."""
    needle = body.encode() if body else None

    async def check() -> bool:
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(
            _pool(), lambda: fetch(url, timeout, host=host, verify=verify))
        if response.status != expect_status:
            raise HttpError(0, f"status {response.status}, expected {expect_status}")
        if needle is not None and needle not in response.body:
            raise HttpError(0, f"body does not contain {body!r}")
        return True

    return check


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
    return _POOL


def tcp_check(target: str) -> Check:
    host, port = host_port(target)

    async def check() -> bool:
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return True

    return check


def exec_check(command: str) -> Check:
    """Run ``command``; exit 0 is healthy. Its environment is the agent's without any
    CARP_*/UCARP_* variable (unlike the scripts it gets no settings and no env-file
    variables): health commands are often third-party checks that log it."""
    argv = shlex.split(command)

    async def check() -> bool:
        proc = await spawn(*argv, stdin=asyncio.subprocess.DEVNULL,
                           stdout=asyncio.subprocess.DEVNULL,
                           stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
                           env=base_environment({}, ()))
        try:
            return await proc.wait() == 0
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise

    return check


def checks_for(settings: CheckConfig) -> list[tuple[str, Check]]:
    checks: list[tuple[str, Check]] = []
    if settings.url:
        checks.append((f"http {settings.url}", http_check(
            settings.url, settings.status, settings.host, settings.body,
            verify=not settings.insecure, timeout=settings.timeout)))
    if settings.tcp:
        checks.append((f"tcp {settings.tcp}", tcp_check(settings.tcp)))
    if settings.cmd:
        checks.append((f"exec {settings.cmd}", exec_check(settings.cmd)))
    return checks


class HealthMonitor:
    """All configured checks must pass for the service to count as healthy."""

    def __init__(self, checks: list[tuple[str, Check]], interval: float, timeout: float,
                 rise: int, fall: int, on_result: Callable[[bool], None],
                 on_change: Callable[[bool, str], None]) -> None:
        self.checks, self.interval, self.timeout = checks, interval, timeout
        self.rise, self.fall = rise, fall
        self.healthy: bool | None = None
        # where a health-check failover's outage begins, measured as a client measures its
        # gap: the loop time of the last passing check's answer before the current failing
        # streak (the start of the first failing check if none ever passed); None while passing
        self.failed_since: float | None = None
        self._last_pass: float | None = None
        self.last_error = ""
        self._streak = 0
        self._on_result, self._on_change = on_result, on_change

    def carry(self, healthy: bool | None, failed_since: float | None) -> None:
        """Start from what the process before a restart knew: the first result then needs
        ``rise``/``fall`` like any change, so a restart neither resets a failing service to
        healthy nor demotes a passing one until its first check."""
        self.healthy, self.failed_since = healthy, failed_since
        if healthy is False and failed_since is not None:
            self._last_pass = failed_since

    async def run_once(self) -> bool:
        for name, check in self.checks:
            try:
                ok = await asyncio.wait_for(check(), self.timeout)
                error = "" if ok else f"{name}: unexpected answer"
            except TimeoutError:
                ok, error = False, f"{name}: no answer within {self.timeout:g} s"
            except OSError as e:
                ok, error = False, f"{name}: {e.strerror or e}"
            if not ok:
                self.last_error = error
                return False
        self.last_error = ""
        return True

    def record(self, ok: bool, started: float | None = None, done: float | None = None) -> None:
        self._on_result(ok)
        if ok:
            self.failed_since, self._last_pass = None, done
        elif self.failed_since is None:
            self.failed_since = self._last_pass if self._last_pass is not None else started
        if self.healthy is None:
            self.healthy = ok
            self._on_change(ok, self.last_error)
            return
        if ok == self.healthy:
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.healthy, self._streak = ok, 0
            self._on_change(ok, self.last_error)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            ok = await self.run_once()
            self.record(ok, started, loop.time())
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
