"""A client that polls ``http://VIP/`` and reports what a user would see, as JSON lines.

``python -m sidecar.lab.probe URL [--interval 0.01] [--timeout 0.2]`` prints one line whenever the
answer changes (a different node, or no answer), with ``gap_ms``: how long the client went
without any successful answer before this one. That gap is the client-visible downtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sidecar.net.httpclient import fetch


def answer(url: str, timeout: float) -> str | None:
    try:
        response = fetch(url, timeout)
    except OSError:
        return None
    return response.body.decode(errors="replace").strip() if response.status == 200 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sidecar.lab.probe")
    p.add_argument("url")
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=0.1)
    p.add_argument("--duration", type=float, default=0, help="stop after this many s (0: never)")
    args = p.parse_args(argv)
    last: tuple[bool, str | None] | None = None
    last_ok = time.time()
    end = time.monotonic() + args.duration if args.duration else None
    while end is None or time.monotonic() < end:
        started = time.time()
        body = answer(args.url, args.timeout)
        now = time.time()
        current = (body is not None, body)
        if current != last:
            line = {"t": round(now, 4), "ok": body is not None, "body": body}
            if body is not None:
                line["gap_ms"] = round((now - last_ok) * 1000, 1)
            print(json.dumps(line), flush=True)
            last = current
        if body is not None:
            last_ok = now
        time.sleep(max(0.0, args.interval - (time.time() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
