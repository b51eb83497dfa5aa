"""`carp-sidecar status`: the agent's /status as a short table per instance, for a person at a
terminal (``--json`` keeps the JSON). Pure: a status document in, text out."""

from __future__ import annotations

import time
from typing import Any


def _local(unix: float | None, now: float) -> str:
    if unix is None:
        return "?"
    ago = max(0.0, now - unix)
    span = (f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200
            else f"{ago / 3600:.1f} h" if ago < 172800 else f"{ago / 86400:.0f} days")
    return f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(unix))} ({span} ago)"


def _utc(unix: float, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return time.strftime(fmt, time.gmtime(unix))


def _agent(agent: dict[str, Any], now: float) -> str:
    """The process: its version, since when (an in-place restart moves it), its restarts and
    an armed ``restart --on-stop``. Tolerant: an older agent sends fewer keys, or no block."""
    line = f"agent: version {agent.get('version', '?')}"
    if isinstance(agent.get("started"), int | float):
        line += f", up since {_utc(agent['started'])}"
    if agent.get("pid") is not None:
        line += f" (pid {agent['pid']})"
    n = agent.get("restarts")
    if isinstance(n, int):
        line += f", {n} restart{'' if n == 1 else 's'}"
    last = agent.get("last_restart")
    if isinstance(last, dict) and last:
        kind = {"in_place": "in place", "on_stop": "on stop"}.get(str(last.get("kind")), "?")
        took = last.get("seconds")
        line += (f" (last {kind} from {last.get('from_version', '?')}"
                 + (f" in {took:.2f} s)" if isinstance(took, int | float) else ")"))
    until = agent.get("restart_on_stop_until")
    if isinstance(until, int | float) and until > now:
        line += f"; keeps the VIP on the next stop until {_utc(until, '%H:%M:%S')}"
    return line


def _master(inst: dict[str, Any], now: float) -> str:
    if inst.get("state") == "MASTER":
        return f"this node ({inst.get('srcip')})"
    peers = inst.get("peers") or {}
    recent = [(p["last_seen"], src) for src, p in peers.items()
              if now - p["last_seen"] < 3 * (p["advbase"] + p["advskew"] / 256 + 0.05)]
    return max(recent)[1] if recent else "none heard"


def _protocol(inst: dict[str, Any]) -> list[str]:
    """VRRP's settings (keepalived's priority/advert_int); none for CARP, whose table stays as
    it was (an older agent sends no ``protocol``: CARP)."""
    proto = inst.get("protocol") or "carp"
    if proto == "carp":
        return []
    version = {"vrrp2": "VRRPv2", "vrrp3": "VRRPv3"}.get(proto, proto)
    vmac = inst.get("vmac")  # CARP_VMAC: where the VIPs live, and from which MAC
    return [f"  protocol:     {version}, priority {inst.get('priority', '?')}, advert_int "
            f"{inst.get('advert_int', '?')} s, preempt {'on' if inst.get('preempt') else 'off'}",
            *([f"  vmac:         {vmac['interface']} ({vmac['mac']}, "
               f"{'present' if vmac['present'] else 'MISSING'})"] if vmac else [])]


def _health(inst: dict[str, Any]) -> str:
    health = inst.get("health")
    if not health:
        return "no check configured"
    checks = ", ".join(f"{n} {'ok' if ok else 'failing'}" for n, ok in health["checks"].items())
    return ("healthy" if health["healthy"] else f"UNHEALTHY ({health['last_error']})") + \
        f" [{checks}]"


def _maintenance(inst: dict[str, Any]) -> str:
    if not inst.get("maintenance"):
        return "off"
    return (f"ON since {inst.get('maintenance_since')} by "
            f"{', '.join(inst.get('maintenance_by') or ['?'])}")


def _sync(sync: dict[str, Any], now: float) -> list[str]:
    """The replicated paths (docs/sync.md): the epoch, whether this node is held back, and one
    line per path. A lag of ``None`` is infinite: before the first catch-up."""
    fresh = "fresh" if sync.get("fresh") else "NOT FRESH"
    held = sync.get("held_back")
    out = [f"  sync:         epoch {sync.get('epoch', '?')}, {fresh}"
           + (f", held back ({held}: will not preempt)" if held else "")]
    if "took_over_with_lag" in sync and sync["took_over_with_lag"] != 0:
        lag = sync["took_over_with_lag"]
        out.append("  took over:    " + ("before its first catch-up" if lag is None
                                         else f"with a lag of {lag:.3g} s"))
    for path in sync.get("paths") or []:
        gen, have = path.get("generation", "?"), path.get("synced_generation", "?")
        if path.get("role") == "source":
            state = f"served, generation {gen}"
        else:
            lag = path.get("lag_seconds")
            state = ("first catch-up not done" if lag is None or not path.get("caught_up")
                     else "matches the master" if lag == 0 else f"lag {lag:.3g} s")
            last = path.get("last_success")
            state += (f", generation {have} of {gen}, last pull "
                      f"{'never' if last is None else _local(last, now)}")
        label = f"  path {path.get('name')}:"
        out.append(f"{label:<15} {path.get('path')}: {state}")
    return out


def render(doc: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    out: list[str] = []
    for inst in doc.get("instances") or [doc]:
        last = inst.get("last_transition") or {}
        since = inst.get("master_since") if inst.get("state") == "MASTER" else last.get("at")
        why = last.get("reason", "?") + (f" (peer {last['peer']})" if last.get("peer") else "")
        down = inst.get("master_down_interval")
        out += [
            f"vhid {inst.get('vhid')} on {inst.get('interface')}{' (IPv6)' * bool(inst.get('ipv6'))}"
            f": {inst.get('state')} since "
            f"{_local(since, now)}",
            *_protocol(inst),
            f"  why:          {why}",
            f"  master:       {_master(inst, now)}",
            f"  VIPs:         {', '.join(inst.get('vips') or [])}",
            f"  health:       {_health(inst)}",
            f"  maintenance:  {_maintenance(inst)}",
        ]
        if inst.get("can_advertise") is False:
            out.append(f"  FAULT:        cannot advertise ({inst.get('cannot_advertise_reason')})")
        if inst.get("stale_holders"):
            out.append(f"  STALE VIP:    also answered by {', '.join(inst['stale_holders'])}")
        if inst.get("sync"):
            out += _sync(inst["sync"], now)
        if down is not None:
            vrrp = (inst.get("protocol") or "carp") != "carp"
            out.append(f"  failover:     {down:.3g} s if the master fails (master-down "
                       "interval); " + ("within the skew time on a graceful stop or demote "
                                        "(priority 0)" if vrrp else
                                        "at once on a graceful stop or demote (bow-out)"))
    agent = doc.get("agent")  # last: the first line stays the first VHID's (`| head -1`)
    if isinstance(agent, dict):
        out.append(_agent(agent, now))
    return "\n".join(out)
