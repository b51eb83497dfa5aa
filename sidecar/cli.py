"""`carp-sidecar [run|check-config|status|demote|promote|lab]` — the console entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config import ConfigError, Settings, load

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
                   "before the environment; the environment wins")
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
                       help="control socket (default: CARP_CONTROL_SOCKET or the per-vhid default)")
    lab = sub.add_parser("lab", help="two-node failover lab in network namespaces (root)")
    lab.add_argument("--short", action="store_true", help="the quick scenario used by the tests")
    lab.add_argument("--keep", action="store_true", help="leave the lab up until Ctrl-C at the end")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    return load(os.environ, args.env_file)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    try:
        if command == "lab":
            from .lab import run_lab

            return int(run_lab(short=args.short, keep=args.keep))
        if command in ("demote", "promote"):
            from .control import send_command, socket_path

            path = args.socket or socket_path(_settings_or_none(args))
            print(send_command(path, command))
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
            for key, value in settings.redacted().items():
                print(f"{key}={value}")
            return 0
        from .agent import run_agent

        return run_agent(settings, version=package_version())
    except ConfigError as e:
        print(f"carp-sidecar: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"carp-sidecar: {command}: {e}", file=sys.stderr)
        return 1


def _settings_or_none(args: argparse.Namespace) -> Settings | None:
    try:
        return _settings(args)
    except ConfigError:
        return None


def _endpoint(settings: Settings, path: str) -> str:
    if settings.metrics_listen == "off":
        raise ConfigError("CARP_METRICS_LISTEN: the HTTP endpoint is off")
    host, _, port = settings.metrics_listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
    return f"http://{host}:{port}{path}"


if __name__ == "__main__":
    sys.exit(main())
