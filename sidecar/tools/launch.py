"""Becoming the agent: the sweep before validation, --daemonize, and the exec into a fresh
interpreter that never loads pydantic (sidecar.runtime.agent)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.config.runconfig import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    import argparse

    from sidecar.config.settings import Config
    from sidecar.runtime.resume import ResumeRecord


CONTAINER_INITS = {"tini", "docker-init", "dumb-init", "catatonit", "podman-init"}
DETACHED = "SIDECAR_DETACHED"  # set in the detached agent's environment: its reloads' child reads it


def supervised_in_foreground(proc: Path = Path("/proc"), pid: int | None = None,
                             ppid: int | None = None) -> bool:
    """Would detaching end what supervises us? Yes when we are PID 1 (a container's main
    process: the container ends with it), or when our parent is PID 1 and a container's init
    (tini, docker run --init, podman's, dumb-init, catatonit), which exits when its one child
    does. A marker file (/.dockerenv) says nothing of that: hosts and CI runners have it, and a
    start script under it waits for ucarp's --daemonize to return."""
    pid = os.getpid() if pid is None else pid
    ppid = os.getppid() if ppid is None else ppid
    if pid == 1:
        return True
    if ppid != 1:
        return False
    try:
        init = (proc / "1" / "comm").read_text().strip()
    except OSError:
        return False
    return init in CONTAINER_INITS


def daemon_syslog(config: Config) -> Config:
    """Detached, stderr goes nowhere: syslog (facility daemon, unless one is set) as ucarp."""
    if config.agent.syslog is not None:
        return config
    return dataclasses.replace(config, agent=config.agent.model_copy(update={"syslog": "daemon"}))


def daemonize(config: Config) -> Config:
    """ucarp's --daemonize: detach (double fork, new session, stdio to /dev/null) and log to
    syslog. As a container's main process (supervised_in_foreground) stay there."""
    if supervised_in_foreground():
        os.environ.pop(DETACHED, None)  # inherited from a detached agent's script: not ours
        print("carp-sidecar: --daemonize ignored in a container (PID 1, or the child of its "
              "init): staying in the foreground", file=sys.stderr)
        return config
    config = daemon_syslog(config)
    os.environ[DETACHED] = "1"
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return config


def sweep_before_validating(args: argparse.Namespace) -> list[tuple[str, str]]:
    """A killed run's VIPs, removed before the ~150 ms of pydantic (sidecar.net.held) when
    the environment and the command line are the whole configuration: with an env file or a
    TOML file the state directory and --neutral are only known after validation, and the
    agent sweeps then. Not for a neutral start, which leaves what it finds."""
    env = os.environ

    def var(name: str) -> str | None:
        return env.get(f"CARP_{name}", env.get(f"UCARP_{name}"))

    neutral = (var("NEUTRAL") or "").strip().lower() not in ("", "0", "f", "n", "false", "no", "off")
    if (getattr(args, "env_file", None) or var("CONFIG") or env.get("CARP_ENV_FILE") or neutral
            or getattr(args, "ucarp_neutral", False)):
        return []
    state_dir = _state_dir(var("STATE_DIR"))
    if state_dir is None:
        return []
    from sidecar.net.held import sweep

    restart = usable_restart_record(state_dir)  # this process is the successor it waits for
    return sweep(state_dir, keep=frozenset(restart.vips()) if restart else frozenset())


def _state_dir(value: str | None) -> Path | None:
    state_dir = Path(value or DEFAULT_STATE_DIR)
    if str(state_dir).lower() == "off" or not state_dir.is_absolute():
        return None
    return state_dir


def usable_restart_record(state_dir: Path) -> ResumeRecord | None:
    """The on-stop restart record waiting in ``state_dir`` while it may still be used (its
    VIPs are not stale: the agent resumes with them); one that cannot be read is left for
    the agent, which says why and deletes it."""
    from sidecar.runtime.resume import read_state_dir

    try:
        record = read_state_dir(state_dir)
    except ValueError:
        return None
    if record is None or record.kind != "on_stop" or record.why_not() is not None:
        return None
    return record


def release_restart_record(env_file: Path | None) -> list[str]:
    """``run`` with a configuration that does not validate: a usable on-stop record's VIPs are
    removed and the record deleted (a new version that cannot run never leaves a second holder:
    the backups take over at once); what was done, one line each. The state directory is
    CARP_STATE_DIR as the environment or the env file spell it (best effort: a TOML file's is
    unknown here, and the kernel's lifetime on the VIPs ends them anyway)."""
    from sidecar.net.rtmsg import delete_address
    from sidecar.runtime.resume import discard_state_dir

    value = os.environ.get("CARP_STATE_DIR", os.environ.get("UCARP_STATE_DIR"))
    if not value and env_file is not None:
        try:
            from sidecar.config.settings import read_env_file

            given = read_env_file(env_file)
            value = given.get("CARP_STATE_DIR", given.get("UCARP_STATE_DIR"))
        except Exception:  # its errors are the ones being reported
            value = None
    state_dir = _state_dir(value)
    record = None if state_dir is None else usable_restart_record(state_dir)
    if state_dir is None or record is None:
        return []
    lines = []
    for index, address, prefixlen in sorted(record.vips()):
        try:
            removed = delete_address(index, address, prefixlen)
        except OSError as e:
            lines.append(f"cannot remove VIP {address}/{prefixlen} kept for this restart: "
                         f"{e.strerror or e} (the kernel removes it when its lifetime ends)")
            continue
        if removed:
            lines.append(f"removed VIP {address}/{prefixlen} kept for this restart (pid "
                         f"{record.pid}, version {record.version}): the backup takes over")
    discard_state_dir(state_dir)
    lines.append(f"deleted the restart record in {state_dir}: this version cannot run here")
    return lines


def secret_variables() -> frozenset[str]:
    """CARP_PASS, CARP_PASS_NEXT and their UCARP_ spellings: every secret setting's variable."""
    from sidecar.config.declare import declared
    from sidecar.config.runconfig import VHID_INPUTS, Vhid

    return frozenset(f"{u}{d.var}" for d in declared(Vhid, VHID_INPUTS) if d.setting.secret
                     for u in ("", "U"))


def exec_agent(config: Config, swept: list[tuple[str, str]]) -> int:
    """Become the agent: the validated configuration goes through an in-memory file to a fresh
    interpreter in this same process (same PID, same signals), which never loads pydantic.
    The agent's environment, which every child inherits (health commands, scripts, a reload's
    child) and /proc/PID/environ shows, goes without the password variables: the agent has the
    key already, and a reload's child gets them through a pipe."""
    hidden = secret_variables()
    secrets = {k: v for k, v in os.environ.items() if k in hidden}
    runtime = dataclasses.replace(config.runtime(), environ_secrets=secrets)
    fd = os.memfd_create("carp-sidecar-config", 0)  # inheritable: no MFD_CLOEXEC
    os.write(fd, runtime.to_json().encode())
    os.lseek(fd, 0, os.SEEK_SET)
    argv = [sys.executable, "-m", "sidecar.runtime.agent", "--config-fd", str(fd), "--version",
            __version__, "--title", json.dumps(process_title(config)),
            "--swept", json.dumps(swept)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, {k: v for k, v in os.environ.items() if k not in hidden})
    return 1  # not reached


SECRET_OPTIONS = {"--pass", "-p"}


def process_title(config: Config) -> str:
    """The agent's name for ps, pidof and killall: what the user started, `ucarp ...` as the
    drop-in, `carp-sidecar run ...` otherwise; a password given on the command line shown
    as ***."""
    if not config.origin:
        return "carp-sidecar"
    _cwd, prog, *argv = config.origin
    shown, hide = [], False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        if hide:
            shown.append("***")
            hide = False
        elif eq and name in SECRET_OPTIONS:
            shown.append(f"{name}=***")
        elif arg.startswith("-") and not arg.startswith("--"):
            arg, hide = _short_cluster(arg)
            shown.append(arg)
        else:
            shown.append(arg)
            hide = arg in SECRET_OPTIONS
    return " ".join([prog, *shown])


def _short_cluster(arg: str) -> tuple[str, bool]:
    """A cluster of ucarp's short options (`-Pp`, `-Pps3cret`, `-zPv1`) with the password
    shown as ***; whether the next argument is the password (`-Pp s3cret`)."""
    from sidecar.config.ucarp_options import OPTIONS

    takes_value = {o.short: o.long for o in OPTIONS if o.value}
    for i, char in enumerate(arg[1:], start=1):
        if char in takes_value:  # the rest of the cluster, or the next argument, is its value
            if takes_value[char] != "pass":
                return arg, False
            return (arg[:i + 1] + "***", False) if i + 1 < len(arg) else (arg, True)
    return arg, False
