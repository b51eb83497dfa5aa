"""The small I/O pieces on loopback or a temp dir: scripts, HTTP routes, log formats, GARP bytes."""

from __future__ import annotations

import asyncio
import json
import logging
from ipaddress import IPv4Address
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.net.announce import build_garp
from sidecar.runtime.scripts import run_script, script_argv
from sidecar.serve.http import StatusServer
from sidecar.serve.logs import JsonFormatter, UcarpFormatter
from sidecar.serve.metrics import InstanceMetrics, Metrics


def test_script_results_ok_failed_error(tmp_path: Path, caplog: object) -> None:
    ok, bad = tmp_path / "ok.sh", tmp_path / "bad.sh"
    ok.write_text('#!/bin/sh\necho "args: $*"\n')
    bad.write_text("#!/bin/sh\nexit 3\n")
    for p in (ok, bad):
        p.chmod(0o755)

    async def main() -> list[str]:
        results = [await run_script(script_argv(ok, "eth0", "10.0.0.1", "XP"), 5),
                   await run_script(script_argv(bad, "eth0", "10.0.0.1", None), 5),
                   await run_script([str(tmp_path / "missing.sh"), "eth0", "10.0.0.1"], 5)]
        return [r.result for r in results]

    assert asyncio.run(main()) == ["ok", "failed", "error"]


def test_http_routes(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    InstanceMetrics(Metrics(registry, "1.2.3", process_metrics=False), 7, "eth9", ["10.0.0.1"])

    async def get(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        data = await reader.read()
        writer.close()
        return data

    async def main() -> dict[str, bytes]:
        server = StatusServer(registry, lambda: {"state": "BACKUP"}, lambda: False)
        await server.start("127.0.0.1", 0)
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]
        out = {path: await get(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
               for path in ("/metrics", "/healthz", "/readyz", "/status", "/nope")}
        out["POST"] = await get(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        await server.close()
        return out

    out = asyncio.run(main())
    assert out["/metrics"].startswith(b"HTTP/1.1 200")
    assert (b'carp_adverts_dropped_total{group="vhid7",interface="eth9",reason="bad_hmac",'
            b'vhid="7"} 0.0') in out["/metrics"]
    assert b'carp_state{group="vhid7",interface="eth9",state="INIT",vhid="7"} 1.0' in out["/metrics"]
    assert b'carp_build_info{python=' in out["/metrics"]
    assert out["/healthz"].startswith(b"HTTP/1.1 200")
    assert out["/readyz"].startswith(b"HTTP/1.1 503")
    assert json.loads(out["/status"].split(b"\r\n\r\n", 1)[1]) == {"state": "BACKUP"}
    assert out["/nope"].startswith(b"HTTP/1.1 404") and out["POST"].startswith(b"HTTP/1.1 405")


def test_log_formats_ucarp_text_and_json() -> None:
    record = logging.LogRecord("carp-sidecar", logging.WARNING, __file__, 1,
                               "Switching to state: %s", ("MASTER",), None)
    text = UcarpFormatter().format(record)
    assert text.endswith(": [WARNING] Switching to state: MASTER") and text[4] == "-"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "WARNING" and doc["msg"] == "Switching to state: MASTER"


def test_garp_frame_is_ucarps() -> None:
    mac = bytes.fromhex("020000000001")
    frame = build_garp(mac, IPv4Address("172.16.0.1"))
    assert len(frame) == 42
    assert frame[:14] == b"\xff" * 6 + mac + b"\x08\x06"
    assert frame[14:22] == bytes.fromhex("0001080006040001")  # Ethernet/IPv4, request
    assert frame[22:42] == mac + bytes([172, 16, 0, 1]) + mac + bytes([172, 16, 0, 1])


def test_agent_loads_rtnetlink_only_yet_pyroute2_stays_whole_for_others() -> None:
    import subprocess
    import sys

    code = ("import sys, sidecar.runtime.agent; "
            "assert 'pyroute2.ndb.main' not in sys.modules, 'pyroute2 __init__ ran'; "
            "from pyroute2 import NetNS, IPRoute; "
            "assert 'pyroute2.ndb.main' in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr
