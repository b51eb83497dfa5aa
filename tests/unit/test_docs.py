"""The documentation site (mkdocs.yml, docs/): the reference pages are the declarations' own
output, every variable, metric, alert and command has its entry, every page is in the
navigation, and the README stays a front page."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import yaml

from sidecar.config.declare import declared
from sidecar.config.runconfig import AGENT_SETTINGS, VHID_INPUTS, Check, Vhid
from sidecar.tools.cliargs import BUILDERS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "gen/reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _prose() -> str:
    """The hand-written pages (not the generated reference)."""
    return "\n".join(p.read_text() for p in DOCS.glob("*.md"))


def _variables() -> set[str]:
    groups = (declared(Vhid, VHID_INPUTS), declared(Check), declared(None, AGENT_SETTINGS))
    return {d.var for group in groups for d in group}


def test_committed_reference_pages_are_the_generators_output() -> None:
    gen = _generator()
    for name, render in gen.PAGES.items():
        assert (DOCS / "reference" / name).read_text() == render(), (
            f"docs/reference/{name} is stale: run `make docs` (or .venv/bin/python "
            "docs/gen/reference.py) and commit it")


def test_every_variable_has_its_reference_entry_and_its_long_form() -> None:
    settings = (DOCS / "reference/settings.md").read_text()
    long_form = (DOCS / "configuration.md").read_text()
    table = set(re.findall(r"`(CARP_[A-Z_]+)`", long_form.split("| variable | meaning |", 1)[1]
                           .split("\n\n", 1)[0]))
    for var in _variables():
        assert f"| `{var}` |" in settings, var
        # CARP_HEALTH names config-file checks; it has no environment form to explain there
        assert var in table or var == "CARP_HEALTH", f"{var}: no row in configuration.md's table"
    assert table - _variables() <= {"CARP_CONFIG"}, "configuration.md names unknown variables"


def test_every_metric_has_its_reference_entry_and_is_explained() -> None:
    source = "".join((ROOT / "sidecar/serve" / f).read_text()
                     for f in ("metrics.py", "syncmetrics.py"))
    declared_names = set(re.findall(r'(?:Gauge|Counter|Histogram|Info)\(\s*"(carp_\w+)"', source))
    families = {name for name, *_ in _generator().metric_families()}
    reference = (DOCS / "reference/metrics.md").read_text()
    prose = _prose()
    assert len(families) >= len(declared_names) > 30
    for name in families:
        assert f"| `{name}` |" in reference, name
        assert name in prose, f"{name}: explained on no page of docs/"
    for base in declared_names:  # a family declared outside the classes the generator builds
        assert any(f.startswith(base) for f in families), f"{base}: missing from the generator"


def test_every_alert_has_its_reference_entry_row_and_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "grafana/alerts/carp.rules.yml").read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    reference = (DOCS / "reference/alerts.md").read_text()
    runbook = (DOCS / "runbook.md").read_text()
    assert len(alerts) > 10
    for name in alerts:
        assert f"\n## {name}\n" in reference, name
        assert f"\n## {name}\n" in runbook, f"{name}: no runbook section (its runbook_url anchor)"


def test_every_command_has_its_reference_entry() -> None:
    reference = (DOCS / "reference/commands.md").read_text()
    operations = (DOCS / "operations.md").read_text()
    for name in BUILDERS:
        assert f"\n## {name}\n" in reference, name
        assert f"carp-sidecar {name}" in operations or name in ("demote", "promote"), name
    assert "carp-sidecar demote | promote" in operations


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages


def test_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, len(readme.encode())
    for needed in ("make demo", "make test", "docs/lab-timeline.png", "## The two commands"):
        assert needed in readme, needed
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
    # the conf is read by the agent (after the image name), never by Docker's own --env-file,
    # which keeps quotes and comments in the values
    for line in re.findall(r"^docker run .*$", readme, re.M):
        assert "--env-file" not in line.split("carp-sidecar ", 1)[0], line
