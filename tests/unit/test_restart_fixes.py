"""A restart in place's edges, without privileges: what is refused and when, the keeper freed
when the record cannot be read, its leases only on addresses still there, the signal mask
across the exec, the on-stop intent carried (tests/integration/test_restart.py: the whole)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import sidecar
from sidecar.core.machine import SendAdvert, State
from sidecar.core.protocol import BOW_OUT
from sidecar.net.rtmsg import if_addresses, ipv4_addresses
from sidecar.runtime import keeper, operator, restart, signals, takeover
from sidecar.runtime.resume import ResumedInstance, ResumeRecord

ROOT = str(Path(sidecar.__file__).resolve().parents[1])


def _instance(vhid: int, state: State, scripts: bool = False) -> SimpleNamespace:
    s = SimpleNamespace(interface="eth0", vhid=vhid, manages_vip_by_scripts=scripts,
                        key=("eth0", vhid, False))
    return SimpleNamespace(s=s, machine=SimpleNamespace(state=state))


def _agent(*instances: Any, **kw: Any) -> SimpleNamespace:
    base = {"instances": list(instances), "stopping": False, "restarting": False,
            "reload_lock": asyncio.Lock()}
    return SimpleNamespace(**{**base, **kw})


def test_a_master_whose_vips_are_its_scripts_refuses_a_restart_in_place() -> None:
    """No kernel lifetime ends what a script added: a new image that dies would leave it."""
    agent = _agent(_instance(1, State.MASTER, scripts=True), _instance(2, State.MASTER))
    why = restart.refusal(agent)  # type: ignore[arg-type]
    assert why is not None and "eth0 vhid 1" in why and "scripts'" in why
    assert "systemctl restart" in why and "vhid 2" not in why
    agent = _agent(_instance(1, State.BACKUP, scripts=True), _instance(2, State.MASTER))
    assert restart.refusal(agent) is None  # type: ignore[arg-type]


def test_only_the_masters_vips_are_leased() -> None:
    """A BACKUP's (a neutral one's) VIPs: no successor renews them, so no lease."""
    agent = _agent(_instance(1, State.MASTER), _instance(2, State.BACKUP))
    record = SimpleNamespace(instances=[
        ResumedInstance("eth0", 1, "MASTER", [(3, "10.0.0.1", 32)]),
        ResumedInstance("eth0", 2, "BACKUP", [(3, "10.0.0.2", 32)])])
    assert restart.leased_vips(agent, record) == [(3, "10.0.0.1", 32)]  # type: ignore[arg-type]


def test_a_restart_while_one_is_in_progress_is_refused() -> None:
    assert restart.refusal(_agent(restarting=True)) == "restart in progress"  # type: ignore[arg-type]


@pytest.mark.parametrize("verb", ["reload", "demote", "promote 1",
                                  "restart-on-stop 60"])
def test_while_restarting_control_verbs_that_change_things_are_refused(verb: str) -> None:
    agent = _agent(restarting=True, status=lambda: {})
    reply = asyncio.run(operator.control(agent, verb))  # type: ignore[arg-type]
    assert reply.startswith("error: restart in progress:"), reply


def _pipe_keeper(until: float = 10.0) -> tuple[Any, int, int]:
    """A forked keeper whose adverts are written to a pipe (A: advert, B: bow-out)."""
    r, w = os.pipe()

    def send(a: SendAdvert) -> None:
        os.write(w, b"B" if a.advbase == BOW_OUT else b"A")

    kept = keeper.Kept("eth0/1", send, 1, 0, 41, 0.05, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + until, [w])
    os.close(w)
    return sock, pid, r


def test_a_record_the_new_image_cannot_read_frees_the_keeper_which_bows_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(takeover, "UNUSABLE", [])
    sock, pid, r = _pipe_keeper()
    bad = os.memfd_create("bad")
    os.write(bad, b'{"kind": "in_place_v2"}')
    os.lseek(bad, 0, os.SEEK_SET)
    began = time.monotonic()
    assert takeover.record_from_argv(bad, sock.detach(), pid) is None
    assert time.monotonic() - began < 2
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie, no keeper left
    seen = b""
    while chunk := os.read(r, 4096):
        seen += chunk
    assert seen.endswith(b"B")  # the backups take over at once
    os.close(r)
    # a restart happened all the same, started afresh: counted, and said in /status
    assert takeover.carried(None) == {"in_place/afresh": 1}
    assert (takeover.lost(None) or {}).get("result") == "afresh"


def test_a_readable_in_place_record_gets_the_keeper_from_argv(tmp_path: Any) -> None:
    from sidecar.net.held import identity

    me = identity()
    record = ResumeRecord("in_place", 1, "1", me["boot_id"], me["netns"], 1e12, {}, 1.0, [])
    fd = os.memfd_create("ok")
    os.write(fd, record.to_json().encode())
    os.lseek(fd, 0, os.SEEK_SET)
    got = takeover.record_from_argv(fd, 17, 4242)
    assert got is not None and (got.keeper_fd, got.keeper_pid) == (17, 4242)


def test_the_keeper_renews_only_addresses_still_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease's replace re-adds a missing address, IPv4 or IPv6 (a link-local one too, seen
    on Linux 6.x): one gone is dropped, not renewed."""
    lo = ipv4_addresses(1)
    assert lo, "lo has 127.0.0.1"
    here = (1, str(lo[0].ip), lo[0].network.prefixlen)
    gone = (1, "127.55.0.9", 32)
    lo6 = [(1, str(a.ip), a.network.prefixlen) for a in if_addresses(1) if a.version == 6]
    gone6 = [(1, "fd00::1", 128), (1, "fe80::1", 64)]
    assert keeper.present([here, gone, *gone6, *lo6]) == [here, *lo6]
    renewed: list[Any] = []
    kept = keeper.Kept("lo/1", lambda a: None, 1, 0, 1, 1.0, 0.0, [here, gone], lease=3)
    monkeypatch.setattr(keeper, "set_lifetimes", lambda vips, s: renewed.append(list(vips)))
    kept.advert(time.monotonic())
    assert renewed == [[here]] and kept.vips == [here]


def test_a_failed_exec_leaves_the_signal_mask_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = SimpleNamespace(instances=[], title="carp-sidecar", version="1", stopping=False,
                            restarting=True, restart_counts={},
                            restarts=SimpleNamespace(count=lambda k, r: None))
    kept = keeper.Kept("eth0/1", lambda a: None, 1, 0, 41, 1.0, time.monotonic(), [])
    sock, pid = keeper.fork([kept], time.monotonic() + 5, [])
    prepared = restart.Prepared(os.memfd_create("c"), os.memfd_create("r"), sock, pid, [], "2")
    seen: list[set[int]] = []
    real = os.execve

    def execve(*args: Any) -> None:
        seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        real(*args)

    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    monkeypatch.setattr(os, "execve", execve)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    restart.execute(agent, prepared)  # type: ignore[arg-type]
    assert seen and seen[0] >= signals.RESTART_BLOCKED  # blocked across the exec
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # unblocked at once


def test_a_signal_held_across_the_exec_is_delivered_once_the_handlers_are_in() -> None:
    """The new image inherits the mask (a real exec); signals.install unblocks it: a SIGHUP
    sent in the window is not lost, nor does its default action end the process."""
    child = textwrap.dedent("""
        import asyncio, os, signal
        from sidecar.runtime import signals
        assert signals.RESTART_BLOCKED <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.kill(os.getpid(), signal.SIGHUP)  # pending: would end the process by default
        async def main():
            ran, stopping = [], asyncio.Event()
            signals.install(asyncio.get_running_loop(), False, stopping, {
                signals.Meaning.RELOAD: lambda: ran.append("reload"),
                signals.Meaning.STATUS: lambda: None, signals.Meaning.STEP_DOWN: lambda: None})
            await asyncio.sleep(0.2)
            assert not signals.RESTART_BLOCKED & signal.pthread_sigmask(signal.SIG_BLOCK, [])
            print(ran)
        asyncio.run(main())
    """)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals.RESTART_BLOCKED)
    try:  # the child inherits the mask as an exec'd image does
        r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "PYTHONPATH": ROOT})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert r.returncode == 0 and r.stdout.strip() == "['reload']", r.stderr


def test_an_armed_on_stop_intent_outlives_a_restart_in_place() -> None:
    from sidecar.net.held import identity

    me, mono = identity(), time.monotonic()
    agent = SimpleNamespace(on_stop_until=None)
    record = ResumeRecord("in_place", 1, "1", me["boot_id"], me["netns"], 1e12, {}, 1.0, [],
                          on_stop_until=[1.9e9, mono + 60])
    takeover.carry_intent(agent, record)  # type: ignore[arg-type]
    assert agent.on_stop_until == (1.9e9, mono + 60)
    agent.on_stop_until = None
    takeover.carry_intent(agent, ResumeRecord(  # type: ignore[arg-type]
        "in_place", 1, "1", "", 0, 1e12, {}, 1.0, [], on_stop_until=[1.9e9, mono - 1]))
    assert agent.on_stop_until is None  # expired meanwhile


def test_once_the_keeper_answered_its_last_advert_judges_the_resume_not_until() -> None:
    """The keeper advertised up to STOP: the backups wait from its last advert on."""
    from sidecar.net.held import identity

    me, now = identity(), time.monotonic()
    kept = keeper.Kept("eth0/1", lambda a: None, 1, 0, 41, 1.0, now, [])
    sock, pid = keeper.fork([kept], now + 5, [])
    record = ResumeRecord(
        "in_place", 1, "1", me["boot_id"], me["netns"], now - 0.01, {}, 1.0,  # "expired"
        [ResumedInstance("eth0", 1, "MASTER", [], sent_at=now - 5, advert_interval=1.0)],
        keeper_fd=sock.detach(), keeper_pid=pid)
    agent = _agent(SimpleNamespace(s=SimpleNamespace(interface="eth0", vhid=1, deadratio=3,
                                                     key=("eth0", 1, False))))
    sent, why = takeover.judge(agent, record)  # type: ignore[arg-type]
    assert why is None and sent == {("eth0", 1, False): (now, 41)}
