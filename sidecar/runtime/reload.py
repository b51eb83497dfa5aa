"""What a reload changes: the difference between the running configuration and a new one, as a
plan the agent carries out. Pure: two :class:`RunConfig` in, a :class:`Plan` out.

An instance is identified by its interface and VHID. New ones start, removed ones leave (a
master bows out first), changed ones are updated in place when every changed field can change
live; a change that alters what the group authenticates or how this node is addressed (the
first VIP the digest covers, the source address, the peers, strict mode, the multicast
group...) replaces the instance: it leaves (bowing out if MASTER) and starts again. The
password and the next password (CARP_PASS_NEXT) change in place: the session's keys are
swapped and nothing else moves, so a rotation (docs/runbook.md) never moves the VIP; strict
mode's replay window is kept, as the counters run on across keys. Agent-wide settings that
are bound at start (the HTTP listener, the control socket, the state directory) need a
restart; the reply says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields

from sidecar.config.runconfig import RunConfig, Vhid

READ_TIMEOUT = 30.0  # s for the child that validates the sources (a password file on NFS...)


class ReloadRefused(Exception):
    """The new configuration is not used; ``errors`` are the lines that say why."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


async def read_config(origin: tuple[str, ...], environ_secrets: dict[str, str] | None = None
                      ) -> RunConfig:
    """Validate the sources again in a child process (pydantic stays out of the agent), from
    the same command line, working directory and environment as at start. The command line
    (ucarp's -p) and the password variables the agent was started with (``environ_secrets``,
    kept out of its environment) reach the child through its stdin, never its argv or
    environment; a password file, env file or TOML file the child reads again."""
    text, _ = await read_raw_config(origin, environ_secrets)
    new = RunConfig.from_json(text)
    return dataclasses.replace(new, environ_secrets=dict(environ_secrets or {}))  # next reload


# The child, in the installed version's code: its version on the first line, then its RunConfig
# JSON with the password variables the agent was started with (which the command line does not
# give again: a restart's new process needs them for its own reloads), each through a pipe.
_CHILD = """
import contextlib, io, json, sys, sidecar
from sidecar.tools.cli import dump_runtime_config
given = sys.stdin.read()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = dump_runtime_config(given)
if code:
    sys.exit(code)
doc = json.loads(out.getvalue())
doc["environ_secrets"] = json.loads(given).get("environ") or {}
print(sidecar.__version__)
print(json.dumps(doc))
"""


async def read_raw_config(origin: tuple[str, ...], environ_secrets: dict[str, str] | None = None
                          ) -> tuple[str, str]:
    """:func:`read_config`'s child, as it answered: the RunConfig JSON text and the version of
    the code installed now. A restart hands that text to the new version unread: the running
    (older) code may not know its fields, and must not re-encode them."""
    if not origin:
        raise ReloadRefused(["this agent was not started by `carp-sidecar run`: nothing to "
                             "re-read"])
    code = _CHILD
    request = json.dumps({"origin": list(origin), "environ": dict(environ_secrets or {})})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(request.encode()), READ_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ReloadRefused([f"reading the configuration took over {READ_TIMEOUT:g} s"]) from None
    if proc.returncode != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        raise ReloadRefused(lines or [f"exit status {proc.returncode}"])
    version, _, text = out.decode().partition("\n")
    return text, version.strip()

# Fields an instance takes live; any other change replaces it.
LIVE = frozenset({
    "advbase", "advskew", "preempt", "preempt_delay", "deadratio", "vrrp3_dead_timer", "vips",
    "if_alias", "upscript", "downscript", "notifyscript", "xparam", "script_timeout",
    "garp_repeat", "garp_refresh", "probe_interval", "health", "maintenance_file", "script_env",
    "auth",  # the keys; its VIP half is the first VIP, which needs_replace checks
    "sync_paths", "sync_max_lag",  # the replication restarts, the election does not
    "priority", "advert_int",  # VRRP's: the next advert carries them (a protocol change replaces)
})
HIDDEN = frozenset({"auth", "script_env"})  # changed, but never shown (a secret; noise)
AGENT_AT_RESTART = ("metrics_listen", "control_socket", "state_dir", "realtime", "syslog",
                    "log_format", "sync_port", "sync_secret_file")
Key = tuple[str, int, bool]


def key(v: Vhid) -> Key:
    return v.key


def _flipped(k: Key) -> Key:
    return (k[0], k[1], not k[2])


def _label(v: Vhid) -> str:
    """An IPv6 VRRP instance is named so: its VRID may also be an IPv4 instance's."""
    return f"vhid {v.vhid} on {v.interface}" + " (IPv6)" * v.ipv6


@dataclass
class Plan:
    added: list[Vhid] = field(default_factory=list)
    removed: list[Vhid] = field(default_factory=list)
    updated: list[tuple[Vhid, Vhid]] = field(default_factory=list)  # (old, new), in place
    replaced: list[tuple[Vhid, Vhid]] = field(default_factory=list)  # (old, new), restarted
    checks: set[str] = field(default_factory=set)  # health checks added, removed or changed
    script_extra: bool = False  # the env file's own variables (the scripts' environment)
    log_level: str | None = None  # applied live
    at_restart: list[str] = field(default_factory=list)  # agent settings that need a restart
    changes: list[str] = field(default_factory=list)  # what the reply lists

    @property
    def empty(self) -> bool:
        return not self.changes


def changed_fields(old: Vhid, new: Vhid) -> list[str]:
    return [f.name for f in fields(Vhid) if getattr(old, f.name) != getattr(new, f.name)]


def needs_replace(old: Vhid, new: Vhid, changed: list[str]) -> bool:
    if any(name not in LIVE for name in changed):
        return True
    if old.hmac_address != new.hmac_address:  # what the digest covers: the group's identity
        return True
    if old.manages_vip_by_scripts != new.manages_vip_by_scripts:
        return True  # who owns the VIP changes hands
    if old.ipv6 != new.ipv6:  # a vrrp3 instance's family: its source, group and wire change
        return True
    # the scripts were given the first VIP: another one means other scripts' work
    return new.manages_vip_by_scripts and old.script_address != new.script_address


def describe(old: Vhid, new: Vhid, changed: list[str]) -> str:
    parts = []
    for name in changed:
        if name == "vips":
            before, after = set(map(str, old.vips)), set(map(str, new.vips))
            parts.append("vips " + " ".join([*(f"+{v}" for v in sorted(after - before)),
                                             *(f"-{v}" for v in sorted(before - after))]))
        elif name == "auth":  # (its VIP half changes with the first VIP)
            parts += _keys_changed(old, new)
        elif name not in HIDDEN:
            parts.append(f"{name} {_show(getattr(old, name))} -> {_show(getattr(new, name))}")
    return ", ".join(parts) or "environment of the scripts"


def _keys_changed(old: Vhid, new: Vhid) -> list[str]:
    """What a rotation step did, never the passwords."""
    parts = ["password changed"] if old.auth.key != new.auth.key else []
    before, after = old.auth.next_key, new.auth.next_key
    if before != after:
        parts.append("next password " + ("unset" if after is None else "set" if before is None
                                         else "changed"))
    return parts


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def plan(old: RunConfig, new: RunConfig) -> Plan:
    p = Plan()
    before = {key(v): v for v in old.instances}
    after = {key(v): v for v in new.instances}
    moved = {k: _flipped(k) for k in before if k not in after and _flipped(k) in after
             and _flipped(k) not in before}  # into or out of IPv6: the same instance, replaced
    for k, v in after.items():
        if k not in before and k not in moved.values():
            p.added.append(v)
            p.changes.append(f"{_label(v)}: added")
    for k, v in before.items():
        now = after.get(moved.get(k, k))
        if now is None:
            p.removed.append(v)
            p.changes.append(f"{_label(v)}: removed")
            continue
        changed = changed_fields(v, now)
        if not changed:
            continue
        what = describe(v, now, changed)
        if needs_replace(v, now, changed):
            p.replaced.append((v, now))
            p.changes.append(f"{_label(v)}: restarted ({what})")
        else:
            p.updated.append((v, now))
            p.changes.append(f"{_label(v)}: {what}")
    names = old.checks.keys() | new.checks.keys()
    p.checks = {n for n in names if old.checks.get(n) != new.checks.get(n)}
    for n in sorted(p.checks):
        what = "added" if n not in old.checks else "removed" if n not in new.checks else "changed"
        p.changes.append(f"health check {n}: {what}")
    if old.script_extra != new.script_extra:
        p.script_extra = True
        p.changes.append("the env file's own variables (the scripts' environment)")
    if old.log_level != new.log_level:
        p.log_level = new.log_level
        p.changes.append(f"log_level {old.log_level} -> {new.log_level}")
    for name in AGENT_AT_RESTART:
        if getattr(old, name) != getattr(new, name):
            p.at_restart.append(name)
            p.changes.append(f"{name} {getattr(old, name)} -> {getattr(new, name)}: "
                             "takes effect at the next restart")
    return p
