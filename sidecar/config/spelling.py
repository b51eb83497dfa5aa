"""Configuration errors in the user's own words: each names the variable as it was given
(``UCARP_MASK`` if the file says UCARP_MASK, ``--vhid`` on ucarp's command line, the key in a
TOML file) with the value it had, never a secret's; and values that came through a parser that
is not the shell's (``docker run --env-file``) with the shell's quotes, comment or ``${...}``
still in them."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

# The hint for a value that still holds what a shell would have removed: the agent's own
# reader (--env-file, CARP_ENV_FILE) reads a ucarp.conf as the shell does.
MOUNT_HINT = ("mount the file and let the agent read it as the shell does: -v /etc/ucarp/"
              "ucarp.conf:/etc/carp-sidecar/ucarp.conf:ro -e CARP_ENV_FILE=/etc/carp-sidecar/"
              "ucarp.conf (or --env-file FILE)")
PASS_HINT = ("; a password that really holds these characters goes in CARP_PASS_FILE (read "
             "raw, like ucarp's --passfile)")
# Split like a shell command line: quotes, '#' and ${...} may be meant, so only a warning
SHELL_WORDS = ("CARP_HEALTH_CMD",)
_COMMENT = re.compile(r"\s#")
_UNEXPANDED = re.compile(r"\$\{[^}]*\}")
_LEADING = re.compile(r"^(U?CARP_[A-Z0-9_]+): ")
_MENTION = re.compile(r"(?<![A-Za-z0-9_])U?CARP_[A-Z0-9_]+")


def shell_leftovers(environ: Mapping[str, str], names: Iterable[str], secrets: set[str]
                    ) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the settings in ``environ`` whose value still has the shell's
    syntax in it. A settings value never starts and ends with quotes, never has an unexpanded
    ``${...}``, and a ``#`` after a space is a shell comment the shell would have cut off: had
    the peers' ucarp read the same line through its shell, the password (or address,
    interface...) would differ, the adverts fail to authenticate and both nodes be master. So
    these are refused, not warned about; only a health command, which is itself split like a
    shell line, may hold them on purpose."""
    errors: list[str] = []
    warnings: list[str] = []
    for name in sorted(set(names) & set(environ)):
        value = environ[name]
        problem = leftover(value)
        if not problem:
            continue
        canonical = name.removeprefix("U")
        secret = canonical in secrets
        shown = name if secret else f"{name}={value!r}"  # as received, quotes and all
        line = (f"{shown}: {problem}, which a shell would have removed: `docker run --env-file` "
                f"passes a ucarp.conf line unparsed; {MOUNT_HINT}" + (PASS_HINT if secret else ""))
        (warnings if canonical in SHELL_WORDS else errors).append(line)
    return errors, warnings


def leftover(value: str) -> str:
    """What of the shell's syntax ``value`` still holds ("" if nothing)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        kind = "double" if value[0] == '"' else "single"
        return f"the value is in {kind} quotes"
    if _COMMENT.search(value):
        return "the value has a ' #' comment in it"
    if _UNEXPANDED.search(value):
        return "the value has an unexpanded ${...} in it"
    return ""


def environ_names(environ: Mapping[str, str], in_file: Mapping[str, str],
                  spellings: Iterable[tuple[str, ...]], options: Mapping[str, str],
                  option_names: Mapping[str, str]) -> dict[str, str]:
    """CARP_X -> the name its value came from: the ucarp option (``--vhid``), else the
    variable as spelled in the environment, else in the env file, in the order the sources
    are read (the command line, then the environment, then the file; CARP_X before UCARP_X)."""
    out = {}
    for names in spellings:
        carp = names[0]
        if options.get(carp):
            out[carp] = f"--{option_names[carp]}"
            continue
        for source in (environ, in_file):
            found = next((n for n in names if source.get(n)), None)
            if found:
                out[carp] = found
                break
    return out


def as_given(line: str, names: Mapping[str, str], values: Mapping[str, Any],
             secrets: set[str], key: str = "") -> str:
    """``line`` ("CARP_X: why") with CARP_X as the user named it, and every other variable
    it mentions; the value it had at the end, as written (``(UCARP_MASK=255.255.0.255)``,
    ``(--vhid 0)``, ``(mask = "...")``), unless it is a secret or the reason already shows it.
    ``key``: the line is about a TOML file's key, named so."""
    match = _LEADING.match(line)
    head, rest = (match.group(1).removeprefix("U"), line[match.end():]) if match else ("", line)
    rest = renamed(rest, names)
    if not head:
        return rest
    name = key or names.get(head, head)
    value = values.get(head)
    if value in (None, "", [], ()) or head in secrets or _shows(rest, _plain(value)):
        return f"{name}: {rest}"
    given = (f"{key} = {_toml(value)}" if key else f"{name} {shlex.quote(_plain(value))}"
             if name.startswith("--") else f"{name}={shlex.quote(_plain(value))}")
    return f"{name}: {rest} ({given})"


def _shows(text: str, value: str) -> bool:
    """The reason already shows the value: quoted, or as its subject ("0.0.0.0 is not...");
    not a mere substring ("a" of "should be a valid integer", 1 of "at most 10")."""
    return f"'{value}'" in text or text.startswith(f"{value} ")


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")  # user:password@ in a URL (CARP_HEALTH_URL)


def _plain(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return _USERINFO.sub("***@", text)


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list)) else str(value)


def renamed(text: str, names: Mapping[str, str]) -> str:
    """``text`` with every CARP_X it mentions named as the user gave it (``names``)."""
    return _MENTION.sub(lambda m: names.get(m.group().removeprefix("U"), m.group()), text)
