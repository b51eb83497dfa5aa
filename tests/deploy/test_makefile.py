"""`make deps` on a server that runs its own Apache, ucarp, keepalived, Prometheus: nothing of the
host's may be stopped, disabled or masked, and what it installs must not start. Run against stand-ins
for apt-get, dpkg and systemctl that record what they were asked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE = {
    # every package is "missing" except apache2 and ucarp, which the host already runs
    "dpkg": """#!/bin/sh
echo "dpkg $*" >> "$LOG"
if [ "$1" = -s ]; then case "$2" in apache2|ucarp) exit 0;; *) exit 1;; esac; fi
""",
    "apt-get": """#!/bin/sh
echo "apt-get $*" >> "$LOG"
case "$*" in *install*)
  if [ -x "$POLICY" ]; then "$POLICY" apache2 start; echo "policy says $?" >> "$LOG";
  else echo "no policy" >> "$LOG"; fi;;
esac
""",
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$LOG"
""",
    "service": """#!/bin/sh
echo "service $*" >> "$LOG"
""",
    "kubectl": "#!/bin/sh\n",
}


def fakes(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")  # "root", without being root
    (bin_dir / "id").chmod(0o755)
    return bin_dir


def repo_copy(tmp_path: Path) -> Path:
    """The Makefile and what its rules depend on, with no stamp: a machine make never ran on."""
    work = tmp_path / "repo"
    (work / "sidecar").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, work / name)
    return work


DEMO_PACKAGES = {"python3-venv", "apache2", "iproute2", "curl", "rsync",  # what `carp-sidecar lab` runs
                 "libapache2-mod-php"}  # the lab's sessions step: PHP sessions, replicated
TEST_ONLY = {"prometheus", "keepalived", "bird2", "frr", "docker-compose", "tshark", "ucarp",
             "prometheus-blackbox-exporter",
             "kubernetes-client"}
TEST_PACKAGES = DEMO_PACKAGES | TEST_ONLY | {"tcpdump", "procps", "net-tools", "nftables", "openssl",
                                             "faketime"}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("stamp", "wanted"), [
    (".stamp-apt", TEST_PACKAGES),  # make deps: the tests' packages too
    (".stamp-apt-demo", DEMO_PACKAGES),  # make demo: only the lab's
])
def test_deps_never_stops_disables_or_masks_host_services(tmp_path: Path, stamp: str,
                                                          wanted: set[str]) -> None:
    bin_dir = fakes(tmp_path)
    work = repo_copy(tmp_path)
    log, policy = tmp_path / "calls.log", tmp_path / "policy-rc.d"
    env = {**outside_make(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "POLICY": str(policy)}
    r = subprocess.run(["make", "-s", stamp, f"POLICY_RC_D={policy}"], cwd=work,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("apt-get") and " install " in c]
    assert installs and "apache2" not in installs[0].split()  # the host has it already
    installed = set(installs[0].split()) - {"apt-get", "-o", "DPkg::Lock::Timeout=300",
                                            "install", "-y", "-qq", "--no-install-recommends"}
    assert wanted - {"apache2", "ucarp", "kubernetes-client"} <= installed <= wanted
    assert "policy says 101" in calls  # services may not start during the install
    assert not policy.exists()  # and the policy is gone afterwards
    # no service is stopped, disabled, masked or otherwise managed, whoever installed it
    assert not [c for c in calls if c.startswith(("systemctl", "service"))], calls


def outside_make() -> dict[str, str]:
    """The environment without an outer make's (CI runs the tests under `make test`: a make
    inside it would print "Entering directory" and take the outer one's flags)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def dry_run(work: Path, target: str) -> list[str]:
    r = subprocess.run(["make", "-n", target], cwd=work, capture_output=True, text=True,
                       timeout=60, env=outside_make())
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def apt_packages(commands: list[str]) -> set[str]:
    """The packages the dry run's apt recipes check for (and install when missing)."""
    found: set[str] = set()
    for line in commands:
        if m := re.search(r"for p in (.*?); do dpkg -s", line):
            found |= set(m.group(1).split())
        if m := re.search(r'missing="\$missing (.*?)"', line):
            found |= set(m.group(1).split())
    return found


def pip_extras(commands: list[str]) -> list[str]:
    return re.findall(r"pip install .*-e '\.\[([\w,]+)\]'", "\n".join(commands))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_demo_installs_only_what_the_lab_runs(tmp_path: Path) -> None:
    """`make demo` runs Apache and two agents: not the tests' Prometheus, keepalived, BIRD, FRR,
    docker-compose, tshark, kubectl and their 540 MB of Python test tools."""
    work = repo_copy(tmp_path)
    commands = dry_run(work, "demo")
    assert apt_packages(commands) == DEMO_PACKAGES
    assert pip_extras(commands) == ["lab"]
    assert commands[-1].split() == [".venv/bin/carp-sidecar", "lab"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_test_after_demo_adds_the_tests_tools_to_the_same_venv(
        tmp_path: Path) -> None:
    work = repo_copy(tmp_path)
    (work / ".venv" / "bin").mkdir(parents=True)
    for made_by_demo in (".stamp-apt-demo", ".venv/.stamp-lab", ".venv/bin/python",
                         ".venv/bin/carp-sidecar"):
        (work / made_by_demo).touch()
    commands = dry_run(work, "test")
    assert apt_packages(commands) == TEST_PACKAGES
    assert pip_extras(commands) == ["test"]  # into the demo's .venv: not a new one
    assert not [c for c in commands if " -m venv " in c]
    for made_by_test in (".stamp-apt", ".venv/.stamp-test"):
        (work / made_by_test).touch()
    assert dry_run(work, "demo") == [".venv/bin/carp-sidecar lab "]  # both ran: nothing to do


def test_the_makefile_has_no_command_that_stops_a_service() -> None:
    commands = [line for line in (ROOT / "Makefile").read_text().splitlines()
                if line.strip() and not line.lstrip("\t @").startswith("#")]
    for word in ("systemctl", "service $$", "invoke-rc.d", "update-rc.d"):
        assert not [c for c in commands if word in c], word
