"""Faults, round 4, reload items: what an interface lookup leaves behind, strict mode's
counter mark prepared before a reload touches anything and repaired after corruption."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc
from pathlib import Path

import pytest

from sidecar.core.sending import COUNTER_RESERVE, StrictCounter
from sidecar.net.netlink import Netlink
from sidecar.runtime.maintenance import (
    REPAIRS_MAX,
    CounterMark,
    MaintenanceStore,
    StateError,
    repair_counter,
)


def test_interface_lookups_leave_nothing_behind() -> None:
    """Each reload that adds or restarts instances looks its interfaces up (twice per
    instance). pyroute2's RTM_GETLINK left the kernel's acknowledgement unread in its socket's
    queue: ~70 bytes of Python, but a 4 KB page of its own apiece (recvfrom's 256 KB buffer,
    shrunk), +1.5 MB of RSS per 100 reloads restarting two VHIDs."""
    async def lookups() -> int:
        nl = Netlink()
        try:
            for _ in range(50):  # warm-up: whatever is allocated once
                await nl.link("lo")
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(400):
                link = await nl.link("lo")
            await asyncio.sleep(0.05)  # late answers land in the queue too
            gc.collect()
            assert link.index == socket.if_nametoindex("lo") and link.running
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            nl.close()

    tracemalloc.start()
    try:
        grown = asyncio.run(lookups())
    finally:
        tracemalloc.stop()
    assert grown < 8 * 1024, f"{grown} bytes kept by 400 interface lookups"


def strict_store(tmp_path: Path, content: bytes | None) -> MaintenanceStore:
    store = MaintenanceStore(tmp_path)
    if content is not None:
        store.path(NAME, ".counter").write_bytes(content)
    return store


NAME = "eth0/vhid1"


@pytest.mark.parametrize("content", [b"", b'{"reserved": 1844', b"\x00" * 64, b'{"x": 1}\n'])
def test_repair_counter_sets_a_mark_above_anything_sent_and_climbs_on_each_repair(
        tmp_path: Path, content: bytes) -> None:
    store = strict_store(tmp_path, content)
    with pytest.raises(StateError, match="repair-counter"):  # the agent's error names the way
        store.counter_mark(NAME)
    line = repair_counter(store, NAME, time.time())
    assert "set to 9223372036854775808 (repair 1" in line
    assert store.counter_mark(NAME) == 1 << 63
    # a run after the repair starts above it, whatever its clock says
    session_counter = StrictCounter(lambda: 0.0)
    session_counter.keep(store.counter_mark(NAME))
    assert session_counter.seed() == (1 << 63) + 1
    kept = sorted(tmp_path.glob("eth0-vhid1.counter.repaired-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(content[:8].decode(
        errors="replace").encode())
    # counters used since then are above 2^63: a second corruption climbs halfway to 2^64
    store.path(NAME, ".counter").write_bytes(b"garbage")
    repair_counter(MaintenanceStore(tmp_path), NAME, time.time() + 1)
    assert MaintenanceStore(tmp_path).counter_mark(NAME) == (1 << 63) + (1 << 62)


def test_repair_counter_refuses_a_readable_or_missing_mark_and_a_full_ladder(
        tmp_path: Path) -> None:
    store = strict_store(tmp_path, None)
    with pytest.raises(StateError, match="no mark"):
        repair_counter(store, NAME, time.time())
    store.reserve_counter(NAME, 12345)
    with pytest.raises(StateError, match="a readable mark, 12345"):
        repair_counter(store, NAME, time.time())
    assert store.counter_mark(NAME) == 12345
    for rung in range(REPAIRS_MAX):
        (tmp_path / f"eth0-vhid1.counter.repaired-x-{rung}").write_text("")
    store.path(NAME, ".counter").write_bytes(b"garbage")
    with pytest.raises(StateError, match="no room left"):
        repair_counter(store, NAME, time.time())


def test_a_mark_this_process_wrote_is_never_written_lower(tmp_path: Path) -> None:
    """A reload prepares the restarted instance's mark while the old instance still runs:
    the old one's later reservation must not bring the mark back down."""
    store = MaintenanceStore(tmp_path)
    store.reserve_counter(NAME, 5_000)
    store.reserve_counter(NAME, 4_000)
    assert store.counter_mark(NAME) == 5_000
    floor, upto = CounterMark(store, NAME).prepare(lambda: 0.0)
    assert floor == 5_000 and upto == 5_001 + COUNTER_RESERVE == store.counter_mark(NAME)
