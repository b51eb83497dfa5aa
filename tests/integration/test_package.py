"""Installable like the tools people know: the wheel and sdist build, the wheel installs into a
fresh venv outside the checkout and runs from there (version, check-config, the short lab)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sidecar

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "carp-sidecar"  # build from a copy: no stray state
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_wheel_and_sdist_carry_the_version_the_license_and_no_tests(built: Path) -> None:
    version = sidecar.__version__
    wheel = built / f"carp_sidecar-{version}-py3-none-any.whl"
    sdist = built / f"carp_sidecar-{version}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in built.iterdir())
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(f"carp_sidecar-{version}.dist-info/METADATA").decode()
    assert "License-Expression: ISC" in metadata and f"Version: {version}" in metadata
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert "sidecar/lab/scenario.py" in names and "sidecar/tools/ucarp_import.py" in names
    with tarfile.open(sdist) as t:
        members = t.getnames()
    assert f"carp_sidecar-{version}/LICENSE" in members
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {version} " in changelog  # every release has its entry


def test_wheel_installed_outside_the_checkout_runs(built: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next(built.glob("*.whl"))
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CARP_", "UCARP_", "PYTHON"))}
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "timeout": 300}
    exe = str(venv / "bin/carp-sidecar")
    version = subprocess.run([exe, "--version"], **run)  # type: ignore[call-overload]
    assert version.stdout.strip() == f"carp-sidecar {sidecar.__version__}"
    where = subprocess.run([str(venv / "bin/python"), "-c", "import sidecar; print(sidecar.__file__)"],
                           **run)  # type: ignore[call-overload]
    assert where.stdout.startswith(str(venv)), where.stdout  # not the checkout
    check = subprocess.run([exe, "check-config", "--offline"], **{**run, "env": {  # type: ignore[call-overload]
        **env, "CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "x",
        "CARP_ADDR": "10.0.0.1"}})
    assert check.returncode == 0 and "CARP_VHID=1" in check.stdout, check.stderr
    lab = subprocess.run([exe, "lab", "--short"], **{**run, "timeout": 600})  # type: ignore[call-overload]
    assert lab.returncode == 0, lab.stdout[-3000:] + lab.stderr[-3000:]
    assert str(venv) in (venv / "bin/carp-sidecar").read_text().splitlines()[0]
