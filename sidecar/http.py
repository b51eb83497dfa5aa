"""/metrics, /healthz, /readyz and /status on one small asyncio server.

It shares the event loop with the protocol, so it must never block it: every connection gets a
hard deadline for its request head and a size cap, and all I/O is non-blocking. A slowloris
client costs one idle coroutine until its deadline, never an advertisement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("carp-sidecar")
HEAD_TIMEOUT = 5.0
MAX_HEAD = 8192


class StatusServer:
    def __init__(self, registry: CollectorRegistry, status: Callable[[], dict[str, Any]],
                 ready: Callable[[], bool]) -> None:
        self._registry, self._status, self._ready = registry, status, ready
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host or None, port,
                                                  reuse_address=True, limit=MAX_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, ctype, body = self._route(method, path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + (body if method != "HEAD" else b""))
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            ready = self._ready()
            return ("200 OK" if ready else "503 Service Unavailable", "text/plain",
                    b"ready\n" if ready else b"not ready\n")
        if path == "/status":
            return "200 OK", "application/json", json.dumps(self._status(), indent=1).encode()
        return "404 Not Found", "text/plain", b"/metrics /healthz /readyz /status\n"
