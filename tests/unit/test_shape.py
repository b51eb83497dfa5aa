"""The package's shape as issue-level rules (docs/architecture.md): small modules, small
classes, functions that fit on a screen. A change that grows past them splits the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 450, 300, 60  # a screen: 60 lines
SOURCES = sorted(PACKAGE.rglob("*.py"))
# Still over the limits (issue 20 is open on them): each may shrink, none may grow.
NOT_YET = {"config/settings.py": 962, "class Machine": 317, "class Session": 334,
           "run_lab()": 67, "__init__() in serve/metrics.py": 91, "_parser()": 62}


def _fits(name: str, size: int, limit: int) -> bool:
    return size <= max(limit, NOT_YET.get(name, 0))


def _length(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_classes_and_functions_stay_small(path: Path) -> None:
    text, where = path.read_text(), str(path.relative_to(PACKAGE))
    lines = len(text.splitlines())
    assert _fits(where, lines, MODULE_LINES), f"{where}: {lines} lines"
    for node in ast.walk(ast.parse(text)):
        size = _length(node)
        if isinstance(node, ast.ClassDef):
            assert _fits(f"class {node.name}", size, CLASS_LINES), f"class {node.name}: {size}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{node.name}()"
            if node.name == "__init__":
                name += f" in {where}"
            assert _fits(name, size, FUNCTION_LINES), f"{where}: {name}: {size} lines"


def test_the_layers_are_folders() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules outside the layer folders: {flat}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "core", "net", "config", "serve", "runtime", "tools", "lab"}
