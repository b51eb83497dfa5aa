"""The validated configuration as the running agent holds it: plain frozen dataclasses.

:mod:`config` validates (with pydantic-settings) and then hands the result over as JSON; the
agent process itself never imports pydantic — about 10 MB of resident memory that would serve
only the first 100 ms. ``carp-sidecar run`` validates, writes the JSON to an in-memory file and
``exec``\\s ``python -m sidecar.runtime.agent --config-fd N`` in the same process (same PID, same
signals), which reads it back here. Nothing here validates: the values were checked already.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address, ip_interface
from pathlib import Path
from typing import Any, Literal

from sidecar.config import vmac
from sidecar.config.declare import Setting, Ucarp, declared, help_texts, setting
from sidecar.core.auth import DEFAULT_GROUP, Auth

Vip = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address  # CARP_SRCIP/CARP_PEERS: IPv6 for an IPv6 VRRP instance
MIN_HEALTH_INTERVAL = 0.1  # s; at most ten check runs (forks for CARP_HEALTH_CMD) a second
DEFAULT_STATE_DIR = Path("/var/lib/carp-sidecar")
DEFAULT_SYNC_PORT = 8873


@dataclass(frozen=True)
class SyncPath:
    """A replicated directory of one instance: matched across nodes by ``name`` (given as
    ``name=/dir``, else its 1-based position), never by its spelling, so two nodes on one
    machine may replicate between different directories."""

    name: str
    path: Path

    def __str__(self) -> str:  # how check-config and the scripts' CARP_SYNC_PATHS show it
        return f"{self.name}={self.path}"


@dataclass(frozen=True, kw_only=True)
class Vhid:
    """One instance: a VHID on an interface. The fields with ``setting(...)`` are settings as
    given (validated); the others the configuration derives."""

    interface: str = setting(env="INTERFACE", help="interface to run on (required)",
                             ucarp=Ucarp("interface", "i", "bind interface <if>"))
    vhid: int = setting(env="VHID", help="virtual host id 1-255 (required)", ge=1, le=255,
                        ucarp=Ucarp("vhid", "v", "virtual IP identifier (1-255)"))
    auth: Auth  # derived: the password (CARP_PASS or its file, read once) and the first VIP
    vips: tuple[Vip, ...]  # derived from CARP_ADDR and CARP_MASK
    srcip: IPAddress | None = setting(
        None, env="SRCIP", help="our address on it: advert source and tie-break (default: its "
        "first IPv4; an IPv6 VRRP instance's: its link-local)", ucarp=Ucarp(
            "srcip", "s", "source (real) IP address of that host"))
    if_alias: str | None = setting(None, env="IF_ALIAS", help="label of the VIP, e.g. eth0:0")
    vip_interface: str | None = setting(
        None, env="VIP_INTERFACE", help="put the VIPs on this interface instead, as host routes "
        "for a routing daemon to announce (lo); no gratuitous ARP or NA then")
    vmac: str | None = setting(
        None, env="VMAC", help="VRRP: the VIPs on a macvlan with the virtual MAC "
        "00:00:5e:00:01:VRID (IPv6: :02:), as keepalived's use_vmac: true (named vrrp.VRID) "
        "or its name (default off)")
    vmac_xmit_base: bool = setting(False, env="VMAC_XMIT_BASE", help="with CARP_VMAC: adverts "
                                   "from the interface's own MAC, ARP/NA from the virtual one "
                                   "(keepalived's vmac_xmit_base; default false)")
    advbase: int = setting(1, env="ADVBASE", ge=0, le=255,
                           help="advert interval base, seconds 0-255 (default 1)",
                           ucarp=Ucarp("advbase", "b", "advertisement frequency"))
    advskew: int = setting(0, env="ADVSKEW", ge=0, le=255,
                           help="advert skew, 1/256 s 0-255; lower wins (default 0)",
                           ucarp=Ucarp("advskew", "k", "advertisement skew (0-255)"))
    preempt: bool = setting(False, env="PREEMPT", help="take over from a worse master (default "
                            "false; true with CARP_PROTOCOL=vrrp2/vrrp3)",
                            ucarp=Ucarp("preempt", "P", "becomes a master as soon as possible",
                                        flag="true"))
    upscript: Path | None = setting(None, env="UPSCRIPT",
                                    help="script run on becoming MASTER: script IFACE VIP [XPARAM]",
                                    ucarp=Ucarp("upscript", "u", "run <file> to become a master"))
    downscript: Path | None = setting(None, env="DOWNSCRIPT", help="script run on leaving MASTER",
                                      ucarp=Ucarp("downscript", "d", "run <file> to become a "
                                                  "backup"))
    xparam: str | None = setting(None, env="XPARAM", help="extra argument for the scripts",
                                 ucarp=Ucarp("xparam", "x", "extra parameter to send to up/down "
                                             "scripts"))
    script_timeout: float = setting(30.0, env="SCRIPT_TIMEOUT", ge=0.1, le=3600,
                                    help="seconds before a script is killed (default 30)")
    neutral: bool = setting(False, env="NEUTRAL", help="no downscript and no VIP removal at "
                            "start (default false)", ucarp=Ucarp(
                                "neutral", "n", "don't run downscript (nor remove the VIP) at "
                                "start if backup", flag="true"))
    nomcast: bool = setting(False, env="NOMCAST", help="adverts to Ethernet broadcast (default "
                            "false)", ucarp=Ucarp("nomcast", "M", "use broadcast (instead of "
                                                  "multicast) advertisements", flag="true"))
    ignoreifstate: bool = setting(False, env="IGNOREIFSTATE", help="ignore carrier loss "
                                  "(default false)", ucarp=Ucarp(
                                      "ignoreifstate", "S", "ignore interface state (down, no "
                                      "carrier)", flag="true"))
    deadratio: int = setting(3, env="DEADRATIO", ge=1, le=255,
                             help="master-down = advbase x deadratio + skew (default 3)",
                             ucarp=Ucarp("deadratio", "r", "ratio to consider a host as dead"))
    mcast: IPv4Address = setting(DEFAULT_GROUP, env="MCAST",
                                 help="multicast group (default 224.0.0.18)",
                                 ucarp=Ucarp("mcast", "m", "multicast group IP address (default "
                                             "224.0.0.18)"))
    garp_repeat: int = setting(2, env="GARP_REPEAT", ge=1, le=100,
                               help="gratuitous ARPs per takeover (default 2)")
    garp_refresh: float = setting(0.0, env="GARP_REFRESH", ge=0, le=86400,
                                  help="seconds between extra GARPs while MASTER, 0 = off "
                                  "(default 0)")
    probe_interval: float = setting(10.0, env="PROBE_INTERVAL", ge=0, le=86400,
                                    help="seconds between probes for a stale holder of the VIP "
                                    "while MASTER (ARP probe, IPv6 NS), 0 = off (default 10)")
    health: tuple[str, ...] = setting((), env="HEALTH", help="names of the [health.NAME] checks "
                                      "gating an instance (config file)")
    preempt_delay: float = setting(0.0, env="PREEMPT_DELAY", ge=0, le=86400,
                                   help="seconds to wait after start or link up before "
                                   "preempting (default 0)")
    maintenance_file: Path | None = setting(None, env="MAINTENANCE_FILE",
                                            help="while this file exists the node is in "
                                            "maintenance")
    notifyscript: Path | None = setting(None, env="NOTIFYSCRIPT", help="script run on every "
                                        "state change: script VHID STATE REASON")
    peers: tuple[IPAddress, ...] = setting(
        (), env="PEERS", help="unicast: send adverts to these addresses only and accept only "
        "theirs (IPv6 for an IPv6 VRRP instance)")
    peers_multicast: bool = setting(False, env="PEERS_MULTICAST", help="with CARP_PEERS, also "
                                    "advertise to the multicast group (migration)")
    strict: bool = setting(False, env="STRICT", help="only carp-sidecar peers: HMAC over the "
                           "whole header, replays dropped")
    group: str | None = setting(None, env="GROUP", help="the cluster's name, the label group on "
                                "every series (default vhidN-FIRSTVIP: no two clusters on one "
                                "network share it)")
    sync_paths: tuple[SyncPath, ...] = setting(
        (), env="SYNC_PATHS", help="directories the MASTER serves and backups replicate, "
        "[name=]/abs/dir, comma-separated (default none: no replication)")
    sync_max_lag: float = setting(5.0, env="SYNC_MAX_LAG", gt=0, le=86400,
                                  help="seconds a backup's replica may lag and still preempt "
                                  "or win a takeover race (default 5)")
    protocol: Literal["carp", "vrrp2", "vrrp3"] = setting(
        "carp", env="PROTOCOL", help="carp, vrrp2 (RFC 3768) or vrrp3 (RFC 5798), to join "
        "keepalived groups (default carp)")
    priority: int = setting(100, env="PRIORITY", ge=1, le=255, help="VRRP priority 1-254, "
                            "higher wins; 255 only if the VIPs are this node's own (default 100)")
    advert_int: float = setting(1.0, env="ADVERT_INT", ge=0.01, le=255, help="VRRP advert "
                                "interval, s: vrrp2 1-255, vrrp3 0.01-40.95 (default 1)")
    # ---- derived ----
    vrrp3_dead_timer: bool = False
    # False when scripts add the VIP and no CARP_MASK or /prefix was given: the scripts choose
    # the prefix (the tutorial's add /16), so the agent shows the bare address, not "/32"
    prefix_known: bool = True
    # the effective settings under CARP_* and UCARP_* names, never the password (scripts.py)
    script_env: tuple[tuple[str, str], ...] = ()

    @property
    def secret(self) -> bytes:
        return self.auth.key

    @property
    def ipv4_vips(self) -> tuple[IPv4Interface, ...]:
        return tuple(v for v in self.vips if isinstance(v, IPv4Interface))

    @property
    def ipv6_vips(self) -> tuple[IPv6Interface, ...]:
        return tuple(v for v in self.vips if isinstance(v, IPv6Interface))

    @property
    def ipv6(self) -> bool:
        """A VRRPv3 instance over IPv6: every VIP IPv6 (config/vrrp.py's family rules)."""
        return self.protocol == "vrrp3" and bool(self.vips) and not self.ipv4_vips

    @property
    def hmac_address(self) -> IPv4Address:
        """The address the advert HMAC covers: the first IPv4 VIP (docs/protocol.md §3)."""
        return self.auth.vip

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
    def routed(self) -> bool:
        """The VIPs live on CARP_VIP_INTERFACE (lo) for a routing daemon, not on the link."""
        return self.vip_interface is not None

    @property
    def vmac_name(self) -> str | None:
        """CARP_VMAC's macvlan (keepalived's use_vmac), or None."""
        return vmac.interface_name(self.vmac, self.vhid)

    @property
    def vmac_address(self) -> bytes | None:
        """The virtual MAC the macvlan carries and our frames leave from, or None: an IPv6
        instance's is 00:00:5e:00:02:VRID (RFC 5798 §7.3)."""
        return None if self.vmac is None else vmac.virtual_mac(self.vhid, self.ipv6)

    @property
    def vmac_shown(self) -> tuple[str, str] | None:
        """(name, MAC) of CARP_VMAC's macvlan, as /metrics shows it, or None."""
        if self.vmac_name is None or self.vmac_address is None:
            return None
        return self.vmac_name, vmac.show_mac(self.vmac_address)

    @property
    def name(self) -> str:
        """Logs and CARP_STATE_DIR's file names: an IPv6 VRRP instance's differs from an IPv4
        one's of the same VRID (keepalived's v4/v6 pairs share it)."""
        return f"{self.interface}/vhid{self.vhid}" + "/ipv6" * self.ipv6

    @property
    def key(self) -> tuple[str, int, bool]:
        """What tells instances apart: the interface, the VHID and the advert family."""
        return (self.interface, self.vhid, self.ipv6)

    @property
    def group_name(self) -> str:
        """What tells this cluster from another that uses the same VHID (VHID 1 is everyone's
        default): CARP_GROUP, else the VHID and the first VIP, which clusters never share."""
        return self.group or f"vhid{self.vhid}-{self.vips[0].ip}"


# What the runtime derives the VIPs and the key from: settings with no field of their own.
VHID_INPUTS = (
    Setting("PASS", "shared password, at most 19 bytes (CARP: this or CARP_PASS_FILE is required; "
            "vrrp2: optional, at most 8 bytes, sent in clear text; vrrp3: none)",
            name="password", type=str | None, default=None, secret=True,
            ucarp=Ucarp("pass", "p", "password")),
    Setting("PASS_FILE", "file whose first line is the password", name="pass_file",
            type=Path | None, default=None, ucarp=Ucarp("passfile", "o", "read password from file")),
    Setting("PASS_NEXT", "the next password, during a rotation: adverts signed with it are "
            "accepted too, sent ones keep CARP_PASS (docs/runbook.md)", name="password_next",
            type=str | None, default=None, secret=True),
    Setting("PASS_NEXT_FILE", "file whose first line is the next password (CARP_PASS_NEXT)",
            name="pass_next_file", type=Path | None, default=None),
    Setting("ADDR", "the VIPs: 172.16.0.1, 172.16.0.1/16, 2001:db8::1/64, comma-separated "
            "(required)", name="addr", type=str | list[str],
            ucarp=Ucarp("addr", "a", "virtual shared IP address")),
    Setting("MASK", "netmask or prefix length of IPv4 VIPs given without one (default 32)",
            name="mask", type=str | None, default=None),
    Setting("DEAD_TIMER", "auto (VRRPv3's rule at advbase 0, ucarp's otherwise) or ucarp",
            name="dead_timer", type=Literal["auto", "ucarp"], default="auto"),
    Setting("SHUTDOWN", "accepted for ucarp compatibility; a stopping master always releases "
            "the VIP", name="shutdown", type=bool, default=True,
            ucarp=Ucarp("shutdown", "z", "call shutdown script at exit (always done)",
                        flag="true")),
)


@dataclass(frozen=True, kw_only=True)
class Check:
    """A check of the co-located service; all of its configured probes must pass."""

    url: str | None = setting(None, env="HEALTH_URL", help="http(s) URL of the service check")
    host: str | None = setting(None, env="HEALTH_HOST", help="Host header of the URL check")
    body: str | None = setting(None, env="HEALTH_BODY",
                               help="text the URL check's body must contain")
    insecure: bool = setting(False, env="HEALTH_INSECURE", help="https check without "
                             "certificate verification (default false)")
    tcp: str | None = setting(None, env="HEALTH_TCP", help="host:port the service check "
                              "connects to")
    cmd: str | None = setting(None, env="HEALTH_CMD", help="command the service check runs "
                              "(exit 0 = healthy)")
    status: int = setting(200, env="HEALTH_STATUS", ge=100, le=599,
                          help="HTTP status the URL check expects (default 200)")
    interval: float = setting(1.0, env="HEALTH_INTERVAL", ge=MIN_HEALTH_INTERVAL, le=3600,
                              help="seconds between checks (default 1)")
    timeout: float = setting(1.0, env="HEALTH_TIMEOUT", ge=0.01, le=300,
                             help="seconds per check (default 1)")
    rise: int = setting(2, env="HEALTH_RISE", ge=1, le=1000,
                        help="passes needed to become healthy (default 2)")
    fall: int = setting(2, env="HEALTH_FALL", ge=1, le=1000,
                        help="failures needed to become unhealthy (default 2)")


# The agent's own settings (once per process); RunConfig holds them resolved.
AGENT_SETTINGS = (
    Setting("METRICS_LISTEN", "address:port of /metrics /status /healthz /readyz, or off",
            name="metrics_listen", type=str, default="0.0.0.0:9655"),
    Setting("CONTROL_SOCKET", "Unix socket for demote/promote (absolute path)",
            name="control_socket", type=Path | None, default=None),
    Setting("LOG_FORMAT", "text (ucarp-like lines) or json (default text)", name="log_format",
            type=Literal["text", "json"], default="text"),
    Setting("LOG_LEVEL", "debug (each advert decision), info, warning or error (default info)",
            name="log_level", type=Literal["debug", "info", "warning", "error"], default="info",
            ucarp=Ucarp("debug", "D", "enable debug output (CARP_LOG_LEVEL=debug)",
                        flag="debug")),
    Setting("SYSLOG", "also log to syslog with this facility (daemon, local0...), or off",
            name="syslog", type=str | None, default=None,
            ucarp=Ucarp("facility", "f", "also log to syslog with this facility (ucarp's "
                        "default is daemon; here syslog is off unless asked)")),
    Setting("REALTIME", "real-time scheduling for the agent (needs CAP_SYS_NICE), for "
            "sub-second mode", name="realtime", type=bool, default=False),
    Setting("STATE_DIR", "where demote/promote and the VIPs this run holds are kept "
            "across restarts, or off",
            name="state_dir", type=Path | None, default=DEFAULT_STATE_DIR),
    Setting("SYNC_SECRET_FILE", "file whose first line is the replication secret (required "
            "with CARP_SYNC_PATHS; the same on every node)", name="sync_secret_file",
            type=Path | None, default=None),
    Setting("SYNC_PORT", "TCP port of the replication listener on the CARP source address "
            "(default 8873)", name="sync_port", type=int, default=DEFAULT_SYNC_PORT, ge=1,
            le=65535),
)


class ConfigError(Exception):
    """A configuration problem, one line: ``VARIABLE: reason``."""


def variables_help() -> dict[str, str]:
    """``ENV`` -> its help line, for every setting (``check-config --help``), from the
    declarations alone: the short commands never import pydantic."""
    return help_texts(declared(Vhid, VHID_INPUTS), declared(Check), declared(None, AGENT_SETTINGS))


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
    # the command line it came from, re-read by a reload (ucarp's -p may be in it)
    origin: tuple[str, ...] = field(default=(), repr=False)
    # the password variables of the process environment at start: the agent's own environment
    # goes without them (its children inherit it); a reload's child gets them through a pipe
    environ_secrets: dict[str, str] = field(default_factory=dict, repr=False)
    sync_secret_file: Path | None = None  # CARP_SYNC_SECRET_FILE (checked readable at start)
    sync_port: int = DEFAULT_SYNC_PORT

    def to_json(self) -> str:
        return json.dumps(_plain(self))

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        revived: RunConfig = _revive(cls, json.loads(text))
        return revived


def _plain(value: Any) -> Any:
    """A value as JSON holds it, by its type (the hand-over to the agent's process)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (IPv4Address, IPv6Address, IPv4Interface, IPv6Interface, Path)):
        return str(value)
    return value


def _revive(hint: Any, raw: Any) -> Any:
    """:func:`_plain` undone, by the declared type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if raw is None:
        return None
    if origin in (types.UnionType, typing.Union):
        if hint == Vip:
            return ip_interface(raw)
        if IPv4Address in args and IPv6Address in args:  # IPAddress, or it | None
            return ip_address(raw)
        return _revive(next(a for a in args if a is not type(None)), raw)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_revive(args[0], v) for v in raw)
        return tuple(_revive(a, v) for a, v in zip(args, raw, strict=True))
    if origin is dict:
        return {k: _revive(args[1], v) for k, v in raw.items()}
    if origin is typing.Literal or hint is Any:
        return raw
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return typing.cast(Any, hint)(**{k: _revive(hints[k], v) for k, v in raw.items()})
    if hint is bytes:
        return bytes.fromhex(raw)
    if hint in (IPv4Address, Path):
        return hint(raw)
    return raw


def vrrp_params(s: Vhid) -> dict[str, Any]:
    """The keywords a VRRP instance adds to sidecar.core.actions.Params (none for CARP, whose
    Params stay as they were): ``Params(..., **vrrp_params(s))``."""
    if s.protocol == "carp":
        return {}
    return {"protocol": s.protocol, "priority": s.priority,
            "advert_int_cs": round(s.advert_int * 100)}


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
