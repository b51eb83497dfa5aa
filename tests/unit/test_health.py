"""Health checks against real servers on loopback, and the rise/fall logic."""

from __future__ import annotations

import asyncio
import socket

from sidecar.health import HealthMonitor, exec_check, http_check, tcp_check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(status: str) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.0 {status}\r\nContent-Length: 2\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_http_check_expects_the_status() -> None:
    async def main() -> tuple[bool, bool]:
        good, port_good = await serve("200 OK")
        bad, port_bad = await serve("503 Service Unavailable")
        async with good, bad:
            return (await http_check(f"http://127.0.0.1:{port_good}/", 200)(),
                    await http_check(f"http://127.0.0.1:{port_bad}/x?y=1", 200)())

    assert asyncio.run(main()) == (True, False)


def test_tcp_check_refused_raises_oserror_which_counts_as_failure() -> None:
    async def main() -> list[bool]:
        server, port = await serve("200 OK")
        results = []
        async with server:
            for target in (f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"):
                monitor = HealthMonitor([("tcp", tcp_check(target))], 1, 1, 1, 1,
                                        lambda ok: None, lambda ok, err: None)
                results.append(await monitor.run_once())
        return results

    assert asyncio.run(main()) == [True, False]


def test_exec_check_exit_status_and_timeout_kills_it() -> None:
    async def main() -> list[bool]:
        out = []
        for cmd in ("true", "false", "sleep 30"):
            monitor = HealthMonitor([("exec", exec_check(cmd))], 1, 0.3, 1, 1,
                                    lambda ok: None, lambda ok, err: None)
            out.append(await monitor.run_once())
        return out

    assert asyncio.run(main()) == [True, False, False]


def test_first_result_decides_then_rise_and_fall_apply() -> None:
    changes: list[bool] = []
    m = HealthMonitor([], 1, 1, rise=2, fall=3, on_result=lambda ok: None,
                      on_change=lambda ok, err: changes.append(ok))
    for ok in [True, False, False, True, False, False, False, True, True]:
        m.record(ok)
    assert changes == [True, False, True]
    assert m.healthy is True
