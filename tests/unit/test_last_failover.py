"""The last failover exactly (not a histogram bucket bound), and where a health-check
failover's outage begins: the last passing check before the streak that demoted the node."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.runtime.health import HealthMonitor
from sidecar.serve.metrics import InstanceMetrics, Metrics


def metrics() -> tuple[CollectorRegistry, InstanceMetrics]:
    registry = CollectorRegistry()
    m = InstanceMetrics(Metrics(registry, "test", process_metrics=False), 1, "eth0",
                        ["10.0.0.1"], group="web")
    return registry, m


LABELS = {"group": "web", "vhid": "1", "interface": "eth0"}


def test_the_last_failover_is_exported_exactly_beside_the_histogram() -> None:
    registry, m = metrics()
    m.failover_possible()
    m.observe_failover("master_down", 3.39)
    labels = {**LABELS, "reason": "master_down"}
    assert registry.get_sample_value("carp_last_failover_duration_seconds", labels) == 3.39
    # the histogram alone says "at most 3.5 s", the panel used to show
    assert registry.get_sample_value("carp_failover_duration_seconds_bucket",
                                     {**labels, "le": "3.0"}) == 0
    assert registry.get_sample_value("carp_failover_duration_seconds_bucket",
                                     {**labels, "le": "3.5"}) == 1
    m.observe_failover("master_down", 0.012)  # the last one, not the largest
    assert registry.get_sample_value("carp_last_failover_duration_seconds", labels) == 0.012
    m.observe_failover("unhealthy", 0.9)
    assert registry.get_sample_value("carp_last_failover_duration_seconds",
                                     {**LABELS, "reason": "unhealthy"}) == 0.9
    assert registry.get_sample_value("carp_failover_duration_seconds_count",
                                     {**LABELS, "reason": "unhealthy"}) == 1


def test_no_last_failover_series_before_a_failover_and_none_after_removal() -> None:
    registry, m = metrics()
    m.failover_possible()
    assert registry.get_sample_value("carp_last_failover_duration_seconds",
                                     {**LABELS, "reason": "master_down"}) is None
    m.observe_failover("handover", 0.004)
    m.remove()
    assert registry.get_sample_value("carp_last_failover_duration_seconds",
                                     {**LABELS, "reason": "handover"}) is None


def test_failed_since_is_the_last_passing_answer_before_the_failing_streak() -> None:
    """As a client counts its gap from its last good answer: the service broke after it."""
    changes: list[tuple[bool, float | None]] = []
    mon: HealthMonitor

    def changed(ok: bool, err: str) -> None:
        changes.append((ok, mon.failed_since))

    mon = HealthMonitor([], 0.1, 1, 2, 3, lambda ok: None, changed)
    mon.record(True, 10.0, 10.01)
    assert mon.failed_since is None
    mon.record(False, 10.1, 10.11)
    assert mon.failed_since == 10.01
    mon.record(True, 10.2, 10.21)  # a single failure: the streak ends
    assert mon.failed_since is None
    for at in (10.3, 10.4, 10.5):
        mon.record(False, at, at + 0.01)
    assert changes == [(True, None), (False, 10.21)]  # demoted at 10.51, good until 10.21
    mon.record(False, 10.6, 10.61)
    assert mon.failed_since == 10.21
    mon.record(True, 10.7, 10.71)
    assert mon.failed_since is None


def test_failed_since_without_any_passing_check_is_the_first_failing_one() -> None:
    mon = HealthMonitor([], 0.1, 1, 2, 2, lambda ok: None, lambda ok, err: None)
    mon.record(False, 5.0, 5.2)
    mon.record(False, 5.3, 5.5)
    assert mon.failed_since == 5.0
