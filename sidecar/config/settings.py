"""Configuration: the environment (every ``CARP_X`` also as ucarp's ``UCARP_X``) for one VHID,
or a TOML file named by ``CARP_CONFIG`` for many.

Environment mode — sources, later wins: ``--env-file`` (KEY=VALUE lines, the classic
/etc/ucarp/ucarp.conf works as is), then the process environment. ``CARP_HEALTH_*`` declare one
check, named ``service``, that gates the one instance.

File mode (``CARP_CONFIG=/etc/carp-sidecar.toml``, read by pydantic-settings' TOML source):
keys are the variable names without the prefix, in lower case. Top-level keys are the agent's
own settings and defaults for every instance (the environment overrides those defaults, so a
node-specific ``CARP_INTERFACE`` can come from the environment); each ``[[vhid]]`` table is one
instance and wins over both; ``[health.NAME]`` tables declare checks that instances reference
with ``health = ["NAME"]``.

:func:`load` returns a validated :class:`Config` or raises :class:`ConfigError` carrying one
line that names the variable (or the file, instance and key) and the reason. Passwords are
``SecretStr`` and never part of an error message.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import io
import os
import shlex
import stat
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface
from logging.handlers import SysLogHandler
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sidecar.config.runconfig import Check, RunConfig, Vhid, Vip, host_port, show_vips
from sidecar.core.protocol import DEFAULT_GROUP, MAX_PASSWORD_BYTES

__all__ = ["Config", "ConfigError", "VhidSettings", "host_port", "load", "read_env_file"]

IFNAMSIZ = 15
PASS_FILE_MAX_READ = 512  # ucarp reads one line of at most 511 bytes
MIN_GARP_REFRESH = 1.0  # s; below this a refresh is an ARP flood, not a refresh
MIN_HEALTH_INTERVAL = 0.1  # s; at most ten check runs (forks for CARP_HEALTH_CMD) a second
ENV_CHECK = "service"  # the name of the check CARP_HEALTH_* declare
DEFAULT_STATE_DIR = Path("/var/lib/carp-sidecar")


# check-config --offline: validate a file meant for another host (scripts, password file there)
OFFLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("offline", default=False)


class ConfigError(Exception):
    """A configuration problem, one line: ``VARIABLE: reason``."""


# What `carp-sidecar check-config --help` says of each variable (README.md has the long form).
HELP = {
    "INTERFACE": "interface to run on (required)",
    "SRCIP": "our address on it: advert source and tie-break (default: its first IPv4)",
    "VHID": "virtual host id 1-255 (required)",
    "PASS": "shared password, at most 19 bytes (this or CARP_PASS_FILE is required)",
    "PASS_FILE": "file whose first line is the password",
    "ADDR": "the VIPs: 172.16.0.1, 172.16.0.1/16, 2001:db8::1/64, comma-separated (required)",
    "MASK": "netmask or prefix length of IPv4 VIPs given without one (default 32)",
    "IF_ALIAS": "label of the VIP, e.g. eth0:0",
    "ADVBASE": "advert interval base, seconds 0-255 (default 1)",
    "ADVSKEW": "advert skew, 1/256 s 0-255; lower wins (default 0)",
    "PREEMPT": "take over from a worse master (default false)",
    "PREEMPT_DELAY": "seconds to wait after start or link up before preempting (default 0)",
    "UPSCRIPT": "script run on becoming MASTER: script IFACE VIP [XPARAM]",
    "DOWNSCRIPT": "script run on leaving MASTER",
    "NOTIFYSCRIPT": "script run on every state change: script VHID STATE REASON",
    "PEERS": "unicast: send adverts to these addresses only and accept only theirs",
    "PEERS_MULTICAST": "with CARP_PEERS, also advertise to the multicast group (migration)",
    "STRICT": "only carp-sidecar peers: HMAC over the whole header, replays dropped",
    "DEAD_TIMER": "auto (VRRPv3's rule at advbase 0, ucarp's otherwise) or ucarp",
    "XPARAM": "extra argument for the scripts",
    "SCRIPT_TIMEOUT": "seconds before a script is killed (default 30)",
    "NEUTRAL": "no downscript and no VIP removal at start (default false)",
    "NOMCAST": "adverts to Ethernet broadcast (default false)",
    "IGNOREIFSTATE": "ignore carrier loss (default false)",
    "DEADRATIO": "master-down = advbase x deadratio + skew (default 3)",
    "MCAST": "multicast group (default 224.0.0.18)",
    "SHUTDOWN": "accepted for ucarp compatibility; a stopping master always releases the VIP",
    "GARP_REPEAT": "gratuitous ARPs per takeover (default 2)",
    "GARP_REFRESH": "seconds between extra GARPs while MASTER, 0 = off (default 0)",
    "PROBE_INTERVAL": "seconds between probes for a stale holder of the VIP while MASTER "
                      "(ARP probe, IPv6 NS), 0 = off (default 10)",
    "HEALTH": "names of the [health.NAME] checks gating an instance (config file)",
    "MAINTENANCE_FILE": "while this file exists the node is in maintenance",
    "HEALTH_URL": "http(s) URL of the service check",
    "HEALTH_HOST": "Host header of the URL check",
    "HEALTH_BODY": "text the URL check's body must contain",
    "HEALTH_INSECURE": "https check without certificate verification (default false)",
    "HEALTH_TCP": "host:port the service check connects to",
    "HEALTH_CMD": "command the service check runs (exit 0 = healthy)",
    "HEALTH_STATUS": "HTTP status the URL check expects (default 200)",
    "HEALTH_INTERVAL": "seconds between checks (default 1)",
    "HEALTH_TIMEOUT": "seconds per check (default 1)",
    "HEALTH_RISE": "passes needed to become healthy (default 2)",
    "HEALTH_FALL": "failures needed to become unhealthy (default 2)",
    "METRICS_LISTEN": "address:port of /metrics /status /healthz /readyz, or off",
    "CONTROL_SOCKET": "Unix socket for demote/promote (absolute path)",
    "STATE_DIR": "where demote/promote are kept across restarts, or off",
    "LOG_FORMAT": "text (ucarp-like lines) or json (default text)",
    "LOG_LEVEL": "debug (each advert decision), info, warning or error (default info)",
    "SYSLOG": "also log to syslog with this facility (daemon, local0...), or off",
    "REALTIME": "real-time scheduling for the agent (needs CAP_SYS_NICE), for sub-second mode",
}


def _var(name: str, default: Any = ..., **kwargs: Any) -> Any:
    return Field(default, validation_alias=AliasChoices(f"CARP_{name}", f"UCARP_{name}"),
                 description=HELP[name], **kwargs)


class VhidSettings(BaseModel):
    """One CARP instance: a VHID on an interface and the VIPs it moves."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    interface: str = _var("INTERFACE")
    srcip: IPv4Address | None = _var("SRCIP", None)
    vhid: int = _var("VHID", ge=1, le=255)
    password: SecretStr | None = _var("PASS", None)
    pass_file: Path | None = _var("PASS_FILE", None)
    addr: str | list[str] = _var("ADDR")
    mask: str | None = _var("MASK", None)
    if_alias: str | None = _var("IF_ALIAS", None)
    advbase: int = _var("ADVBASE", 1, ge=0, le=255)
    advskew: int = _var("ADVSKEW", 0, ge=0, le=255)
    preempt: bool = _var("PREEMPT", False)
    upscript: Path | None = _var("UPSCRIPT", None)
    downscript: Path | None = _var("DOWNSCRIPT", None)
    notifyscript: Path | None = _var("NOTIFYSCRIPT", None)
    xparam: str | None = _var("XPARAM", None)
    script_timeout: float = _var("SCRIPT_TIMEOUT", 30.0, ge=0.1, le=3600)
    neutral: bool = _var("NEUTRAL", False)
    nomcast: bool = _var("NOMCAST", False)
    ignoreifstate: bool = _var("IGNOREIFSTATE", False)
    deadratio: int = _var("DEADRATIO", 3, ge=1, le=255)
    mcast: IPv4Address = _var("MCAST", DEFAULT_GROUP)
    shutdown: bool = _var("SHUTDOWN", True)
    garp_repeat: int = _var("GARP_REPEAT", 2, ge=1, le=100)
    garp_refresh: float = _var("GARP_REFRESH", 0.0, ge=0, le=86400)
    probe_interval: float = _var("PROBE_INTERVAL", 10.0, ge=0, le=86400)
    health: list[str] = _var("HEALTH", [])  # names of the checks that gate this instance
    preempt_delay: float = _var("PREEMPT_DELAY", 0.0, ge=0, le=86400)
    peers: list[IPv4Address] = _var("PEERS", [])
    peers_multicast: bool = _var("PEERS_MULTICAST", False)
    strict: bool = _var("STRICT", False)
    dead_timer: Literal["auto", "ucarp"] = _var("DEAD_TIMER", "auto")
    maintenance_file: Path | None = _var("MAINTENANCE_FILE", None)

    @field_validator("interface")
    @classmethod
    def _interface(cls, v: str) -> str:
        if not v or len(v) > IFNAMSIZ or "/" in v or v.isspace():
            raise ValueError(f"not an interface name (1-{IFNAMSIZ} characters)")
        return v

    @field_validator("mcast")
    @classmethod
    def _mcast(cls, v: IPv4Address) -> IPv4Address:
        if not v.is_multicast:
            raise ValueError("must be an IPv4 multicast group")
        return v

    @field_validator("srcip")
    @classmethod
    def _srcip(cls, v: IPv4Address | None) -> IPv4Address | None:
        if v is not None and (v.is_multicast or v.is_unspecified or v.is_loopback
                              or v == IPv4Address("255.255.255.255")):
            raise ValueError(f"{v} cannot be a host's own source address")
        return v

    @field_validator("garp_refresh", "probe_interval")
    @classmethod
    def _garp_refresh(cls, v: float) -> float:
        if 0 < v < MIN_GARP_REFRESH:
            raise ValueError(f"0 (off) or at least {MIN_GARP_REFRESH:g} s")
        return v

    @field_validator("peers", mode="before")
    @classmethod
    def _peer_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("peers")
    @classmethod
    def _peers(cls, v: list[IPv4Address]) -> list[IPv4Address]:
        for peer in v:
            if peer.is_multicast or peer.is_unspecified or peer.is_loopback:
                raise ValueError(f"{peer} cannot be a peer's address")
        if len(set(v)) != len(v):
            raise ValueError("a peer is listed twice")
        if len(v) > 32:
            raise ValueError("at most 32 peers")
        return v

    @field_validator("maintenance_file")
    @classmethod
    def _maintenance_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v} is not an absolute path")
        return v

    @field_validator("upscript", "downscript", "notifyscript")
    @classmethod
    def _script(cls, v: Path | None) -> Path | None:
        if OFFLINE.get():  # a file for another host: its scripts are there, not here
            if v is not None and not v.is_absolute():
                raise ValueError(f"{v} is not an absolute path")
            return v
        if v is not None and not (v.is_file() and os.access(v, os.X_OK)):
            raise ValueError(f"{v} is not an executable file")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> VhidSettings:
        """Every cross-field problem at once (one line each), not only the first."""
        errors = []
        if self.advbase == 0 and self.advskew == 0:
            errors.append("CARP_ADVBASE: advbase and advskew cannot both be 0")
        if self.if_alias is not None and (
            not self.if_alias.startswith(self.interface) or len(self.if_alias) > IFNAMSIZ
        ):
            errors.append(
                f"CARP_IF_ALIAS: must start with the interface name {self.interface!r} "
                f"and have at most {IFNAMSIZ} characters, like {self.interface}:0"
            )
        if self.strict and not self.peers:
            errors.append("CARP_STRICT: needs CARP_PEERS (strict groups accept only listed "
                          "carp-sidecar nodes)")
        if self.peers_multicast and not self.peers:
            errors.append("CARP_PEERS_MULTICAST: needs CARP_PEERS")
        if self.srcip is not None and self.srcip in self.peers:
            errors.append("CARP_PEERS: lists this node's own CARP_SRCIP")
        offline_file = OFFLINE.get() and self.pass_file is not None and self.password is None
        for derived in ("vips",) if offline_file else ("vips", "secret"):  # now, not later
            try:
                getattr(self, derived)
            except ValueError as e:
                errors.append(str(e))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    # ---- derived values ----
    @property
    def vips(self) -> tuple[Vip, ...]:
        """Every VIP with its prefix, in the order given. ``CARP_ADDR`` is ``a.b.c.d``,
        ``a.b.c.d/len``, an IPv6 address with or without its prefix, or several of them
        separated by commas; ``CARP_MASK`` applies to the IPv4 ones given without a prefix."""
        given = self.addr if isinstance(self.addr, list) else self.addr.split(",")
        given = [a.strip() for a in given if a.strip()]
        if not given:
            raise ValueError("CARP_ADDR: no address given")
        vips = tuple(_one_vip(a, self.mask, strict_mask=len(given) == 1) for a in given)
        if len({v.ip for v in vips}) != len(vips):
            raise ValueError("CARP_ADDR: an address is listed twice")
        return vips

    @property
    def secret(self) -> bytes:
        """The HMAC key (the raw password, like ucarp). Read from CARP_PASS or CARP_PASS_FILE."""
        if (self.password is None) == (self.pass_file is None):
            raise ValueError("CARP_PASS: set exactly one of CARP_PASS or CARP_PASS_FILE")
        if self.password is not None:
            raw = self.password.get_secret_value().encode()
            var = "CARP_PASS"
        else:
            assert self.pass_file is not None
            raw = _first_line(self.pass_file)
            var = "CARP_PASS_FILE"
        if not raw:
            raise ValueError(f"{var}: the password is empty")
        if len(raw) > MAX_PASSWORD_BYTES:
            raise ValueError(
                f"{var}: password longer than {MAX_PASSWORD_BYTES} bytes (ucarp's limit; "
                "ucarp peers could not authenticate it)"
            )
        return raw

    @property
    def name(self) -> str:
        return f"{self.interface}/vhid{self.vhid}"

    @property
    def manages_vip_by_scripts(self) -> bool:
        return self.upscript is not None or self.downscript is not None

    @property
    def prefix_given(self) -> bool:
        """CARP_MASK or a /prefix says what the VIP's prefix is; without either, scripts
        add it with a prefix of their own, which the agent cannot know."""
        given = self.addr if isinstance(self.addr, list) else self.addr.split(",")
        return self.mask is not None or all("/" in a for a in given if a.strip())

    def _prefix_known(self) -> bool:
        return not self.manages_vip_by_scripts or self.prefix_given

    def _shown_vips(self) -> list[str]:
        return show_vips(self.vips, self._prefix_known())

    def runtime(self) -> Vhid:
        """This instance as the running agent holds it (derived values live there)."""
        return Vhid(interface=self.interface, vhid=self.vhid, secret=self.secret,
                    vips=self.vips, srcip=self.srcip, if_alias=self.if_alias,
                    advbase=self.advbase, advskew=self.advskew, preempt=self.preempt,
                    upscript=self.upscript, downscript=self.downscript, xparam=self.xparam,
                    script_timeout=self.script_timeout, neutral=self.neutral,
                    nomcast=self.nomcast, ignoreifstate=self.ignoreifstate,
                    deadratio=self.deadratio, mcast=self.mcast, garp_repeat=self.garp_repeat,
                    garp_refresh=self.garp_refresh, probe_interval=self.probe_interval,
                    health=tuple(self.health),
                    preempt_delay=self.preempt_delay, maintenance_file=self.maintenance_file,
                    notifyscript=self.notifyscript, peers=tuple(self.peers),
                    peers_multicast=self.peers_multicast, strict=self.strict,
                    vrrp3_dead_timer=self.dead_timer == "auto" and self.advbase == 0,
                    prefix_known=self._prefix_known(),
                    script_env=tuple(sorted(self.script_environment().items())))

    def script_environment(self) -> dict[str, str]:
        """The effective settings under both names, for the scripts; never the password."""
        out = {}
        for var, value in self.redacted().items():
            if var != "CARP_PASS" and var.startswith("CARP_"):
                out[var] = out["U" + var] = value
        out["CARP_VIPS"] = ",".join(self._shown_vips())
        out["CARP_INSTANCE"] = self.name
        return out

    def redacted(self) -> dict[str, str]:
        """Effective settings as CARP_* strings, the secret shown as ``***``."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "password":
                value = "***" if value is not None else None
            if value is None or value == []:
                continue
            if isinstance(value, list):
                value = ",".join(map(str, value))
            var = "CARP_PASS" if name == "password" else f"CARP_{name.upper()}"
            out[var] = show(value)
        out["VIPS (effective)"] = ",".join(self._shown_vips()) + (
            "" if self._prefix_known() else " (prefix: the scripts' own)")
        return out


class CheckSettings(BaseModel):
    """A check of the co-located service; all of its configured probes must pass."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str | None = _var("HEALTH_URL", None)
    host: str | None = _var("HEALTH_HOST", None)
    body: str | None = _var("HEALTH_BODY", None)
    insecure: bool = _var("HEALTH_INSECURE", False)
    tcp: str | None = _var("HEALTH_TCP", None)
    cmd: str | None = _var("HEALTH_CMD", None)
    status: int = _var("HEALTH_STATUS", 200, ge=100, le=599)
    interval: float = _var("HEALTH_INTERVAL", 1.0, ge=MIN_HEALTH_INTERVAL, le=3600)
    timeout: float = _var("HEALTH_TIMEOUT", 1.0, ge=0.01, le=300)
    rise: int = _var("HEALTH_RISE", 2, ge=1, le=1000)
    fall: int = _var("HEALTH_FALL", 2, ge=1, le=1000)

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, v: str | None) -> str | None:
        if v is not None:
            host_port(v)
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urllib.parse.urlsplit(v)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"not a valid URL ({e})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if port == 0:
            raise ValueError("port 0 is not a port")
        return v

    @field_validator("cmd")
    @classmethod
    def _cmd(cls, v: str | None) -> str | None:
        if v is not None and not shlex.split(v):
            raise ValueError("empty command")
        return v

    @property
    def configured(self) -> bool:
        return any((self.url, self.tcp, self.cmd))


class AgentSettings(BaseModel):
    """What the process has once, whatever the number of instances."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    metrics_listen: str = _var("METRICS_LISTEN", "0.0.0.0:9655")
    control_socket: Path | None = _var("CONTROL_SOCKET", None)
    log_format: Literal["text", "json"] = _var("LOG_FORMAT", "text")
    log_level: Literal["debug", "info", "warning", "error"] = _var("LOG_LEVEL", "info")
    syslog: str | None = _var("SYSLOG", None)  # a facility name; None: no syslog
    realtime: bool = _var("REALTIME", False)
    state_dir: Path | None = _var("STATE_DIR", DEFAULT_STATE_DIR)  # None: "off"

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.lower() in ("", "off"):
            return "off"
        host_port(v)
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("syslog")
    @classmethod
    def _syslog(cls, v: str | None) -> str | None:
        if v is None or v.lower() in ("", "off"):
            return None
        if v.lower() not in SysLogHandler.facility_names:
            raise ValueError(f"{v!r} is not a syslog facility (daemon, user, local0-local7...)")
        return v.lower()

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir_off(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() == "off" else v

    @field_validator("control_socket", "state_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v} is not an absolute path")
        return v


@dataclass(frozen=True)
class Config:
    agent: AgentSettings
    instances: tuple[VhidSettings, ...]
    checks: dict[str, CheckSettings]
    source: str  # "environment" or the config file's path
    script_extra: dict[str, str] = field(default_factory=dict)  # see _script_extra
    as_ucarp: bool = False  # started as `ucarp` (SIGHUP then stops, as in ucarp)
    origin: tuple[str, ...] = ()  # cwd, program name and arguments: what a reload re-reads
    # where each printed value came from: section title -> variable -> "environment", ...
    origins: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # likely mistakes that are not errors (check-config prints)

    @property
    def metrics_listen(self) -> str:
        return self.agent.metrics_listen

    @property
    def log_format(self) -> str:
        return self.agent.log_format

    @property
    def control_socket(self) -> Path:
        if self.agent.control_socket is not None:
            return self.agent.control_socket
        if self.source == "environment":  # one instance: the path earlier versions used
            only = self.instances[0]
            return Path(f"/run/carp-sidecar/{only.interface}-vhid{only.vhid}.sock")
        return Path("/run/carp-sidecar/control.sock")

    def runtime(self) -> RunConfig:
        """What the running agent needs, as plain data (see :mod:`runconfig`)."""
        checks = {n: Check(url=c.url, tcp=c.tcp, cmd=c.cmd, status=c.status,
                           interval=c.interval, timeout=c.timeout, rise=c.rise, fall=c.fall,
                           host=c.host, body=c.body, insecure=c.insecure)
                  for n, c in self.checks.items()}
        agent_env = {}
        for var, value in self.redacted()[0][1].items():
            agent_env[var] = agent_env["U" + var] = value
        instances = tuple(dataclasses.replace(i.runtime(), script_env=tuple(sorted(
            {**agent_env, **dict(i.runtime().script_env)}.items()))) for i in self.instances)
        return RunConfig(instances, checks,
                         self.metrics_listen, self.control_socket, self.log_format, self.source,
                         self.agent.state_dir, self.agent.log_level, self.agent.syslog,
                         self.script_extra, self.agent.realtime, self.as_ucarp, self.origin)

    def redacted(self) -> list[tuple[str, dict[str, str]]]:
        """Sections for `check-config`: the agent, each check, each instance."""
        agent = {f"CARP_{k.upper()}": show(v) for k, v in self.agent.model_dump().items()
                 if v is not None}
        agent["CARP_STATE_DIR"] = str(self.agent.state_dir or "off")
        agent["CARP_CONTROL_SOCKET"] = str(self.control_socket)
        out = [("agent", agent)]
        for name, check in self.checks.items():
            out.append((f"health {name}", {f"CARP_HEALTH_{k.upper()}": show(v) for k, v in
                                           check.model_dump().items() if v is not None}))
        out += [(f"instance {i.name}", i.redacted()) for i in self.instances]
        return out


def show(value: Any) -> str:
    """One spelling per type: booleans as true/false, floats without a needless .0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ucarp.conf names that only make sense with their prefix: UPSCRIPT=... is ignored
UCARP_BARE = ("INTERFACE", "IF_ALIAS", "SRCIP", "VHID", "ADVBASE", "ADVSKEW", "PASS", "ADDR",
              "MASK", "UPSCRIPT", "DOWNSCRIPT", "XPARAM", "PREEMPT", "NEUTRAL", "DEADRATIO")


def bare_names(in_file: Mapping[str, str]) -> list[str]:
    return [f"{name}={in_file[name]}: looks like ucarp's UCARP_{name} without its prefix; it is "
            f"not a setting (did you mean UCARP_{name}?)" for name in UCARP_BARE
            if in_file.get(name) and f"UCARP_{name}" not in in_file
            and f"CARP_{name}" not in in_file]


def _env_origins(config: Config, environ: Mapping[str, str], in_file: Mapping[str, str],
                 env_file: Path | None) -> dict[str, dict[str, str]]:
    def origin(var: str) -> str:
        names = (var, "U" + var) if var.startswith("CARP_") else (var,)
        if any(environ.get(n) for n in names):
            return "environment"
        if any(in_file.get(n) for n in names):
            return f"env file {env_file}"
        return "default"

    return {title: {var: origin(var) for var in values} for title, values in config.redacted()}


def _file_origins(config: Config, where: str, env: Mapping[str, Any],
                  top: Mapping[str, Any], tables: list[dict[str, Any]]
                  ) -> dict[str, dict[str, str]]:
    numbers = {f"instance {i.name}": n for n, i in enumerate(config.instances, 1)}

    def origin(var: str, title: str, table: set[str]) -> str:
        if title.startswith("health "):
            return f"{where} [{title.replace(' ', '.')}]"
        if var in table:
            return f"{where} [[vhid]] #{numbers[title]}"
        if var in env:
            return "environment"
        if var in top:
            return f"{where} (top level)"
        return "default"

    out = {}
    for title, values in config.redacted():
        number = numbers.get(title)
        table = {f"CARP_{k.upper()}" for k in tables[number - 1]} if number else set()
        out[title] = {var: origin(var, title, table) for var in values}
    return out


# ---- loading ----
def load(environ: Mapping[str, str], env_file: Path | None = None,
         offline: bool = False) -> Config:
    """Validate the environment (and ``env_file``) or the TOML file it names; ConfigError
    carries every problem found, one line each. ``offline``: what only the target host has
    (scripts, the password file) is not looked at."""
    token = OFFLINE.set(offline)
    try:
        return _load(environ, env_file)
    finally:
        OFFLINE.reset(token)


def _load(environ: Mapping[str, str], env_file: Path | None) -> Config:
    raw, given, in_file = read_sources(environ, env_file)
    errors = [_unknown(key) for key in raw if _unknown(key)]
    config_file = given.get("CARP_CONFIG", "")
    if config_file:
        if errors:
            raise ConfigError("\n".join(errors))
        return _load_file(Path(config_file), given, bare_names(in_file))
    agent = _collect(errors, lambda: _validate(AgentSettings, given, raw))
    check = _collect(errors, lambda: _validate(CheckSettings, given, raw))
    checks = {ENV_CHECK: check} if check is not None and check.configured else {}
    instance = _collect(errors, lambda: _validate(
        VhidSettings, {**given, "CARP_HEALTH": list(checks)}, raw))
    if errors or agent is None or instance is None:
        raise ConfigError("\n".join(errors))
    config = Config(agent, (instance,), checks, "environment", _script_extra(raw, in_file),
                    warnings=tuple(bare_names(in_file)))
    return dataclasses.replace(config, origins=_env_origins(config, environ, in_file, env_file))


def read_sources(environ: Mapping[str, str], env_file: Path | None
                 ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Every variable as spelled in the env file and the environment (the environment wins),
    one value per setting under its CARP_ name, and the env file's own variables, read by
    pydantic-settings' dotenv and environment sources: shell-like values (``X=pw  # note`` is
    ``pw``, ``${VAR}`` expanded), ``CARP_X`` before ``UCARP_X`` within a source, the
    environment before the file, an empty value meaning unset."""
    sources: list[EnvSettingsSource] = []
    in_file: dict[str, str] = {}
    if env_file is not None:
        _check_env_file(env_file)
        dotenv = DotEnvSettingsSource(_Variables, env_file=env_file, case_sensitive=True)
        in_file = {k: v or "" for k, v in dotenv.env_vars.items()}
        sources.append(dotenv)
    sources.append(_Environ(environ))
    raw: dict[str, str] = {}
    values: dict[str, Any] = {}
    for source in sources:  # later wins
        raw.update({k: v or "" for k, v in source.env_vars.items()})
        values.update({k: v for k, v in source().items() if k in _CARP_NAMES})
    given = {k: str(v) for k, v in values.items() if v not in ("", None)}
    return raw, given, in_file


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the CLI's, or a test's)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._given = dict(environ)
        super().__init__(_Variables, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._given


def _check_env_file(path: Path) -> None:
    """python-dotenv skips what it cannot parse with a warning; a config file must not."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--env-file: cannot read {path}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    bad = [b.original.line for b in parse_stream(io.StringIO(text)) if b.error]
    if bad:
        raise ConfigError("\n".join(f"--env-file: {path}:{n}: expected KEY=VALUE" for n in bad))


def read_env_file(path: Path) -> dict[str, str]:
    """An env file's variables as the shell would see them (``# comments``, ``export``, quotes,
    ``${VAR}``), for tests and tools; the agent reads it through :func:`read_sources`."""
    _check_env_file(path)
    return {k: v or "" for k, v in dotenv_values(path, interpolate=True).items()}


def _unknown(key: str) -> str:
    """The error for a CARP_/UCARP_ name that is no setting ("" if it is fine): a typo must not
    pass silently. An unknown UCARP_* is an error only when it looks like a typo of a setting
    (close, and at most two letters longer or shorter: UCARP_PREMPT); others are the user's own
    (an old ucarp.conf may define UCARP_NETMASK for its scripts) and pass through to them."""
    if key in _KNOWN or key == "CARP_CONFIG" or not key.startswith(("CARP_", "UCARP_")):
        return ""
    close = [c for c in difflib.get_close_matches(key, _KNOWN, n=3, cutoff=0.8)
             if abs(len(c) - len(key)) <= 2 and c.startswith(key.split("_", 1)[0] + "_")]
    hint = f"; did you mean {close[0]}?" if close else ""
    if key.startswith("CARP_") or close:
        return f"{key}: unknown variable{hint} (see `carp-sidecar check-config --help`)"
    return ""


def _script_extra(raw: Mapping[str, str], in_file: Mapping[str, str]) -> dict[str, str]:
    """What the scripts see beyond the settings: the user's own UCARP_* names, and the env
    file's other variables (the agent's own environment reaches them anyway)."""
    extra = {k: v for k, v in in_file.items() if not k.startswith(("CARP_", "UCARP_"))}
    extra.update({k: v for k, v in raw.items() if k.startswith("UCARP_") and k not in _KNOWN})
    return extra


def _collect(errors: list[str], validate: Callable[[], Any]) -> Any:
    try:
        return validate()
    except ConfigError as e:
        errors.extend(str(e).splitlines())
        return None


def _load_file(path: Path, env: dict[str, Any], warnings: list[str] | None = None) -> Config:
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"CARP_CONFIG: {path} is not a readable file")
    try:
        data = TomlConfigSettingsSource(_ConfigFile, toml_file=path)()
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"CARP_CONFIG: cannot read {path}: {e.strerror}") from None
    tables = data.pop("vhid", None)
    checks_in = data.pop("health", {})
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: at least one [[vhid]] table is required")
    if not isinstance(checks_in, dict):
        raise ConfigError(f"{where}: health must be tables like [health.apache]")
    errors: list[str] = []
    # the shared keys first: without them every instance would report their absence
    defaults = _file_keys(data, where, "", allowed=_AGENT_VARS | _INSTANCE_VARS)
    agent = _collect(errors, lambda: _validate(
        AgentSettings, {**defaults, **_only(env, _AGENT_VARS)}, {}, where))
    checks = {}
    for name, table in checks_in.items():
        check = _collect(errors, functools.partial(_file_check, where, name, table))
        if check is not None:
            checks[name] = check
    base = {**defaults, **_only(env, _INSTANCE_VARS)}
    instances = []
    for number, table in enumerate(tables, 1):
        label = f"[[vhid]] #{number}" + (f" (vhid {table['vhid']})" if "vhid" in table else "")
        instance = _collect(errors, functools.partial(_file_instance, where, label, base, table))
        if instance is None:
            continue
        errors += [f"{where}: {label}: health: no [health.{n}] table"
                   for n in instance.health if n not in checks_in]
        instances.append(instance)
    if errors or agent is None:
        raise ConfigError("\n".join(errors))  # every problem of the file at once
    _check_unique(instances, where)
    config = Config(agent, tuple(instances), checks, where, warnings=tuple(warnings or ()))
    return dataclasses.replace(config, origins=_file_origins(config, where, env, defaults, tables))


def _file_instance(where: str, label: str, base: dict[str, Any], table: dict[str, Any]
                   ) -> VhidSettings:
    values = {**base, **_file_keys(table, where, label + " ", allowed=_INSTANCE_VARS)}
    instance: VhidSettings = _validate(VhidSettings, values, {}, f"{where}: {label}")
    return instance


def _file_check(where: str, name: str, table: Any) -> CheckSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [health.{name}] must be a table")
    check: CheckSettings = _validate(
        CheckSettings, _file_keys(table, where, f"[health.{name}] ", "HEALTH_", _CHECK_VARS),
        {}, f"{where}: [health.{name}]")
    if not check.configured:
        raise ConfigError(f"{where}: [health.{name}]: set url, tcp or cmd")
    return check


class _ConfigFile(BaseSettings):
    model_config = SettingsConfigDict(extra="allow")


def _file_keys(table: dict[str, Any], where: str, label: str, prefix: str = "",
               allowed: set[str] | None = None) -> dict[str, Any]:
    """TOML keys -> the CARP_* names the models validate (``pass_file`` -> CARP_PASS_FILE)."""
    out = {}
    for key, value in table.items():
        var = f"CARP_{prefix}{key.upper()}"
        if var not in _KNOWN or (allowed is not None and var not in allowed):
            hint = (" (declare checks as [health.NAME] tables)"
                    if var.startswith("CARP_HEALTH_") and not prefix else "")
            raise ConfigError(f"{where}: {label}{key}: unknown key here{hint}")
        out[var] = value
    return out


def _check_unique(instances: list[VhidSettings], where: str) -> None:
    seen: dict[tuple[str, int], int] = {}
    owners: dict[Any, str] = {}
    for number, i in enumerate(instances, 1):
        key = (i.interface, i.vhid)
        if key in seen:
            raise ConfigError(f"{where}: [[vhid]] #{number}: vhid {i.vhid} on {i.interface} is "
                              f"already instance #{seen[key]}")
        seen[key] = number
        for vip in i.vips:
            if vip.ip in owners:
                raise ConfigError(f"{where}: [[vhid]] #{number}: addr {vip.ip} is already a VIP "
                                  f"of {owners[vip.ip]}")
            owners[vip.ip] = i.name


# Stand-ins for required settings that failed, so the checks that need them still run and a
# bad VHID does not hide a bad mask (check-config promises every mistake at once).
PLACEHOLDERS = {"CARP_INTERFACE": "eth0", "CARP_VHID": 1, "CARP_ADDR": "192.0.2.1",
                "interface": "eth0", "vhid": 1, "addr": "192.0.2.1"}


def _all_errors(model: type[Any], values: dict[str, Any], error: ValidationError,
                spelled: Mapping[str, str]) -> list[str]:
    """The field errors, and the cross-field ones pydantic skips when a field fails: found by
    validating again with the failed fields left out (or stood in for, when required)."""
    lines = _lines(error, spelled)
    failed = {str(p["loc"][0]) for p in error.errors() if p["loc"]}
    if not failed or model is not VhidSettings:
        return lines
    retry = {k: v for k, v in values.items() if k not in failed}
    retry.update({k: PLACEHOLDERS[k] for k in failed if k in PLACEHOLDERS})
    try:
        model.model_validate(retry)
    except ValidationError as again:
        lines += [line for line in _lines(again, spelled) if line not in lines
                  and not any(line.startswith(f"{f}:") for f in failed)]
    return lines


def _validate(model: type[Any], values: dict[str, Any], spelled: Mapping[str, str],
              where: str = "") -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as e:
        lines = []
        for line in (one for many in _all_errors(model, values, e, spelled)
                     for one in many.splitlines()):
            if where:  # a file: name its key, not the variable
                var, sep, rest = line.partition(": ")
                key = (var.removeprefix("UCARP_").removeprefix("CARP_")
                       .removeprefix("HEALTH_").lower())
                line = f"{where}: {key}: {rest}" if sep and var.isupper() else f"{where}: {line}"
            lines.append(line)
        raise ConfigError("\n".join(lines)) from None


def _only(values: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in names}


def _spellings(model: type[BaseModel]) -> list[tuple[str, ...]]:
    """Per setting, its variable names in precedence order: (CARP_X, UCARP_X)."""
    return [tuple(str(c) for c in f.validation_alias.choices)
            for f in model.model_fields.values() if isinstance(f.validation_alias, AliasChoices)]


_ALL_SPELLINGS = [s for m in (VhidSettings, CheckSettings, AgentSettings) for s in _spellings(m)]
_KNOWN = {name for names in _ALL_SPELLINGS for name in names}
_AGENT_VARS = {names[0] for names in _spellings(AgentSettings)}
_INSTANCE_VARS = {names[0] for names in _spellings(VhidSettings)}
_CHECK_VARS = {names[0] for names in _spellings(CheckSettings)}


class _SourceModel(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")


_CARP_NAMES = {names[0] for names in _ALL_SPELLINGS} | {"CARP_CONFIG"}
# What the sources read: one optional string per setting, spelled CARP_X or UCARP_X.
_Variables = create_model(  # type: ignore[call-overload]
    "_Variables", __base__=_SourceModel,
    **{names[0].lower(): (str | None, Field(None, validation_alias=AliasChoices(*names)))
       for names in [*_ALL_SPELLINGS, ("CARP_CONFIG",)]})


def _lines(error: ValidationError, given: Mapping[str, str]) -> list[str]:
    """One line per problem, naming the variable as the user spelled it."""
    out = []
    for problem in error.errors(include_url=False, include_input=False):
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not problem["loc"]:
            out.append(message)
            continue
        field = str(problem["loc"][0])
        spelled = field if field.startswith(("CARP_", "UCARP_")) else f"CARP_{field.upper()}"
        for prefix in ("CARP_", "UCARP_"):
            candidate = prefix + spelled.removeprefix("CARP_").removeprefix("UCARP_")
            if candidate in given:
                spelled = candidate
                break
        if problem["type"] == "missing":
            message = "required but not set"
        out.append(f"{spelled}: {message}")
    return out


# ---- values ----
def _one_vip(text: str, mask: str | None, strict_mask: bool) -> Vip:
    address, _, prefix = text.partition("/")
    if ":" in address:
        try:
            vip6 = IPv6Interface(text if prefix else f"{address}/128")
        except ValueError:
            raise ValueError(f"CARP_ADDR: {text!r} is not an IPv6 address or prefix") from None
        problem = _unusable_vip(vip6)
        if problem:
            raise ValueError(f"CARP_ADDR: {vip6.ip} {problem}")
        return vip6
    try:
        ip = IPv4Address(address)
    except ValueError:
        raise ValueError(f"CARP_ADDR: {address!r} is not an IPv4 address") from None
    lengths = [p for p in (prefix, None if prefix else mask) if p]
    if prefix and mask and strict_mask:  # a lone address: the two must agree, as before
        lengths.append(mask)
    try:
        lens = {IPv4Network(f"0.0.0.0/{p.strip()}").prefixlen for p in lengths}
    except ValueError:
        raise ValueError("CARP_MASK: not a netmask or prefix length") from None
    if len(lens) > 1:
        raise ValueError("CARP_MASK: disagrees with the prefix length given in CARP_ADDR")
    vip = IPv4Interface((ip, lens.pop() if lens else 32))
    problem = _unusable_vip(vip)
    if problem:
        raise ValueError(f"CARP_ADDR: {vip.ip} {problem}")
    return vip


def _unusable_vip(vip: Vip) -> str | None:
    """Why ``vip`` can never be a service address, or None."""
    ip, net = vip.ip, vip.network
    if ip.is_unspecified or ip == IPv4Address("255.255.255.255"):
        return "is not a host address"
    if ip.is_multicast or ip.is_loopback or ip.is_reserved:
        return "is a multicast, loopback or reserved address"
    if isinstance(vip, IPv6Interface):
        if ip.is_link_local:
            return "is link-local (fe80::/10 is per interface, not a service address)"
        return None
    if net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
        return f"is the {'network' if ip == net.network_address else 'broadcast'} address of {net}"
    return None


def _first_line(path: Path) -> bytes:
    """ucarp's passfile rule (first line, only its '\\n' stripped), bounded and safe: a regular
    file only (a FIFO would block the start, /dev/zero would never end) and one small read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ValueError(f"CARP_PASS_FILE: cannot read {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"CARP_PASS_FILE: {path} is not a regular file")
        head = os.read(fd, PASS_FILE_MAX_READ)
    except OSError as e:
        raise ValueError(f"CARP_PASS_FILE: cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return head.split(b"\n", 1)[0]
