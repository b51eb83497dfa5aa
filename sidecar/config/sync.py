"""Replicated paths (``CARP_SYNC_*``): the ``[name=]/abs/dir`` entries of an instance, the
rules across every instance of the agent (no two paths overlap, none holds or is held by
CARP_STATE_DIR: the epochs must not travel with the data) and the sync secret's file.

No pydantic here: the models call it to validate, and the agent's process (sidecar.replica)
may read the secret with :func:`read_sync_secret`, the same rule the start checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config.runconfig import SyncPath
from sidecar.config.values import first_line

NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # part of the rsync module name v<vhid>-<name>
NAME_RULE = "1-32 letters, digits, '_', '.' or '-'"
SECRET_MAX_BYTES = 1024
PATHS, SECRET, STATE = "CARP_SYNC_PATHS", "CARP_SYNC_SECRET_FILE", "CARP_STATE_DIR"


def parse_sync_paths(value: Any) -> tuple[SyncPath, ...]:
    """A comma-separated string (the environment) or a list (TOML) of ``[name=]/abs/dir`` ->
    the paths, an unnamed one named by its 1-based position. ValueError: the first bad entry."""
    if isinstance(value, str):
        entries: list[Any] = [e.strip() for e in value.split(",") if e.strip()]
    elif isinstance(value, (list, tuple)):
        entries = list(value)
    else:
        raise ValueError("must be a list of [name=]/abs/dir")
    out: list[SyncPath] = []
    for position, entry in enumerate(entries, 1):
        one = entry if isinstance(entry, SyncPath) else _entry(entry, position)
        if any(p.name == one.name for p in out):
            raise ValueError(f"the name {one.name!r} is given twice (names match the paths "
                             "across nodes)")
        out.append(one)
    return tuple(out)


def _entry(entry: Any, position: int) -> SyncPath:
    if not isinstance(entry, str):
        raise ValueError(f"{entry!r} is not [name=]/abs/dir")
    entry = entry.strip()
    # a path may hold '=' itself: a name is only what comes before '=' in an entry not
    # starting with '/'
    name, path = ((str(position), entry) if entry.startswith("/") or "=" not in entry
                  else (s.strip() for s in entry.split("=", 1)))
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a path's name ({NAME_RULE})")
    if not path.startswith("/"):
        raise ValueError(f"{path or repr(path)} is not an absolute path")
    return SyncPath(name, Path(path))


def check_dirs(paths: tuple[SyncPath, ...]) -> None:
    """Each one an existing directory on this host (not asked of a file for another host)."""
    for p in paths:
        if not p.path.exists():
            raise ValueError(f"{p.path} does not exist")
        if not p.path.is_dir():
            raise ValueError(f"{p.path} is not a directory")


@dataclass(frozen=True)
class Owned:
    """One instance's paths as the rules across instances see them: ``label`` names it in a
    message about another one."""

    label: str
    paths: tuple[SyncPath, ...]


@dataclass(frozen=True)
class Problem:
    var: str  # the variable at fault, CARP_X
    reason: str
    instance: int | None = None  # its index in the instances given; None: the agent's own


def sync_problems(instances: Sequence[Owned], state_dir: Path | None,
                  secret_file: Path | None, offline: bool = False) -> list[Problem]:
    """What is wrong across the instances of one agent: overlapping paths (within one
    instance or across two), a path and CARP_STATE_DIR inside one another, a path without a
    secret file, a secret file that is not one. ``offline``: paths compared as written (a
    file meant for another host) and the secret file not read."""
    problems: list[Problem] = []
    seen: list[tuple[int, SyncPath, Path]] = []
    state = _canonical(state_dir, offline) if state_dir is not None else None
    for index, owned in enumerate(instances):
        for p in owned.paths:
            real = _canonical(p.path, offline)
            clash = next(((i, q, other) for i, q, other in seen if _related(real, other)), None)
            if clash is not None:
                i, q, other = clash
                whose = "" if i == index else f" of {instances[i].label}"
                problems.append(Problem(PATHS, f"{p.path} {_relation(real, other)} {q.path} "
                                        f"(path {q.name!r}{whose}): replicated directories must "
                                        "be apart", index))
            elif state is not None and _related(real, state):
                problems.append(Problem(PATHS, f"{p.path} {_relation(real, state)} {STATE} "
                                        f"{state_dir}: the agent's state must not be replicated",
                                        index))
            seen.append((index, p, real))
    if seen and secret_file is None:
        problems.append(Problem(SECRET, f"required with {PATHS} (the replication secret, the "
                                "same on every node)"))
    if secret_file is not None and not offline:
        try:
            read_sync_secret(secret_file)
        except ValueError as e:
            problems.append(Problem(SECRET, str(e).removeprefix(f"{SECRET}: ")))
    return problems


def _canonical(path: Path, offline: bool) -> Path:
    """Symlinks resolved (two spellings of one directory overlap), or, offline, the path as
    written with '.', '..' and '//' folded."""
    return Path(os.path.normpath(path) if offline else os.path.realpath(path))


def _related(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def _relation(a: Path, b: Path) -> str:
    return "is the same directory as" if a == b else "is inside" if a.is_relative_to(b) \
        else "contains"


def read_sync_secret(path: Path) -> bytes:
    """The sync secret: the first line of a regular file (a trailing CR/LF stripped), not
    empty, without ':' (rsync's secrets file is ``user:secret``). ValueError names the
    variable and the file, never the secret."""
    data = first_line(path, SECRET, SECRET_MAX_BYTES + 2).rstrip(b"\r")
    if not data:
        raise ValueError(f"{SECRET}: {path} is empty")
    if b":" in data:
        raise ValueError(f"{SECRET}: {path} holds a ':': the secret must be one line without "
                         "':' (rsync's format)")
    if len(data) > SECRET_MAX_BYTES:
        raise ValueError(f"{SECRET}: {path} holds a secret longer than {SECRET_MAX_BYTES} bytes")
    return data
