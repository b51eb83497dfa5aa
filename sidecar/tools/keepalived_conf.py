"""A reader of keepalived.conf's syntax (keepalived 2.2), enough to translate its VRRP part:
words and ``{ }`` blocks, ``#`` and ``!`` comments to the end of a line, double-quoted strings
(one word), ``include`` with shell globs relative to the including file's directory, and
keepalived's ``@ID`` / ``@^ID`` conditional lines (kept only for the ``-i ID`` given).

The result is a tree of :class:`Node`: a statement's words, where it was, and its block.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAX_INCLUDE_DEPTH = 8  # keepalived's own limit is similar; a loop must end
BRACES = "{}"


class ConfError(Exception):
    """The file cannot be read or its blocks do not close."""


@dataclass
class Node:
    words: list[str]
    where: str  # file:line
    block: list[Node] | None = None

    @property
    def name(self) -> str:
        return self.words[0]

    @property
    def args(self) -> list[str]:
        return self.words[1:]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def children(self) -> list[Node]:
        return self.block or []


@dataclass
class Conf:
    nodes: list[Node]
    notes: list[str] = field(default_factory=list)  # conditional lines left out


def read(path: Path, config_id: str | None = None) -> Conf:
    notes: list[str] = []
    tokens = list(_tokens(path, config_id, notes, 0))
    return Conf(_tree(tokens, str(path)), notes)


def words_of(line: str) -> list[str]:
    """A line's words: a ``"quoted string"`` is one (keepalived's rule), a brace is one, a
    ``#`` or ``!`` outside quotes ends the line."""
    out: list[str] = []
    word, quoted, i = "", False, 0
    while i < len(line):
        c = line[i]
        if quoted:
            if c == '"':
                quoted = False
                out.append(word)
                word = ""
            else:
                word += c
        elif c == '"':
            if word:
                out.append(word)
            word, quoted = "", True
        elif c in "#!":
            word = word[:-1] if word.endswith("\\") else word  # keepalived drops it too
            break
        elif c.isspace() or c in BRACES:
            if word:
                out.append(word)
            word = ""
            if c in BRACES:
                out.append(c)
        else:
            word += c
        i += 1
    if word or quoted:
        out.append(word)
    return out


VIP_FLAGS = {"no_track", "home", "nodad", "-nodad", "noprefixroute", "autojoin", "mngtmpaddr"}


def vip_options(options: list[str]) -> tuple[dict[str, str], list[str]]:
    """A VIP line's options keyword by keyword: flags take no value, the rest one."""
    pairs: dict[str, str] = {}
    flags: list[str] = []
    i = 0
    while i < len(options):
        if options[i] in VIP_FLAGS or i + 1 == len(options):
            flags.append(options[i])
            i += 1
        else:
            pairs[options[i]] = options[i + 1]
            i += 2
    return pairs, flags


Token = tuple[str, str]  # a word (or "\n" at a line's end), and where: file:line


def _tokens(path: Path, config_id: str | None, notes: list[str], depth: int) -> Iterator[Token]:
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfError(f"{path}: includes nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        line = _conditional(raw.strip(), config_id, where, notes)
        words = words_of(line)
        if words and words[0] == "include" and len(words) >= 2:
            for name in _included(path, " ".join(words[1:]), where, notes):
                yield from _tokens(name, config_id, notes, depth + 1)
            continue
        for word in words:
            yield word, where
        yield "\n", where


def _conditional(line: str, config_id: str | None, where: str, notes: list[str]) -> str:
    """keepalived's ``@ID line`` (only with ``-i ID``) and ``@^ID line`` (all but ID)."""
    if not line.startswith("@"):
        return line
    head, rest = [*line.split(None, 1), ""][:2]
    negated = head.startswith("@^")
    wanted = head[2 if negated else 1:]
    if config_id is None:
        notes.append(f"{where}: {line}: a line for keepalived's -i {wanted}: left out (import "
                     "--config-id ID to choose one)")
        return ""
    return rest if (wanted == config_id) != negated else ""


def _included(path: Path, pattern: str, where: str, notes: list[str]) -> list[Path]:
    base = Path(pattern) if Path(pattern).is_absolute() else path.parent / pattern
    found = sorted(Path(p) for p in glob.glob(str(base)))
    if not found:
        notes.append(f"{where}: include {pattern}: matches no file here (import it on the "
                     "host that has it)")
    return found


def _tree(tokens: list[Token], name: str) -> list[Node]:
    root: list[Node] = []
    stack: list[list[Node]] = [root]
    words: list[str] = []
    start = ""
    for word, where in tokens:
        if (word == "\n" or word in BRACES) and words:
            stack[-1].append(Node(words, start))
            words = []
        if word == "{":
            if not stack[-1]:
                raise ConfError(f"{where}: a block with no statement before it")
            node = stack[-1][-1]
            if node.block is not None:  # `x { ... } {`: nothing to open
                raise ConfError(f"{where}: a block with no statement before it")
            node.block = []
            stack.append(node.block)
        elif word == "}":
            if len(stack) == 1:
                raise ConfError(f"{where}: '}}' closes no block")
            stack.pop()
        elif word != "\n":
            if not words:
                start = where
            words.append(word)
    if len(stack) > 1:
        raise ConfError(f"{name}: a block is not closed at the end of the file")
    return root
