"""ucarp 1.5.2's command line, with ucarp's meaning, as settings.

``carp-sidecar run`` takes these options (they override the environment), and installed or
symlinked as ``ucarp`` the program takes them alone, so an existing start script or init script
runs unchanged. ``carp-sidecar import`` reads a start script's ucarp line with the same parser.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sidecar.config.declare import declared
from sidecar.config.runconfig import AGENT_SETTINGS, VHID_INPUTS, Vhid


@dataclass(frozen=True)
class Option:
    long: str
    short: str
    setting: str | None  # the CARP_ variable it sets; None: handled by the command line itself
    value: bool  # takes an argument
    help: str


# ucarp's order (its --help); the options come from the settings' declarations
ORDER = ("interface", "srcip", "mcast", "vhid", "pass", "passfile", "preempt", "neutral", "addr",
         "advbase", "advskew", "upscript", "downscript", "deadratio", "debug", "shutdown",
         "daemonize", "ignoreifstate", "nomcast", "facility", "xparam")
DAEMONIZE = Option("daemonize", "B", None, False, "run in background, logging to syslog (ignored "
                   "as a container's PID 1 or its init's child: the runtime supervises the "
                   "foreground process)")


def _options() -> tuple[Option, ...]:
    by_long = {DAEMONIZE.long: DAEMONIZE}
    for d in [*declared(Vhid, VHID_INPUTS), *declared(None, AGENT_SETTINGS)]:
        u = d.setting.ucarp
        if u is not None:
            by_long[u.long] = Option(u.long, u.short, d.var, u.flag is None, u.help)
            if u.flag is not None and u.flag != "true":
                FLAG_VALUES[d.var] = u.flag
    assert set(by_long) == set(ORDER), set(by_long) ^ set(ORDER)
    return tuple(by_long[name] for name in ORDER)


FLAG_VALUES: dict[str, str] = {}  # what a flag sets when not "true" (-D: CARP_LOG_LEVEL=debug)
OPTIONS = _options()


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
