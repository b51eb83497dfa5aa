"""Configuration from the environment: every ``CARP_X`` also accepted as ucarp's ``UCARP_X``.

Sources, later wins: ``--env-file`` (KEY=VALUE lines, the classic /etc/ucarp/ucarp.conf works as
is), then the process environment. :func:`load` returns a validated :class:`Settings` or raises
:class:`ConfigError` carrying one line that names the variable and the reason. The password is
a ``SecretStr`` and is never part of an error message.
"""

from __future__ import annotations

import os
import shlex
import stat
import urllib.parse
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .protocol import DEFAULT_GROUP, MAX_PASSWORD_BYTES

IFNAMSIZ = 15
PASS_FILE_MAX_READ = 512  # ucarp reads one line of at most 511 bytes
MIN_GARP_REFRESH = 1.0  # s; below this a refresh is an ARP flood, not a refresh
MIN_HEALTH_INTERVAL = 0.1  # s; at most ten check runs (forks for CARP_HEALTH_CMD) a second


class ConfigError(Exception):
    """A configuration problem, one line: ``VARIABLE: reason``."""


def _var(name: str, default: Any = ..., **kwargs: Any) -> Any:
    return Field(default, validation_alias=AliasChoices(f"CARP_{name}", f"UCARP_{name}"), **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    interface: str = _var("INTERFACE")
    srcip: IPv4Address | None = _var("SRCIP", None)
    vhid: int = _var("VHID", ge=1, le=255)
    password: SecretStr | None = _var("PASS", None)
    pass_file: Path | None = _var("PASS_FILE", None)
    addr: str = _var("ADDR")
    mask: str | None = _var("MASK", None)
    if_alias: str | None = _var("IF_ALIAS", None)
    advbase: int = _var("ADVBASE", 1, ge=0, le=255)
    advskew: int = _var("ADVSKEW", 0, ge=0, le=255)
    preempt: bool = _var("PREEMPT", False)
    upscript: Path | None = _var("UPSCRIPT", None)
    downscript: Path | None = _var("DOWNSCRIPT", None)
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
    metrics_listen: str = _var("METRICS_LISTEN", "0.0.0.0:9655")
    control_socket: Path | None = _var("CONTROL_SOCKET", None)
    health_url: str | None = _var("HEALTH_URL", None)
    health_tcp: str | None = _var("HEALTH_TCP", None)
    health_cmd: str | None = _var("HEALTH_CMD", None)
    health_status: int = _var("HEALTH_STATUS", 200, ge=100, le=599)
    health_interval: float = _var("HEALTH_INTERVAL", 1.0, ge=MIN_HEALTH_INTERVAL, le=3600)
    health_timeout: float = _var("HEALTH_TIMEOUT", 1.0, ge=0.01, le=300)
    health_rise: int = _var("HEALTH_RISE", 2, ge=1, le=1000)
    health_fall: int = _var("HEALTH_FALL", 2, ge=1, le=1000)
    log_format: Literal["text", "json"] = _var("LOG_FORMAT", "text")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # load() merges env file and environment itself

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

    @field_validator("garp_refresh")
    @classmethod
    def _garp_refresh(cls, v: float) -> float:
        if 0 < v < MIN_GARP_REFRESH:
            raise ValueError(f"0 (off) or at least {MIN_GARP_REFRESH:g} s")
        return v

    @field_validator("control_socket")
    @classmethod
    def _control_socket(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v} is not an absolute path")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.lower() in ("", "off"):
            return "off"
        host_port(v)
        return v

    @field_validator("health_tcp")
    @classmethod
    def _health_tcp(cls, v: str | None) -> str | None:
        if v is not None:
            host_port(v)
        return v

    @field_validator("health_url")
    @classmethod
    def _health_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urllib.parse.urlsplit(v)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"not a valid URL ({e})") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must be an http:// URL with a host")
        if port == 0:
            raise ValueError("port 0 is not a port")
        return v

    @field_validator("health_cmd")
    @classmethod
    def _health_cmd(cls, v: str | None) -> str | None:
        if v is not None and not shlex.split(v):
            raise ValueError("empty command")
        return v

    @field_validator("upscript", "downscript")
    @classmethod
    def _script(cls, v: Path | None) -> Path | None:
        if v is not None and not (v.is_file() and os.access(v, os.X_OK)):
            raise ValueError(f"{v} is not an executable file")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.advbase == 0 and self.advskew == 0:
            raise ValueError("CARP_ADVBASE: advbase and advskew cannot both be 0")
        if self.if_alias is not None and (
            not self.if_alias.startswith(self.interface) or len(self.if_alias) > IFNAMSIZ
        ):
            raise ValueError(
                f"CARP_IF_ALIAS: must start with the interface name {self.interface!r} "
                f"and have at most {IFNAMSIZ} characters, like {self.interface}:0"
            )
        self.vip  # noqa: B018 - validates CARP_ADDR / CARP_MASK now rather than at first use
        self.secret  # noqa: B018
        return self

    # ---- derived values ----
    @property
    def vip(self) -> IPv4Interface:
        """The VIP with its prefix, from ``ADDR`` (``a.b.c.d`` or ``a.b.c.d/len``) and ``MASK``."""
        address, _, prefix = self.addr.strip().partition("/")
        try:
            ip = IPv4Address(address)
        except ValueError:
            raise ValueError(f"CARP_ADDR: {address!r} is not an IPv4 address") from None
        lengths = [p for p in (prefix, self.mask) if p]
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
    def manages_vip_by_scripts(self) -> bool:
        return self.upscript is not None or self.downscript is not None

    def redacted(self) -> dict[str, str]:
        """Effective configuration as CARP_* strings, the secret shown as ``***``."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "password":
                value = "***" if value is not None else None
            if value is None:
                continue
            var = "CARP_PASS" if name == "password" else f"CARP_{name.upper()}"
            out[var] = str(value).lower() if isinstance(value, bool) else str(value)
        out["VIP (effective)"] = str(self.vip)
        return out


def _unusable_vip(vip: IPv4Interface) -> str | None:
    """Why ``vip`` can never be a service address, or None."""
    ip, net = vip.ip, vip.network
    if ip.is_unspecified or ip == IPv4Address("255.255.255.255"):
        return "is not a host address"
    if ip.is_multicast or ip.is_loopback or ip.is_reserved:
        return "is a multicast, loopback or reserved address"
    if net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
        return f"is the {'network' if ip == net.network_address else 'broadcast'} address of {net}"
    return None


def _first_line(path: Path) -> bytes:
    """ucarp's passfile rule (first line, only its '\n' stripped), bounded and safe: a regular
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


def host_port(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) -> (host, port); ValueError names the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; ``#`` comments, blank lines, ``export`` and surrounding quotes allowed."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--env-file: cannot read {path}: {e.strerror}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip().replace("_", "").isalnum():
            raise ConfigError(f"--env-file: {path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load(environ: Mapping[str, str], env_file: Path | None = None) -> Settings:
    merged = read_env_file(env_file) if env_file else {}
    merged.update(environ)
    ours = {k: v for k, v in merged.items() if k.startswith(("CARP_", "UCARP_"))}
    known = {name for names in _spellings() for name in names}
    for key in ours:
        if key.startswith("CARP_") and key not in known:
            raise ConfigError(f"{key}: unknown variable (see `carp-sidecar check-config --help`)")
    try:
        return Settings.model_validate(_effective(ours))
    except ValidationError as e:
        raise ConfigError(_one_line(e, ours)) from None


def _spellings() -> list[tuple[str, ...]]:
    """Per setting, its variable names in precedence order: (CARP_X, UCARP_X)."""
    return [tuple(str(c) for c in f.validation_alias.choices)
            for f in Settings.model_fields.values() if isinstance(f.validation_alias, AliasChoices)]


def _effective(given: Mapping[str, str]) -> dict[str, str]:
    """One value per setting: CARP_X if present, else UCARP_X; an empty value means unset, so
    ``-e UCARP_UPSCRIPT=`` switches off a script that an old ucarp.conf names."""
    out: dict[str, str] = {}
    for names in _spellings():
        name = next((n for n in names if n in given), None)
        if name is not None and given[name] != "":
            out[name] = given[name]
    return out


def _one_line(error: ValidationError, given: Mapping[str, str]) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["loc"]:
        field = str(first["loc"][0])
        spelled = field if field.startswith(("CARP_", "UCARP_")) else f"CARP_{field.upper()}"
        for prefix in ("CARP_", "UCARP_"):
            candidate = prefix + spelled.removeprefix("CARP_").removeprefix("UCARP_")
            if candidate in given:
                spelled = candidate
                break
        if first["type"] == "missing":
            message = "required but not set"
        return f"{spelled}: {message}"
    return message
