"""The project's one HTTP client (the health check, ``carp-sidecar status``/``healthcheck``,
the lab's probe), on the standard library's ``http.client``: http and https (certificates
verified unless told otherwise), an optional Host header, a bounded body, no redirects followed
(a health check must see the 301 its URL answers, not the page behind it).

It blocks; the agent calls it in a thread of its own pool (:mod:`health`).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from dataclasses import dataclass

MAX_BODY = 64 * 1024  # enough for any health page; a huge body is not read to its end


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class HttpError(OSError):
    """No HTTP answer (refused, reset, TLS failure, timeout, not HTTP); ``strerror`` says which."""


def fetch(url: str, timeout: float, host: str | None = None, verify: bool = True,
          max_body: int = MAX_BODY) -> Response:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # the port always given: with none, http.client reads an IPv6 literal's last group as one
    # ("2001:db8::1" -> host "2001:db8:", port 1)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    headers = {"User-Agent": "carp-sidecar", "Connection": "close"}
    if host:
        headers["Host"] = host
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return Response(response.status, response.read(max_body))
    except ssl.SSLError as e:
        raise HttpError(0, f"TLS: {e.reason or e}") from None
    except TimeoutError:
        raise HttpError(0, f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        raise HttpError(0, getattr(e, "strerror", None) or str(e) or type(e).__name__) from None
    finally:
        conn.close()
