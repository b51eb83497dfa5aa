"""The front of a restart without a move: `carp-sidecar restart`'s command line and its client
(a real control socket), the sweep that keeps a restart's VIPs, the record read once, and
`run`'s release of the VIPs when the new configuration does not validate. Address changes run
in a child in its own network namespace (root), never on the host's interfaces."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.net.held import HeldVips, identity, sweep
from sidecar.runtime import resume
from sidecar.runtime.onstop import resume_from_state_dir
from sidecar.runtime.resume import ResumedInstance, ResumeRecord
from sidecar.serve.control import send_command
from sidecar.tools import cliargs, restartcli
from sidecar.tools.launch import release_restart_record, usable_restart_record

from .test_cliargs import _outcome

ROOT = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000


# ---- the command line ----
@pytest.mark.parametrize("argv", [
    ["restart"], ["restart", "--on-stop"], ["restart", "--on-stop", "--within", "60"],
    ["restart", "--cancel", "--socket", "/run/x.sock"], ["--env-file", "a.env", "restart"],
    ["restart", "--within", "0", "--on-stop"], ["restart", "--within", "86401"],
    ["restart", "--within", "soon"], ["restart", "--on-stop", "--cancel"], ["restart", "-h"],
], ids=lambda a: " ".join(a))
def test_restart_parses_alone_as_with_the_whole_parser(argv: list[str]) -> None:
    assert _outcome(cliargs.named(argv), argv) == _outcome(None, argv)


def test_restart_options_and_their_limits() -> None:
    p = cliargs.parser(only="restart")
    args = p.parse_args(["restart"])
    assert (args.on_stop, args.cancel, args.within) == (False, False, None)
    args = p.parse_args(["restart", "--on-stop", "--within", "1.5"])
    assert (args.on_stop, args.within) == (True, 1.5)
    assert p.parse_args(["restart", "--on-stop", "--within", "86400"]).within == 86400
    for bad, said in (("0", "between 1 and 86400"), ("86401", "between 1 and 86400"),
                      ("soon", "not a number of seconds")):
        result, _out, err = _outcome("restart", ["restart", "--on-stop", "--within", bad])
        assert result == ("exit", 2) and said in err, err
    result, _out, err = _outcome("restart", ["restart", "--on-stop", "--cancel"])
    assert result == ("exit", 2) and "not allowed with" in err


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from sidecar.tools.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          timeout=30)


def test_help_says_what_each_way_does() -> None:
    top = _cli("--help").stdout
    assert "restart" in top and "without moving the VIP" in " ".join(top.split())
    text = " ".join(_cli("restart", "--help").stdout.split())
    for said in ("--on-stop", "--cancel", "--within S", "default 300, 1 to 86400",
                 "same CARP_STATE_DIR", "a plain stop hands them over at once",
                 "leaves the old one running"):
        assert said in text, said


def test_within_without_on_stop_is_refused_before_asking_any_agent(tmp_path: Path) -> None:
    r = _cli("restart", "--within", "60", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 2 and "--within goes with --on-stop" in r.stderr


# ---- the client, against a real control socket ----
class FakeAgent:
    """Answers control-socket commands the way the agent does, one connection each; after
    ``restart`` the socket is gone for ``gap`` s (the exec), then a newer process answers."""

    def __init__(self, path: Path, gap: float = 0.3, restarts: bool = True,
                 reply: str = "ok: restarting in place (pid 7, version 1.0 -> 1.1)",
                 comes_back: str = "MASTER") -> None:
        self.path, self.gap, self.restarts = path, gap, restarts
        self.reply, self.comes_back = reply, comes_back
        self.heard: list[str] = []
        self.status = _status(100.0, "1.0", "MASTER")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._listen()
        self._thread.start()

    def _listen(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen()
        self.server.settimeout(0.05)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                command = conn.makefile().readline().strip()
                self.heard.append(command)
                conn.sendall(self._answer(command).encode() + b"\n")
            if command == "restart" and self.restarts:
                self.server.close()
                self.path.unlink()
                time.sleep(self.gap)
                self.status = _status(200.0, "1.1", "INIT")  # the new image, resuming
                time.sleep(0.3)
                self.status = _status(200.0, "1.1", self.comes_back, last={
                    "kind": "in_place", "from_version": "1.0", "seconds": 0.42,
                    "result": "resumed"})
                self._listen()

    def _answer(self, command: str) -> str:
        if command == "status":
            return json.dumps(self.status)
        if command == "restart":
            return self.reply
        return f"ok: {command}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


def _status(started: float, version: str, state: str,
            last: dict[str, object] | None = None) -> dict[str, object]:
    return {"instances": [{"interface": "eth0", "vhid": 1, "state": state}],
            "agent": {"version": version, "started": started, "pid": 7, "restarts": 0,
                      "restart_on_stop_until": None, "last_restart": last}}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(tmp_path / "agent.sock")
    yield fake
    fake.close()


def test_restart_waits_for_the_new_process_and_says_what_came_of_it(agent: FakeAgent) -> None:
    lines: list[str] = []
    assert restartcli.in_place(agent.path, send_command, lines.append, wait=10) == 0
    assert lines == ["ok: restarting in place (pid 7, version 1.0 -> 1.1)",
                     "restarted in place in 0.42 s: version 1.0 -> 1.1; eth0 vhid 1 MASTER kept"]
    assert agent.heard[:2] == ["status", "restart"] and agent.heard[-1] == "status"


def test_restart_that_never_comes_back_is_exit_1_with_what_is_known(tmp_path: Path) -> None:
    fake = FakeAgent(tmp_path / "agent.sock", restarts=False)  # answers on, never newer
    try:
        lines: list[str] = []
        assert restartcli.in_place(fake.path, send_command, lines.append, wait=0.5) == 1
        assert "no restarted agent answered within 0.5 s" in lines[-1]
        assert "(pid 7) that was asked still answers" in lines[-1]
    finally:
        fake.close()


def test_a_refused_restart_is_exit_1_at_once(tmp_path: Path) -> None:
    fake = FakeAgent(tmp_path / "agent.sock", reply="error: restart refused: restart in progress")
    try:
        lines: list[str] = []
        asked = time.monotonic()
        assert restartcli.in_place(fake.path, send_command, lines.append, wait=10) == 1
        assert time.monotonic() - asked < 2 and lines == [fake.reply]
        assert fake.heard == ["status", "restart"]  # no waiting for a restart that won't come
    finally:
        fake.close()


def test_a_master_that_came_back_backup_is_exit_1_saying_so(tmp_path: Path) -> None:
    fake = FakeAgent(tmp_path / "agent.sock", comes_back="BACKUP")
    try:
        lines: list[str] = []
        assert restartcli.in_place(fake.path, send_command, lines.append, wait=10) == 1
        assert "eth0 vhid 1 BACKUP (was MASTER)" in lines[-2]
        assert lines[-1].startswith("carp-sidecar: restart: no longer MASTER: eth0 vhid 1 is "
                                    "BACKUP")
    finally:
        fake.close()


def test_on_stop_arms_and_cancels_with_the_agents_verbs(agent: FakeAgent) -> None:
    assert restartcli.on_stop(agent.path, send_command, None, False) == "ok: restart-on-stop 300"
    restartcli.on_stop(agent.path, send_command, 42.5, False)
    restartcli.on_stop(agent.path, send_command, None, True)
    assert agent.heard == ["restart-on-stop 300", "restart-on-stop 42.5", "restart-on-stop off"]


def test_the_outcome_says_a_state_that_changed() -> None:
    before = _status(1.0, "1.0", "MASTER")
    after = _status(2.0, "1.1", "BACKUP")
    assert restartcli.outcome(before, after, 1.234) == (
        "restarted in place in 1.23 s: version 1.0 -> 1.1; eth0 vhid 1 BACKUP (was MASTER)")


# ---- the record read once ----
def _record(until: float, vips: list[tuple[int, str, int]], kind: str = "on_stop",
            **changes: object) -> ResumeRecord:
    me = identity()
    fields: dict[str, object] = dict(
        kind=kind, pid=4242, version="1.0", boot_id=me["boot_id"], netns=me["netns"],
        until=until, restarts={"on_stop/resumed": 2}, started=1.0e9,
        instances=[ResumedInstance("lo", 1, "MASTER", vips, sent_at=time.monotonic())])
    fields.update(changes)
    return ResumeRecord(**fields)  # type: ignore[arg-type]


def test_a_usable_record_is_returned_once(tmp_path: Path) -> None:
    written = _record(time.monotonic() + 30, [(1, "127.0.0.9", 32)])
    resume.write_state_dir(tmp_path, written)
    assert usable_restart_record(tmp_path) == written, "run's early sweep only reads it"
    assert resume_from_state_dir(tmp_path) == written
    assert not (tmp_path / resume.RESUME_FILE).exists(), "used once"
    assert resume_from_state_dir(tmp_path) is None


@pytest.mark.parametrize("why", ["expired", "netns", "kind", "junk"])
def test_an_unusable_record_is_said_counted_and_deleted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, why: str) -> None:
    record = {"expired": _record(time.monotonic() - 1, []),
              "netns": _record(time.monotonic() + 30, [], netns=1),
              "kind": _record(time.monotonic() + 30, [], kind="in_place")}.get(why)
    if record is None:
        (tmp_path / resume.RESUME_FILE).write_text('{"kind": "on_stop", "pid": ')
    else:
        resume.write_state_dir(tmp_path, record)
    assert usable_restart_record(tmp_path) is None
    reasons: list[str] = []
    with caplog.at_level(logging.WARNING, "carp-sidecar"):
        assert resume_from_state_dir(tmp_path, reasons.append) is None
    said = {"expired": "expired", "netns": "another network namespace",
            "kind": "not an on-stop record", "junk": "not a restart record"}[why]
    assert len(reasons) == 1 and said in reasons[0]
    assert said in caplog.text and "starting afresh" in caplog.text
    assert not (tmp_path / resume.RESUME_FILE).exists()


# ---- addresses: in a child, in a network namespace of its own ----
def _in_netns(body: Callable[[], None]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        status = 0
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            body()
        except BaseException:
            traceback.print_exc()
            status = 1
        os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0, "the child failed (its traceback is above)"


def _lo() -> set[str]:
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines()}


def _add(*addresses: str) -> None:
    for a in addresses:
        subprocess.run(["ip", "addr", "add", a, "dev", "lo"], check=True)


def _dead_agents_record(state: Path, *entries: tuple[int, str, int]) -> None:
    held = HeldVips(state)
    for index, address, prefixlen in entries:
        held.adding(index, address, prefixlen)
    held.close()  # still listing them, unlocked: a dead agent's


def test_the_sweep_keeps_a_restarts_vips_and_deletes_the_dead_record(tmp_path: Path) -> None:
    def body() -> None:
        _add("10.9.0.1/32", "10.9.0.2/32", "fd00::1/128")
        _dead_agents_record(tmp_path, (1, "10.9.0.1", 32), (1, "10.9.0.2", 32),
                            (1, "fd00::1", 128))
        kept = frozenset({(1, "10.9.0.1", 32), (1, "fd00:0::1", 128)})  # another spelling
        assert sweep(tmp_path, keep=kept) == [("10.9.0.2", "lo")]
        assert {"10.9.0.1/32", "fd00::1/128"} <= _lo() and "10.9.0.2/32" not in _lo()
        assert not list((tmp_path / "held").glob("*.json")), "the successor writes its own"
        _dead_agents_record(tmp_path, (1, "10.9.0.1", 32))
        assert sweep(tmp_path, keep=frozenset({(1, "10.9.0.1", 31)})) == [("10.9.0.1", "lo")]

    _in_netns(body)


def test_a_run_that_cannot_validate_removes_the_kept_vips(tmp_path: Path) -> None:
    def body() -> None:
        _add("10.9.0.1/32", "10.9.0.3/32")
        resume.write_state_dir(tmp_path, _record(time.monotonic() + 30, [(1, "10.9.0.1", 32)]))
        os.environ["CARP_STATE_DIR"] = str(tmp_path)
        lines = release_restart_record(None)
        assert "removed VIP 10.9.0.1/32 kept for this restart (pid 4242, version 1.0)" in lines[0]
        assert "deleted the restart record" in lines[-1]
        assert "10.9.0.1/32" not in _lo() and "10.9.0.3/32" in _lo(), "only the record's"
        assert not (tmp_path / resume.RESUME_FILE).exists()
        assert release_restart_record(None) == [], "nothing left to do"
        resume.write_state_dir(tmp_path, _record(time.monotonic() - 1, [(1, "10.9.0.3", 32)]))
        assert release_restart_record(None) == [] and "10.9.0.3/32" in _lo(), "expired: the " \
            "agent that reads it says so; the kernel's lifetime ends the VIP"

    _in_netns(body)
