"""The package's shape as issue-level rules (docs/architecture.md): small modules, small
classes, functions that fit on a screen. A change that grows past them splits the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 450, 300, 60  # a screen: 60 lines
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _length(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_classes_and_functions_stay_small(path: Path) -> None:
    text, where = path.read_text(), str(path.relative_to(PACKAGE))
    lines = len(text.splitlines())
    assert lines <= MODULE_LINES, f"{where}: {lines} lines"
    for node in ast.walk(ast.parse(text)):
        size = _length(node)
        if isinstance(node, ast.ClassDef):
            assert size <= CLASS_LINES, f"{where}: class {node.name}: {size} lines"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert size <= FUNCTION_LINES, f"{where}: {node.name}(): {size} lines"


def test_the_layers_are_folders() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules outside the layer folders: {flat}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "core", "net", "config", "serve", "runtime", "replica", "tools", "lab"}
