"""A stand-in for ``sidecar.core.replica.Freshness`` (the CORE helper writes the real one),
used only until it lands: :func:`install` puts it in place when the import fails. It follows
the brief's API and rules: lag 0 while the replica matches the master's generation and the
channel is alive (a line within 3 x PING_INTERVAL), else now - the last moment it matched,
None before the first catch-up; a new connection starts a new session (generations are the
master's, so what was synced under an earlier one is not assumed)."""

from __future__ import annotations

import sys
import types

from sidecar.core.syncwire import PING_INTERVAL

ALIVE = 3 * PING_INTERVAL


class Freshness:
    def __init__(self) -> None:
        self.linked = False
        self.last_line = 0.0
        self.master_generation: int | None = None
        self.synced: int | None = None
        self.running = False
        self.matched_at: float | None = None

    def _matching(self) -> bool:
        return (self.linked and self.master_generation is not None
                and self.synced is not None and self.synced >= self.master_generation)

    def _alive(self, now: float) -> bool:
        return self.linked and now - self.last_line <= ALIVE

    def _touch(self, now: float) -> None:
        if self._matching() and self._alive(now):
            self.matched_at = now
        self.last_line = now

    def connected(self, now: float, master_epoch: int) -> None:
        self.linked, self.last_line = True, now
        self.master_generation, self.synced = None, None

    def disconnected(self, now: float) -> None:
        self._touch(now)
        self.linked = False

    def master_gen(self, now: float, gen: int) -> None:
        self._touch(now)
        self.master_generation = gen

    def heartbeat(self, now: float) -> None:
        self._touch(now)

    def run_started(self, now: float) -> int:
        self.running = True
        return self.master_generation or 0

    def run_succeeded(self, now: float, gen: int) -> None:
        self.running = False
        self.synced = gen
        if self._matching():
            self.matched_at = now

    def run_failed(self, now: float) -> None:
        self.running = False

    def lag(self, now: float) -> float | None:
        if self.matched_at is None:
            return None
        if self._matching() and self._alive(now):
            return 0.0
        return max(0.0, now - self.matched_at)

    @property
    def caught_up(self) -> bool:
        return self._matching()

    @property
    def needs_run(self) -> bool:
        return (self.linked and not self.running and self.master_generation is not None
                and (self.synced is None or self.master_generation > self.synced))


def install() -> None:
    """Make ``sidecar.core.replica`` importable with this stand-in, unless the real one is."""
    try:
        import sidecar.core.replica  # noqa: F401
    except ImportError:
        module = types.ModuleType("sidecar.core.replica")
        module.Freshness = Freshness  # type: ignore[attr-defined]
        sys.modules["sidecar.core.replica"] = module
