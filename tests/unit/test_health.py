"""Health checks against real servers on loopback, and the rise/fall logic."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from sidecar.runtime.health import HealthMonitor, exec_check, http_check, tcp_check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(status: str, body: str = "ok", seen: list[bytes] | None = None,
                ssl: object = None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        if seen is not None:
            seen.append(request)
        writer.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


def monitor(check: object) -> HealthMonitor:
    return HealthMonitor([("http", check)], 1, 2, 1, 1, lambda ok: None,  # type: ignore[list-item]
                         lambda ok, err: None)


def test_http_check_expects_the_status() -> None:
    async def main() -> tuple[bool, bool, str]:
        good, port_good = await serve("200 OK")
        bad, port_bad = await serve("503 Service Unavailable")
        async with good, bad:
            failing = monitor(http_check(f"http://127.0.0.1:{port_bad}/x?y=1", 200))
            return (await monitor(http_check(f"http://127.0.0.1:{port_good}/", 200)).run_once(),
                    await failing.run_once(), failing.last_error)

    ok, bad, error = asyncio.run(main())
    assert (ok, bad) == (True, False) and "status 503, expected 200" in error


def test_http_check_sends_the_host_header_and_looks_for_the_body() -> None:
    seen: list[bytes] = []

    async def main() -> tuple[bool, bool, str]:
        server, port = await serve("200 OK", body="<h1>It works!</h1>", seen=seen)
        async with server:
            url = f"http://127.0.0.1:{port}/"
            good = monitor(http_check(url, 200, host="www.example.org", body="It works"))
            bad = monitor(http_check(url, 200, body="Welcome to nginx"))
            return await good.run_once(), await bad.run_once(), bad.last_error

    ok, bad, error = asyncio.run(main())
    assert ok and not bad and "body does not contain 'Welcome to nginx'" in error
    assert b"Host: www.example.org\r\n" in seen[0]


def test_https_check_verifies_the_certificate_unless_told_not_to(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem")], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    async def main() -> tuple[bool, str, bool]:
        server, port = await serve("200 OK", ssl=context)
        async with server:
            url = f"https://127.0.0.1:{port}/"
            verified = monitor(http_check(url, 200))
            return (await verified.run_once(), verified.last_error,
                    await monitor(http_check(url, 200, verify=False)).run_once())

    ok, error, insecure_ok = asyncio.run(main())
    assert not ok and "TLS" in error and "CERTIFICATE_VERIFY_FAILED" in error
    assert insecure_ok


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


def test_an_ipv6_literal_without_a_port_is_not_split_at_its_last_colon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """http.client, given no port, reads "2001:db8::1" as host "2001:db8:", port 1."""
    import http.client

    from sidecar.net.httpclient import HttpError, fetch

    seen: list[tuple[str, int]] = []

    class Refused(http.client.HTTPConnection):
        def connect(self) -> None:
            seen.append((self.host, self.port))
            raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(http.client, "HTTPConnection", Refused)
    for url in ("http://[2001:db8::1]/", "http://[2001:db8::1]:8080/x", "http://127.0.0.1/"):
        with pytest.raises(HttpError):
            fetch(url, 0.1)
    assert seen == [("2001:db8::1", 80), ("2001:db8::1", 8080), ("127.0.0.1", 80)]
