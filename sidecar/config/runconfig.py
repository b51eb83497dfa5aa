"""The validated configuration as the running agent holds it: plain frozen dataclasses.

:mod:`config` validates (with pydantic-settings) and then hands the result over as JSON; the
agent process itself never imports pydantic — about 10 MB of resident memory that would serve
only the first 100 ms. ``carp-sidecar run`` validates, writes the JSON to an in-memory file and
``exec``\\s ``python -m sidecar.runtime.agent --config-fd N`` in the same process (same PID, same
signals), which reads it back here. Nothing here validates: the values were checked already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_interface
from pathlib import Path
from typing import Any

Vip = IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class Vhid:
    interface: str
    vhid: int
    secret: bytes = field(repr=False)
    vips: tuple[Vip, ...]
    srcip: IPv4Address | None = None
    if_alias: str | None = None
    advbase: int = 1
    advskew: int = 0
    preempt: bool = False
    upscript: Path | None = None
    downscript: Path | None = None
    xparam: str | None = None
    script_timeout: float = 30.0
    neutral: bool = False
    nomcast: bool = False
    ignoreifstate: bool = False
    deadratio: int = 3
    mcast: IPv4Address = field(default_factory=lambda: IPv4Address("224.0.0.18"))
    garp_repeat: int = 2
    garp_refresh: float = 0.0
    probe_interval: float = 10.0  # s between stale-holder probes while MASTER; 0 = off
    health: tuple[str, ...] = ()
    preempt_delay: float = 0.0
    maintenance_file: Path | None = None
    notifyscript: Path | None = None
    peers: tuple[IPv4Address, ...] = ()  # unicast mode when not empty
    peers_multicast: bool = False
    strict: bool = False
    vrrp3_dead_timer: bool = False
    # False when scripts add the VIP and no CARP_MASK or /prefix was given: the scripts choose
    # the prefix (the tutorial's add /16), so the agent shows the bare address, not "/32"
    prefix_known: bool = True
    # the effective settings under CARP_* and UCARP_* names, never the password (scripts.py)
    script_env: tuple[tuple[str, str], ...] = ()

    @property
    def ipv4_vips(self) -> tuple[IPv4Interface, ...]:
        return tuple(v for v in self.vips if isinstance(v, IPv4Interface))

    @property
    def ipv6_vips(self) -> tuple[IPv6Interface, ...]:
        return tuple(v for v in self.vips if isinstance(v, IPv6Interface))

    @property
    def hmac_address(self) -> IPv4Address:
        """The address the advert HMAC covers: the first IPv4 VIP (docs/protocol.md §3)."""
        return self.ipv4_vips[0].ip if self.ipv4_vips else IPv4Address(0)

    @property
    def shown_vips(self) -> list[str]:
        return show_vips(self.vips, self.prefix_known)

    @property
    def script_address(self) -> str:
        """argv[2] of the up/down scripts: the first VIP, as ucarp passes its --addr."""
        return str(self.vips[0].ip)

    @property
    def manages_vip_by_scripts(self) -> bool:  # the notify script only observes
        return self.upscript is not None or self.downscript is not None

    @property
    def name(self) -> str:
        return f"{self.interface}/vhid{self.vhid}"


@dataclass(frozen=True)
class Check:
    url: str | None = None
    tcp: str | None = None
    cmd: str | None = None
    status: int = 200
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    host: str | None = None
    body: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class RunConfig:
    instances: tuple[Vhid, ...]
    checks: dict[str, Check]
    metrics_listen: str
    control_socket: Path
    log_format: str
    source: str  # "environment" or the config file's path
    state_dir: Path | None = None  # where operator maintenance persists; None: not at all
    log_level: str = "info"
    syslog: str | None = None  # facility name
    script_extra: dict[str, str] = field(default_factory=dict)  # the env file's own variables
    realtime: bool = False  # SCHED_FIFO (or nice) for the agent itself
    as_ucarp: bool = False  # started as `ucarp`: SIGHUP stops (ucarp's meaning), not reload
    origin: tuple[str, ...] = ()  # the command line it came from, re-read by a reload

    def to_json(self) -> str:
        def vhid(v: Vhid) -> dict[str, Any]:
            out = {k: getattr(v, k) for k in v.__dataclass_fields__}
            out.update(secret=v.secret.hex(), vips=[str(x) for x in v.vips],
                       srcip=str(v.srcip) if v.srcip else None, mcast=str(v.mcast),
                       upscript=str(v.upscript) if v.upscript else None,
                       downscript=str(v.downscript) if v.downscript else None,
                       maintenance_file=str(v.maintenance_file) if v.maintenance_file else None,
                       notifyscript=str(v.notifyscript) if v.notifyscript else None,
                       script_env=[list(p) for p in v.script_env],
                       peers=[str(p) for p in v.peers],
                       health=list(v.health))
            return out

        return json.dumps({
            "instances": [vhid(v) for v in self.instances],
            "checks": {n: c.__dict__ for n, c in self.checks.items()},
            "metrics_listen": self.metrics_listen, "control_socket": str(self.control_socket),
            "log_format": self.log_format, "source": self.source,
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "log_level": self.log_level, "syslog": self.syslog,
            "script_extra": self.script_extra, "realtime": self.realtime,
            "as_ucarp": self.as_ucarp, "origin": list(self.origin)})

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        doc = json.loads(text)
        instances = []
        for raw in doc["instances"]:
            raw.update(secret=bytes.fromhex(raw["secret"]),
                       vips=tuple(ip_interface(v) for v in raw["vips"]),
                       srcip=IPv4Address(raw["srcip"]) if raw["srcip"] else None,
                       mcast=IPv4Address(raw["mcast"]),
                       upscript=Path(raw["upscript"]) if raw["upscript"] else None,
                       downscript=Path(raw["downscript"]) if raw["downscript"] else None,
                       maintenance_file=(Path(raw["maintenance_file"])
                                         if raw["maintenance_file"] else None),
                       notifyscript=Path(raw["notifyscript"]) if raw["notifyscript"] else None,
                       script_env=tuple((k, v) for k, v in raw["script_env"]),
                       peers=tuple(IPv4Address(p) for p in raw["peers"]),
                       health=tuple(raw["health"]))
            instances.append(Vhid(**raw))
        return cls(tuple(instances), {n: Check(**c) for n, c in doc["checks"].items()},
                   doc["metrics_listen"], Path(doc["control_socket"]), doc["log_format"],
                   doc["source"], Path(doc["state_dir"]) if doc["state_dir"] else None,
                   doc["log_level"], doc["syslog"], doc["script_extra"], doc["realtime"],
                   doc.get("as_ucarp", False), tuple(doc.get("origin", ())))


def show_vips(vips: tuple[Vip, ...], prefix_known: bool) -> list[str]:
    """The VIPs as logs, /status and the scripts' CARP_VIPS show them: with the prefix the
    configuration gives, bare when the scripts choose it."""
    return [str(v) if prefix_known else str(v.ip) for v in vips]


def host_port(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) -> (host, port); ValueError names the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)
