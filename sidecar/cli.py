"""`carp-sidecar [run|check-config|status|demote|promote|lab]` — the console entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config import Config, ConfigError, load

EXIT_CONFIG = 2


def package_version() -> str:
    try:
        return version("carp-sidecar")
    except PackageNotFoundError:
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carp-sidecar",
        description="CARP (ucarp-compatible) virtual IP failover agent. Configured by CARP_* "
        "(or ucarp's UCARP_*) environment variables; see README.md.",
    )
    p.add_argument("--version", action="version", version=f"carp-sidecar {package_version()}")
    p.add_argument("--env-file", type=Path, help="read KEY=VALUE lines (e.g. /etc/ucarp/ucarp.conf) "
                   "before the environment; the environment wins. CARP_CONFIG names a TOML file "
                   "of many instances instead")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run", help="run the agent (default)")
    sub.add_parser("check-config", help="validate and print the effective configuration")
    st = sub.add_parser("status", help="print /status of a running agent")
    st.add_argument("--url", default=None, help="default: from CARP_METRICS_LISTEN")
    hc = sub.add_parser("healthcheck", help="exit 0 if the local agent answers /healthz "
                        "(the container HEALTHCHECK)")
    hc.add_argument("--url", default=None, help="default: from CARP_METRICS_LISTEN")
    for name, text in (("demote", "drain this node: stop winning elections, hand the VIP over"),
                       ("promote", "end maintenance: take part in elections again")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--socket", type=Path, default=None,
                       help="control socket (default: CARP_CONTROL_SOCKET or the default path)")
        c.add_argument("--vhid", type=int, default=None, help="only this instance (default: all)")
    lab = sub.add_parser("lab", help="two-node failover lab in network namespaces (root)")
    lab.add_argument("--short", action="store_true", help="the quick scenario used by the tests")
    lab.add_argument("--keep", action="store_true", help="leave the lab up until Ctrl-C at the end")
    return p


def _settings(args: argparse.Namespace) -> Config:
    return load(os.environ, args.env_file)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        if command == "lab":
            from .lab import run_lab

            return int(run_lab(short=args.short, keep=args.keep))
        if command in ("demote", "promote"):
            from .control import send_command

            path = args.socket or _socket_path(args)
            print(send_command(path, command + (f" {args.vhid}" if args.vhid else "")))
            return 0
        if command == "status":
            url = args.url or _endpoint(_settings(args), "/status")
            with urllib.request.urlopen(url, timeout=5) as response:
                print(json.dumps(json.load(response), indent=2))
            return 0
        if command == "healthcheck":
            url = args.url or _endpoint(_settings(args), "/healthz")
            with urllib.request.urlopen(url, timeout=3) as response:
                return 0 if response.status == 200 else 1
        settings = _settings(args)
        if command == "check-config":
            for title, values in settings.redacted():
                print(f"# {title}")
                for key, value in values.items():
                    print(f"{key}={value}")
            return 0
        return _exec_agent(settings)
    except ConfigError as e:
        print(f"carp-sidecar: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"carp-sidecar: {command}: {e}", file=sys.stderr)
        return 1


def _exec_agent(config: Config) -> int:
    """Become the agent: the validated configuration goes through an in-memory file to a fresh
    interpreter in this same process (same PID, same signals), which never loads pydantic."""
    fd = os.memfd_create("carp-sidecar-config", 0)  # inheritable: no MFD_CLOEXEC
    os.write(fd, config.runtime().to_json().encode())
    os.lseek(fd, 0, os.SEEK_SET)
    argv = [sys.executable, "-m", "sidecar.agent", "--config-fd", str(fd), "--version",
            package_version()]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached


def _socket_path(args: argparse.Namespace) -> Path:
    try:
        return _settings(args).control_socket
    except ConfigError:
        raise OSError("no control socket: set CARP_CONTROL_SOCKET (or the agent's CARP_* "
                      "variables or CARP_CONFIG), or pass --socket") from None


def _endpoint(settings: Config, path: str) -> str:
    if settings.metrics_listen == "off":
        raise ConfigError("CARP_METRICS_LISTEN: the HTTP endpoint is off")
    host, _, port = settings.metrics_listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
    return f"http://{host}:{port}{path}"


if __name__ == "__main__":
    sys.exit(main())
