"""`carp-sidecar import FILE...`: ucarp configuration in, carp-sidecar configuration out.

Three sources, recognised by their content:
- Debian's ``/etc/network/interfaces`` with ``ucarp-*`` options in ``iface`` stanzas (the
  package's README.Debian; the if-up.d hook runs ``ucarp -i IFACE -s ADDRESS -B -z ...``);
- a ucarp.conf of ``UCARP_*`` shell variables;
- a start or init script with a ucarp command line (variables it sources are expanded).

One instance prints the environment (``CARP_*=...``, usable as ``--env-file``); several print a
TOML file for ``CARP_CONFIG``. What cannot be translated is named in ``#`` lines at the top, and
nothing is guessed silently.
"""

from __future__ import annotations

import io
import re
import shlex
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from sidecar.config import ucarp_options

DEBIAN_SCRIPTS = {"/usr/share/ucarp/vip-up", "/usr/share/ucarp/vip-down"}
FALSE = {"no", "off", "false", "0"}
# Debian stanza option -> setting (README.Debian's table)
STANZA = {"ucarp-vid": "vhid", "ucarp-vip": "addr", "ucarp-password": "pass",
          "ucarp-advskew": "advskew", "ucarp-advbase": "advbase",
          "ucarp-deadratio": "deadratio", "ucarp-xparam": "xparam",
          "ucarp-upscript": "upscript", "ucarp-downscript": "downscript"}
STANZA_FLAGS = {"ucarp-master": "preempt", "ucarp-nomcast": "nomcast"}
SHELL_OPERATORS = {"&", ";", "&&", "||", "|", ">", ">>", "<", "2>", "2>&1"}


class ImportError_(Exception):  # ImportError is Python's own
    """Nothing usable in the files; the message says why."""


@dataclass
class Imported:
    instances: list[dict[str, str]] = field(default_factory=list)  # setting -> value
    notes: list[str] = field(default_factory=list)  # what could not be translated
    info: list[str] = field(default_factory=list)  # translated, but behaves a little differently


def translate(paths: Iterable[Path]) -> str:
    result = Imported()
    conf_vars: dict[str, str] = {}
    texts = []
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ImportError_(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        texts.append((path, text))
        if _kind(text) == "conf":
            values = _shell_values(text)
            ours = {k: v for k, v in values.items() if k.startswith(("UCARP_", "CARP_"))}
            if not ours:
                continue
            conf_vars.update(ours)
            result.notes += [f"{path}: {k}: not a ucarp variable; left out"
                             for k in values if k not in ours]
    for path, text in texts:
        kind = _kind(text)
        if kind == "interfaces":
            _interfaces(path, text, result)
        elif kind == "script":
            _script(path, text, conf_vars, result)
    if not result.instances and conf_vars:  # a lone ucarp.conf is already an env file
        result.instances.append(_settings_of(conf_vars, Path("ucarp.conf"), result))
    if not result.instances:
        raise ImportError_("no ucarp configuration found (expected ucarp-* options in iface "
                           "stanzas, UCARP_* variables, or a ucarp command line)")
    return _render(result)


def _kind(text: str) -> str:
    """By what the lines do, never by what comments say (a ucarp.conf's comments mention
    ucarp: that does not make it a start script)."""
    code = _code(text)
    if re.search(r"^\s*iface\s+\S+", code, re.M):
        return "interfaces"
    if any(_ucarp_argv(line) is not None for line in code.splitlines()) or \
            re.search(r"\$\{?UCARP\}?\s", code):
        return "script"
    return "conf"


def _code(text: str) -> str:
    """The logical lines without shell comments (a whole-line ``#``, or one after a blank)."""
    lines = []
    for line in _logical_lines(text):
        if line.lstrip().startswith("#"):
            continue
        lines.append(re.sub(r"(^|\s)#.*$", "", line))
    return "\n".join(lines)


# ---- /etc/network/interfaces ----
def _interfaces(path: Path, text: str, out: Imported) -> None:
    stanzas: list[tuple[str, dict[str, str], list[str]]] = []  # name, options, other lines
    for raw in _logical_lines(text):
        words = raw.split()
        if not words:
            continue
        if words[0] == "iface" and len(words) >= 2:
            stanzas.append((words[1], {}, []))
        elif words[0] in ("auto", "allow-hotplug", "source", "mapping") or words[0].startswith(
                "allow-"):
            continue
        elif stanzas:
            key, value = words[0], " ".join(words[1:])
            stanzas[-1][1][key] = value
            stanzas[-1][2].append(key)
    by_name = {name: opts for name, opts, _ in stanzas}
    for name, opts, _ in stanzas:
        if not any(k.startswith("ucarp-") for k in opts):
            continue
        where = f"{path}: iface {name}"
        instance: dict[str, str] = {"interface": name}
        address = opts.get("address", "").split("/")[0]
        if address:
            instance["srcip"] = address
        for key, value in opts.items():
            if key in STANZA:
                instance[STANZA[key]] = value
            elif key in STANZA_FLAGS:
                instance[STANZA_FLAGS[key]] = "false" if value.lower() in FALSE else "true"
            elif key.startswith("ucarp-"):
                out.notes.append(f"{where}: {key} {value}: not a ucarp option Debian's hook "
                                 "passes; ignored")
        missing = [k for k in ("ucarp-vid", "ucarp-vip", "ucarp-password") if k not in opts]
        if missing:
            out.notes.append(f"{where}: no {', '.join(missing)}: Debian's hook does not start "
                             "ucarp for it either; skipped")
            continue
        scripts = {instance.get("upscript"), instance.get("downscript")} - {None}
        if not scripts or scripts <= DEBIAN_SCRIPTS:
            # Debian's vip-up/vip-down run `ifup/ifdown IFACE:ucarp`: the agent adds the VIP
            # itself, with that label and the alias stanza's netmask.
            instance.pop("upscript", None)
            instance.pop("downscript", None)
            alias = f"{name}:ucarp"
            instance["if_alias"] = alias
            alias_opts = by_name.get(alias, {})
            mask = alias_opts.get("netmask") or _prefix(alias_opts.get("address", ""))
            if mask:
                instance["mask"] = mask
            extra = [k for k in alias_opts if k not in ("address", "netmask")]
            if extra:
                out.notes.append(f"{path}: iface {alias}: {', '.join(extra)} not run: carp-sidecar "
                                 "adds the VIP by netlink, not by ifup (use CARP_UPSCRIPT for "
                                 "extra steps)")
        out.instances.append(instance)


def _prefix(address: str) -> str:
    return address.split("/", 1)[1] if "/" in address else ""


# ---- ucarp.conf ----
def _shell_values(text: str) -> dict[str, str]:
    """KEY=VALUE lines as the shell sees them (python-dotenv: comments, quotes, ${VAR});
    lines that are not assignments are skipped quietly, as a script's other lines are."""
    good = "\n".join(b.original.string.rstrip("\n") for b in parse_stream(io.StringIO(text))
                     if not b.error and b.key)
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(good)).items()}


def _settings_of(variables: dict[str, str], path: Path, out: Imported) -> dict[str, str]:
    """UCARP_*/CARP_* variables that are settings, by setting name; the others (UCARP_NETMASK,
    which the tutorial's up script reads) are named in a note, never turned into settings."""
    from sidecar.config.settings import HELP

    settings: dict[str, str] = {}
    for key, value in variables.items():
        if not key.startswith(("UCARP_", "CARP_")):
            continue
        name = key.split("_", 1)[1]
        if name in HELP:
            if key.startswith("CARP_") or name.lower() not in settings:  # CARP_X wins
                settings[name.lower()] = value
        elif f"{path}: {key}" not in " ".join(out.notes):
            out.notes.append(f"{path}: {key}: not a setting; a script that reads it must source "
                             "the conf itself (or add it to the env file)")
    return settings


# ---- start scripts ----
def _script(path: Path, text: str, known: dict[str, str], out: Imported) -> None:
    values = dict(known)
    for line in _logical_lines(text):
        words = line.split()
        if len(words) == 2 and words[0] in (".", "source"):  # the ucarp.conf it sources
            sourced = Path(words[1])
            if sourced.is_file():
                values.update(_shell_values(sourced.read_text(errors="replace")))
            elif not any(k.startswith("UCARP_") for k in values):
                out.notes.append(f"{path}: sources {sourced}, which is not here: pass it to "
                                 "import too")
        m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)\s*$", line)
        if m:
            values[m.group(1)] = string.Template(m.group(2).strip("'\"")).safe_substitute(values)
    found = False
    for line in _logical_lines(text):
        argv = _ucarp_argv(string.Template(line).safe_substitute(values))
        if argv is None:
            continue
        found = True
        args, unknown = ucarp_options.parser().parse_known_args(argv)
        if unknown:
            out.notes.append(f"{path}: ucarp options not understood: {' '.join(unknown)}")
        unresolved = [a for a in argv if "$" in a]
        if unresolved:
            out.notes.append(f"{path}: unresolved shell variables in {' '.join(unresolved)}")
        settings = ucarp_options.settings(args)
        if args.ucarp_daemonize:
            out.info.append(f"{path}: --daemonize: the agent detaches and logs to syslog as "
                             "ucarp does, except as a container's PID 1 or its init's child (foreground)")
        # what ucarp's command line cannot say (UCARP_MASK, UCARP_IF_ALIAS: the scripts read
        # them from the conf) comes from the conf the script sources; the command line wins
        instance = _settings_of({k: v for k, v in values.items() if v}, path, out)
        instance.update({k.removeprefix("CARP_").lower(): v for k, v in settings.items()})
        out.instances.append(instance)
    if not found:
        out.notes.append(f"{path}: no ucarp command line found")


def _ucarp_argv(line: str) -> list[str] | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if Path(word).name == "ucarp" and (i == 0 or words[i - 1] in (
                "exec", "nohup", "then", "do", "else", "&&", "||", ";", "setsid")):
            rest = words[i + 1:]
            end = next((j for j, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
            return rest[:end]
    return None


def _logical_lines(text: str) -> list[str]:
    return _logical_lines_text(text).splitlines()


def _logical_lines_text(text: str) -> str:
    return re.sub(r"\\\n", " ", text)


# ---- output ----
def _render(result: Imported) -> str:
    head = [f"# not translated: {note}" for note in result.notes]
    head += [f"# note: {note}" for note in result.info]
    if len(result.instances) == 1:
        body = [f"CARP_{k.upper()}={_env_value(v)}" for k, v in result.instances[0].items()]
        return "\n".join(["# carp-sidecar environment (use as --env-file)", *head, *body]) + "\n"
    import tomli_w

    tables = [{k: _toml_value(k, v) for k, v in inst.items()} for inst in result.instances]
    return "\n".join(["# carp-sidecar configuration file (CARP_CONFIG=this file)", *head, ""]) \
        + tomli_w.dumps({"vhid": tables})


def _env_value(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./:,@%+=-]*", value) else shlex.quote(value)


def _toml_value(key: str, value: str) -> str | int | bool:
    if key in ("vhid", "advbase", "advskew", "deadratio"):
        try:
            return int(value)
        except ValueError:
            return value  # check-config will name it
    if key in ("preempt", "nomcast", "neutral", "ignoreifstate", "shutdown"):
        return value.lower() not in FALSE
    return value
