"""The pydantic models that validate every source, generated from the declarations
(sidecar.config.declare): one field per setting, its variable as ``CARP_X`` or ``UCARP_X``,
its bounds and help. What a declaration cannot say (an interface name's form, a script that
must be executable, rules across fields) is a validator on the rules classes here."""

from __future__ import annotations

import os
import re
import shlex
import socket
import urllib.parse
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    create_model,
    field_validator,
    model_validator,
)

from sidecar.config import vmac, vrrp
from sidecar.config.declare import REQUIRED, Declared, declared
from sidecar.config.runconfig import (
    AGENT_SETTINGS,
    VHID_INPUTS,
    Check,
    SyncPath,
    Vhid,
    Vip,
    host_port,
    show_vips,
    variables_help,
)
from sidecar.config.sync import check_dirs, parse_sync_paths
from sidecar.config.values import (
    IFNAMSIZ,
    MIN_GARP_REFRESH,
    OFFLINE,
    auth,
    next_password_bytes,
    password_bytes,
    show,
    vips_of,
)

GROUP_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a label value anyone can type and read
VHID = declared(Vhid, VHID_INPUTS)
CHECK = declared(Check)
AGENT = declared(None, AGENT_SETTINGS)
HELP = variables_help()
CHECK_FIELDS = {d.name for d in CHECK}


def _field(d: Declared) -> tuple[Any, Any]:
    s = d.setting
    kind = SecretStr | None if s.secret else d.type
    return kind, Field(... if d.default is REQUIRED else d.default,
                       validation_alias=AliasChoices(d.var, f"U{d.var}"), description=s.help,
                       ge=s.ge, le=s.le, gt=s.gt)


# What announces a VIP on the CARP link: meaningless for a routed VIP (CARP_VIP_INTERFACE)
ROUTED_UNUSED = ("garp_repeat", "garp_refresh", "probe_interval")


class _Rules(BaseModel):
    # defer_build: a model's validator is built when it first validates, so the rules classes
    # themselves (bases, never validated) cost a short command nothing
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    if TYPE_CHECKING:  # the generated fields, as the type checker sees them
        def __getattr__(self, name: str) -> Any: ...


class VhidRules(_Rules):
    """One CARP instance: a VHID on an interface and the VIPs it moves."""

    _key: bytes | None = PrivateAttr(None)  # the password, read once
    _next_key: tuple[bytes | None] | None = PrivateAttr(None)  # (CARP_PASS_NEXT's,), read once

    @model_validator(mode="before")
    @classmethod
    def _vrrp_preempt(cls, data: Any) -> Any:
        return vrrp.with_preempt_default(data)

    @field_validator("interface", "vip_interface", check_fields=False)
    @classmethod
    def _interface(cls, v: str | None) -> str | None:
        if v is not None and (not v or len(v) > IFNAMSIZ or "/" in v or v.isspace()):
            raise ValueError(f"not an interface name (1-{IFNAMSIZ} characters)")
        return v

    @field_validator("vmac", mode="before", check_fields=False)
    @classmethod
    def _vmac(cls, v: Any) -> str | None:  # TOML's true, or a name
        return vmac.normalised(v)

    @field_validator("mcast", check_fields=False)
    @classmethod
    def _mcast(cls, v: IPv4Address) -> IPv4Address:
        if not v.is_multicast:
            raise ValueError("must be an IPv4 multicast group")
        return v

    @field_validator("srcip", check_fields=False)
    @classmethod
    def _srcip(cls, v: IPv4Address | None) -> IPv4Address | None:
        if v is not None and (v.is_multicast or v.is_unspecified or v.is_loopback
                              or v == IPv4Address("255.255.255.255")):
            raise ValueError(f"{v} cannot be a host's own source address")
        return v

    @field_validator("garp_refresh", "probe_interval", check_fields=False)
    @classmethod
    def _period(cls, v: float) -> float:
        if 0 < v < MIN_GARP_REFRESH:
            raise ValueError(f"0 (off) or at least {MIN_GARP_REFRESH:g} s")
        return v

    @field_validator("peers", mode="before", check_fields=False)
    @classmethod
    def _peer_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("peers", check_fields=False)
    @classmethod
    def _peers(cls, v: tuple[IPv4Address, ...]) -> tuple[IPv4Address, ...]:
        for peer in v:
            if peer.is_multicast or peer.is_unspecified or peer.is_loopback:
                raise ValueError(f"{peer} cannot be a peer's address")
        if len(set(v)) != len(v):
            raise ValueError("a peer is listed twice")
        if len(v) > 32:
            raise ValueError("at most 32 peers")
        return v

    @field_validator("group", check_fields=False)
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and not GROUP_NAME.fullmatch(v):
            raise ValueError("1-64 letters, digits, '.', '_', ':' or '-'")
        return v

    @field_validator("maintenance_file", check_fields=False)
    @classmethod
    def _maintenance_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v} is not an absolute path")
        return v

    @field_validator("sync_paths", mode="before", check_fields=False)
    @classmethod
    def _sync_paths(cls, v: Any) -> Any:
        return parse_sync_paths(v)

    @field_validator("sync_paths", check_fields=False)
    @classmethod
    def _sync_dirs(cls, v: tuple[SyncPath, ...]) -> tuple[SyncPath, ...]:
        if not OFFLINE.get():  # a file for another host: its directories are there
            check_dirs(v)
        return v

    @field_validator("upscript", "downscript", "notifyscript", check_fields=False)
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
    def _cross_checks(self) -> VhidRules:
        """Every cross-field problem at once (one line each), not only the first."""
        errors = []
        if self.advbase == 0 and self.advskew == 0:
            errors.append("CARP_ADVBASE: advbase and advskew cannot both be 0")
        errors += vrrp.problems(self) + vmac.problems(self)
        errors += self._alias_checks()
        errors += self._routed_checks()
        if self.strict and not self.peers and self.protocol == "carp":  # (else refused)
            errors.append("CARP_STRICT: needs CARP_PEERS (strict groups accept only listed "
                          "carp-sidecar nodes)")
        if self.peers_multicast and not self.peers:
            errors.append("CARP_PEERS_MULTICAST: needs CARP_PEERS")
        if self.srcip is not None and self.srcip in self.peers:
            errors.append("CARP_PEERS: lists this node's own CARP_SRCIP")
        offline_file = OFFLINE.get() and self.pass_file is not None and self.password is None
        offline_next = OFFLINE.get() and self.pass_next_file is not None
        derived_now = ("vips", *(() if offline_file else ("secret",)),
                       *(() if offline_next else ("next_secret",)))
        for derived in derived_now:  # now, not later
            try:
                getattr(self, derived)
            except ValueError as e:
                errors.append(str(e))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def _alias_checks(self) -> list[str]:
        """The label must start with the VIPs' interface (the kernel wants it so); when it
        does not, a wrong interface is the likelier mistake, and named as such if it is not
        on this host."""
        macvlan = vmac.interface_name(self.vmac, self.vhid)  # the VIPs live there
        on_var = ("CARP_VIP_INTERFACE" if self.vip_interface else "CARP_VMAC" if macvlan
                  else "CARP_INTERFACE")
        on = self.vip_interface or macvlan or self.interface
        alias = self.if_alias
        if alias is None or (alias.startswith(on) and len(alias) <= IFNAMSIZ):
            return []
        if (not alias.startswith(on) and not OFFLINE.get() and not macvlan  # made at start
                and not _link_exists(on)):
            return [f"{on_var}: no interface named {on!r} on this host (CARP_IF_ALIAS is "
                    f"{alias!r})"]
        return [f"CARP_IF_ALIAS: must start with the interface name {on!r} ({on_var}) and "
                f"have at most {IFNAMSIZ} characters, like {on}:0"]

    def _routed_checks(self) -> list[str]:
        """CARP_VIP_INTERFACE: host routes for a routing daemon, nothing announced on a link
        (the interface itself is checked at start: :func:`sidecar.runtime.vips.vip_link`)."""
        on = self.vip_interface
        if on is None:
            return []
        if on == self.interface:
            return ["CARP_VIP_INTERFACE: is CARP_INTERFACE; leave it unset to put the VIPs on "
                    "the interface CARP runs on"]
        errors = []
        if self.manages_vip_by_scripts:
            errors.append("CARP_VIP_INTERFACE: the up/down scripts own the VIPs "
                          "(CARP_UPSCRIPT/CARP_DOWNSCRIPT); set one or the other")
        given = self.model_fields_set
        for name in ROUTED_UNUSED:
            if name in given:
                errors.append(f"CARP_{name.upper()}: no gratuitous ARP, NA or probe is sent for "
                              f"VIPs on CARP_VIP_INTERFACE={on}; remove it")
        if on == "lo":
            try:
                wide = [str(v) for v in self.vips if v.network.prefixlen != v.max_prefixlen]
            except ValueError:
                wide = []  # CARP_ADDR's own error says it
            if wide:
                errors.append(f"CARP_ADDR: {', '.join(wide)} on CARP_VIP_INTERFACE=lo must be a "
                              "host route (/32, /128)")
        return errors

    # ---- derived values ----
    @property
    def vips(self) -> tuple[Vip, ...]:
        """Every VIP with its prefix, in the order given (sidecar.config.values.vips_of)."""
        return vips_of(self.addr, self.mask)

    @property
    def secret(self) -> bytes:
        """The HMAC key (the raw password, like ucarp), from CARP_PASS or CARP_PASS_FILE."""
        if self._key is None:
            password = None if self.password is None else self.password.get_secret_value()
            self._key = (password_bytes(password, self.pass_file) if self.protocol == "carp"
                         else vrrp.password_key(self.protocol, password, self.pass_file))
        return self._key

    @property
    def next_secret(self) -> bytes | None:
        """The rotation's next key (CARP_PASS_NEXT or its file), accepted besides the key."""
        if self._next_key is None:
            password = (None if self.password_next is None
                        else self.password_next.get_secret_value())
            self._next_key = (next_password_bytes(password, self.pass_next_file),)
        return self._next_key[0]

    @property
    def name(self) -> str:  # as Vhid.name
        return f"{self.interface}/vhid{self.vhid}" + "/ipv6" * vrrp.is_ipv6(self)

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

    def runtime(self) -> Vhid:
        """This instance as the running agent holds it: the declared fields as validated,
        the derived ones computed here."""
        given = {d.name: getattr(self, d.name) for d in VHID if not d.setting.is_input}
        return Vhid(**given, auth=auth(self.secret, self.vips, self.next_secret), vips=self.vips,
                    vrrp3_dead_timer=self.dead_timer == "auto" and self.advbase == 0,
                    prefix_known=self._prefix_known(),
                    script_env=tuple(sorted(self.script_environment().items())))

    def script_environment(self) -> dict[str, str]:
        """The effective settings under both names, for the scripts; never the password."""
        out = {}
        for var, value in self.redacted().items():
            if var not in ("CARP_PASS", "CARP_PASS_NEXT") and var.startswith("CARP_"):
                out[var] = out["U" + var] = value
        out["CARP_VIPS"] = ",".join(show_vips(self.vips, self._prefix_known()))
        out["CARP_INSTANCE"] = self.name
        return out

    def redacted(self) -> dict[str, str]:
        """Effective settings as CARP_* strings, the secret shown as ``***``."""
        out = {k: v for k, v in shown(self, VHID).items() if k not in vrrp.unshown(self.protocol)}
        out["VIPS (effective)"] = ",".join(show_vips(self.vips, self._prefix_known())) + (
            "" if self._prefix_known() else " (prefix: the scripts' own)")
        return out


class CheckRules(_Rules):
    """A check of the co-located service; all of its configured probes must pass."""

    @field_validator("tcp", check_fields=False)
    @classmethod
    def _tcp(cls, v: str | None) -> str | None:
        if v is not None:
            host_port(v)
        return v

    @field_validator("url", check_fields=False)
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

    @field_validator("cmd", check_fields=False)
    @classmethod
    def _cmd(cls, v: str | None) -> str | None:
        if v is not None and not shlex.split(v):
            raise ValueError("empty command")
        return v

    @property
    def configured(self) -> bool:
        return any((self.url, self.tcp, self.cmd))

    def runtime(self) -> Check:
        return Check(**{d.name: getattr(self, d.name) for d in CHECK})


class AgentRules(_Rules):
    """What the process has once, whatever the number of instances."""

    @field_validator("metrics_listen", check_fields=False)
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.lower() in ("", "off"):
            return "off"
        host_port(v)
        return v

    @field_validator("log_level", mode="before", check_fields=False)
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("syslog", check_fields=False)
    @classmethod
    def _syslog(cls, v: str | None) -> str | None:
        if v is None or v.lower() in ("", "off"):
            return None
        from logging.handlers import SysLogHandler  # only a syslog setting needs its names

        if v.lower() not in SysLogHandler.facility_names:
            raise ValueError(f"{v!r} is not a syslog facility (daemon, user, local0-local7...)")
        return v.lower()

    @field_validator("state_dir", mode="before", check_fields=False)
    @classmethod
    def _state_dir_off(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() == "off" else v

    @field_validator("control_socket", "state_dir", "sync_secret_file", check_fields=False)
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v} is not an absolute path")
        return v


def _link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def shown(model: BaseModel, decls: Iterable[Declared]) -> dict[str, str]:
    """A model's settings as ``CARP_X`` strings, unset ones left out, secrets as ``***``."""
    out: dict[str, str] = {}
    for d in decls:
        value = getattr(model, d.name)
        if d.setting.secret and value is not None:
            value = "***"
        if value is None or value in ([], ()):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out[d.var] = show(value)
    return out


def _model(name: str, rules: type[_Rules], decls: Iterable[Declared]) -> Any:
    return create_model(name, __base__=rules, __doc__=rules.__doc__,  # type: ignore[call-overload]
                        **{d.name: _field(d) for d in decls})


if TYPE_CHECKING:
    VhidSettings = VhidRules
    CheckSettings = CheckRules
    AgentSettings = AgentRules
else:
    VhidSettings = _model("VhidSettings", VhidRules, VHID)
    CheckSettings = _model("CheckSettings", CheckRules, CHECK)
    AgentSettings = _model("AgentSettings", AgentRules, AGENT)

