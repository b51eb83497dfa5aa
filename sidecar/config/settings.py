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

import dataclasses
import functools
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import AliasChoices, BaseModel, Field, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sidecar.config import ucarp_options, vrrp
from sidecar.config.across import across_sync, check_unique
from sidecar.config.models import (
    AGENT,
    CHECK,
    HELP,
    VHID,
    AgentSettings,
    CheckSettings,
    VhidSettings,
    shown,
)
from sidecar.config.origins import bare_names, env_origins, file_origins
from sidecar.config.runconfig import ConfigError, RunConfig, host_port
from sidecar.config.spelling import as_given, environ_names, shell_leftovers
from sidecar.config.values import OFFLINE, show

__all__ = ["HELP", "Config", "ConfigError", "VhidSettings", "host_port", "load", "read_env_file",
           "show"]

ENV_CHECK = "service"  # the name of the check CARP_HEALTH_* declare


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
    names: dict[str, str] = field(default_factory=dict)  # CARP_X -> as given: UCARP_X, --vhid

    @property
    def metrics_listen(self) -> str:
        return str(self.agent.metrics_listen)

    @property
    def log_format(self) -> str:
        return str(self.agent.log_format)

    @property
    def control_socket(self) -> Path:
        if self.agent.control_socket is not None:
            return Path(self.agent.control_socket)
        if self.source == "environment":  # one instance: the path earlier versions used
            only = self.instances[0]  # eth0/vhid1 (IPv6: eth0/vhid1/ipv6, keepalived's pairs)
            return Path(f"/run/carp-sidecar/{only.name.replace('/', '-')}.sock")
        return Path("/run/carp-sidecar/control.sock")

    def runtime(self) -> RunConfig:
        """What the running agent needs, as plain data (see :mod:`runconfig`)."""
        checks = {n: c.runtime() for n, c in self.checks.items()}
        agent_env = {}
        for var, value in self.redacted()[0][1].items():
            agent_env[var] = agent_env["U" + var] = value
        instances = tuple(dataclasses.replace(i.runtime(), script_env=tuple(sorted(
            {**agent_env, **dict(i.runtime().script_env)}.items()))) for i in self.instances)
        return RunConfig(instances, checks,
                         self.metrics_listen, self.control_socket, self.log_format, self.source,
                         self.agent.state_dir, self.agent.log_level, self.agent.syslog,
                         self.script_extra, self.agent.realtime, self.as_ucarp, self.origin,
                         sync_secret_file=self.agent.sync_secret_file,
                         sync_port=self.agent.sync_port)

    def redacted(self) -> list[tuple[str, dict[str, str]]]:
        """Sections for `check-config`: the agent, each check, each instance."""
        agent = shown(self.agent, AGENT)
        agent["CARP_STATE_DIR"] = str(self.agent.state_dir or "off")
        agent["CARP_CONTROL_SOCKET"] = str(self.control_socket)
        out = [("agent", agent)]
        for name, check in self.checks.items():
            out.append((f"health {name}", shown(check, CHECK)))
        out += [(f"instance {i.name}", i.redacted()) for i in self.instances]
        return out


# ---- loading ----
def load(environ: Mapping[str, str], env_file: Path | None = None,
         offline: bool = False, options: Mapping[str, str] | None = None) -> Config:
    """Validate the environment (and ``env_file``, else the one CARP_ENV_FILE names) or the
    TOML file it names; ConfigError carries every problem found, one line each. ``offline``:
    what only the target host has (scripts, the password file) is not looked at. ``options``:
    the CARP_ variables ucarp's command line set (they win; errors name the option)."""
    token = OFFLINE.set(offline)
    try:
        return _load(environ, env_file, options or {})
    finally:
        OFFLINE.reset(token)


def _load(environ: Mapping[str, str], env_file: Path | None, options: Mapping[str, str]
          ) -> Config:
    refused, cautions = shell_leftovers(environ, _KNOWN, _SECRETS)
    from_env = env_file is None and bool(environ.get("CARP_ENV_FILE"))
    if from_env:  # a container's every command (healthcheck, status) finds the mounted file
        env_file = Path(environ["CARP_ENV_FILE"])
    raw, given, in_file = read_sources({**environ, **options}, env_file,
                                       "CARP_ENV_FILE" if from_env else "--env-file")
    errors = [_unknown(key) for key in raw if _unknown(key)]
    if refused:  # what the shell would have removed: the other errors would only echo it
        raise ConfigError("\n".join(refused + errors))
    names = environ_names(environ, in_file, _ALL_SPELLINGS, options, _OPTION_NAMES)
    config_file = given.get("CARP_CONFIG", "")
    if config_file:
        if errors:
            raise ConfigError("\n".join(errors))
        return _load_file(Path(config_file), given, bare_names(in_file))
    agent = _collect(errors, lambda: _validate(AgentSettings, given, names))
    check = None
    if not _CHECK_NAMES.isdisjoint(given):  # none of CARP_HEALTH_*: no validator built (~1 ms)
        check = _collect(errors, lambda: _validate(CheckSettings, given, names))
    checks = {ENV_CHECK: check} if check is not None and check.configured else {}
    instance = _collect(errors, lambda: _validate(
        VhidSettings, {**given, "CARP_HEALTH": list(checks)}, names))
    if agent is not None and instance is not None:
        errors += across_sync(agent, [instance], names, given)
    if errors or agent is None or instance is None:
        raise ConfigError("\n".join(errors))
    config = Config(agent, (instance,), checks, "environment", _script_extra(raw, in_file),
                    warnings=(*bare_names(in_file), *cautions, *_cleartext([instance])),
                    names=names)
    return dataclasses.replace(config, origins=env_origins(config, environ, in_file, env_file))


def read_sources(environ: Mapping[str, str], env_file: Path | None, option: str = "--env-file"
                 ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Every variable as spelled in the env file and the environment (the environment wins),
    one value per setting under its CARP_ name, and the env file's own variables, read by
    pydantic-settings' dotenv and environment sources: shell-like values (``X=pw  # note`` is
    ``pw``, ``${VAR}`` expanded), ``CARP_X`` before ``UCARP_X`` within a source, the
    environment before the file, an empty value meaning unset."""
    sources: list[EnvSettingsSource] = []
    in_file: dict[str, str] = {}
    if env_file is not None:
        _check_env_file(env_file, option)
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


def _check_env_file(path: Path, option: str = "--env-file") -> None:
    """python-dotenv skips what it cannot parse with a warning; a config file must not."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{option}: cannot read {path}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    bad = [b.original.line for b in parse_stream(io.StringIO(text)) if b.error]
    if bad:
        raise ConfigError("\n".join(f"{option}: {path}:{n}: expected KEY=VALUE" for n in bad))


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
    if key in _KNOWN or key in ("CARP_CONFIG", "CARP_ENV_FILE") or not key.startswith(("CARP_", "UCARP_")):
        return ""
    import difflib  # here, not at the top: only a mistake pays for it

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
    import tomllib  # only a TOML configuration needs it

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
    check_unique(instances, where)
    sync_errors = across_sync(agent, instances, {**_TOML_KEYS, **{v: v for v in env}}, {}, where)
    if sync_errors:
        raise ConfigError("\n".join(sync_errors))
    config = Config(agent, tuple(instances), checks, where,
                    warnings=(*(warnings or ()), *_cleartext(instances)))
    return dataclasses.replace(config, origins=file_origins(config, where, env, defaults, tables))


def _cleartext(instances: list[VhidSettings]) -> list[str]:
    said = (vrrp.cleartext_warning(i.protocol, i.password is not None or i.pass_file is not None,
                                   i.name) for i in instances)
    return [w for w in said if w]


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
    model_config = SettingsConfigDict(extra="allow", defer_build=True)  # only TOML reads it


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


# Stand-ins for required settings that failed, so the checks that need them still run and a
# bad VHID does not hide a bad mask (check-config promises every mistake at once).
PLACEHOLDERS = {"CARP_INTERFACE": "eth0", "CARP_VHID": 1, "CARP_ADDR": "192.0.2.1",
                "interface": "eth0", "vhid": 1, "addr": "192.0.2.1",
                "CARP_PROTOCOL": "vrrp2"}  # VRRP's rules name CARP_PROTOCOL: left out


def _all_errors(model: type[Any], values: dict[str, Any], error: ValidationError) -> list[str]:
    """The field errors, and the cross-field ones pydantic skips when a field fails: found by
    validating again with the failed fields left out (or stood in for, when required); not
    those that mention a failed field, which would be about its stand-in."""
    lines = _lines(error)
    failed = {_canonical(p["loc"][0]) for p in error.errors() if p["loc"]}
    if not failed or model is not VhidSettings:
        return lines
    retry = {k: v for k, v in values.items() if k not in failed}
    retry.update({k: PLACEHOLDERS[k] for k in failed if k in PLACEHOLDERS})
    try:
        model.model_validate(retry)
    except ValidationError as again:
        lines += [line for line in _lines(again) if line not in lines
                  and not any(re.search(rf"\b{f}\b", line) for f in failed)]
    return lines


def _validate(model: type[Any], values: dict[str, Any], names: Mapping[str, str],
              where: str = "") -> Any:
    """``names``: CARP_X -> the variable or option the user set it with (environment mode)."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        lines = []
        for line in (one for many in _all_errors(model, values, e) for one in many.splitlines()):
            if where:  # a file: name its key, not the variable
                var, sep, _ = line.partition(": ")
                key = (var.removeprefix("UCARP_").removeprefix("CARP_")
                       .removeprefix("HEALTH_").lower())
                line = (f"{where}: {as_given(line, _TOML_KEYS, values, _SECRETS, key)}"
                        if sep and var.isupper() else f"{where}: {line}")
            else:
                line = as_given(line, names, values, _SECRETS)
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
_CHECK_NAMES = {name for names in _spellings(CheckSettings) for name in names}
_SECRETS = {d.var for d in (*VHID, *CHECK, *AGENT) if d.setting.secret}
_OPTION_NAMES = {o.setting: o.long for o in ucarp_options.OPTIONS if o.setting}


class _SourceModel(BaseSettings):
    # the sources only read its fields' names: never validated, no validator built
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", defer_build=True)


_CARP_NAMES = {names[0] for names in _ALL_SPELLINGS} | {"CARP_CONFIG"}
_TOML_KEYS = {v: v.removeprefix("CARP_").lower() for v in _CARP_NAMES}  # what a file calls it
# What the sources read: one optional string per setting, spelled CARP_X or UCARP_X.
_Variables = create_model(  # type: ignore[call-overload]
    "_Variables", __base__=_SourceModel,
    **{names[0].lower(): (str | None, Field(None, validation_alias=AliasChoices(*names)))
       for names in [*_ALL_SPELLINGS, ("CARP_CONFIG",)]})


def _canonical(field: Any) -> str:
    """A field's variable as CARP_X, whichever spelling or field name pydantic reports."""
    name = str(field)
    return name.removeprefix("U") if name.startswith(("CARP_", "UCARP_")) else f"CARP_{name.upper()}"


def _lines(error: ValidationError) -> list[str]:
    """One line per problem, naming the variable as CARP_X (:func:`_validate` renames it)."""
    out = []
    for problem in error.errors(include_url=False, include_input=False):
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not problem["loc"]:
            out.append(message)
            continue
        if problem["type"] == "missing":
            message = "required but not set"
        out.append(f"{_canonical(problem['loc'][0])}: {message}")
    return out
