"""What every signal number means to the agent (sidecar.runtime.signals), 1 to SIGRTMAX one by
one, against the kernel's default action for it (signal(7)): none whose default ends the
process is left to it unless it cannot be caught or is a real fault; and each has a name the
log can print (the handler of SIGRTMIN+1...SIGRTMAX-1 failed naming them, so they did not stop
the agent). The dispositions set outside the loop are checked in a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from sidecar.core.intervals import read_queue_first, stalled
from sidecar.runtime import signals
from sidecar.runtime.signals import Meaning

NUMBERS = range(1, signal.SIGRTMAX + 1)
# signal(7): the default action of 1..31 on Linux x86/ARM; 32..SIGRTMAX (real-time) terminate
TERM, CORE, IGN, STOP, CONT = "term", "core", "ign", "stop", "cont"
DEFAULT = {
    "SIGHUP": TERM, "SIGINT": TERM, "SIGQUIT": CORE, "SIGILL": CORE, "SIGTRAP": CORE,
    "SIGABRT": CORE, "SIGBUS": CORE, "SIGFPE": CORE, "SIGKILL": TERM, "SIGUSR1": TERM,
    "SIGSEGV": CORE, "SIGUSR2": TERM, "SIGPIPE": TERM, "SIGALRM": TERM, "SIGTERM": TERM,
    "SIGSTKFLT": TERM, "SIGCHLD": IGN, "SIGCONT": CONT, "SIGSTOP": STOP, "SIGTSTP": STOP,
    "SIGTTIN": STOP, "SIGTTOU": STOP, "SIGURG": IGN, "SIGXCPU": CORE, "SIGXFSZ": CORE,
    "SIGVTALRM": TERM, "SIGPROF": TERM, "SIGWINCH": IGN, "SIGIO": TERM, "SIGPWR": TERM,
    "SIGSYS": CORE,
}
FAULTS = {"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP"}


def default_action(sig: int) -> str:
    if sig >= 32:
        return TERM
    return DEFAULT[signal.Signals(sig).name]


@pytest.mark.parametrize("sig", NUMBERS)
def test_no_signal_ends_the_agent_without_its_down_path_unless_it_must(sig: int) -> None:
    for as_ucarp in (False, True):
        what = signals.meaning(sig, as_ucarp)
        action = default_action(sig)
        if sig == signal.SIGKILL or signals.name(sig) in FAULTS:
            assert what is Meaning.ENDS
        elif action in (TERM, CORE):  # the default would leave the VIP up
            assert what in signals.HANDLED or what is Meaning.IGNORED, (sig, what)
        elif action == STOP:
            assert what is Meaning.FREEZES
        else:
            assert what is Meaning.IGNORED_BY_DEFAULT
        handled = signals.handled(as_ucarp)
        assert (sig in handled) == (what in signals.HANDLED)


@pytest.mark.parametrize("sig", NUMBERS)
def test_every_number_has_a_name_the_log_can_print(sig: int) -> None:
    name = signals.name(sig)
    assert name.startswith("SIG") or name == f"signal {sig}", name
    if signal.SIGRTMIN <= sig <= signal.SIGRTMAX:
        assert signals.meaning(sig, as_ucarp=False) is Meaning.STOP
        assert name.startswith("SIGRTM")


def test_names_are_kill_l_s_and_distinct() -> None:
    names = [signals.name(sig) for sig in NUMBERS]
    assert len(set(names)) == len(names)
    rt = signal.SIGRTMIN
    assert [signals.name(n) for n in (rt, rt + 1, rt + 3, rt + 15, rt + 16, signal.SIGRTMAX - 1,
                                      signal.SIGRTMAX)] == [
        "SIGRTMIN", "SIGRTMIN+1", "SIGRTMIN+3", "SIGRTMIN+15", "SIGRTMAX-14", "SIGRTMAX-1",
        "SIGRTMAX"]
    assert signals.name(signal.SIGTERM) == "SIGTERM" and signals.name(32) == "signal 32"


def test_sighup_reloads_unless_started_as_ucarp() -> None:
    assert signals.handled(as_ucarp=False)[signal.SIGHUP] is Meaning.RELOAD
    assert signals.handled(as_ucarp=True)[signal.SIGHUP] is Meaning.STOP
    assert signals.handled(as_ucarp=False)[signal.SIGUSR1] is Meaning.STATUS
    assert signals.handled(as_ucarp=False)[signal.SIGUSR2] is Meaning.STEP_DOWN


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=20)


def test_glibc_reserved_numbers_are_ignored_for_real() -> None:
    """Without this 32 and 33 end the process (status 160, 161)."""
    r = _child("""
        import os, time
        from sidecar.runtime import signals
        assert list(signals.reserved()) == [32, 33], list(signals.reserved())
        print(signals.ignore_reserved())
        for sig in signals.reserved():
            os.kill(os.getpid(), sig)
        time.sleep(0.1)
        print("alive")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[32,", "33]", "alive"]


def test_a_reserved_number_glibc_already_handles_is_left_to_it() -> None:
    """Once a thread exists glibc handles 33 (setuid and friends across threads): ignoring it
    then would hang a later setuid."""
    r = _child("""
        import threading, time
        from sidecar.runtime import signals
        t = threading.Thread(target=time.sleep, args=(0.2,))
        t.start()
        print(signals.ignore_reserved())
        t.join()
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[32]"]


def test_every_handled_number_reaches_its_handler_and_none_interrupts_a_stop() -> None:
    """A real loop, each handled number from 1 to SIGRTMAX sent to the process in turn: a stop
    signal sets the stop (SIGRTMIN+1...SIGRTMAX-1 once failed here, naming themselves), the
    others run their action; then, while stopping, every one is logged and ignored."""
    r = _child("""
        import asyncio, logging, os, sys
        from sidecar.runtime import signals
        from sidecar.runtime.signals import Meaning
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")

        async def main():
            loop, stopping, ran = asyncio.get_running_loop(), asyncio.Event(), []
            actions = {m: (lambda m=m: ran.append(m)) for m in
                       (Meaning.RELOAD, Meaning.STATUS, Meaning.STEP_DOWN)}
            handled = signals.install(loop, False, stopping, actions)
            for sig in handled:
                os.kill(os.getpid(), sig)
                if signals.meaning(sig, False) is Meaning.STOP:
                    await asyncio.wait_for(stopping.wait(), 2)
                    stopping.clear()
                else:
                    for _ in range(200):
                        if ran:
                            break
                        await asyncio.sleep(0.005)
                    assert ran == [signals.meaning(sig, False)], (sig, ran)
                    ran.clear()
            stopping.set()
            for sig in handled:
                os.kill(os.getpid(), sig)
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.1)
            assert not ran, ran
            print("handled", len(handled))

        asyncio.run(main())
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    handled = signals.handled(as_ucarp=False)
    stops = [n for n, m in handled.items() if m is Meaning.STOP]
    assert [ln for ln in lines if ln.endswith(": stopping (a master hands over first)")] == [
        f"Received {signals.name(n)}: stopping (a master hands over first)" for n in stops]
    assert [ln for ln in lines if ln.endswith("while stopping: ignored")] == [
        f"Received {signals.name(n)} while stopping: ignored" for n in handled]
    assert lines[-1] == f"handled {len(handled)}" and len(stops) == 10 + 31


def test_signals_stay_ignored_after_the_loop_closes() -> None:
    """The loop's close() would hand them back to their default: a SIGHUP after a clean stop
    ended the process with status 129."""
    r = _child("""
        import asyncio, os, signal, time
        from sidecar.runtime import signals

        async def main():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, print, "handled")
            signals.ignore_from_now(loop, [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])

        asyncio.run(main())
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
        time.sleep(0.1)
        print("alive")
    """)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "alive", "")


@pytest.mark.parametrize(("late", "advbase", "advskew", "read", "stall"), [
    (0.0005, 1, 0, False, False),  # the loop's ordinary jitter
    (0.02, 1, 0, True, False),  # busy: read first, nothing to say
    (0.9, 1, 0, True, False),
    (1.1, 1, 0, True, True),  # over an advert interval: the process stood still
    (5.0, 1, 100, True, True),
    (0.09, 0, 10, True, False),  # a sub-second interval: at least 0.1 s to be a stall
    (0.2, 0, 10, True, True),
])
def test_a_late_timer_reads_what_is_queued_first(late: float, advbase: int, advskew: int,
                                                 read: bool, stall: bool) -> None:
    us = round(late * 1_000_000)
    assert read_queue_first(us) is read
    assert stalled(us, advbase, advskew) is stall
