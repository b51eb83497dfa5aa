"""Every Prometheus metric of the agent, declared in one place (prefix ``carp_``).

:class:`Metrics` declares the families once per registry; :class:`InstanceMetrics` binds the
label children of one instance (``vhid``, ``interface``) once, so code calls ``.inc()`` and
``.set()`` without a label lookup — a flood of 20k packets a second must not pay one each.
All series that can be known at start exist at start (counters at 0), so ``rate()`` and alerts
work on a fresh node. The state encoding matches keepalived exporters: 0 INIT, 1 BACKUP, 2 MASTER.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    gc_collector,
    platform_collector,
    process_collector,
)

from sidecar.core.actions import planned
from sidecar.core.machine import Reason, State
from sidecar.core.protocol import DropReason

# (from, to, reason) triples the machine can produce; pre-created so they start at 0
TRANSITIONS: tuple[tuple[State, State, Reason], ...] = (
    (State.INIT, State.BACKUP, Reason.STARTUP),
    *((State.BACKUP, State.MASTER, r) for r in
      (Reason.MASTER_DOWN, Reason.PREEMPT, Reason.MASTER_TIMEOUT, Reason.HANDOVER, Reason.SYNC_CAUGHT_UP)),
    *((State.MASTER, State.BACKUP, r) for r in
      (Reason.PREFERRED_MASTER, Reason.LINK_DOWN, Reason.MAINTENANCE, Reason.UNHEALTHY,
       Reason.STEP_DOWN, Reason.CANNOT_ADVERTISE)),
    (State.MASTER, State.INIT, Reason.STOP),
    (State.BACKUP, State.INIT, Reason.STOP),
)
# VRRP's address owner (priority 255) starts as MASTER at once (RFC 3768/5798 §6.4.1)
VRRP_TRANSITIONS = ((State.INIT, State.MASTER, Reason.STARTUP),)
SCRIPT_RESULTS = ("ok", "failed", "timeout", "error", "superseded")
SCRIPTS = ("up", "down", "notify")
EVIDENCE = ("advert", "arp", "na", "stale_holder")
# what a client may see: about 3 s at advbase 1 when a master dies, milliseconds on a handover
FAILOVER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 3.5, 4.0, 5.0, 10.0,
                    30.0)
FAILOVER_REASONS = ("master_down", "preempt", "master_timeout", "handover")
# how late a protocol timer fires: at advbase 0 advskew 1 an advert is due every 3.9 ms
LATENESS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05, 0.25)
TAKEOVER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str,
                 process_metrics: bool = True) -> None:
        # group: the cluster (CARP_GROUP, default vhidN-FIRSTVIP), so two clusters that both
        # use VHID 1 in one Prometheus stay apart
        r, base = registry, ["group", "vhid", "interface"]
        self.registry = registry
        if process_metrics:
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)
        Info("carp_build", "carp-sidecar build", registry=r).info(
            {"version": version, "python": platform.python_version()})
        self._protocol(r, base)
        self._peers(r, base)
        self._operations(r, base)
        self._conflicts(r, base)

    def _protocol(self, r: CollectorRegistry, base: list[str]) -> None:
        """State, transitions, adverts, VIPs, the configured timing."""
        self.state = Gauge("carp_state", "1 for the current state, 0 for the others",
                           [*base, "state"], registry=r)
        self.state_code = Gauge("carp_state_code", "Current state: 0 INIT, 1 BACKUP, 2 MASTER",
                                base, registry=r)
        self.is_master = Gauge("carp_is_master", "1 while MASTER (sum by (vhid) must be 1)",
                               base, registry=r)
        self.transitions = Counter("carp_transitions", "State transitions; planned=\"false\": "
                                   "the VIP moved because a master fell silent or its service "
                                   "failed (each unplanned move counted once)",
                                   [*base, "from", "to", "reason", "planned"], registry=r)
        self.last_transition = Gauge("carp_last_transition_timestamp_seconds",
                                     "Unix time of the last state transition", base, registry=r)
        self.adverts_sent = Counter("carp_adverts_sent", "Advertisements sent", base, registry=r)
        self.advert_send_errors = Counter("carp_advert_send_errors", "Advertisements the kernel "
                                          "refused to send", base, registry=r)
        self.adverts_received = Counter("carp_adverts_received", "Valid advertisements received",
                                        base, registry=r)
        self.adverts_next_key = Counter(
            "carp_adverts_accepted_next_key", "Valid advertisements authenticated by the next "
            "password (CARP_PASS_NEXT), not the current one: a rotation under way", base,
            registry=r)
        self.adverts_dropped = Counter("carp_adverts_dropped", "Received packets dropped, by reason",
                                       [*base, "reason"], registry=r)
        self.vip_present = Gauge("carp_vip_present", "1 while the VIP is on the interface "
                                 "(observed by netlink), per address", [*base, "vip"], registry=r)
        self.advbase = Gauge("carp_advbase_seconds", "Configured advbase", base, registry=r)
        self.advskew = Gauge("carp_advskew", "Configured advskew (1/256 s)", base, registry=r)
        self.demoted = Gauge("carp_demoted", "1 while this node refuses to be MASTER "
                             "(unhealthy service or maintenance)", base, registry=r)
        self.maintenance = Gauge("carp_maintenance", "1 while demoted by an operator (control "
                                 "socket, kept across restarts) or by the maintenance file",
                                 base, registry=r)
        self.maintenance_since = Gauge("carp_maintenance_since_seconds", "Unix time this "
                                       "node's maintenance began; 0 when not in maintenance",
                                       base, registry=r)
        self.master_down_interval = Gauge("carp_master_down_interval_seconds",
                                          "How long a BACKUP waits for a silent master", base,
                                          registry=r)
        self.instance_info = Gauge("carp_instance_info", "1 per instance; protocol: carp, "
                                   "vrrp2 or vrrp3", [*base, "protocol"], registry=r)
        self.vmac_info = Gauge("carp_vmac_info", "1 per instance with CARP_VMAC (keepalived's "
                               "use_vmac): its macvlan and virtual MAC", [*base, "vmac", "mac"],
                               registry=r)

    def _peers(self, r: CollectorRegistry, base: list[str]) -> None:
        """What each peer advertises."""
        self.peer_last_advert = Gauge("carp_peer_last_advert_timestamp_seconds",
                                      "Unix time of the last valid advert from a peer",
                                      [*base, "peer"], registry=r)
        self.peer_advskew = Gauge("carp_peer_advskew", "advskew a peer advertises",
                                  [*base, "peer"], registry=r)
        self.peer_advbase = Gauge("carp_peer_advbase_seconds", "advbase a peer advertises",
                                  [*base, "peer"], registry=r)
        self.peer_priority = Gauge("carp_peer_priority", "VRRP: the priority a peer advertises "
                                   "(keepalived's, with its track_script weights applied)",
                                   [*base, "peer"], registry=r)

    def _operations(self, r: CollectorRegistry, base: list[str]) -> None:
        """Scripts, the VIP backend, health checks."""
        self.script_runs = Counter("carp_script_runs", "Up/down script runs by result",
                                   [*base, "script", "result"], registry=r)
        self.script_duration = Histogram("carp_script_duration_seconds", "Script run time",
                                         [*base, "script"], registry=r)
        self.vip_errors = Counter("carp_vip_errors", "Failed netlink VIP changes", base, registry=r)
        self.health_up = Gauge("carp_health_up", "Co-located service check: 1 healthy, 0 not "
                               "(1 when no check is configured)", base, registry=r)
        self.health_checked = Gauge("carp_health_checked", "1 while a health check gates this "
                                    "instance; 0: none does (carp_health_up is then 1)", base,
                                    registry=r)
        self.health_checks = Counter("carp_health_checks", "Health check results",
                                     [*base, "result"], registry=r)

    def _conflicts(self, r: CollectorRegistry, base: list[str]) -> None:
        """Split-brain evidence, the peer table, HTTP, announcements, handovers."""
        self.conflicts = Counter("carp_conflicts", "Split-brain evidence while MASTER: another "
                                 "master's adverts after our takeover settled (evidence=advert), "
                                 "an ARP or neighbour advertisement for a VIP from another MAC "
                                 "(arp, na), or an answer to our probe from a host that still "
                                 "has the VIP configured (stale_holder)",
                                 [*base, "evidence"], registry=r)
        self.probes_sent = Counter("carp_vip_probes_sent", "ARP probes and neighbour "
                                   "solicitations sent while MASTER to find stale VIP holders",
                                   base, registry=r)
        self.interface_present = Gauge("carp_interface_present", "1 while the interface exists "
                                       "(it may be deleted and re-created)", base, registry=r)
        self.peers = Gauge("carp_peers", "Senders of adverts for this vhid remembered now "
                           "(bounded; they expire)", base, registry=r)
        self.peers_evicted = Counter("carp_peers_evicted", "Peers forgotten early because the "
                                     "table was full (a flood of forged sources)", base,
                                     registry=r)
        self.http_refused = Counter("carp_http_connections_refused", "HTTP connections closed "
                                    "because too many were open (the one slowest to send its "
                                    "request, else the new one)", registry=r)
        self.garps_sent = Counter("carp_garps_sent", "Gratuitous ARPs and unsolicited neighbour "
                                  "advertisements sent", base, registry=r)
        self.handovers_sent = Counter("carp_handovers_sent", "Bow-out adverts sent when leaving "
                                      "MASTER on purpose", base, registry=r)
        self.handovers_received = Counter("carp_handovers_received", "Bow-out adverts received",
                                          base, registry=r)
        self.peer_counter_behind = Gauge("carp_peer_counter_behind", "Strict mode: 1 while a "
                                         "listed peer's authenticated adverts have all been "
                                         "dropped as replays for a master-down interval (its "
                                         "counter went back: restarted with the clock behind)",
                                         [*base, "peer"], registry=r)
        self.failover_duration = Histogram(
            "carp_failover_duration_seconds", "Measured by the new master, by the reason it took "
            "over: from the last advert it heard from the old master (or its bow-out) to its VIP "
            "up and announced, the outage a client may see; reason=\"unhealthy\": by the old "
            "master, from its service's last passing check to the successor's first advert",
            [*base, "reason"], buckets=FAILOVER_BUCKETS, registry=r)
        # the histogram shows a bucket bound (3.39 s as 3.5 s): the last one exactly, beside it
        self.last_failover_duration = Gauge(
            "carp_last_failover_duration_seconds", "The last failover's outage, exactly, by "
            "reason: as carp_failover_duration_seconds (the new master); reason=\"unhealthy\": "
            "measured by the old master, from its service's last passing check to the "
            "successor's first advert", [*base, "reason"], registry=r)
        self.takeover_duration = Histogram("carp_takeover_duration_seconds", "From deciding to "
                                           "become MASTER to VIP added and GARP sent", base,
                                           buckets=TAKEOVER_BUCKETS, registry=r)
        self.timer_lateness = Histogram(
            "carp_timer_lateness_seconds", "How late the protocol's timers (advert sends, "
            "master-down) fire after their deadline, over all instances: the event loop's "
            "other work, collector pauses, the scheduler", buckets=LATENESS_BUCKETS, registry=r)


class ReloadMetrics:
    """The names Prometheus uses for its own reloads; 1 and the start time at start."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.successful = Gauge("carp_config_last_reload_successful", "1 if the last "
                                "configuration reload (or the start) succeeded, 0 if it was "
                                "refused", registry=registry)
        self.success_time = Gauge("carp_config_last_reload_success_timestamp_seconds",
                                  "Unix time of the last successful reload (or the start)",
                                  registry=registry)
        self.not_running = Gauge("carp_instances_not_running", "Configured instances that "
                                 "do not run: a reload failed part way and could not start them "
                                 "again (/readyz and /healthz fail; restart the agent)",
                                 registry=registry)
        self.succeeded()

    def succeeded(self) -> None:
        self.successful.set(1)
        self.success_time.set_to_current_time()

    def failed(self) -> None:
        self.successful.set(0)


class HeldRecordMetrics:
    """Whether the record of held VIPs (CARP_STATE_DIR/held) is kept; 1 at start."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ok = Gauge("carp_held_record_ok", "1 while the record of the VIPs this agent holds "
                        "(CARP_STATE_DIR/held) is kept whole (or CARP_STATE_DIR is off); 0 while "
                        "the state directory cannot take it (full, read-only, broken): a "
                        "SIGKILLed run's VIPs are then found by configuration only",
                        registry=registry)
        self.ok.set(1)


RESTART_KINDS = ("in_place", "on_stop")
RESTART_RESULTS = ("resumed", "refused", "failed", "afresh")


class RestartMetrics:
    """Restarts without a move (docs/architecture.md): counted across them (``carried``, by
    "kind/result", comes in the previous process's record, so ``increase()`` sees no reset over
    an exec), and when this process image started (an exec keeps the PID and the process's
    start time: only this moves)."""

    def __init__(self, registry: CollectorRegistry, carried: dict[str, int] | None = None) -> None:
        family = Counter("carp_restarts", "Restarts of the agent that keep the VIP in place, by "
                         "kind (in_place: `carp-sidecar restart`; on_stop: a stop while `restart "
                         "--on-stop` was armed, then the next process) and result (resumed; "
                         "refused: nothing changed; failed: the old process runs on; afresh: the "
                         "next process could not use the record and started as usual); carried "
                         "across restarts", ["kind", "result"], registry=registry)
        self._registry = registry
        self._children = {(k, r): family.labels(kind=k, result=r)
                          for k in RESTART_KINDS for r in RESTART_RESULTS}
        for (kind, result), child in self._children.items():
            child.inc(max(0, (carried or {}).get(f"{kind}/{result}", 0)))
        self.started = Gauge("carp_agent_start_time_seconds", "Unix time this agent's process "
                             "image started: an in-place restart (exec, same PID) moves it, "
                             "unlike process_start_time_seconds", registry=registry)
        self.started.set(time.time())

    def count(self, kind: str, result: str) -> None:
        """ValueError for a kind or result that is not one of the series."""
        child = self._children.get((kind, result))
        if child is None:
            raise ValueError(f"no restart series kind={kind!r} result={result!r}")
        child.inc()

    def counts(self) -> dict[str, int]:
        """What the next process carries on from ("kind/result" -> count)."""
        return {f"{k}/{r}": int(self._registry.get_sample_value(
            "carp_restarts_total", {"kind": k, "result": r}) or 0) for k, r in self._children}

    @property
    def total(self) -> int:
        """Restarts that happened (a new process: resumed or afresh); a refused or failed one
        left this process as it was."""
        return sum(n for key, n in self.counts().items()
                   if key.endswith(("/resumed", "/afresh")))


class InstanceMetrics:
    """The series of one instance, bound once; all present from the start."""

    def __init__(self, m: Metrics, vhid: int, interface: str, vips: Iterable[str],
                 strict_peers: Iterable[IPv4Address | IPv6Address] = (), group: str = "",
                 protocol: str = "carp", vmac: tuple[str, str] | None = None) -> None:
        self.family = m
        self.labels = {"group": group or f"vhid{vhid}", "vhid": str(vhid), "interface": interface}
        self._key = tuple(self.labels.values())  # the leading label values of every child
        m.instance_info.labels(**self.labels, protocol=protocol).set(1)
        if vmac is not None:  # (name, MAC)
            m.vmac_info.labels(**self.labels, vmac=vmac[0], mac=vmac[1]).set(1)
        self._bind_protocol(m, self.labels, vips, protocol)
        self._bind_operations(m, self.labels)
        self._bind_conflicts(m, self.labels, strict_peers)
        self.health_up.set(1)
        self.set_state(State.INIT)

    def _bind_protocol(self, m: Metrics, lb: dict[str, str], vips: Iterable[str],
                       protocol: str) -> None:
        """State, transitions, adverts, the VIPs."""
        possible = TRANSITIONS + (VRRP_TRANSITIONS if protocol != "carp" else ())
        self.state = {s: m.state.labels(**lb, state=s.name) for s in State}
        self.state_code = m.state_code.labels(**lb)
        self.is_master = m.is_master.labels(**lb)
        # (from, to, reason, planned) -> child; a takeover by timeout is planned when no master
        # had been heard (the cluster starting), so both of its children exist
        self.transitions = {(old, new, reason, p): m.transitions.labels(
            **lb, **{"from": old.name, "to": new.name}, reason=reason.value,
            planned="true" if p else "false")
            for old, new, reason in possible
            for p in ({planned(new, reason), True} if new is State.MASTER
                      else {planned(new, reason)})}
        self.last_transition = m.last_transition.labels(**lb)
        self.adverts_sent = m.adverts_sent.labels(**lb)
        self.advert_send_errors = m.advert_send_errors.labels(**lb)
        self.received = m.adverts_received.labels(**lb)
        self.received_next_key = m.adverts_next_key.labels(**lb)
        self.dropped = {r: m.adverts_dropped.labels(**lb, reason=r.value) for r in DropReason}
        self.vip_present = {vip: m.vip_present.labels(**lb, vip=vip) for vip in vips}
        self.advbase = m.advbase.labels(**lb)
        self.advskew = m.advskew.labels(**lb)
        self.demoted = m.demoted.labels(**lb)
        self.maintenance = m.maintenance.labels(**lb)
        self.maintenance_since = m.maintenance_since.labels(**lb)
        self.master_down_interval = m.master_down_interval.labels(**lb)
        self.interface_present = m.interface_present.labels(**lb)
        self.garps_sent = m.garps_sent.labels(**lb)
        self.probes_sent = m.probes_sent.labels(**lb)
        self.handovers_sent = m.handovers_sent.labels(**lb)
        self.handovers_received = m.handovers_received.labels(**lb)
        self.takeover_duration = m.takeover_duration.labels(**lb)
        self._failover: dict[str, Histogram] = {}  # by reason, once a failover is possible

    def failover_possible(self) -> None:
        """A master was heard, so a failover may follow: carp_failover_duration_seconds gets
        its children now, at 0, so Prometheus sees the first failover as an increase. A lone
        master never needs them (4 reasons x 17 values x 255 VHIDs: megabytes of zeros)."""
        if not self._failover:
            for reason in FAILOVER_REASONS:
                self.failover(reason)

    def failover(self, reason: str) -> Histogram:
        child = self._failover.get(reason)
        if child is None:
            child = self._failover[reason] = self.family.failover_duration.labels(
                **self.labels, reason=reason)
        return child

    def observe_failover(self, reason: str, seconds: float) -> None:
        """One failover: into the histogram, and exactly into the last-failover gauge."""
        self.failover(reason).observe(seconds)
        self.family.last_failover_duration.labels(**self.labels, reason=reason).set(seconds)

    def set_health_checked(self, checked: bool) -> None:
        """A node gated by a check may leave MASTER unhealthy: that failover's histogram child
        is at 0 from now, so Prometheus sees the first one as an increase."""
        self.health_checked.set(1 if checked else 0)
        if checked:
            self.failover("unhealthy")

    def _bind_operations(self, m: Metrics, lb: dict[str, str]) -> None:
        """Scripts, the VIP backend, health checks."""
        self.script_runs = {(script, result): m.script_runs.labels(**lb, script=script,
                                                                     result=result)
                            for script in SCRIPTS for result in SCRIPT_RESULTS}
        self.script_duration = {s: m.script_duration.labels(**lb, script=s) for s in SCRIPTS}
        self.vip_errors = m.vip_errors.labels(**lb)
        self.health_up = m.health_up.labels(**lb)
        self.health_checked = m.health_checked.labels(**lb)
        self.health_checks = {ok: m.health_checks.labels(**lb, result="ok" if ok else "failed")
                              for ok in (True, False)}

    def _bind_conflicts(self, m: Metrics, lb: dict[str, str],
                        strict_peers: Iterable[IPv4Address | IPv6Address]) -> None:
        """Split-brain evidence and the peers."""
        self.conflicts = {e: m.conflicts.labels(**lb, evidence=e) for e in EVIDENCE}
        self.peers = m.peers.labels(**lb)
        self.peers_evicted = m.peers_evicted.labels(**lb)
        self.peer_counter_behind = {p: m.peer_counter_behind.labels(**lb, peer=str(p))
                                    for p in strict_peers}

    def set_state(self, state: State) -> None:
        for s, child in self.state.items():
            child.set(1 if s is state else 0)
        self.state_code.set(int(state))
        self.is_master.set(1 if state is State.MASTER else 0)

    def remove(self) -> None:
        """A reload removed the instance: none of its series may linger (a VHID with only
        non-master series left would raise CarpNoMaster)."""
        remove_series(vars(self.family).values(), self._key)

    def set_vips(self, vips: Iterable[str]) -> None:
        """A reload changed the VIP list: series for the new ones (at 0 until netlink says),
        none left for the removed ones."""
        wanted = list(vips)
        for gone in [v for v in self.vip_present if v not in wanted]:
            del self.vip_present[gone]
            with contextlib.suppress(KeyError):
                self.family.vip_present.remove(*self._key, gone)
        for vip in wanted:
            if vip not in self.vip_present:
                self.vip_present[vip] = self.family.vip_present.labels(**self.labels, vip=vip)

    def set_peer(self, peer: str, wall: float, advbase: int, advskew: int) -> None:
        m, lb = self.family, self.labels
        m.peer_last_advert.labels(**lb, peer=peer).set(wall)
        m.peer_advskew.labels(**lb, peer=peer).set(advskew)
        m.peer_advbase.labels(**lb, peer=peer).set(advbase)

    def forget_peer(self, peer: str) -> None:
        """Remove a peer's series, so forged sources cannot grow /metrics without bound."""
        m = self.family
        for gauge in (m.peer_last_advert, m.peer_advskew, m.peer_advbase, m.peer_priority):
            with contextlib.suppress(KeyError):
                gauge.remove(*self._key, peer)

    def value(self, name: str, **labels: str) -> int:
        """A counter read back from the registry (for /status: it never disagrees)."""
        return int(self.family.registry.get_sample_value(name, {**self.labels, **labels}) or 0)


def remove_series(families: Iterable[object], key: tuple[str, ...]) -> None:
    """Remove every child of ``families`` whose leading label values are ``key`` (one
    instance's series, whatever labels follow)."""
    for family in families:
        if not isinstance(family, Counter | Gauge | Histogram):
            continue
        # prometheus_client lists a family's children only in its private _metrics
        children = getattr(family, "_metrics", None)  # absent: a family without labels
        for values in [v for v in list(children or ()) if v[:len(key)] == key]:
            family.remove(*values)
