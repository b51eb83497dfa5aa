"""carp-sidecar's command line: one builder per command, and a parser of only the command a
command line names, since building all thirteen is ~2 ms of every start (run, check-config)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import __version__
from sidecar.config import ucarp_options
from sidecar.config.runconfig import variables_help

Builder = Callable[[Any, argparse.ArgumentParser], None]  # (subparsers, the --env-file parent)
ENV_FILE = "--env-file"  # the one option before the command: parser() adds it, named() skips it
SOCKET_HELP = ("control socket (default: CARP_CONTROL_SOCKET, /run/carp-sidecar/NAME.sock for "
               "--env-file NAME.env, the configured one, or the one in /run/carp-sidecar)")


def _variables_help() -> str:
    lines = ["variables (each CARP_X is also read as ucarp's UCARP_X; CARP_X wins):"]
    lines += [f"  CARP_{name:<17} {text}" for name, text in variables_help().items()]
    lines.append("  CARP_CONFIG            a TOML file of many instances (keys: the names above "
                 "in lower case, without CARP_)")
    return "\n".join(lines)


def _run(sub: Any, env_file: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[env_file], help="run the agent (default)")
    ucarp_options.add_to(run)


def _check_config(sub: Any, env_file: argparse.ArgumentParser) -> None:
    cc = sub.add_parser("check-config", parents=[env_file],
                        help="validate and print the effective configuration, where each value "
                        "came from, the failover figures, and whether this host can run it",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=_variables_help())
    cc.add_argument("--offline", action="store_true",
                    help="a file meant for another host: skip what only that host has "
                    "(interface, addresses, capabilities, scripts, the password file)")


def _status(sub: Any, env_file: argparse.ArgumentParser) -> None:
    st = sub.add_parser("status", parents=[env_file],
                        help="the local agent's state, per instance (a table; --json: /status)")
    st.add_argument("--json", action="store_true", help="the agent's /status document")
    st.add_argument("--url", default=None, help="ask this /status URL instead of the control "
                    "socket")
    st.add_argument("--socket", type=Path, default=None, help=SOCKET_HELP.replace(
                    "the one in", "every one in"))


def _healthcheck(sub: Any, env_file: argparse.ArgumentParser) -> None:
    hc = sub.add_parser("healthcheck", parents=[env_file],
                        help="exit 0 if the local agent answers /healthz (the container "
                        "HEALTHCHECK), 1 if not")
    hc.add_argument("--url", default=None, help="default: from CARP_METRICS_LISTEN")


def _maintenance(name: str, text: str) -> Builder:
    def build(sub: Any, env_file: argparse.ArgumentParser) -> None:
        c = sub.add_parser(name, parents=[env_file], help=text)
        c.add_argument("--socket", type=Path, default=None, help=SOCKET_HELP)
        c.add_argument("--vhid", type=int, default=None, help="only this instance (default: all)")
    return build


def _reload(sub: Any, env_file: argparse.ArgumentParser) -> None:
    rl = sub.add_parser("reload", parents=[env_file],
                        help="re-read the configuration and apply the difference live (as SIGHUP)")
    rl.add_argument("--socket", type=Path, default=None, help=SOCKET_HELP)


def _restart(sub: Any, env_file: argparse.ArgumentParser) -> None:
    from sidecar.tools.restartcli import within

    def seconds(text: str) -> float:
        try:
            return within(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    rs = sub.add_parser(
        "restart", parents=[env_file],
        help="replace the running agent by the installed version without moving the VIP: in "
        "place (same PID; the VIP, the adverts' rhythm, maintenance and health carry over)",
        description="Without an option: the agent execs the installed version in its own "
        "process and keeps its VIPs; a configuration the new version refuses leaves the old "
        "one running. With --on-stop: the next stop signal (podman restart, docker compose "
        "up -d on the same CARP_STATE_DIR volume) keeps the VIPs for the next process instead "
        "of handing them over; a plain stop hands them over at once.")
    rs.add_argument("--socket", type=Path, default=None, help=SOCKET_HELP)
    mode = rs.add_mutually_exclusive_group()
    mode.add_argument("--on-stop", action="store_true",
                      help="arm the intent: the next SIGTERM/SIGINT keeps the VIPs for a new "
                      "process on the same CARP_STATE_DIR (if none comes, the backup takes "
                      "over within its master-down interval)")
    mode.add_argument("--cancel", action="store_true",
                      help="disarm --on-stop: the next stop hands over as usual")
    rs.add_argument("--within", type=seconds, default=None, metavar="S",
                    help="with --on-stop: the intent expires after S seconds (default 300, "
                    "1 to 86400)")


def _repair_counter(sub: Any, env_file: argparse.ArgumentParser) -> None:
    rc = sub.add_parser("repair-counter", parents=[env_file],
                        help="strict mode: replace an unreadable counter mark in CARP_STATE_DIR "
                        "by one above any counter sent before (the agent refuses to start "
                        "until then)")
    rc.add_argument("--vhid", type=int, default=None, help="only this instance (default: every "
                    "strict one whose mark is unreadable)")


def _import(sub: Any, env_file: argparse.ArgumentParser) -> None:
    imp = sub.add_parser("import", help="translate ucarp configuration (/etc/network/interfaces "
                         "ucarp-* stanzas, ucarp.conf, a start script) or a keepalived.conf "
                         "(its vrrp_instance blocks) into carp-sidecar's")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                     help="write the result to FILE instead of standard output")
    imp.add_argument("--config-id", default=None, metavar="ID",
                     help="keepalived.conf: keep its @ID lines, as keepalived -i ID does "
                     "(default: leave every conditional line out, each named)")


def _watch(sub: Any, env_file: argparse.ArgumentParser) -> None:
    w = sub.add_parser("watch", parents=[env_file],
                       help="print every CARP advert on the link and who is master (scapy)")
    w.add_argument("--interface", "-i", help="default: CARP_INTERFACE")
    w.add_argument("--count", "-c", type=int, default=0, help="stop after N adverts")
    w.add_argument("--seconds", "-t", type=float, default=None, help="stop after S seconds")
    w.add_argument("--pcap", "-w", type=Path, default=None,
                   help="also write the frames to this pcap file (for a support ticket)")


def _completion(sub: Any, env_file: argparse.ArgumentParser) -> None:
    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"])


def _lab(sub: Any, env_file: argparse.ArgumentParser) -> None:
    lab = sub.add_parser("lab", help="two-node failover lab in network namespaces (root)")
    lab.add_argument("--short", action="store_true", help="the quick scenario used by the tests")
    lab.add_argument("--keep", action="store_true", help="leave the lab up until Ctrl-C at the end")
    lab.add_argument("--timeline", type=Path, default=None, metavar="FILE",
                     help="also draw the run: each node's state and the client's answers over "
                     "time (PNG or SVG, by the extension; needs matplotlib: the [lab] extra)")


BUILDERS: dict[str, Builder] = {  # in the order --help lists them
    "run": _run, "check-config": _check_config, "status": _status, "healthcheck": _healthcheck,
    "demote": _maintenance("demote", "drain this node: stop winning elections, hand the VIP "
                           "over (kept across restarts)"),
    "promote": _maintenance("promote", "end maintenance: take part in elections again"),
    "reload": _reload, "restart": _restart, "repair-counter": _repair_counter,
    "import": _import, "watch": _watch, "completion": _completion, "lab": _lab,
}


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the top level and that one command ("": none),
    which parses an argv that :func:`named` gave ``only`` for exactly as the whole one does."""
    env_file = argparse.ArgumentParser(add_help=False)
    env_file.add_argument(
        ENV_FILE, type=Path, default=argparse.SUPPRESS,
        help="read KEY=VALUE lines as the shell does (e.g. /etc/ucarp/ucarp.conf: comments, "
        "quotes, ${VAR}) before the environment; the environment wins")
    p = argparse.ArgumentParser(
        prog="carp-sidecar", parents=[env_file],
        description="CARP (ucarp-compatible) virtual IP failover agent. Configured by CARP_* "
        "(or ucarp's UCARP_*) environment variables, ucarp's options, or a TOML file; "
        "see docs/ (make docs builds the site).",
    )
    p.add_argument("--version", action="version", version=f"carp-sidecar {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, build in BUILDERS.items():
        if only is None or name == only:
            build(sub, env_file)
    return p


def named(argv: list[str]) -> str | None:
    """The command ``argv`` names, "" when it names none (run, the default), or None when
    parsing it needs every command: a word before the command that is not --env-file (-h,
    --version, a typo or an abbreviation), or a command that does not exist."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == ENV_FILE:
            i += 2
        elif word.startswith(f"{ENV_FILE}="):
            i += 1
        else:
            return word if word in BUILDERS else None
    return ""
