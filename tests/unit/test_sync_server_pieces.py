"""The master side's pieces that need no network namespace: the daemon's config, the peek,
the subscription, the path watcher and what reaches the manifest."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from sidecar.core.replica import Confirmations
from sidecar.replica import server
from sidecar.replica.confirm import Agreement
from sidecar.replica.manifest import Stamp
from sidecar.replica.rsyncd import Module, render_config, write_atomically
from sidecar.replica.watcher import PathWatcher, Subscription


def test_config_has_one_locked_down_module_per_path(tmp_path: Path) -> None:
    mods = [Module(2, "www", Path("/srv/www"), (IPv4Network("10.0.0.0/24"),)),
            Module(1, "1", Path("/srv/sess"), ())]
    text = render_config(mods, tmp_path / "rsyncd.secrets", 0, 0)
    assert text.index("[v1-1]") < text.index("[v2-www]")
    for line in ("use chroot = no", "read only = yes", "list = no", "auth users = carp",
                 "strict modes = yes", "exclude = /.carp-sync/", "reverse lookup = no",
                 "numeric ids = yes", f"secrets file = {tmp_path / 'rsyncd.secrets'}",
                 "refuse options = copy-links copy-dirlinks copy-unsafe-links keep-dirlinks"):
        assert line in text.splitlines()
    assert "    hosts allow = 10.0.0.0/24" in text.splitlines()
    # no network known yet: nobody (an empty "hosts allow" would mean everybody)
    assert "    hosts allow = 0.0.0.0/32" in text.splitlines()


def test_config_is_replaced_whole_and_private(tmp_path: Path) -> None:
    target = tmp_path / "rsyncd.conf"
    write_atomically(target, "one\n")
    write_atomically(target, "two\n")
    assert target.read_text() == "two\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "rsyncd.conf.tmp").exists()


@pytest.mark.parametrize(("sent", "head"), [
    ([b"@RSYNCD: 32.0 sha512\n"], b"@RSYNCD:"),
    ([b"CARP", b"SYNC 1 7 "], b"CARPSYNC"),  # a greeting in two segments
    ([b"GET / HTTP/1.1\r\n"], b"GET / HT"),
    ([b"CA"], b"CA"),  # then silence: what came within the timeout
    ([], b""),  # closed at once
])
def test_peek_sees_the_greeting_and_leaves_it(sent: list[bytes], head: bytes,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "PEEK_TIMEOUT", 0.5)
    a, b = socket.socketpair()

    async def go() -> bytes:
        for part in sent:
            b.sendall(part)
            await asyncio.sleep(0.05)
        if not sent:
            b.close()
        return await server._peek(a)
    try:
        assert asyncio.run(go()) == head
        if sent:  # peeked, not read: rsync reads it all
            a.setblocking(True)
            assert a.recv(100) == b"".join(sent)
    finally:
        a.close()
        b.close()


def test_subscription_coalesces_and_times_out() -> None:
    async def go() -> None:
        sub = Subscription()
        t0 = time.monotonic()
        assert await sub.wait(0.1) == set()
        assert time.monotonic() - t0 >= 0.09
        for name in ("www", "sess", "www"):
            sub.mark(name)
        assert await sub.wait(5) == {"www", "sess"}
        waiting = asyncio.ensure_future(sub.wait(5))
        await asyncio.sleep(0.01)
        sub.mark("www")
        assert await waiting == {"www"}
    asyncio.run(go())


def test_watcher_counts_every_change_but_its_private_folder(tmp_path: Path) -> None:
    (tmp_path / ".carp-sync").mkdir()
    batches: list[set[str]] = []

    async def go() -> int:
        w = PathWatcher(tmp_path, lambda g, rels, at: batches.append(rels))
        await w.start()
        (tmp_path / ".carp-sync" / "manifest.db").write_text("x")
        await asyncio.sleep(0.4)
        assert batches == []
        # names watchfiles' default filter would drop: here they are data like any other
        (tmp_path / "x.swp").write_text("x")
        (tmp_path / ".git").mkdir()
        await asyncio.sleep(0.4)
        await w.close()
        return w.generation
    gen = asyncio.run(go())
    assert set().union(*batches) == {"x.swp", ".git"} and gen == 1 + len(batches)


def test_only_files_unchanged_since_the_agreed_generation_are_recorded(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    (tmp_path / "gone").write_text("x")

    async def go() -> None:
        agreement = Agreement(tmp_path, Confirmations(0, time.time()))
        try:
            agreement.connected("backup-1")
            at = time.time()
            agreement.manifest.update([("gone", Stamp(1, 1))])
            agreement.changed(2, {"a", "b", "gone"}, at)
            time.sleep(0.02)
            (tmp_path / "b").write_text("b, again")  # after generation 2: not agreed yet
            (tmp_path / "gone").unlink()
            agreement.confirm("backup-1", 2)
            await agreement.idle()  # the files, then the first full walk, in its thread
            st = os.lstat(tmp_path / "a")
            assert agreement.manifest.get("a") == Stamp(st.st_size, st.st_mtime_ns)
            assert agreement.manifest.get("b") is None
            assert agreement.manifest.get("gone") is None
        finally:
            await agreement.close()
    asyncio.run(go())
