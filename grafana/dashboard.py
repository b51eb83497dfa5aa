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
SEL = 'group=~"$group", instance=~"$instance", vhid=~"$vhid"'
DS = m.DataSourceRef(type_val="prometheus", uid="${datasource}")
PROBE = 'job="blackbox-vip", group=~"$group"'

# title -> its queries [(expr, legend)], refIds A, B... in that order; the order is the panel order
QUERIES: dict[str, list[tuple[str, str]]] = {
    "Master now": [(f"max by (group, vhid, instance) (carp_is_master{{{SEL}}}) == 1",
                   "{{group}}: {{instance}}")],
    "Masters per VHID (must be 1)": [(f"sum by (group, vhid) (carp_is_master{{{SEL}}})", "{{group}}")],
    "Time since last transition": [(f"time() - carp_last_transition_timestamp_seconds{{{SEL}}}",
                                   "{{instance}} vhid {{vhid}}")],
    "State timeline": [(f"max by (instance, vhid) (carp_state_code{{{SEL}}})",
                       "{{instance}} vhid {{vhid}}")],
    "Transitions (flap rate)": [(
        f"sum by (instance, vhid, to, reason, planned) "
        f"(increase(carp_transitions_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} -> {{to}} ({{reason}}, planned {{planned}})")],
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
    "Service health": [(f"min by (instance, vhid) (carp_health_up{{{SEL}}}) "
                        f"+ 2 * (1 - max by (instance, vhid) (carp_health_checked{{{SEL}}}))",
                        "{{instance}} vhid {{vhid}}")],
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
    "Failover a client saw (max) and its budget": [
        (f"max by (group, vhid, reason) (histogram_quantile(1, sum by (le, group, vhid, reason) "
         f"(increase(carp_failover_duration_seconds_bucket{{{SEL}}}[$__range]))))",
         "{{group}} {{reason}}"),
        (f"max by (group, vhid) (carp_master_down_interval_seconds{{{SEL}}})",
         "{{group}} budget (master-down interval)")],
    "Unplanned moves (15 min)": [(
        f"sum by (group, vhid) (increase(carp_transitions_total{{planned=\"false\", {SEL}}}[15m]))",
        "{{group}}")],
    "Advert age (as each backup sees its master)": [(
        f"time() - max by (instance, vhid) (carp_peer_last_advert_timestamp_seconds{{{SEL}}})",
        "{{instance}} vhid {{vhid}}")],
    "Script runs by result": [(
        f"sum by (instance, vhid, script, result) "
        f"(increase(carp_script_runs_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} {{script}} {{result}}")],
    "Takeover duration p95": [(
        f"histogram_quantile(0.95, sum by (le, instance) "
        f"(rate(carp_takeover_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
        "{{instance}}")],
    # the client's view: the blackbox exporter probing http://VIP/ (job blackbox-vip,
    # deploy/prometheus/prometheus.yml), labelled with the group, not an agent's instance
    "VIP answers (blackbox probe from outside)": [(
        f"max by (group, instance) (probe_success{{{PROBE}}})", "{{group}} {{instance}}")],
    "VIP availability (blackbox)": [(
        f"avg by (group) (avg_over_time(probe_success{{{PROBE}}}[$__range]))", "{{group}}")],
    "Last failover (exact)": [(
        f"max by (group, vhid, reason) (carp_last_failover_duration_seconds{{{SEL}}})",
        "{{group}} {{reason}}")],
    "Priority (advskew: lower wins, 255 demoted)": [
        (f"max by (instance, vhid) (carp_advskew{{{SEL}}})", "{{instance}} vhid {{vhid}} configured"),
        (f"max by (instance, vhid, peer) (carp_peer_advskew{{{SEL}}})",
         "{{instance}} vhid {{vhid}} hears {{peer}}")],
    # replicated paths (docs/sync.md): only agents with CARP_SYNC_PATHS export carp_sync_*
    "Replication lag per path": [(
        f"max by (instance, vhid, path) (carp_sync_lag_seconds{{{SEL}}})",
        "{{instance}} vhid {{vhid}} {{path}}")],
    "Fresh (may preempt)": [(f"min by (instance, vhid) (carp_sync_fresh{{{SEL}}})",
                             "{{instance}} vhid {{vhid}}")],
    "Replication epoch": [(f"max by (instance, vhid) (carp_sync_epoch{{{SEL}}})",
                           "{{instance}} vhid {{vhid}}")],
    "Lag at the last takeover": [(f"max by (instance, vhid) (carp_sync_takeover_lag_seconds{{{SEL}}})",
                                  "{{instance}} vhid {{vhid}}")],
    "Replication runs by result": [(
        f"sum by (instance, vhid, path, result) "
        f"(increase(carp_sync_runs_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} {{path}} {{result}}")],
    "Replication bytes received": [(
        f"sum by (instance, vhid, path) (rate(carp_sync_bytes_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} {{path}}")],
    "Replication conflicts (files set aside)": [(
        f"sum by (instance, vhid, path) "
        f"(increase(carp_sync_conflicts_total{{{SEL}}}[$__rate_interval]))",
        "{{instance}} vhid {{vhid}} {{path}}")],
}
# The panels that have data only where a replicated path is configured (CARP_SYNC_PATHS)
SYNC_PANELS = frozenset(t for t in QUERIES if t.startswith(("Replication", "Fresh", "Lag at")))

# Transitions as annotations on every panel: a state that changed in the last minute
ANNOTATION = f"changes(carp_state_code{{{SEL}}}[1m]) > 0"
# Agent restarts and upgrades: the process image's start time moved (an in-place restart keeps
# the PID, so process_start_time_seconds would not), with the version it runs now
AGENT = 'instance=~"$instance"'
RESTART_ANNOTATION = (f"(changes(carp_agent_start_time_seconds{{{AGENT}}}[2m]) > 0) "
                      f"* on (instance, job) group_left (version) carp_build_info{{{AGENT}}}")

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


def flag(off: str, on: str, none: str | None = None) -> m.ValueMap:
    """Value mappings for the 0/1 series, so a panel says what 0 and 1 mean (and 3, for the
    health panel: no check configured)."""
    options = {"0": m.ValueMappingResult(text=off, color="green" if on in BAD else "red"),
               "1": m.ValueMappingResult(text=on, color="red" if on in BAD else "green")}
    if none is not None:
        options["3"] = m.ValueMappingResult(text=none, color="blue")
    return m.ValueMap(options=options)


BAD = {"demoted / in maintenance"}
FLAGS = {"VIP present (observed by netlink)": flag("absent", "present"),
         "Service health": flag("unhealthy", "healthy", "no check configured"),
         "Demoted / maintenance": flag("in service", "demoted / in maintenance")}


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(m.ThresholdsMode.ABSOLUTE).steps(
        [m.Threshold(value=v, color=c) for v, c in steps])


def build() -> dict[str, object]:
    d = (db.Dashboard("CARP failover").uid("carp-failover").tags(["carp", "failover", "vip"])
         .description("carp-sidecar: who holds each VIP, transitions, adverts, drops, health")
         .refresh("10s").time("now-1h", "now").timezone("browser"))
    d.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    # group first: two clusters may both use VHID 1 (CARP_GROUP, default vhidN-FIRSTVIP)
    for name, query in (("group", "label_values(carp_state_code, group)"),
                        ("instance", 'label_values(carp_state_code{group=~"$group"}, instance)'),
                        ("vhid", 'label_values(carp_state_code{group=~"$group", '
                                 'instance=~"$instance"}, vhid)')):
        d.with_variable(db.QueryVariable(name).label(name).query(query).datasource(DS)
                        .multi(True).include_all(True).refresh(m.VariableRefresh.ON_TIME_RANGE_CHANGED))
    d.annotation(db.AnnotationQuery().name("Transitions").datasource(DS).enable(True)
                 .icon_color("orange")
                 .expr(ANNOTATION))
    d.annotation(db.AnnotationQuery().name("Agent restarts / upgrades").datasource(DS)
                 .enable(True).icon_color("purple").expr(RESTART_ANNOTATION))
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
    d.with_panel(timeseries.Panel().title("Failover a client saw (max) and its budget").height(8)
                 .span(16).unit("s")
                 .description("Measured by each new master: from the last advert it heard from "
                              "the old one (or its bow-out) to its VIP up and announced; beside "
                              "it the master-down interval, what a master that dies may cost")
                 .with_target(targets("Failover a client saw (max) and its budget")[0])
                 .with_target(targets("Failover a client saw (max) and its budget")[1]))
    d.with_panel(stat.Panel().title("Unplanned moves (15 min)").height(8).span(8)
                 .description("Transitions with planned=\"false\": a master fell silent or its "
                              "service failed. CarpFlappingMaster fires at 3")
                 .thresholds(thresholds((None, "green"), (1, "yellow"), (3, "red")))
                 .with_target(targets("Unplanned moves (15 min)", instant=True)[0]))
    d.with_row(db.Row("The client's view"))
    d.with_panel(statetimeline.Panel().title("VIP answers (blackbox probe from outside)")
                 .height(6).span(12).min(0).max(1)
                 .description("probe_success of the blackbox exporter's GET http://VIP/ "
                              "(http_2xx), from a host that is no CARP node: what clients see")
                 .with_target(targets("VIP answers (blackbox probe from outside)")[0])
                 .mappings([flag("no answer", "answers")]))
    d.with_panel(stat.Panel().title("VIP availability (blackbox)").height(6).span(4)
                 .unit("percentunit").decimals(3)
                 .thresholds(thresholds((None, "red"), (0.999, "green")))
                 .with_target(targets("VIP availability (blackbox)", instant=True)[0]))
    d.with_panel(stat.Panel().title("Last failover (exact)").height(6).span(8).unit("s")
                 .decimals(3)
                 .description("carp_last_failover_duration_seconds: the last failover's outage "
                              "exactly (the histogram only gives a bucket bound). Measured by "
                              "the new master from the old one's last advert; "
                              "reason=unhealthy: by the old master, from its service's last "
                              "passing check to the successor's first advert (the new master's "
                              "handover value is only the last few ms of it)")
                 .with_target(targets("Last failover (exact)", instant=True)[0]))
    d.with_row(db.Row("Protocol"))
    for title, unit in (("Transitions (flap rate)", "short"), ("Adverts sent", "pps"),
                        ("Adverts received", "pps"), ("Drops by reason", "pps"),
                        ("Split-brain evidence (conflicts)", "short"),
                        ("Advert age (as each backup sees its master)", "s"),
                        ("Script runs by result", "short"),
                        ("Takeover duration p95", "s"),
                        ("Priority (advskew: lower wins, 255 demoted)", "short")):
        panel = timeseries.Panel().title(title).height(8).span(12).unit(unit)
        for query in targets(title):
            panel = panel.with_target(query)
        d.with_panel(panel)
    d.with_row(db.Row("VIP and service"))
    for title in ("VIP present (observed by netlink)", "Service health", "Demoted / maintenance"):
        top = 3 if title == "Service health" else 1  # 3: no check configured
        panel = statetimeline.Panel().title(title).height(6).span(8).min(0).max(top)
        for query in targets(title):
            panel = panel.with_target(query)
        d.with_panel(panel.mappings([FLAGS[title]]))
    d.with_panel(stat.Panel().title("Maintenance since").height(4).span(24)
                 .description("Nodes drained by `carp-sidecar demote` (kept across restarts) "
                              "or the maintenance file, and since when")
                 .unit("dateTimeFromNow").no_value("no node in maintenance")
                 .with_target(targets("Maintenance since", instant=True)[0]))
    replication(d)
    doc = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    for ann in doc["annotations"]["list"]:  # Prometheus's fields the builder does not know
        if ann.get("expr") == RESTART_ANNOTATION:
            ann.update(titleFormat="Agent restarted", textFormat="{{instance}} runs {{version}}",
                       tagKeys="instance,version")
    return doc


def replication(d: db.Dashboard) -> None:
    d.with_row(db.Row("Replicated paths"))
    d.with_panel(timeseries.Panel().title("Replication lag per path").height(8).span(12).unit("s")
                 .description("carp_sync_lag_seconds: how long since each backup's replica last "
                              "matched the master's (0 while it matches; the master shows 0). "
                              "+Inf, before a backup's first catch-up, draws no point: see "
                              "Fresh. CarpSyncLagging fires when a backup stays over its "
                              "CARP_SYNC_MAX_LAG for 1 min")
                 .with_target(targets("Replication lag per path")[0]))
    d.with_panel(statetimeline.Panel().title("Fresh (may preempt)").height(8).span(12).min(0)
                 .max(1).description("carp_sync_fresh: 1 while every replica is within "
                                     "CARP_SYNC_MAX_LAG (or the node is MASTER); 0: it will not "
                                     "preempt and waits longer before a takeover")
                 .with_target(targets("Fresh (may preempt)")[0])
                 .mappings([flag("behind: held back", "fresh")]))
    for title, unit in (("Replication runs by result", "short"),
                        ("Replication bytes received", "Bps"),
                        ("Replication conflicts (files set aside)", "short")):
        d.with_panel(timeseries.Panel().title(title).height(8).span(8).unit(unit)
                     .with_target(targets(title)[0]))
    d.with_panel(stat.Panel().title("Replication epoch").height(5).span(12)
                 .description("carp_sync_epoch: a new one at every takeover; a backup accepts "
                              "data only from a master whose epoch is at least its own")
                 .with_target(targets("Replication epoch", instant=True)[0]))
    d.with_panel(stat.Panel().title("Lag at the last takeover").height(5).span(12).unit("s")
                 .description("carp_sync_takeover_lag_seconds: the largest replica lag a node "
                              "took the VIP over with (the master was dead: availability "
                              "wins); the files of that window are missing until the old "
                              "master's conflicts are merged")
                 .with_target(targets("Lag at the last takeover", instant=True)[0]))


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
