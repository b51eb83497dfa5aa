"""An instance as /status and the control socket's ``status`` show it (a view: reads only)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sidecar.core.protocol import DropReason
from sidecar.net.vmac import show
from sidecar.runtime.reporter import utc
from sidecar.runtime.vmac import macvlan_of

if TYPE_CHECKING:
    from sidecar.runtime.instance import Instance


def agent_status(version: str, started: float, restarts: int,
                 restart_on_stop_until: float | None = None,
                 last_restart: dict[str, Any] | None = None) -> dict[str, Any]:
    """/status's top-level ``agent``: this process (``started``: Unix time its image started,
    which an in-place restart moves), the restarts so far (carried across them), the armed
    ``restart --on-stop`` intent (Unix time it expires), and the last restart as
    {"kind", "from_version", "seconds"}."""
    return {"version": version, "started": started, "pid": os.getpid(), "restarts": restarts,
            "restart_on_stop_until": restart_on_stop_until, "last_restart": last_restart}


def instance_status(instance: Instance) -> dict[str, Any]:
    s, session, m = instance.s, instance.session, instance.m
    machine = session.machine
    dropped = {r.value: m.value("carp_adverts_dropped_total", reason=r.value) for r in DropReason}
    health = None
    if session.checks:
        errors = [e for ok, e in session.checks.values() if not ok]
        health = {"healthy": machine.healthy, "last_error": errors[0] if errors else "",
                  "checks": {n: ok for n, (ok, _) in session.checks.items()}}
    since = session.maintenance_since()
    sync = {} if instance.replica is None else {"sync": instance.replica.view()}
    return {
        "state": machine.state.name,
        "vhid": s.vhid,
        "group": s.group_name,
        "interface": s.interface,
        "vip_interface": s.vip_interface,
        "vmac": None if (mv := macvlan_of(instance)) is None else {  # CARP_VMAC's: VIPs' home
            "interface": mv.name, "mac": show(mv.mac),
            "present": instance.vip_ifindex is not None},
        "vip": s.shown_vips[0],
        "vips": s.shown_vips,
        "vip_prefix": "configured" if s.prefix_known else "set by the scripts",
        "srcip": str(instance.srcip),
        "protocol": s.protocol,
        "ipv6": s.ipv6,  # an IPv6 VRRP instance (its VRID may also be an IPv4 instance's)
        # VRRP's election key and interval (None for CARP, whose are advbase/advskew)
        "priority": None if s.protocol == "carp" else s.priority,
        "advert_int": None if s.protocol == "carp" else s.advert_int,
        "advbase": s.advbase,
        "advskew": s.advskew,
        "preempt": s.preempt,
        "master_since": instance.reporter.master_since,
        "last_transition": instance.reporter.last_transition,
        "demoted": machine.demoted,
        "maintenance": machine.maintenance,
        "maintenance_since": utc(since) if since is not None else None,
        "maintenance_by": sorted(session.maintenance),
        "preempt_delay": s.preempt_delay,
        "master_down_interval": machine.master_down_interval_us / 1e6,
        "health": health,
        "interface_present": instance.channel.attached is not None,
        "can_advertise": machine.can_advertise,
        "stale_holders": [mac.hex(":") for mac in session.stale_holders(instance.loop.time())],
        "cannot_advertise_reason": None if machine.can_advertise
        else session.cannot_advertise_reason(),
        "link_running": session.link.running,
        "peers": {src: {"last_seen": p.wall, "advbase": p.advbase, "advskew": p.advskew,
                        **({} if s.protocol == "carp" else
                           {"priority": instance.reporter.peer_priority.get(src)})}
                  for src, p in session.peers.valid_peers().items()},
        "counters": {"adverts_sent": m.value("carp_adverts_sent_total"),
                     "adverts_received": m.value("carp_adverts_received_total"),
                     "adverts_dropped": {r: n for r, n in dropped.items() if n}},
        **sync,
    }
