"""`make deps` on a server that runs its own Apache, ucarp, keepalived, Prometheus: nothing of the
host's may be stopped, disabled or masked, and what it installs must not start. Run against stand-ins
for apt-get, dpkg and systemctl that record what they were asked."""

from __future__ import annotations

import os
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


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_deps_never_stops_disables_or_masks_host_services(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")  # "root", without being root
    (bin_dir / "id").chmod(0o755)
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    log, policy = tmp_path / "calls.log", tmp_path / "policy-rc.d"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "POLICY": str(policy)}
    r = subprocess.run(["make", "-s", ".stamp-apt", f"POLICY_RC_D={policy}"], cwd=work,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("apt-get") and " install " in c]
    assert installs and "apache2" not in installs[0].split() and "prometheus" in installs[0].split()
    assert "policy says 101" in calls  # services may not start during the install
    assert not policy.exists()  # and the policy is gone afterwards
    # no service is stopped, disabled, masked or otherwise managed, whoever installed it
    assert not [c for c in calls if c.startswith(("systemctl", "service"))], calls


def test_the_makefile_has_no_command_that_stops_a_service() -> None:
    commands = [line for line in (ROOT / "Makefile").read_text().splitlines()
                if line.strip() and not line.lstrip("\t @").startswith("#")]
    for word in ("systemctl", "service $$", "invoke-rc.d", "update-rc.d"):
        assert not [c for c in commands if word in c], word
