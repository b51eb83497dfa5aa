"""Fault behaviour of the small I/O pieces, on a temp dir or loopback (no root, no netns):
the control socket never touches a file it did not make, scripts that daemonise are not
"hung", a superseded upscript is stopped, the peer and ARP tables stay bounded, and a scrape
storm costs a few renderings, not one per request."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.peers import ArpClaims, PeerTable
from sidecar.runtime.scripts import run_script
from sidecar.serve.control import ControlServer, send_command
from sidecar.serve.http import StatusServer
from sidecar.serve.metrics import InstanceMetrics, Metrics


def serve(path: Path) -> ControlServer:
    return ControlServer(path, lambda command: f"did {command}")


# ---- control socket ----
@pytest.mark.parametrize("kind", ["regular", "fifo", "symlink", "device"])
def test_control_socket_refuses_to_replace_a_file_it_did_not_make(tmp_path: Path,
                                                                 kind: str) -> None:
    path, target = tmp_path / "ctl.sock", tmp_path / "precious"
    target.write_text("keep me\n")
    if kind == "regular":
        path.write_text("keep me\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    before = os.lstat(path)

    async def main() -> None:
        with pytest.raises(FileExistsError, match="not a socket"):
            await serve(path).start()

    asyncio.run(main())
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert target.read_text() == "keep me\n"


def test_control_socket_replaces_a_dead_agents_socket_but_not_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: what a killed agent leaves
    dead.close()

    async def main() -> None:
        live = serve(path)
        await live.start()
        assert await asyncio.to_thread(send_command, path, "status") == "did status"
        with pytest.raises(FileExistsError, match="another agent is listening"):
            await serve(path).start()
        await live.close()

    asyncio.run(main())
    assert not path.exists()


def test_deleted_control_socket_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    async def main() -> None:
        server = serve(path)
        await server.start()
        path.unlink()
        await server.check()
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and server.problem == ""
        assert await asyncio.to_thread(send_command, path, "demote") == "did demote"
        await server.close()

    asyncio.run(main())
    assert not path.exists()


def test_control_socket_replaced_by_a_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    async def main() -> str:
        server = serve(path)
        await server.start()
        path.unlink()
        path.write_text("someone else's\n")
        await server.check()
        await server.close()  # must not remove what is there now
        return server.problem

    assert "replaced by another file" in asyncio.run(main())
    assert path.read_text() == "someone else's\n"


# ---- scripts ----
def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive; our test process is not its parent, so it is reaped by init
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_script_that_starts_a_daemon_ends_when_the_script_does(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    up = executable(tmp_path / "up.sh",
                    f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\necho started\n")

    async def main() -> tuple[str, float]:
        r = await run_script([str(up), "eth0", "10.0.0.1"], timeout=5)
        return r.result, r.duration

    result, duration = asyncio.run(main())
    assert result == "ok" and duration < 2
    daemon = int(pidfile.read_text())
    try:
        assert alive(daemon)  # its children live on, as with ucarp
    finally:
        os.kill(daemon, 9)


def test_superseded_upscript_is_stopped_with_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    up = executable(tmp_path / "up.sh", f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")

    async def main() -> tuple[str, float]:
        abort = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, abort.set)
        r = await run_script([str(up), "eth0", "10.0.0.1"], timeout=30, abort=abort)
        return r.result, r.duration

    result, duration = asyncio.run(main())
    assert result == "superseded" and duration < 1.5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_hanging_script_still_times_out(tmp_path: Path) -> None:
    hang = executable(tmp_path / "hang.sh", "#!/bin/sh\nsleep 300\n")

    async def main() -> str:
        return (await run_script([str(hang), "eth0", "10.0.0.1"], timeout=0.3)).result

    assert asyncio.run(main()) == "timeout"


# ---- peer and ARP tables ----
def test_peer_table_is_capped_and_counts_evictions() -> None:
    table = PeerTable(capacity=32, expire_after=9)
    evicted = []
    for i in range(10_000):
        evicted += table.heard(i / 1000, 0.0, f"10.0.{i // 256}.{i % 256}", 1, 0, valid=True)
    assert len(table) == 32 and len(evicted) == 10_000 - 32
    assert evicted[0] == "10.0.0.0"  # the least recently heard goes first


def test_peer_table_refresh_keeps_a_real_peer_and_entries_expire() -> None:
    table = PeerTable(capacity=2, expire_after=9)
    table.heard(0, 0, "real", 1, 0, valid=True)
    table.heard(0.5, 0, "forged-1", 1, 0, valid=True)
    table.heard(1.0, 0, "real", 1, 0, valid=True)  # heard again: now the most recent
    assert table.heard(1.5, 0, "forged-2", 1, 0, valid=True) == ["forged-1"]
    assert table.expire(9.6) == []
    assert table.expire(10.1) == ["real"] and len(table) == 1


def test_a_master_that_stops_advertising_is_reported_once() -> None:
    table = PeerTable(capacity=8, expire_after=100)
    for t in range(5):
        table.heard(float(t), 0, "old-master", 1, 0, valid=False)  # e.g. wrong password
    assert table.fallen_silent(6.0) == []  # 2 s after its last advert: still within 2.5 s
    assert table.fallen_silent(6.6) == ["old-master"]
    assert table.fallen_silent(20.0) == []
    table.heard(21.0, 0, "old-master", 255, 255, valid=True)  # back, then a bow-out
    assert table.fallen_silent(21.9) == [] and table.fallen_silent(22.1) == ["old-master"]


def test_arp_claims_back_off_exponentially_per_mac() -> None:
    claims = ArpClaims(capacity=4, interval=1.0, max_backoff=8)
    answers = [t for t in range(60) if claims.claimed(float(t), b"\x02" * 6)]
    assert answers == [0, 1, 3, 7, 15, 23, 31, 39, 47, 55]
    assert claims.claimed(0.0, b"\x04" * 6)  # another MAC has its own schedule
    assert claims.claimed(100.0, b"\x02" * 6)  # quiet for long: a new episode answers at once


# ---- HTTP under a scrape storm ----
def test_scrape_storm_renders_a_few_times_and_slow_clients_give_way() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, "test", process_metrics=False)
    InstanceMetrics(m, 1, "eth0", ["10.0.0.1"])
    renders = 0
    original = registry.collect

    def counting_collect():  # type: ignore[no-untyped-def]
        nonlocal renders
        renders += 1
        return original()

    registry.collect = counting_collect  # type: ignore[method-assign]
    server = StatusServer(registry, lambda: {"state": "MASTER"}, lambda: True,
                          m.http_refused.inc)

    async def get(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            return await reader.read()
        except ConnectionResetError:
            return b""  # refused: the server reset the connection
        finally:
            writer.close()

    async def main() -> tuple[list[bytes], int]:
        await server.start("127.0.0.1", 0)
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]
        hold = [await asyncio.open_connection("127.0.0.1", port) for _ in range(64)]
        await asyncio.sleep(0.05)
        # a 65th connection evicts the oldest that never sent its request: honest clients
        # still get answers while a slowloris holds every slot
        served = await get(port)
        evicted = await hold[0][0].read()  # the first holder was closed
        for _, writer in hold:
            writer.close()
        await asyncio.sleep(0.05)
        bodies = await asyncio.gather(*(get(port) for _ in range(40)))
        await server.close()
        return [evicted, served, *bodies], renders

    bodies, n = asyncio.run(main())
    assert bodies[0] == b""
    assert all(b"carp_adverts_sent_total" in b for b in bodies[1:])
    assert n <= 2, n
    assert registry.get_sample_value("carp_http_connections_refused_total") == 1


def test_peer_table_says_when_its_next_sweep_is_due() -> None:
    table = PeerTable(capacity=8, expire_after=9)
    assert table.next_deadline() is None  # nobody heard: nothing to sweep for
    table.heard(10.0, 0, "master", 1, 0, valid=True)
    assert table.next_deadline() == pytest.approx(12.5)  # silent after 2.5 intervals
    table.fallen_silent(12.6)
    assert table.next_deadline() == pytest.approx(19.0)  # then only its expiry


# ---- persistent maintenance records ----
def test_maintenance_record_round_trips_and_replaces_atomically(tmp_path: Path) -> None:
    from sidecar.runtime.maintenance import MaintenanceStore, Record

    store = MaintenanceStore(tmp_path / "state")
    store.prepare()
    assert store.load("eth0/vhid1") is None
    store.save("eth0/vhid1", Record(True, 1764300000.5))
    assert store.load("eth0/vhid1") == Record(True, 1764300000.5)
    store.save("eth0/vhid1", Record(False, 1764300100.0))
    assert store.load("eth0/vhid1") == Record(False, 1764300100.0)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["eth0-vhid1.json"]
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("content", [b'{"maintenance": true, "since"', b"", b"null",
                                     b'{"maintenance": 1, "since": 5}',
                                     b'{"maintenance": true, "since": -1}',
                                     b'{"maintenance": true}', b" " * 5000])
def test_maintenance_record_that_cannot_be_trusted_is_an_error(tmp_path: Path,
                                                               content: bytes) -> None:
    from sidecar.runtime.maintenance import MaintenanceStore, StateError

    store = MaintenanceStore(tmp_path)
    store.path("eth0/vhid1").write_bytes(content)
    with pytest.raises(StateError, match=r"^CARP_STATE_DIR: .*eth0-vhid1.json is not a "):
        store.load("eth0/vhid1")


def test_maintenance_store_refuses_a_symlinked_record_and_a_file_as_directory(
        tmp_path: Path) -> None:
    from sidecar.runtime.maintenance import MaintenanceStore, StateError

    (tmp_path / "elsewhere").write_text('{"maintenance": true, "since": 1}')
    store = MaintenanceStore(tmp_path)
    store.path("eth0/vhid1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="cannot read"):
        store.load("eth0/vhid1")
    with pytest.raises(StateError, match="CARP_STATE_DIR: cannot create"):
        MaintenanceStore(tmp_path / "elsewhere" / "sub").prepare()


# ---- /metrics negotiation ----
@pytest.mark.parametrize(("accept", "encoding", "ctype", "gzipped"), [
    ("", "", "text/plain; version=0.0.4", False),
    ("application/openmetrics-text; version=1.0.0,text/plain;q=0.5", "",
     "application/openmetrics-text; version=1.0.0", False),
    ("text/plain", "gzip, deflate", "text/plain; version=0.0.4", True),
    ("application/openmetrics-text; version=1.0.0", "gzip", "application/openmetrics-text", True),
])
def test_metrics_format_and_compression_follow_the_request(accept: str, encoding: str,
                                                           ctype: str, gzipped: bool) -> None:
    import gzip as gz

    registry = CollectorRegistry()
    Metrics(registry, "1.0")
    server = StatusServer(registry, lambda: {}, lambda: True)

    async def main() -> bytes:
        await server.start("127.0.0.1", 0)
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = "GET /metrics HTTP/1.1\r\nHost: x\r\n"
        head += f"Accept: {accept}\r\n" if accept else ""
        head += f"Accept-Encoding: {encoding}\r\n" if encoding else ""
        writer.write((head + "\r\n").encode())
        answer = await reader.read()
        writer.close()
        await server.close()
        return answer

    raw_head, _, body = asyncio.run(main()).partition(b"\r\n\r\n")
    head = raw_head.decode()
    assert f"Content-Type: {ctype}" in head
    assert ("Content-Encoding: gzip" in head) == gzipped
    text = gz.decompress(body).decode() if gzipped else body.decode()
    assert "carp_build_info" in text or "carp_" in text
    assert text.rstrip().endswith("# EOF") == ("openmetrics" in ctype)


# ---- the notify script hangs, or changes come faster than it runs ----
def test_hanging_notify_script_is_killed_and_its_calls_never_pile_up(tmp_path: Path) -> None:
    from sidecar.runtime.scripts import Notifier, ScriptResult

    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    results: list[ScriptResult] = []

    async def main() -> int:
        notifier = Notifier(script, 1, timeout=0.2, on_result=results.append, capacity=4)
        runner = asyncio.create_task(notifier.run())
        for n in range(10):  # a flapping link: ten changes before the first call has started
            notifier.notify("MASTER" if n % 2 else "BACKUP", "flap", {"PATH": "/bin:/usr/bin"})
        waiting = len(notifier._pending)
        await asyncio.wait_for(notifier.join(), 10)
        runner.cancel()
        return waiting

    started = time.monotonic()
    assert asyncio.run(main()) == 4  # the oldest six were dropped, not queued
    assert [r.result for r in results] == ["timeout"] * 4
    assert time.monotonic() - started < 5  # 4 x 0.2 s, not 30 s per call
