"""/metrics, /healthz, /readyz and /status on one small asyncio server.

It shares the event loop with the protocol, so it must never hold it up: every connection gets a
hard deadline for its request head and a size cap; at ``MAX_CONNECTIONS`` open connections a new
one evicts the oldest that has not finished sending its request head (a slowloris client loses
its slots to honest ones), or is closed at once if all are busy answering; and the expensive
answers are rendered at most once per ``CACHE_TTL`` (per format: text or OpenMetrics, plain or
gzip, negotiated as prometheus_client's exposition does) —
/metrics in a worker thread, so a storm of scrapes costs a few renders a second, not one per
request, and an advert never waits for a rendering.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("carp-sidecar")
HEAD_TIMEOUT = 5.0
MAX_HEAD = 8192
MAX_CONNECTIONS = 64
CACHE_TTL = 0.5  # s: a scrape may see values this old; Prometheus scrapes every 15 s or so


class Cached:
    """One rendering shared by every request within ``ttl``; concurrent requests wait for the
    same rendering instead of starting their own."""

    def __init__(self, render: Callable[[], Awaitable[bytes]], ttl: float) -> None:
        self._render, self._ttl = render, ttl
        self._value: asyncio.Future[bytes] | None = None
        self._at = 0.0

    async def get(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._value is None or (self._value.done() and loop.time() - self._at > self._ttl):
            self._at = loop.time()
            self._value = asyncio.ensure_future(self._render())
        return await asyncio.shield(self._value)


class StatusServer:
    def __init__(self, registry: CollectorRegistry, status: Callable[[], dict[str, Any]],
                 ready: Callable[[], bool], on_refused: Callable[[], None] = lambda: None,
                 alive: Callable[[], str] = lambda: "") -> None:
        self._ready, self._on_refused, self._alive = ready, on_refused, alive
        self._server: asyncio.Server | None = None
        self._waiting: dict[asyncio.StreamWriter, float] = {}  # still sending their head
        self._connections = 0

        self._registry = registry

        async def status_json() -> bytes:
            return json.dumps(status(), indent=1).encode()

        self._metrics: dict[tuple[str, bool], Cached] = {}  # (content type, gzip) -> rendering
        self._status = Cached(status_json, CACHE_TTL)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host or None, port,
                                                  reuse_address=True, limit=MAX_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            self._on_refused()
            if not self._waiting:
                writer.transport.abort()  # every slot is answering a complete request
                return
            slowest = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[slowest]
            slowest.transport.abort()
        self._connections += 1
        self._waiting[writer] = asyncio.get_running_loop().time()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            self._waiting.pop(writer, None)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, _, rest = request_line.partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in header_lines if ":" in line)}
            status, ctype, body, extra = await self._route(method, path, headers)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b""))
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, UnicodeDecodeError):
            pass
        finally:
            self._waiting.pop(writer, None)
            self._connections -= 1
            writer.close()

    async def _route(self, method: str, path: str,
                     headers: dict[str, str]) -> tuple[str, str, bytes, str]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n", ""
        if path == "/metrics":
            return await self._exposition(headers)
        if path == "/healthz":  # the process serves, and runs every instance it should
            problem = self._alive()
            return ("503 Service Unavailable", "text/plain", problem.encode() + b"\n", ""
                    ) if problem else ("200 OK", "text/plain", b"ok\n", "")
        if path == "/readyz":
            ready = self._ready()
            return ("200 OK" if ready else "503 Service Unavailable", "text/plain",
                    b"ready\n" if ready else b"not ready\n", "")
        if path == "/status":
            return "200 OK", "application/json", await self._status.get(), ""
        return "404 Not Found", "text/plain", b"/metrics /healthz /readyz /status\n", ""

    async def _exposition(self, headers: dict[str, str]) -> tuple[str, str, bytes, str]:
        """As prometheus_client's own exposition does it: the format the scraper's Accept asks
        for (OpenMetrics or text), gzip when its Accept-Encoding allows."""
        encoder, ctype = choose_encoder(headers.get("accept", ""))
        gzipped = "gzip" in headers.get("accept-encoding", "")
        cached = self._metrics.get((ctype, gzipped))
        if cached is None:
            registry = self._registry

            def render() -> bytes:
                body: bytes = encoder(registry)
                return gzip.compress(body, compresslevel=6) if gzipped else body

            async def in_thread() -> bytes:
                return await asyncio.to_thread(render)

            cached = self._metrics[(ctype, gzipped)] = Cached(in_thread, CACHE_TTL)
        extra = "Vary: Accept, Accept-Encoding\r\n" + (
            "Content-Encoding: gzip\r\n" if gzipped else "")
        return "200 OK", ctype, await cached.get(), extra
