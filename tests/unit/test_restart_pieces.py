"""The pieces of a restart in place that run without privileges: the record an agent's
instances and checks make, the keeper's loop and protocol (a real fork, a real socketpair),
the pre-flight child, the arming of a restart on stop (tests/integration/test_restart.py
runs the whole thing in network namespaces)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import sidecar
from sidecar.core.machine import SendAdvert, State
from sidecar.core.protocol import BOW_OUT, parse_packet
from sidecar.runtime import keeper, operator, restart, takeover
from sidecar.runtime.health import HealthMonitor
from sidecar.runtime.reload import ReloadRefused, read_raw_config
from sidecar.runtime.resume import SAFETY, ResumeRecord


def _master() -> tuple[Any, list[bytes], asyncio.AbstractEventLoop]:
    """A real instance made MASTER (a lone node), its frames captured instead of sent."""
    from prometheus_client import CollectorRegistry

    from sidecar.config.settings import load
    from sidecar.net.channel import Channel
    from sidecar.net.netlink import Netlink
    from sidecar.runtime.instance import Instance
    from sidecar.serve.metrics import Metrics

    env = {"CARP_INTERFACE": "eth0", "CARP_VHID": "7", "CARP_PASS": "geheim",
           "CARP_ADDR": "172.16.0.1/16", "CARP_METRICS_LISTEN": "off", "CARP_ADVSKEW": "20"}
    loop = asyncio.new_event_loop()
    channel = Channel("eth0", loop)
    frames: list[bytes] = []
    channel.send = frames.append  # type: ignore[method-assign]
    settings = load(env).runtime().instances[0]
    instance = Instance(settings, IPv4Address("172.16.0.250"), channel, Netlink(),
                        Metrics(CollectorRegistry(), "t", process_metrics=False), loop)
    instance._do(instance.session.start(loop.time(), present=True, running=True))
    instance._do(instance.session.timer(loop.time() + 10))
    assert instance.machine.state is State.MASTER
    return instance, frames, loop


def _carp(frame: bytes, instance: Any) -> Any:
    """The advert in a frame, authenticated as the group's backups check it."""
    return parse_packet(frame[14:], instance.expect).advert


def _agent(instance: Any, **kw: Any) -> SimpleNamespace:
    monitor = HealthMonitor([], 1, 1, 2, 2, lambda ok: None, lambda ok, e: None)
    monitor.carry(False, 1234.5)
    base = {"instances": [instance], "monitors": {"web": monitor}, "version": "9.9",
            "restart_counts": {"in_place/resumed": 3}, "started": 1700000000.0,
            "stopping": False, "on_stop_until": None}
    return SimpleNamespace(**{**base, **kw})


def test_the_record_says_what_each_instance_and_check_was() -> None:
    instance, _, loop = _master()
    now = time.monotonic()
    vips = [(5, "172.16.0.1", 16)]
    record = restart.record_for(_agent(instance), {("eth0", 7, False): vips}, now)  # type: ignore[arg-type]
    back = ResumeRecord.from_json(record.to_json())
    assert back == record and back.kind == "in_place" and back.pid == os.getpid()
    [r] = back.instances
    assert (r.interface, r.vhid, r.state, r.vips) == ("eth0", 7, "MASTER", vips)
    assert r.sent_at == instance.session.link.sent_at is not None
    assert r.advert_interval == pytest.approx(1 + 20 / 256)
    assert r.maintenance == {}
    assert r.master_since == instance.reporter.master_since
    assert back.until == pytest.approx(r.sent_at + 3 * r.advert_interval - SAFETY)
    assert back.checks["web"].healthy is False and back.checks["web"].failed_since == 1234.5
    assert back.restarts == {"in_place/resumed": 3} and back.version == "9.9"
    assert back.vips() == set(vips) and back.why_not(now) is None
    instance.set_maintenance("file", 1600000000.0)  # demoted: it bows out
    [r] = restart.record_for(_agent(instance), {}, now).instances  # type: ignore[arg-type]
    assert r.state == "BACKUP" and r.maintenance == {"file": 1600000000.0}
    loop.close()


def test_the_keeper_keeps_the_rhythm_and_counter_and_answers_stop() -> None:
    instance, frames, loop = _master()
    last = instance.last_advert
    kept = restart.kept_for(instance, [])
    assert (kept.key, kept.counter, kept.advbase, kept.advskew) == ("eth0/7", last.counter, 1, 20)
    kept.interval, kept.sent_at = 0.05, time.monotonic()
    frames.clear()
    ours, theirs = socket.socketpair()
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(keeper.serve(theirs, [kept],
                                                                 time.monotonic() + 10)))
    t.start()
    time.sleep(0.33)
    ours.sendall(keeper.STOP)
    reply = json.loads(ours.makefile().readline())
    t.join(2)
    adverts = [_carp(f, instance) for f in frames]
    assert done == [0] and 5 <= len(adverts) <= 8, len(adverts)
    assert [a.counter for a in adverts] == list(range(last.counter + 1,
                                                      last.counter + 1 + len(adverts)))
    assert all((a.advbase, a.advskew, a.vhid) == (1, 20, 7) for a in adverts)
    assert reply == {"eth0/7": {"sent_at": kept.sent_at, "counter": adverts[-1].counter}}
    loop.close()


@pytest.mark.parametrize("end", ["eof", "deadline"])
def test_the_keeper_bows_out_when_its_successor_dies_or_is_late(end: str) -> None:
    instance, frames, loop = _master()
    kept = restart.kept_for(instance, [])
    kept.sent_at = time.monotonic()  # nothing due before the end
    frames.clear()
    ours, theirs = socket.socketpair()
    if end == "eof":
        ours.close()
    began = time.monotonic()
    assert keeper.serve(theirs, [kept], began + 0.2) == 0
    assert (time.monotonic() - began < 0.1) == (end == "eof")
    [bow] = [_carp(f, instance) for f in frames]
    assert (bow.advbase, bow.advskew, bow.counter) == (BOW_OUT, BOW_OUT,
                                                       instance.last_advert.counter + 1)
    loop.close()


def test_a_forked_keeper_answers_stop_and_exits_and_one_whose_successor_died_exits() -> None:
    sent: list[SendAdvert] = []
    kept = keeper.Kept("eth0/1", sent.append, 1, 0, 41, 1.0, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + 5, [])
    assert sock.get_inheritable()  # the exec'd image keeps it
    assert keeper.stop(sock, pid, 2.0) == {"eth0/1": {"sent_at": kept.sent_at, "counter": 41}}
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # waited for by stop()
    sock, pid = keeper.fork([kept], time.monotonic() + 5, [])
    sock.close()  # as when the successor dies
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0


def test_stop_on_a_keeper_that_has_gone_says_none() -> None:
    kept = keeper.Kept("eth0/1", lambda a: None, 1, 0, 41, 1.0, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + 0.05, [])  # its deadline passes
    time.sleep(0.3)
    assert keeper.stop(sock, pid, 1.0) is None


def test_a_resumed_master_advertises_one_interval_after_the_last_or_at_once() -> None:
    assert takeover.next_advert(10.0, 1.0, 10.4) == 11.0
    assert takeover.next_advert(10.0, 1.0, 11.2) is None  # late: at once
    assert takeover.next_advert(None, 1.0, 10.0) is None


def test_a_carried_failing_check_needs_rise_passes_to_be_healthy() -> None:
    changes: list[bool] = []
    monitor = HealthMonitor([], 1, 1, 2, 2, lambda ok: None, lambda ok, e: changes.append(ok))
    monitor.carry(False, 99.0)
    monitor.record(True, 100.0, 100.1)
    assert monitor.healthy is False and changes == []  # one pass is not rise=2
    monitor.record(True, 101.0, 101.1)
    assert monitor.healthy is True and changes == [True]
    passing = HealthMonitor([], 1, 1, 2, 2, lambda ok: None, lambda ok, e: changes.append(ok))
    passing.carry(True, None)
    passing.record(False, 102.0, 102.1)
    assert passing.healthy is True  # one failure is not fall=2: no demotion at the restart


def test_restart_on_stop_is_armed_only_with_a_state_directory_and_in_range(
        tmp_path: Path) -> None:
    agent = SimpleNamespace(config=SimpleNamespace(state_dir=None), on_stop_until=None,
                            stopping=False)
    agent.restart_on_stop = lambda s: restart.arm_on_stop(agent, s)  # type: ignore[arg-type]
    assert operator.on_stop(agent, "60").startswith("error: restart on stop needs "  # type: ignore[arg-type]
                                                    "CARP_STATE_DIR")
    agent.config.state_dir = tmp_path
    for bad in ("0", "86401", "nan", "soon"):
        assert operator.on_stop(agent, bad).startswith("error:"), bad  # type: ignore[arg-type]
    assert agent.on_stop_until is None
    assert operator.on_stop(agent, "").startswith("ok: restart on stop armed")  # type: ignore[arg-type]
    wall, mono = agent.on_stop_until
    assert wall == pytest.approx(time.time() + 300, abs=2)
    assert mono == pytest.approx(time.monotonic() + 300, abs=2)
    assert operator.on_stop(agent, "off").startswith("ok: restart on stop off")  # type: ignore[arg-type]
    assert agent.on_stop_until is None


def test_the_pre_flight_child_answers_the_new_json_unread_and_its_version(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in [k for k in os.environ if k.startswith(("CARP_", "UCARP_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONPATH", str(Path(sidecar.__file__).parents[1]))
    for k, v in {"CARP_INTERFACE": "eth0", "CARP_VHID": "3", "CARP_SRCIP": "10.0.0.2",
                 "CARP_ADDR": "10.0.0.1/24", "CARP_CONTROL_SOCKET": str(tmp_path / "c.sock")
                 }.items():
        monkeypatch.setenv(k, v)
    origin = (str(tmp_path), "carp-sidecar", "run")
    text, version = asyncio.run(read_raw_config(origin, {"CARP_PASS": "geheim"}))
    assert version == sidecar.__version__
    doc = json.loads(text)
    assert doc["instances"][0]["vhid"] == 3
    # the new process's own reloads and restarts need the password variables of the start
    assert doc["environ_secrets"] == {"CARP_PASS": "geheim"}
    assert "geheim" not in sys.argv  # through stdin only
    monkeypatch.setenv("CARP_VHID", "0")
    with pytest.raises(ReloadRefused, match="VHID"):
        asyncio.run(read_raw_config(origin, {"CARP_PASS": "geheim"}))


def test_a_keeper_told_to_stop_by_a_signal_bows_out_and_says_what_it_is() -> None:
    import signal

    kept = keeper.Kept("eth0/1", lambda a: None, 1, 0, 41, 1.0, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + 5, [])
    try:
        cmdline = b""
        for _ in range(500):  # its title is set once it has closed what it does not need
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline.startswith(keeper.TITLE.encode()):  # not xdist's title, inherited
                break
            time.sleep(0.02)
        if _has_setproctitle():  # optional at run time
            assert cmdline.startswith(keeper.TITLE.encode()), cmdline
        os.kill(pid, signal.SIGTERM)  # systemctl stop during the restart
        _, code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(code) == 0
    finally:
        sock.close()


def _has_setproctitle() -> bool:
    import importlib.util

    return importlib.util.find_spec("setproctitle") is not None


def test_an_exec_that_fails_stops_the_keeper_and_the_agent_runs_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real execve of a program that is not there (ENOENT): nothing of the restart stays."""
    counted: list[tuple[str, str]] = []
    agent = SimpleNamespace(instances=[], title="carp-sidecar", version="1", stopping=False,
                            restarting=True, restart_counts={},
                            restarts=SimpleNamespace(count=lambda k, r: counted.append((k, r))))
    kept = keeper.Kept("eth0/1", lambda a: None, 1, 0, 41, 1.0, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + 5, [])
    config_fd, record_fd = os.memfd_create("c"), os.memfd_create("r")
    prepared = restart.Prepared(config_fd, record_fd, sock, pid, [], "2")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    restart.execute(agent, prepared)  # type: ignore[arg-type]
    assert counted == [("in_place", "failed")] and agent.restarting is False
    assert agent.restart_counts == {"in_place/failed": 1}  # what the next record carries
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # the keeper was told STOP and waited for
    for fd in (config_fd, record_fd):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_the_keeper_keeps_only_the_descriptors_it_needs() -> None:
    """The old image's listeners and the held-VIP record's lock must die with the exec: the
    keeper closes everything but its socket and the ones it sends by."""
    other, peer = socket.socketpair()  # stands for a listener of the old image
    needed, needed_peer = socket.socketpair()  # stands for a packet socket
    kept = keeper.Kept("eth0/1", lambda a: None, 1, 0, 41, 1.0, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + 5, [needed.fileno()])
    try:
        other.close()
        needed.close()
        peer.settimeout(2)
        assert peer.recv(1) == b""  # no copy left in the keeper
        needed_peer.settimeout(0.3)
        with pytest.raises(TimeoutError):
            needed_peer.recv(1)  # the keeper's copy is open
    finally:
        keeper.stop(sock, pid, 2.0)
        peer.close()
        needed_peer.close()
