"""Replicated paths' settings: CARP_SYNC_PATHS and CARP_SYNC_MAX_LAG per VHID, the sync secret
file and port for the agent; each mistake one line naming the variable as written (the
environment's spelling, the TOML key); the secret itself never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config.runconfig import RunConfig, SyncPath
from sidecar.config.settings import ConfigError, load
from sidecar.config.sync import parse_sync_paths, read_sync_secret

ROOT = Path(__file__).resolve().parents[2]
BASE = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "geheim", "CARP_ADDR": "10.0.0.1"}
SECRET = "s3cr3t-never-shown"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in ("www", "www/inner", "sessions", "state"):
        (tmp_path / d).mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "secret").write_text(SECRET + "\n")
    return tmp_path


def env(tree: Path, **extra: str) -> dict[str, str]:
    return {**BASE, "CARP_STATE_DIR": str(tree / "state"),
            "CARP_SYNC_SECRET_FILE": str(tree / "secret"), **extra}


def error(environ: dict[str, str], offline: bool = False) -> str:
    with pytest.raises(ConfigError) as e:
        load(environ, offline=offline)
    text = str(e.value)
    assert "\n" not in text, text  # one line
    assert SECRET not in text
    return text


def test_without_paths_nothing_is_required_and_the_defaults_hold() -> None:
    config = load(BASE).runtime()
    assert config.instances[0].sync_paths == () and config.instances[0].sync_max_lag == 5.0
    assert config.sync_secret_file is None and config.sync_port == 8873


def test_env_paths_are_named_by_position_unless_named(tree: Path) -> None:
    config = load(env(tree, CARP_SYNC_PATHS=f" {tree}/www , sessions={tree}/sessions,",
                      CARP_SYNC_MAX_LAG="2.5", CARP_SYNC_PORT="9000")).runtime()
    vhid = config.instances[0]
    assert vhid.sync_paths == (SyncPath("1", tree / "www"), SyncPath("sessions", tree / "sessions"))
    assert vhid.sync_max_lag == 2.5
    assert config.sync_secret_file == tree / "secret" and config.sync_port == 9000
    assert RunConfig.from_json(config.to_json()) == config  # the agent's hand-over keeps them


def test_positions_count_every_entry_and_a_path_may_hold_an_equals_sign() -> None:
    paths = parse_sync_paths(["/a", "docs=/b", "/c=d"])
    assert paths == (SyncPath("1", Path("/a")), SyncPath("docs", Path("/b")),
                     SyncPath("3", Path("/c=d")))


def test_toml_per_vhid_with_the_agents_secret_and_port(tree: Path) -> None:
    (tree / "c.toml").write_text(
        f'interface = "eth0"\npass = "x"\nstate_dir = "{tree}/state"\n'
        f'sync_secret_file = "{tree}/secret"\nsync_port = 8999\n'
        f'[[vhid]]\nvhid = 1\naddr = "10.0.0.1"\nsync_paths = ["{tree}/www/inner", '
        f'"php={tree}/sessions"]\nsync_max_lag = 1\n'
        '[[vhid]]\nvhid = 2\naddr = "10.0.0.2"\n')
    config = load({"CARP_CONFIG": str(tree / "c.toml")}).runtime()
    one, two = config.instances
    assert one.sync_paths == (SyncPath("1", tree / "www/inner"), SyncPath("php", tree / "sessions"))
    assert one.sync_max_lag == 1.0 and two.sync_paths == () and two.sync_max_lag == 5.0
    assert config.sync_port == 8999 and config.sync_secret_file == tree / "secret"


@pytest.mark.parametrize(("paths", "expected"), [
    ("www", "CARP_SYNC_PATHS: www is not an absolute path"),
    ("docs=www", "CARP_SYNC_PATHS: www is not an absolute path"),
    ("{t}/missing", "CARP_SYNC_PATHS: {t}/missing does not exist"),
    ("{t}/file", "CARP_SYNC_PATHS: {t}/file is not a directory"),
    ("{t}/www,{t}/www/", "CARP_SYNC_PATHS: {t}/www is the same directory as {t}/www (path '1')"),
    ("{t}/www,{t}/www/inner", "CARP_SYNC_PATHS: {t}/www/inner is inside {t}/www (path '1')"),
    ("{t}/www/inner,{t}/www", "CARP_SYNC_PATHS: {t}/www contains {t}/www/inner (path '1')"),
    ("{t}/link,{t}/www", "CARP_SYNC_PATHS: {t}/www is the same directory as {t}/link"),
    ("{t}/state", "CARP_SYNC_PATHS: {t}/state is the same directory as CARP_STATE_DIR"),
    ("{t}", "CARP_SYNC_PATHS: {t} contains CARP_STATE_DIR {t}/state"),
    ("a={t}/www,a={t}/sessions", "CARP_SYNC_PATHS: the name 'a' is given twice"),
    ("2={t}/www,{t}/sessions", "CARP_SYNC_PATHS: the name '2' is given twice"),
    ("my docs={t}/www", "CARP_SYNC_PATHS: 'my docs' is not a path's name"),
    ("{n}={t}/www".replace("{n}", "n" * 33), "CARP_SYNC_PATHS: '" + "n" * 33 + "' is not"),
])
def test_a_bad_path_is_one_line_naming_the_variable(tree: Path, paths: str, expected: str) -> None:
    (tree / "link").symlink_to(tree / "www")
    line = error(env(tree, CARP_SYNC_PATHS=paths.format(t=tree)))
    assert line.startswith(expected.format(t=tree)), line


def test_a_path_inside_the_state_dir(tree: Path) -> None:
    line = error(env(tree, CARP_SYNC_PATHS=f"{tree}/www/inner", CARP_STATE_DIR=f"{tree}/www"))
    assert line.startswith(f"CARP_SYNC_PATHS: {tree}/www/inner is inside CARP_STATE_DIR "), line


def test_errors_name_the_spelling_given(tree: Path) -> None:
    line = error({**env(tree), "UCARP_SYNC_PATHS": "relative"})
    assert line.startswith("UCARP_SYNC_PATHS: relative is not an absolute path"), line
    assert error(env(tree, UCARP_SYNC_MAX_LAG="0")).startswith("UCARP_SYNC_MAX_LAG: ")


@pytest.mark.parametrize(("var", "value"), [
    ("CARP_SYNC_MAX_LAG", "0"), ("CARP_SYNC_MAX_LAG", "-1"), ("CARP_SYNC_MAX_LAG", "soon"),
    ("CARP_SYNC_PORT", "0"), ("CARP_SYNC_PORT", "65536"), ("CARP_SYNC_PORT", "rsync"),
    ("CARP_SYNC_SECRET_FILE", "secret"),
])
def test_bad_numbers_and_a_relative_secret_file(tree: Path, var: str, value: str) -> None:
    assert error(env(tree, **{var: value})).startswith(f"{var}: ")


def test_paths_need_a_secret_file(tree: Path) -> None:
    environ = env(tree, CARP_SYNC_PATHS=f"{tree}/www")
    del environ["CARP_SYNC_SECRET_FILE"]
    assert error(environ).startswith("CARP_SYNC_SECRET_FILE: required with CARP_SYNC_PATHS")


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read {f}: No such file or directory"),
    ("", "{f} is empty"),
    ("\nsecond line\n", "{f} is empty"),
    (f"carp:{SECRET}\n", "{f} holds a ':'"),
    ("x" * 1025, "{f} holds a secret longer than 1024 bytes"),
])
def test_a_bad_secret_file_names_the_file_never_the_secret(
        tree: Path, content: str | None, expected: str) -> None:
    f = tree / "bad-secret"
    if content is not None:
        f.write_text(content)
    line = error(env(tree, CARP_SYNC_PATHS=f"{tree}/www", CARP_SYNC_SECRET_FILE=str(f)))
    assert line.startswith("CARP_SYNC_SECRET_FILE: " + expected.format(f=f)), line


def test_a_secret_file_that_is_a_directory_or_unreadable(tree: Path) -> None:
    line = error(env(tree, CARP_SYNC_SECRET_FILE=str(tree / "www")))
    assert line.startswith(f"CARP_SYNC_SECRET_FILE: {tree}/www is not a regular file"), line
    if os.geteuid() != 0:  # root reads it anyway
        (tree / "secret").chmod(0)
        assert "Permission denied" in error(env(tree))


def test_read_sync_secret(tree: Path) -> None:
    (tree / "crlf").write_bytes(b"abc\r\nrest")
    assert read_sync_secret(tree / "secret") == SECRET.encode()
    assert read_sync_secret(tree / "crlf") == b"abc"


TOML = """interface = "eth0"
pass = "x"
state_dir = "{t}/state"
{secret}
[[vhid]]
vhid = 1
addr = "10.0.0.1"
sync_paths = ["{t}/www", "php={t}/sessions"]
[[vhid]]
vhid = 2
addr = "10.0.0.2"
sync_paths = {second}
"""


def toml_error(tree: Path, second: str, secret: str | None = None, **environ: str) -> str:
    secret = f'sync_secret_file = "{tree}/secret"' if secret is None else secret
    (tree / "c.toml").write_text(TOML.format(t=tree, secret=secret, second=second))
    with pytest.raises(ConfigError) as e:
        load({"CARP_CONFIG": str(tree / "c.toml"), **environ})
    assert SECRET not in str(e.value)
    return str(e.value)


def test_overlap_across_vhids_names_the_file_the_table_and_the_other_vhid(tree: Path) -> None:
    line = toml_error(tree, f'["{tree}/www/inner"]')
    assert line == (f"{tree}/c.toml: [[vhid]] #2 (vhid 2): sync_paths: {tree}/www/inner is "
                    f"inside {tree}/www (path '1' of [[vhid]] #1 (vhid 1)): replicated "
                    "directories must be apart")
    line = toml_error(tree, f'["x={tree}/sessions"]')
    assert "is the same directory as" in line and "(path 'php' of [[vhid]] #1 (vhid 1))" in line


def test_toml_errors_name_the_key(tree: Path) -> None:
    line = toml_error(tree, '["bad name=/srv"]')
    assert line.startswith(f"{tree}/c.toml: [[vhid]] #2 (vhid 2): sync_paths: 'bad name' is "
                           "not a path's name"), line
    assert toml_error(tree, "[]", secret="").endswith(
        "sync_secret_file: required with sync_paths (the replication secret, the same on every "
        "node)")
    assert f"sync_paths: {tree}/state is the same directory as state_dir " in toml_error(
        tree, f'["{tree}/state"]')


def test_a_secret_file_from_the_environment_is_named_as_such(tree: Path) -> None:
    (tree / "colon").write_text(f"a:{SECRET}\n")
    line = toml_error(tree, "[]", secret="", CARP_SYNC_SECRET_FILE=str(tree / "colon"))
    assert line.startswith(f"CARP_SYNC_SECRET_FILE: {tree}/colon holds a ':'"), line


def test_offline_looks_at_neither_the_directories_nor_the_secret(tree: Path) -> None:
    config = load(env(tree, CARP_SYNC_PATHS="/srv/elsewhere", CARP_SYNC_SECRET_FILE="/run/x"),
                  offline=True)
    assert config.instances[0].sync_paths == (SyncPath("1", Path("/srv/elsewhere")),)
    # what is wrong as written still is: overlaps are compared as written
    line = error(env(tree, CARP_SYNC_PATHS="/srv/a,/srv/a/../a/b"), offline=True)
    assert line.startswith("CARP_SYNC_PATHS: /srv/a/../a/b is inside /srv/a (path '1')"), line


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    code = "import sys; from sidecar.tools.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=60)


def test_check_config_shows_the_settings_and_the_secrets_path_only(tree: Path) -> None:
    r = cli("check-config", env=env(tree, CARP_SYNC_PATHS=f"{tree}/www,php={tree}/sessions"))
    assert r.returncode == 0, r.stderr
    assert f"CARP_SYNC_PATHS=1={tree}/www,php={tree}/sessions " in r.stdout
    assert "CARP_SYNC_MAX_LAG=5 " in r.stdout and "CARP_SYNC_PORT=8873 " in r.stdout
    assert f"CARP_SYNC_SECRET_FILE={tree}/secret " in r.stdout
    assert SECRET not in r.stdout + r.stderr


def test_a_bad_path_exits_2_with_one_line(tree: Path) -> None:
    r = cli("check-config", env=env(tree, CARP_SYNC_PATHS=f"{tree}/missing"))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"CARP_SYNC_PATHS: {tree}/missing does not exist" in lines[0], lines


def test_the_scripts_see_the_paths_never_the_secret(tree: Path) -> None:
    vhid = load(env(tree, CARP_SYNC_PATHS=f"{tree}/www")).runtime().instances[0]
    script_env = dict(vhid.script_env)
    assert script_env["CARP_SYNC_PATHS"] == f"1={tree}/www"
    assert parse_sync_paths(script_env["CARP_SYNC_PATHS"]) == vhid.sync_paths  # re-readable
    assert SECRET not in repr(script_env)


def test_the_agent_without_paths_loads_neither_the_replica_package_nor_watchfiles() -> None:
    """The agent's modules import replica/ (and watchfiles, rsync's plumbing) only when a
    VHID has a path (runtime/replicas.attach): without one, none of it is in the process."""
    import subprocess
    import sys

    probe = ("import sys, sidecar.runtime.agent, sidecar.runtime.replicas\n"
             "print(sorted(m for m in sys.modules if m.startswith(('sidecar.replica', "
             "'watchfiles', 'sqlite3'))))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
