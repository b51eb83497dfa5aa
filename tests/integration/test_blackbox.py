"""The VIP probed from outside the nodes, as Prometheus users do it: Debian's blackbox exporter
in the client namespace, scraped by a real Prometheus through a failover."""

from __future__ import annotations

import shutil
import signal

import pytest

from sidecar.lab import VIP, Lab
from sidecar.lab.blackbox import available, probe_url, start_blackbox

from .conftest import wait_for
from .test_prometheus import query, start_prometheus

pytestmark = pytest.mark.skipif(not available() or shutil.which("prometheus") is None,
                                reason="prometheus-blackbox-exporter or prometheus missing "
                                       "(make deps)")
PROBE = probe_url(VIP)


def probe_success(lab: Lab) -> str | None:
    text = lab.get("client", PROBE) or ""
    return next((ln.split()[1] for ln in text.splitlines()
                 if ln.startswith("probe_success ")), None)


def test_blackbox_exporter_in_the_client_namespace_sees_the_outage_of_a_dead_master(
        lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    start_blackbox(lab.topo, lab.dir)
    wait_for(lambda: probe_success(lab) == "1", 15, "the exporter reaching the VIP")
    start_prometheus(lab)  # with the blackbox-vip job, as deploy/prometheus/prometheus.yml
    wait_for(lambda: "Ready" in (lab.get("client", "http://127.0.0.1:9090/-/ready") or ""), 20,
             "Prometheus ready")
    wait_for(lambda: query(lab, 'probe_success{job="blackbox-vip"} == 1'), 20,
             "Prometheus scraping the probe")
    lab.stop_agent("a", sig=signal.SIGKILL)  # its VIP stays on a node whose Apache dies too
    lab.kill_apache("a")
    wait_for(lambda: probe_success(lab) == "0", 3, "the probe failing during the failover")
    wait_for(lambda: probe_success(lab) == "1", 8, "the probe answered by node-b")
    outage = 'min_over_time(probe_success{job="blackbox-vip", group="vhid1-172.16.0.1"}[1m])'
    wait_for(lambda: [r["value"][1] for r in query(lab, outage)] == ["0"], 10,
             "Prometheus to have recorded the outage")
    availability = 'avg_over_time(probe_success{job="blackbox-vip"}[1m])'
    wait_for(lambda: query(lab, 'probe_success{job="blackbox-vip"} == 1'), 10,
             "Prometheus to see the VIP answer again")
    assert 0 < float(query(lab, availability)[0]["value"][1]) < 1
