"""Work done one item at a time, in order, by one task: the instance's effects queue and the
notify script's calls. Subclasses say how an item is handled; ``join`` waits until idle."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class SerialWork(Generic[T]):
    def __init__(self, capacity: int | None = None) -> None:
        self._pending: deque[T] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def _put(self, item: T) -> None:
        self._pending.append(item)
        self._idle.clear()
        self._wake.set()

    async def join(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._handle(self._pending.popleft())
            self._idle.set()

    async def _handle(self, item: T) -> None:
        raise NotImplementedError
