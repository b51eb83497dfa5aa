"""How long were we down, exactly: a health-check failover's exported duration against what a
polling client saw, and the last-failover gauge against the histogram's one observation."""

from __future__ import annotations

import signal
import time

from sidecar.lab import Lab
from sidecar.serve.metrics import FAILOVER_BUCKETS

from .conftest import dump_on_failure, metric, wait_for

HEALTH = {"CARP_HEALTH_URL": "http://127.0.0.1/", "CARP_HEALTH_INTERVAL": "0.2"}


def test_a_health_check_failover_is_measured_from_the_last_passing_check_as_a_client_sees_it(
        lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true", **HEALTH)
    lab.start_agent("b", CARP_ADVSKEW="100", **HEALTH)
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 15, "node-a serving")
    time.sleep(1)  # node-b has heard node-a: a failover is possible
    before = lab.get("a", "http://127.0.0.1:9655/metrics") or ""
    assert 'carp_failover_duration_seconds_count{group="vhid1-172.16.0.1",interface="eth0",' \
           'reason="unhealthy",vhid="1"} 0.0' in before  # at 0: the first one is an increase
    killed = time.time()
    lab.kill_apache("a")
    wait_for(lambda: lab.client_sees() == "node-b", 6, "node-b serving after Apache died on a")
    client_ms = lab.downtime_ms(killed, "node-b")
    assert client_ms is not None
    unhealthy = {"reason": "unhealthy"}
    wait_for(lambda: metric(lab, "a", "carp_last_failover_duration_seconds", **unhealthy) > 0,
             3, "node-a's measure of the failover")
    exported_ms = 1000 * metric(lab, "a", "carp_last_failover_duration_seconds", **unhealthy)
    # both count from the last good answer: the client's poll (10 ms), the check (200 ms)
    assert abs(exported_ms - client_ms) < 300, (exported_ms, client_ms, dump_on_failure(lab))
    # the exact value, not a bucket bound: the histogram's one observation
    assert metric(lab, "a", "carp_failover_duration_seconds_count", **unhealthy) == 1
    assert exported_ms == 1000 * metric(lab, "a", "carp_failover_duration_seconds_sum",
                                        **unhealthy)
    # the new master saw only a bow-out: its own measure is the last few ms of the outage
    handover = 1000 * metric(lab, "b", "carp_last_failover_duration_seconds", reason="handover")
    assert 0 < handover < exported_ms / 2, (handover, exported_ms)
    print(f"client saw {client_ms:.0f} ms; node-a exported {exported_ms:.0f} ms (unhealthy); "
          f"node-b {handover:.1f} ms (handover)")


def test_a_dead_masters_failover_is_exported_exactly_not_as_a_bucket_bound(lab: Lab) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    lab.start_probe()
    wait_for(lambda: lab.client_sees() == "node-a", 15, "node-a serving")
    time.sleep(1)
    killed = time.time()
    lab.stop_agent("a", sig=signal.SIGKILL)  # its VIP stays: the switch must learn node-b
    lab.kill_apache("a")
    wait_for(lambda: lab.client_sees() == "node-b", 8, "node-b serving after node-a died")
    client_ms = lab.downtime_ms(killed, "node-b")
    assert client_ms is not None
    down = {"reason": "master_down"}
    wait_for(lambda: metric(lab, "b", "carp_last_failover_duration_seconds", **down) > 0, 3,
             "node-b's measure of the failover")
    exported = metric(lab, "b", "carp_last_failover_duration_seconds", **down)
    assert metric(lab, "b", "carp_failover_duration_seconds_count", **down) == 1
    assert exported == metric(lab, "b", "carp_failover_duration_seconds_sum", **down)
    assert exported not in FAILOVER_BUCKETS  # what the histogram panel showed instead
    # from node-a's last advert, up to one advert interval (1 s) before it died
    assert -300 < 1000 * exported - client_ms < 1300, (exported, client_ms)
    print(f"client saw {client_ms:.0f} ms; node-b exported {1000 * exported:.0f} ms")
