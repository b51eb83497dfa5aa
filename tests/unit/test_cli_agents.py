"""Which agent `status`, `reload`, `demote` and `promote` talk to (sidecar.tools.findagent), with
real Unix sockets bound by the test in a temporary run directory, and when `--daemonize` stays
in the foreground (sidecar.tools.launch.supervised_in_foreground) on a fake /proc."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.tools import cli

BASE = "CARP_INTERFACE=eth0\nCARP_VHID=1\nCARP_PASS=geheim\nCARP_ADDR=172.16.0.1/16\n"


class FakeAgent:
    """A control socket that answers every command as the agent would, and keeps them."""

    def __init__(self, path: Path) -> None:
        self.path, self.heard = path, list[str]()
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile().readline().strip()
                if not line:  # a liveness probe (connect, close), as the commands make
                    continue
                self.heard.append(line)
                reply = ('{"instances": []}' if line == "status"
                         else f"vhid 1 BACKUP maintenance=on ({self.path.name})")
                conn.sendall(reply.encode() + b"\n")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """/run/carp-sidecar for this test, and an environment without CARP_* or UCARP_*."""
    for key in list(os.environ):
        if key.startswith(("CARP_", "UCARP_")):
            monkeypatch.delenv(key)
    run = tmp_path / "run"
    run.mkdir()
    try:
        from sidecar.tools import findagent
    except ImportError:  # the code before the one lookup (d6edd87): to show these tests fail there
        monkeypatch.setattr(cli, "DEFAULT_RUN_DIR", str(run))
    else:
        monkeypatch.setattr(findagent, "RUN_DIR", run)
    yield run
    while OPEN:
        OPEN.pop().close()


OPEN: list[FakeAgent] = []  # closed after each test


def agent(path: Path) -> FakeAgent:
    OPEN.append(FakeAgent(path))
    return OPEN[-1]


def test_control_socket_variable_alone_finds_the_agent_for_every_command(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: demote, promote and reload needed a whole valid configuration beside
    CARP_CONTROL_SOCKET and said "no control socket" without one; status did not."""
    a = agent(tmp_path / "named.sock")
    monkeypatch.setenv("CARP_CONTROL_SOCKET", str(a.path))
    for command in ("status", "demote", "promote", "reload"):
        assert cli.main([command]) == 0, capsys.readouterr().err
    assert a.heard == ["status", "demote", "promote", "reload"]


def test_env_file_named_like_the_systemd_unit_finds_the_units_socket(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The unit runs `--env-file /etc/carp-sidecar/%i.env` with CARP_CONTROL_SOCKET=
    /run/carp-sidecar/%i.sock: the operator's `--env-file .../vip1.env demote` must reach it,
    not the configuration's default name (eth0-vhid1.sock), which nobody listens on."""
    unit = agent(run_dir / "vip1.sock")
    agent(run_dir / "other.sock")
    env_file = tmp_path / "vip1.env"
    env_file.write_text(BASE)
    for command in ("status", "demote", "promote", "reload"):
        assert cli.main(["--env-file", str(env_file), command]) == 0, capsys.readouterr().err
    assert unit.heard == ["status", "demote", "promote", "reload"]


def test_configuration_names_the_socket_as_the_agent_computes_it(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The container (and any agent configured by CARP_*): the same variables give the same
    default socket, /run/carp-sidecar/<interface>-vhid<vhid>.sock."""
    import sidecar.config.settings as settings

    env_file = tmp_path / "node-a.env"
    env_file.write_text(BASE)
    configured = settings.load({}, env_file).control_socket
    assert configured == Path("/run/carp-sidecar/eth0-vhid1.sock")
    own = agent(tmp_path / "own.sock")
    env_file.write_text(BASE + f"CARP_CONTROL_SOCKET={own.path}\n")
    agent(run_dir / "stray.sock")
    assert cli.main(["--env-file", str(env_file), "demote"]) == 0, capsys.readouterr().err
    assert own.heard == ["demote"]


def test_no_configuration_one_socket_in_the_run_dir_is_the_agent(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A start script's agent, configured on its command line: the operator's shell has
    nothing but the socket it made in /run/carp-sidecar."""
    only = agent(run_dir / "eth0-vhid1.sock")
    (run_dir / "not-a-socket.sock").write_text("")
    for command in ("demote", "promote", "reload", "status"):
        assert cli.main([command]) == 0, capsys.readouterr().err
    assert only.heard == ["demote", "promote", "reload", "status"]


def test_several_agents_status_shows_all_a_change_names_them_and_acts_on_none(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = agent(run_dir / "vip1.sock"), agent(run_dir / "vip2.sock")
    assert cli.main(["status", "--json"]) == 0
    for command in ("demote", "promote", "reload"):
        assert cli.main([command]) == 1
        err = capsys.readouterr().err
        assert "several agents" in err and str(first.path) in err and str(second.path) in err
    assert cli.main(["demote", "--socket", str(second.path)]) == 0
    assert first.heard == ["status"] and second.heard == ["status", "demote"]


def test_order_socket_option_then_variable_then_unit_name_then_configuration(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.tools.findagent import control_sockets

    opt, var, unit = tmp_path / "opt.sock", tmp_path / "var.sock", run_dir / "vip1.sock"
    agent(unit)
    env_file = tmp_path / "vip1.env"
    configured = tmp_path / "configured.sock"
    env = {"CARP_CONTROL_SOCKET": str(var)}
    assert control_sockets(opt, env_file, env, lambda: configured) == [opt]
    assert control_sockets(None, env_file, env, lambda: configured) == [var]
    assert control_sockets(None, env_file, {"UCARP_CONTROL_SOCKET": str(var)},
                           lambda: configured) == [var]
    assert control_sockets(None, env_file, {}, lambda: configured) == [unit]
    assert control_sockets(None, tmp_path / "vip2.env", {}, lambda: configured) == [configured]
    assert control_sockets(None, None, {}, lambda: configured) == [configured]


@pytest.mark.parametrize("how", ["env-file", "CARP_CONFIG"])
def test_reload_with_a_broken_configuration_prints_its_errors(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], how: str) -> None:
    """Before: "no control socket". The errors are the answer, exit 2, and nothing is sent."""
    stray = agent(run_dir / "eth0-vhid1.sock")
    if how == "env-file":
        broken = tmp_path / "vip1.env"
        broken.write_text(BASE.replace("CARP_VHID=1", "CARP_VHID=300"))
        argv = ["--env-file", str(broken), "reload"]
    else:
        broken = tmp_path / "carp.toml"
        broken.write_text('[[instance]]\ninterface = "eth0"\nvhid = 300\n')
        monkeypatch.setenv("CARP_CONFIG", str(broken))
        argv = ["reload"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "no control socket" not in err, err
    assert stray.heard == []


def test_reload_with_a_broken_env_file_in_the_units_layout_still_prints_its_errors(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The unit's agent is found (demote works: draining must not wait for a fixed file), but
    reload, which would re-read that file, says what is wrong with it instead."""
    unit = agent(run_dir / "vip1.sock")
    broken = tmp_path / "vip1.env"
    broken.write_text(BASE.replace("CARP_VHID=1", "CARP_VHID=300"))
    assert cli.main(["--env-file", str(broken), "reload"]) == 2
    assert "CARP_VHID" in capsys.readouterr().err
    assert cli.main(["--env-file", str(broken), "demote"]) == 0
    assert unit.heard == ["demote"]


def test_a_killed_agents_socket_is_skipped_beside_a_live_one(run_dir: Path) -> None:
    """A SIGKILLed agent leaves its socket file: it must not make a change ambiguous."""
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(run_dir / "dead.sock"))
    dead.close()  # the file stays, nothing listens
    live = agent(run_dir / "live.sock")
    assert cli.main(["demote"]) == 0
    assert live.heard == ["demote"]


def test_nothing_found_says_how_to_point_at_the_agent(
        run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demote"]) == 1
    err = capsys.readouterr().err
    assert "no agent found" in err and "--socket" in err and "CARP_CONTROL_SOCKET" in err


# ---- --daemonize: detach unless that ends what supervises us ----
def fake_proc(tmp_path: Path, init: str) -> Path:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "comm").write_text(init + "\n")
    return tmp_path / "proc"


@pytest.mark.parametrize(("init", "pid", "ppid", "foreground"), [
    ("tini", 1, 0, True),               # we are PID 1: the container's main process
    ("carp-sidecar", 1, 0, True),
    ("tini", 7, 1, True),               # tini's (docker run --init's, ...) one child
    ("docker-init", 7, 1, True),
    ("dumb-init", 7, 1, True),
    ("catatonit", 7, 1, True),
    ("podman-init", 7, 1, True),
    ("systemd", 4242, 1, False),        # a host: detach, as ucarp
    ("process_api", 4242, 1, False),    # a sandbox or CI runner's init, /.dockerenv or not
    ("tini", 4242, 4200, False),        # a start script under tini, which waits for us
])
def test_daemonize_stays_in_the_foreground_only_when_detaching_ends_the_container(
        tmp_path: Path, init: str, pid: int, ppid: int, foreground: bool) -> None:
    from sidecar.tools.launch import supervised_in_foreground

    assert supervised_in_foreground(fake_proc(tmp_path, init), pid, ppid) is foreground
