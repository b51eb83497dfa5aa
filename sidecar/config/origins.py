"""Where each value check-config prints came from (the environment, the env file, the TOML
file's table, a default), and the env file's likely mistakes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.config.settings import Config


# ucarp.conf names that only make sense with their prefix: UPSCRIPT=... is ignored
UCARP_BARE = ("INTERFACE", "IF_ALIAS", "SRCIP", "VHID", "ADVBASE", "ADVSKEW", "PASS", "ADDR",
              "MASK", "UPSCRIPT", "DOWNSCRIPT", "XPARAM", "PREEMPT", "NEUTRAL", "DEADRATIO")


def bare_names(in_file: Mapping[str, str]) -> list[str]:
    return [f"{name}={in_file[name]}: looks like ucarp's UCARP_{name} without its prefix; it is "
            f"not a setting (did you mean UCARP_{name}?)" for name in UCARP_BARE
            if in_file.get(name) and f"UCARP_{name}" not in in_file
            and f"CARP_{name}" not in in_file]


def env_origins(config: Config, environ: Mapping[str, str], in_file: Mapping[str, str],
                 env_file: Path | None) -> dict[str, dict[str, str]]:
    def origin(var: str) -> str:
        names = (var, "U" + var) if var.startswith("CARP_") else (var,)
        if any(environ.get(n) for n in names):
            return "environment"
        if any(in_file.get(n) for n in names):
            return f"env file {env_file}"
        return "default"

    return {title: {var: origin(var) for var in values} for title, values in config.redacted()}


def file_origins(config: Config, where: str, env: Mapping[str, Any],
                  top: Mapping[str, Any], tables: list[dict[str, Any]]
                  ) -> dict[str, dict[str, str]]:
    numbers = {f"instance {i.name}": n for n, i in enumerate(config.instances, 1)}

    def origin(var: str, title: str, table: set[str]) -> str:
        if title.startswith("health "):
            return f"{where} [{title.replace(' ', '.')}]"
        if var in table:
            return f"{where} [[vhid]] #{numbers[title]}"
        if var in env:
            return "environment"
        if var in top:
            return f"{where} (top level)"
        return "default"

    out = {}
    for title, values in config.redacted():
        number = numbers.get(title)
        table = {f"CARP_{k.upper()}" for k in tables[number - 1]} if number else set()
        out[title] = {var: origin(var, title, table) for var in values}
    return out
