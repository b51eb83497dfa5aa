"""Scrape storm for the chaos runs: ``scrape.py URL RPS SECONDS HEALTHZ_URL``.

Opens RPS connections a second to URL (a new connection per request, like many Prometheus
servers and curl loops would), and once every 100 ms times a /healthz request on its own
connection. Prints JSON: requests sent, answered, and the slowest /healthz answer in ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse


async def get(host: str, port: int, path: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)
        return head.startswith(b"HTTP/1.1 200")
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def main(url: str, rps: float, seconds: float, healthz: str) -> dict[str, float]:
    target, probe = urllib.parse.urlsplit(url), urllib.parse.urlsplit(healthz)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    tasks: list[asyncio.Task[bool]] = []
    slowest = 0.0
    health_failures = 0
    start = time.monotonic()
    next_probe = start
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rps)
        while len(tasks) < due:
            tasks.append(asyncio.ensure_future(get(host, port, target.path)))
        if time.monotonic() >= next_probe:
            next_probe += 0.1
            t0 = time.monotonic()
            ok = await get(probe.hostname or host, probe.port or port, probe.path)
            slowest = max(slowest, (time.monotonic() - t0) * 1000)
            health_failures += not ok
        await asyncio.sleep(0.001)
    results = await asyncio.gather(*tasks)
    return {"sent": len(tasks), "answered": sum(results), "healthz_max_ms": round(slowest, 1),
            "healthz_failures": health_failures}


if __name__ == "__main__":
    url, rps, seconds, healthz = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, float(rps), float(seconds), healthz))))
