"""ucarp 1.5.2's command line, with ucarp's meaning, as settings.

``carp-sidecar run`` takes these options (they override the environment), and installed or
symlinked as ``ucarp`` the program takes them alone, so an existing start script or init script
runs unchanged. ``carp-sidecar import`` reads a start script's ucarp line with the same parser.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    long: str
    short: str
    setting: str | None  # the CARP_ variable it sets; None: handled by the command line itself
    value: bool  # takes an argument
    help: str


OPTIONS = (
    Option("interface", "i", "CARP_INTERFACE", True, "bind interface <if>"),
    Option("srcip", "s", "CARP_SRCIP", True, "source (real) IP address of that host"),
    Option("mcast", "m", "CARP_MCAST", True, "multicast group IP address (default 224.0.0.18)"),
    Option("vhid", "v", "CARP_VHID", True, "virtual IP identifier (1-255)"),
    Option("pass", "p", "CARP_PASS", True, "password"),
    Option("passfile", "o", "CARP_PASS_FILE", True, "read password from file"),
    Option("preempt", "P", "CARP_PREEMPT", False, "becomes a master as soon as possible"),
    Option("neutral", "n", "CARP_NEUTRAL", False, "don't run downscript (nor remove the VIP) "
           "at start if backup"),
    Option("addr", "a", "CARP_ADDR", True, "virtual shared IP address"),
    Option("advbase", "b", "CARP_ADVBASE", True, "advertisement frequency"),
    Option("advskew", "k", "CARP_ADVSKEW", True, "advertisement skew (0-255)"),
    Option("upscript", "u", "CARP_UPSCRIPT", True, "run <file> to become a master"),
    Option("downscript", "d", "CARP_DOWNSCRIPT", True, "run <file> to become a backup"),
    Option("deadratio", "r", "CARP_DEADRATIO", True, "ratio to consider a host as dead"),
    Option("debug", "D", "CARP_LOG_LEVEL", False, "enable debug output (CARP_LOG_LEVEL=debug)"),
    Option("shutdown", "z", "CARP_SHUTDOWN", False, "call shutdown script at exit (always done)"),
    Option("daemonize", "B", None, False, "run in background, logging to syslog (ignored in a "
           "container: the runtime supervises the foreground process)"),
    Option("ignoreifstate", "S", "CARP_IGNOREIFSTATE", False,
           "ignore interface state (down, no carrier)"),
    Option("nomcast", "M", "CARP_NOMCAST", False,
           "use broadcast (instead of multicast) advertisements"),
    Option("facility", "f", "CARP_SYSLOG", True, "also log to syslog with this facility "
           "(ucarp's default is daemon; here syslog is off unless asked)"),
    Option("xparam", "x", "CARP_XPARAM", True, "extra parameter to send to up/down scripts"),
)
FLAG_VALUES = {"CARP_LOG_LEVEL": "debug"}  # what a flag sets; others set "true"


def add_to(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "ucarp options", "ucarp's own options, with ucarp's meaning; they override the "
        "environment (CARP_*/UCARP_*) and the env file")
    for o in OPTIONS:
        if o.value:
            group.add_argument(f"--{o.long}", f"-{o.short}", dest=f"ucarp_{o.long}",
                               metavar=f"<{o.long}>", help=o.help)
        else:
            group.add_argument(f"--{o.long}", f"-{o.short}", dest=f"ucarp_{o.long}",
                               action="store_true", help=o.help)


def settings(args: argparse.Namespace) -> dict[str, str]:
    """The CARP_ variables the given options set."""
    out: dict[str, str] = {}
    for o in OPTIONS:
        value = getattr(args, f"ucarp_{o.long}", None)
        if o.setting is None or value in (None, False):
            continue
        out[o.setting] = value if o.value else FLAG_VALUES.get(o.setting, "true")
    return out


def parser(prog: str = "ucarp") -> argparse.ArgumentParser:
    """A parser of ucarp's command line alone (the drop-in, and `import` of start scripts)."""
    p = argparse.ArgumentParser(
        prog=prog, description="carp-sidecar behaving as ucarp: the same options, the same "
        "group on the wire, the same script arguments; see `carp-sidecar run --help`")
    add_to(p)
    return p
