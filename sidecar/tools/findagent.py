"""Which local agent a command means: one lookup for status, reload, demote and promote, so
that every command an operator types finds the agent the shipped layouts start (the systemd
unit, the container, a start script)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from sidecar.config.runconfig import ConfigError

RUN_DIR = Path("/run/carp-sidecar")  # where agents make their control sockets by default
SOCKET_VARIABLES = ("CARP_CONTROL_SOCKET", "UCARP_CONTROL_SOCKET")
CONFIG_VARIABLES = ("CARP_CONFIG", "UCARP_CONFIG")


def explicit_configuration(env_file: Path | None, environ: Mapping[str, str]) -> bool:
    """The operator named a configuration (--env-file, CARP_CONFIG): when it does not validate
    that is the answer, not a hint to go looking elsewhere."""
    return env_file is not None or any(environ.get(v) for v in CONFIG_VARIABLES)


def control_sockets(socket: Path | None, env_file: Path | None, environ: Mapping[str, str],
                    configured: Callable[[], Path], run_dir: Path | None = None) -> list[Path]:
    """The control socket(s) of the agent(s) a command means, first found of:

    1. ``--socket``;
    2. CARP_CONTROL_SOCKET (or UCARP_CONTROL_SOCKET) in the environment;
    3. ``run_dir``/NAME.sock for ``--env-file .../NAME.env``, if an agent listens there: the
       systemd unit runs `--env-file /etc/carp-sidecar/%i.env` with its socket at
       /run/carp-sidecar/%i.sock (set in the unit, not in the file);
    4. the configuration's socket (``configured``: the env file, CARP_*, CARP_CONFIG), as the
       agent started with the same configuration computes it; a named configuration that does
       not validate raises its ConfigError here;
    5. every socket in ``run_dir`` (a start script's agent, configured on its command line).
    """
    # here, not at the top: every command imports this module, and control imports asyncio
    from sidecar.serve.control import listening

    run_dir = RUN_DIR if run_dir is None else run_dir
    if socket is not None:
        return [socket]
    named = next((environ[v] for v in SOCKET_VARIABLES if environ.get(v)), None)
    if named:
        return [Path(named)]
    if env_file is not None:
        unit = run_dir / f"{env_file.stem}.sock"
        if unit.is_socket() and listening(unit):
            return [unit]
    try:
        return [configured()]
    except ConfigError:
        if explicit_configuration(env_file, environ):
            raise
    sockets = sorted(p for p in run_dir.glob("*.sock") if p.is_socket())
    found = [p for p in sockets if listening(p)]  # a killed agent leaves its socket behind
    if not found:
        stale = f" (stale, nothing listening: {', '.join(map(str, sockets))})" if sockets else ""
        raise OSError(f"no agent found: no control socket in {run_dir}{stale} and no "
                      "configuration here (is it running? pass --socket or --env-file, or set "
                      "CARP_CONTROL_SOCKET)")
    return found


def one_agent(sockets: list[Path], command: str) -> Path:
    """The one agent a command that changes something acts on. Several agents are an error,
    not all of them: draining every VIP of the host is a bigger step than `demote` says."""
    if len(sockets) == 1:
        return sockets[0]
    listed = "\n  ".join(str(p) for p in sockets)
    raise OSError(f"several agents run here; say which with --socket (or --env-file):\n"
                  f"  {listed}\n(carp-sidecar {command} acts on one agent)")
