"""An instance's scripts' side: the environment every script gets (CARP_STATE, CARP_REASON,
CARP_PEER and the operator's own variables) and the notify script, told each state change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from sidecar.config.runconfig import Vhid
from sidecar.core.outputs import Notify
from sidecar.runtime.scripts import Notifier, ScriptResult, base_environment
from sidecar.serve.metrics import InstanceMetrics


class InstanceScripts:
    def __init__(self, settings: Vhid, script_extra: dict[str, str], metrics: InstanceMetrics,
                 last_transition: Callable[[], dict[str, Any] | None]) -> None:
        self.m, self._last_transition = metrics, last_transition
        self._base = base_environment(script_extra, settings.script_env)
        self.notifier = None if settings.notifyscript is None else Notifier(
            settings.notifyscript, settings.vhid, settings.script_timeout, self._result)

    def jobs(self) -> list[Coroutine[Any, Any, None]]:
        return [] if self.notifier is None else [self.notifier.run()]

    def update(self, new: Vhid, script_extra: dict[str, str],
               spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._base = base_environment(script_extra, new.script_env)
        if new.notifyscript is None:
            self.notifier = None
        elif self.notifier is None:
            self.notifier = Notifier(new.notifyscript, new.vhid, new.script_timeout, self._result)
            spawn(self.notifier.run())
        else:
            self.notifier.script, self.notifier.timeout = new.notifyscript, new.script_timeout

    async def join(self, timeout: float) -> None:
        if self.notifier is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.notifier.join(), timeout)

    def environment(self, state: str, reason: str | None = None,
                    peer: str | None = None) -> dict[str, str]:
        """The scripts' environment for a move to ``state``; the reason and peer are the last
        transition's unless given."""
        t = self._last_transition() or {}
        env = dict(self._base)
        env.update(CARP_STATE=state, CARP_REASON=reason or str(t.get("reason") or ""))
        if peer or t.get("peer"):
            env["CARP_PEER"] = peer or str(t["peer"])
        return env

    def notify(self, n: Notify) -> None:
        if self.notifier is not None:
            peer = str(n.peer) if n.peer is not None else None
            self.notifier.notify(n.state, n.reason, self.environment(n.state, n.reason, peer))

    def _result(self, result: ScriptResult) -> None:
        self.m.script_runs[("notify", result.result)].inc()
        self.m.script_duration["notify"].observe(result.duration)
