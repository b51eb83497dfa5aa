"""The replicated paths as Prometheus sees them: a real Prometheus scrapes the carp_sync_*
families (sidecar/serve/syncmetrics.py) from a registry served on loopback, with the values a
master and two backups export (one lagging, one before its first catch-up: +Inf). Every
panel of the dashboard's "Replicated paths" row returns data, CarpSyncLagging is pending for
exactly the paths of the node that is not fresh, and CarpSyncConflict fires for the node that
set files aside. The agents' own wiring is tested where it lives; this is the rules and the
queries against real series."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from sidecar.serve.syncmetrics import SyncFamilies, SyncMetrics

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "grafana"))
from dashboard import QUERIES, SYNC_PANELS  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nodes() -> tuple[CollectorRegistry, SyncFamilies]:
    """One registry, three instances of VHID 1 told apart by `interface` (a scrape target has
    one `instance`): a master, a backup behind, a backup before its first catch-up."""
    r = CollectorRegistry()
    f = SyncFamilies(r)
    for iface, epoch, fresh, lag in (("master", 7, 1, 0.0), ("behind", 7, 0, 42.0),
                                     ("new", 0, 0, float("inf"))):
        m = SyncMetrics(f, {"group": "vhid1-10.0.1.1", "vhid": "1", "interface": iface},
                        ["www", "sessions"])
        m.epoch.set(epoch)
        m.fresh.set(fresh)
        for name, p in m.paths.items():
            p.lag.set(lag if name == "www" or iface == "new" else 0.0)
            p.runs["ok" if iface != "new" else "failed"].inc(3)
            p.bytes.inc(10_000)
        if iface == "master":
            m.takeover_lag.set(0.25)
    return r, f


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, SyncFamilies]]:
    registry, families = _nodes()
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    port, web = server.server_port, _free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{ROOT}/grafana/alerts/carp.rules.yml"]
scrape_configs:
  - job_name: carp-sidecar
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    proc = subprocess.Popen(["prometheus", f"--config.file={conf}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("w"))
    try:
        yield f"http://127.0.0.1:{web}", families
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()
        server.server_close()


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
    except OSError:
        return None
    assert doc["status"] == "success", doc
    return doc["data"]


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    data = _api(base, "query", query=expr)
    return list(data["result"]) if data else []


def _alerts(base: str, name: str) -> list[dict[str, Any]]:
    data = _api(base, "alerts") or {"alerts": []}
    return [a for a in data["alerts"] if a["labels"]["alertname"] == name]


def _concrete(expr: str) -> str:
    return (expr.replace("$group", ".*").replace("$instance", ".*").replace("$vhid", ".*")
            .replace("$__rate_interval", "1m").replace("$__range", "5m"))


def test_sync_panels_have_data_and_the_sync_alerts_pick_the_right_nodes(
        prometheus: tuple[str, SyncFamilies]) -> None:
    base, families = prometheus
    wait_for(lambda: _query(base, "carp_sync_epoch"), 30, "the sync series scraped")
    wait_for(lambda: len(_query(base, "count_over_time(carp_sync_epoch[1m])")) == 3
             and _query(base, "count_over_time(carp_sync_epoch[1m]) >= 3"), 20,
             "three scrapes")
    assert {t for t in QUERIES if "carp_sync_" in QUERIES[t][0][0]} == SYNC_PANELS
    for title in sorted(SYNC_PANELS):
        for expr, _legend in QUERIES[title]:
            assert _query(base, _concrete(expr)), f"panel {title!r} has no data"
    lag = {r["metric"]["interface"] + "/" + r["metric"]["path"]: r["value"][1]
           for r in _query(base, "carp_sync_lag_seconds")}
    assert lag["new/www"] == "+Inf" and lag["behind/www"] == "42" and lag["master/www"] == "0"

    wait_for(lambda: _alerts(base, "CarpSyncLagging"), 10, "CarpSyncLagging pending")
    time.sleep(2)  # another evaluation or two: nothing else joins
    lagging = sorted(a["labels"]["interface"] + "/" + a["labels"]["path"]
                     for a in _alerts(base, "CarpSyncLagging"))
    assert lagging == ["behind/www", "new/sessions", "new/www"], lagging
    assert {a["state"] for a in _alerts(base, "CarpSyncLagging")} == {"pending"}  # for: 1m
    never = next(a for a in _alerts(base, "CarpSyncLagging") if a["labels"]["interface"] == "new")
    assert float(never["value"]) == float("inf")
    assert not _alerts(base, "CarpSyncConflict")

    # a former master came back and set files aside (its pulls displaced them)
    families.conflicts.labels(group="vhid1-10.0.1.1", vhid="1", interface="behind", path="www").inc(2)
    wait_for(lambda: [a for a in _alerts(base, "CarpSyncConflict") if a["state"] == "firing"],
             15, "CarpSyncConflict firing")
    fired = _alerts(base, "CarpSyncConflict")
    assert [(a["labels"]["path"], a["labels"]["vhid"]) for a in fired] == [("www", "1")], fired
    assert float(fired[0]["value"]) >= 2  # increase() may extrapolate a little above 2
    assert "conflicting files of replica www (VHID 1)" in fired[0]["annotations"]["summary"]
