"""A minimal stand-in for core/replica.py's ``Confirmations`` (being written by another
helper): the same five calls, the simplest rule that fits them. The replica package never
imports this; the tests pass it to MasterSide(confirmations=...)."""

from __future__ import annotations

import time
from collections.abc import Iterable


class StandinConfirmations:
    def __init__(self) -> None:
        self.changes: dict[str, int] = {}
        self.times: dict[int, float] = {1: time.time()}
        self.clients: dict[str, int] = {}
        self._full_done = False

    def changed(self, gen: int, rel_paths: Iterable[str], at: float) -> None:
        self.times[gen] = at
        for rel in rel_paths:
            self.changes[rel] = gen

    def confirm(self, client_id: str, gen: int) -> None:
        self.clients[client_id] = max(gen, self.clients.get(client_id, 0))

    def forget(self, client_id: str) -> None:
        self.clients.pop(client_id, None)

    def _low(self) -> int | None:
        return min(self.clients.values()) if self.clients else None

    def agreed(self) -> list[tuple[str, float]]:
        low = self._low()
        if low is None:
            return []
        done = [(rel, self.times[low]) for rel, gen in self.changes.items() if gen <= low]
        for rel, _ in done:
            del self.changes[rel]
        return done

    def first_full(self) -> float | None:
        low = self._low()
        if self._full_done or low is None:
            return None
        self._full_done = True
        return self.times.get(low)
