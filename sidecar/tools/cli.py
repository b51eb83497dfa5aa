"""`carp-sidecar [run|check-config|status|healthcheck|demote|promote|reload|restart|import|...]` —
the console entry point; installed or symlinked as ``ucarp``, ucarp's drop-in."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.config import ucarp_options
from sidecar.config.runconfig import ConfigError
from sidecar.tools import cliargs
from sidecar.tools.findagent import control_sockets, explicit_configuration, one_agent
from sidecar.tools.launch import (
    DETACHED,
    daemon_syslog,
    daemonize,
    exec_agent,
    release_restart_record,
    sweep_before_validating,
)

if TYPE_CHECKING:  # pydantic's import is most of a short command's time: only when needed
    from sidecar.config.settings import Config

EXIT_CONFIG = 2


def _settings(args: argparse.Namespace, overrides: dict[str, str] | None = None,
              environ_secrets: dict[str, str] | None = None) -> Config:
    from sidecar.config.settings import load

    return load({**(environ_secrets or {}), **os.environ}, getattr(args, "env_file", None),
                options=overrides)


def _parse(argv: list[str], as_ucarp: bool) -> argparse.Namespace:
    if as_ucarp:  # the drop-in: ucarp's command line, nothing else
        p = ucarp_options.parser()
        p.add_argument("--version", "-V", action="version",  # ucarp has none: scripts ask
                       version=f"ucarp 1.5.2 compatible (carp-sidecar {__version__})")
        args = p.parse_args(argv)
        args.command = "run"
    else:
        args = cliargs.parser(only=cliargs.named(argv)).parse_args(argv)
    return args


def _run_config(args: argparse.Namespace, as_ucarp: bool, argv: list[str],
                environ_secrets: dict[str, str] | None = None) -> Config:
    settings = _settings(args, ucarp_options.settings(args), environ_secrets)
    return dataclasses.replace(settings, as_ucarp=as_ucarp,
                               origin=(os.getcwd(), "ucarp" if as_ucarp else "carp-sidecar", *argv))


def dump_runtime_config(given: str) -> int:
    """What a reload runs in a child process (the agent never loads pydantic): the runtime
    configuration the same command line gives now, as JSON on stdout, or every error on stderr
    (exit 2). ``given`` is the JSON {"origin": [cwd, program name, *arguments], "environ":
    {the password variables the agent was started with}}, read from a pipe: neither is in the
    child's argv or environment, where ps and /proc would show them."""
    request = json.loads(given)
    cwd, prog, *argv = request["origin"]
    os.chdir(cwd)
    try:
        args = _parse(argv, prog == "ucarp")
        config = _run_config(args, prog == "ucarp", argv, request.get("environ"))
        if getattr(args, "ucarp_daemonize", False) and os.environ.get(DETACHED) == "1":
            config = daemon_syslog(config)  # as daemonize decided at start (our parent)
        print(config.runtime().to_json())
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG
    except SystemExit as e:  # argparse: the command line itself no longer parses
        return EXIT_CONFIG if e.code else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except BrokenPipeError:  # `carp-sidecar status | head`: the reader has gone, as for cat
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a process ended by SIGPIPE


LONG_COMMANDS = {"lab", "watch"}  # they run for minutes: the usual collector and teardown


def entry() -> None:
    """The console script: :func:`main`, then out without the interpreter's teardown, which
    spends ~30 ms freeing pydantic's schemas after a short command has said everything. The
    long commands (lab, watch) leave the normal way, running their finalizers."""
    long = bool(LONG_COMMANDS & set(sys.argv[1:]))
    if not long:
        # A short command (and `run` up to its exec) only builds: importing pydantic and
        # validating trip the cyclic collector ~75 times and it finds nothing to free
        # (~10 ms of check-config's ~160). The exec'd agent starts with it on again.
        gc.disable()
    try:
        code = main()
    except SystemExit as e:  # argparse: --help, --version, a usage error (already printed)
        if not isinstance(e.code, int | None) or long:
            raise
        code = e.code or 0
    if long:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = 128 + 13
    os._exit(code)


def _main(argv: list[str]) -> int:
    as_ucarp = Path(sys.argv[0]).name == "ucarp"
    args = _parse(argv, as_ucarp)
    command = args.command or "run"
    swept: list[tuple[str, str]] = []
    try:
        if command in COMMANDS:
            return COMMANDS[command](args)
        swept = sweep_before_validating(args)
        settings = _run_config(args, as_ucarp, argv)
        for warning in settings.warnings:
            print(f"carp-sidecar: warning: {warning}", file=sys.stderr)
        if getattr(args, "ucarp_daemonize", False):
            settings = daemonize(settings)
        return exec_agent(settings, swept)
    except ConfigError as e:
        for address, ifname in swept:  # done before validating: said even when it fails
            print(f"carp-sidecar: removed stale VIP {address} from {ifname} (left by an "
                  "earlier run)", file=sys.stderr)
        for line in str(e).splitlines():
            print(f"carp-sidecar: configuration error: {line}", file=sys.stderr)
        if command == "run":
            for line in release_restart_record(getattr(args, "env_file", None)):
                print(f"carp-sidecar: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        raise
    except ModuleNotFoundError as e:  # an optional part that is not installed
        extra = EXTRAS.get((e.name or "").split(".")[0] if e.name != "sidecar.lab" else e.name)
        if extra is None:
            raise
        print(f"carp-sidecar: {command} needs {e.name}, which is not installed here: "
              f"pip install 'carp-sidecar[{extra}]'", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"carp-sidecar: {command}: {e}", file=sys.stderr)
        return 1


def _lab(args: argparse.Namespace) -> int:
    from sidecar.lab import run_lab

    picture = args.timeline
    if picture is not None:
        if picture.suffix.lower() not in (".png", ".svg"):
            print(f"carp-sidecar lab: --timeline {picture}: the file must end in .png or .svg",
                  file=sys.stderr)
            return 2
        import matplotlib  # noqa: F401  # before the lab runs: a missing extra fails now

    return int(run_lab(short=args.short, keep=args.keep, picture=picture))


def _import(args: argparse.Namespace) -> int:
    from sidecar.tools import keepalived_import, ucarp_import

    try:
        if keepalived_import.looks_like(args.files):
            result = keepalived_import.translate(args.files[0], args.config_id)
            text = result.toml
            for note in result.notes:  # what the file's comments also say, for the terminal
                print(f"carp-sidecar: import: {note}", file=sys.stderr)
        else:
            text = ucarp_import.translate(args.files)
    except (ucarp_import.ImportError_, keepalived_import.ImportError_) as e:
        print(f"carp-sidecar: import: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.output is None:
        print(text, end="")
    else:
        args.output.write_text(text)
    return 0


def _completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(cliargs.parser(), shell=args.shell))
    return 0


def _maintenance(args: argparse.Namespace) -> int:
    from sidecar.serve.control import send_command

    path = one_agent(_sockets(args), args.command)
    print(send_command(path, args.command + (f" {args.vhid}" if args.vhid else "")))
    return 0


def _reload(args: argparse.Namespace) -> int:
    from sidecar.serve.control import send_command

    if explicit_configuration(getattr(args, "env_file", None), os.environ):
        _settings(args)  # a file that does not validate: its errors, not a refused reload
    reply = send_command(one_agent(_sockets(args), "reload"), "reload", timeout=120)
    print(reply.replace("; ", "\n  ").replace("reloaded: ", "reloaded:\n  "))
    return 0


def _restart(args: argparse.Namespace) -> int:
    from sidecar.serve.control import send_command
    from sidecar.tools import restartcli

    if args.within is not None and not args.on_stop:
        print("carp-sidecar: restart: --within goes with --on-stop", file=sys.stderr)
        return EXIT_CONFIG
    path = one_agent(_sockets(args), "restart")
    if args.on_stop or args.cancel:
        print(restartcli.on_stop(path, send_command, args.within, args.cancel))
        return 0
    return restartcli.in_place(path, send_command, lambda line: print(line, flush=True))


def _repair_counter(args: argparse.Namespace) -> int:
    import time

    from sidecar.runtime.maintenance import MaintenanceStore, StateError, repair_counter

    config = _settings(args).runtime()
    if config.state_dir is None:
        print("carp-sidecar: repair-counter: CARP_STATE_DIR is off: no mark to repair",
              file=sys.stderr)
        return EXIT_CONFIG
    store = MaintenanceStore(config.state_dir)
    chosen = [s for s in config.instances if s.strict and args.vhid in (None, s.vhid)]
    if not chosen:
        print("carp-sidecar: repair-counter: no strict-mode instance" +
              (f" with vhid {args.vhid}" if args.vhid is not None else ""), file=sys.stderr)
        return EXIT_CONFIG
    failed = False
    for s in chosen:
        try:
            print(repair_counter(store, s.name, time.time()))
        except StateError as e:
            failed = failed or args.vhid is not None  # all: only the unreadable ones matter
            print(f"carp-sidecar: repair-counter: {e}", file=sys.stderr)
    return 1 if failed else 0


def _healthcheck(args: argparse.Namespace) -> int:
    from sidecar.net.httpclient import fetch

    url = args.url or _endpoint(_settings(args), "/healthz")
    return 0 if fetch(url, timeout=3).status == 200 else 1


def _check_config(args: argparse.Namespace) -> int:
    from sidecar.config.settings import load
    from sidecar.tools.checkconfig import report

    offline = args.offline
    lines, problems = report(load(dict(os.environ), getattr(args, "env_file", None),
                                  offline=offline), offline)
    print("\n".join(lines))
    for problem in problems:
        print(f"carp-sidecar: host check: {problem}", file=sys.stderr)
    return EXIT_CONFIG if problems else 0


# modules only some commands need -> the extra that installs them (pyproject.toml)
EXTRAS = {"scapy": "watch", "tomli_w": "import", "sidecar.lab": "lab", "matplotlib": "lab"}


def _watch(args: argparse.Namespace) -> int:
    """Authenticates adverts with the configured password and VIP when the configuration
    loads; without one it still decodes and tells masters from silent nodes."""
    from sidecar.tools.watch import keys_from, run

    interface = args.interface
    keys = {}
    try:
        config = _settings(args)
        keys = keys_from(i for i in config.runtime().instances)
        interface = interface or config.instances[0].interface
    except ConfigError as e:
        first = str(e).splitlines()[0]
        print(f"carp-sidecar: watch: no usable configuration ({first}): auth=unknown",
              file=sys.stderr)
    if not interface:
        raise ConfigError("CARP_INTERFACE: watch needs --interface or CARP_INTERFACE")
    return run(interface, keys, args.count, args.seconds, args.pcap,
               out=lambda line: print(line, flush=True))


def _status(args: argparse.Namespace) -> int:
    from sidecar.tools.statusview import render

    docs = []
    if args.url:
        from sidecar.net.httpclient import fetch

        response = fetch(args.url, timeout=5, max_body=16 * 1024 * 1024)
        if response.status != 200:
            raise OSError(f"{args.url} answered {response.status}")
        docs.append(json.loads(response.body))
    else:
        from sidecar.serve.control import send_command

        for path in _sockets(args):
            docs.append(json.loads(send_command(path, "status")))
    for doc in docs:
        print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


def _sockets(args: argparse.Namespace) -> list[Path]:
    """The local agent(s) the command means (sidecar.tools.findagent: one lookup for all)."""
    return control_sockets(args.socket, getattr(args, "env_file", None), os.environ,
                           lambda: _settings(args).control_socket)


def _endpoint(settings: Config, path: str) -> str:
    if settings.metrics_listen == "off":
        raise ConfigError("CARP_METRICS_LISTEN: the HTTP endpoint is off")
    host, _, port = settings.metrics_listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
    return f"http://{host}:{port}{path}"


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "lab": _lab, "import": _import, "completion": _completion, "watch": _watch,
    "demote": _maintenance, "promote": _maintenance, "reload": _reload, "restart": _restart,
    "status": _status,
    "healthcheck": _healthcheck, "check-config": _check_config, "repair-counter": _repair_counter}


if __name__ == "__main__":  # python -m sidecar.tools.cli: as the console script
    entry()

