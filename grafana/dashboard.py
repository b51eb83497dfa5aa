#!/usr/bin/env python3
"""Generates grafana/dashboards/carp-failover.json with grafana-foundation-sdk.

    .venv/bin/python grafana/dashboard.py            # rewrite the JSON
    .venv/bin/python grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

Every query is listed in QUERIES so the integration test can run each one against a real
Prometheus (with the dashboard variables replaced by match-all values).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as m

OUT = Path(__file__).parent / "dashboards" / "carp-failover.json"
SEL = 'instance=~"$instance", vhid=~"$vhid"'
DS = m.DataSourceRef(type_val="prometheus", uid="${datasource}")

# title -> its queries [(expr, legend)], refIds A, B... in that order; the order is the panel order
QUERIES: dict[str, list[tuple[str, str]]] = {
    "Master now": [(f"max by (vhid, instance) (carp_is_master{{{SEL}}}) == 1",
                   "vhid {{vhid}}: {{instance}}")],
    "Masters per VHID (must be 1)": [(f"sum by (vhid) (carp_is_master{{{SEL}}})", "vhid {{vhid}}")],
    "Time since last transition": [(f"time() - carp_last_transition_timestamp_seconds{{{SEL}}}",
                                   "{{instance}} vhid {{vhid}}")],
    "State timeline": [(f"max by (instance, vhid) (carp_state_code{{{SEL}}})",
                       "{{instance}} vhid {{vhid}}")],
    "Transitions (flap rate)": [(
        f"sum by (instance, vhid, to, reason) "
        f"(increase(carp_transitions_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} -> {{to}} ({{reason}})")],
    "Adverts sent": [(f"sum by (instance, vhid) (rate(carp_adverts_sent_total{{{SEL}}}[$__rate_interval]))",
                     "{{instance}} vhid {{vhid}} sent")],
    "Adverts received": [(
        f"sum by (instance, vhid) (rate(carp_adverts_received_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} received")],
    "Drops by reason": [(
        f"sum by (instance, reason) (rate(carp_adverts_dropped_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} {{reason}}")],
    "VIP present (observed by netlink)": [(
        f"max by (instance, vhid, vip) (carp_vip_present{{{SEL}}})",
        "{{instance}} vhid {{vhid}} {{vip}}")],
    "Service health": [(f"min by (instance, vhid) (carp_health_up{{{SEL}}})",
                       "{{instance}} vhid {{vhid}} healthy")],
    "Demoted / maintenance": [(f"max by (instance, vhid) (carp_demoted{{{SEL}}})",
                               "{{instance}} vhid {{vhid}} demoted"),
                              (f"max by (instance, vhid) (carp_maintenance{{{SEL}}})",
                               "{{instance}} vhid {{vhid}} maintenance")],
    "Maintenance since": [(f"max by (instance, vhid) (carp_maintenance_since_seconds{{{SEL}}} > 0) "
                          "* 1000", "{{instance}} vhid {{vhid}}")],
    "Split-brain evidence (conflicts)": [(
        f"sum by (instance, vhid, evidence) "
        f"(increase(carp_conflicts_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} {{evidence}}")],
    "Takeover duration p95": [(
        f"histogram_quantile(0.95, sum by (le, instance) "
        f"(rate(carp_takeover_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
        "{{instance}}")],
}

MASTER_MAP = m.ValueMap(options={"1": m.ValueMappingResult(text="MASTER", color="green")})
STATE_MAP = m.ValueMap(options={
    "0": m.ValueMappingResult(text="INIT", color="blue"),
    "1": m.ValueMappingResult(text="BACKUP", color="yellow"),
    "2": m.ValueMappingResult(text="MASTER", color="green"),
})


def targets(title: str, instant: bool = False) -> list[prometheus.Dataquery]:
    out = []
    for ref, (expr, legend) in zip("ABCDEFGH", QUERIES[title], strict=False):
        query = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DS).ref_id(ref)
        out.append(query.instant() if instant else query)
    return out


def flag(off: str, on: str) -> m.ValueMap:
    """Value mappings for the 0/1 series, so a panel says what 0 and 1 mean."""
    return m.ValueMap(options={"0": m.ValueMappingResult(text=off, color="green" if on in BAD
                                                         else "red"),
                               "1": m.ValueMappingResult(text=on, color="red" if on in BAD
                                                         else "green")})


BAD = {"demoted / in maintenance"}
FLAGS = {"VIP present (observed by netlink)": flag("absent", "present"),
         "Service health": flag("unhealthy", "healthy"),
         "Demoted / maintenance": flag("in service", "demoted / in maintenance")}


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(m.ThresholdsMode.ABSOLUTE).steps(
        [m.Threshold(value=v, color=c) for v, c in steps])


def build() -> dict[str, object]:
    d = (db.Dashboard("CARP failover").uid("carp-failover").tags(["carp", "failover", "vip"])
         .description("carp-sidecar: who holds each VIP, transitions, adverts, drops, health")
         .refresh("10s").time("now-1h", "now").timezone("browser"))
    d.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    for name, query in (("instance", "label_values(carp_state_code, instance)"),
                        ("vhid", 'label_values(carp_state_code{instance=~"$instance"}, vhid)')):
        d.with_variable(db.QueryVariable(name).label(name).query(query).datasource(DS)
                        .multi(True).include_all(True).refresh(m.VariableRefresh.ON_TIME_RANGE_CHANGED))
    d.with_row(db.Row("Who is master"))
    d.with_panel(stat.Panel().title("Master now").height(5).span(8)
                 .with_target(targets("Master now", instant=True)[0]).mappings([MASTER_MAP]))
    d.with_panel(stat.Panel().title("Masters per VHID (must be 1)").height(5).span(8)
                 .with_target(targets("Masters per VHID (must be 1)", instant=True)[0])
                 .thresholds(thresholds((None, "red"), (1, "green"), (2, "red"))))
    d.with_panel(stat.Panel().title("Time since last transition").height(5).span(8).unit("s")
                 .with_target(targets("Time since last transition", instant=True)[0]))
    d.with_panel(statetimeline.Panel().title("State timeline").height(8).span(24)
                 .with_target(targets("State timeline")[0]).mappings([STATE_MAP]))
    d.with_row(db.Row("Protocol"))
    for title, unit in (("Transitions (flap rate)", "short"), ("Adverts sent", "pps"),
                        ("Adverts received", "pps"), ("Drops by reason", "pps"),
                        ("Split-brain evidence (conflicts)", "short"),
                        ("Takeover duration p95", "s")):
        d.with_panel(timeseries.Panel().title(title).height(8).span(12).unit(unit)
                     .with_target(targets(title)[0]))
    d.with_row(db.Row("VIP and service"))
    for title in ("VIP present (observed by netlink)", "Service health", "Demoted / maintenance"):
        panel = statetimeline.Panel().title(title).height(6).span(8).min(0).max(1)
        for query in targets(title):
            panel = panel.with_target(query)
        d.with_panel(panel.mappings([FLAGS[title]]))
    d.with_panel(stat.Panel().title("Maintenance since").height(4).span(24)
                 .description("Nodes drained by `carp-sidecar demote` (kept across restarts) "
                              "or the maintenance file, and since when")
                 .unit("dateTimeFromNow").no_value("no node in maintenance")
                 .with_target(targets("Maintenance since", instant=True)[0]))
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


# The schema of the Grafana that deploy/compose.yml pins (grafana/grafana:11.1.0): what that
# Grafana writes when it saves the dashboard, so it loads it without a migration.
GRAFANA_SCHEMA = {"11.1": 39}
PINNED_GRAFANA = "11.1"


def render() -> str:
    doc = build()
    doc["schemaVersion"] = GRAFANA_SCHEMA[PINNED_GRAFANA]
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run .venv/bin/python grafana/dashboard.py", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    OUT.write_text(text)
    print(f"wrote {OUT}")
