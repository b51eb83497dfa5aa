"""What every signal number, 1 to SIGRTMAX, means to the agent (docs/operations.md "Signals"), its name in
the log, and the two things done to dispositions outside the event loop.

Python's ``signal.Signals`` names only SIGRTMIN and SIGRTMAX; the real-time numbers between
are named here as ``kill -l`` and systemd name them (37 is SIGRTMIN+3, the stop signal of
systemd's container images). 32 and 33 are glibc's own (thread cancellation, set*id across
threads): glibc refuses a handler for them, yet their default ends the process, so
:func:`ignore_reserved` ignores them with the kernel's ``rt_sigaction`` directly (glibc
installs its own handler over that when it needs one).
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import logging
import platform
import signal
from collections.abc import Callable, Iterable

log = logging.getLogger("carp-sidecar")


class Meaning(enum.Enum):
    STOP = "stop"  # the down path (bow-out, VIP released, downscript), exit 0
    RELOAD = "reload"  # SIGHUP, unless started as `ucarp`
    STATUS = "status line"  # SIGUSR1, ucarp's
    STEP_DOWN = "step down"  # SIGUSR2, ucarp's "considering going down"
    IGNORED = "ignored"  # by Python (SIGPIPE, SIGXFSZ), by us (glibc's 32 and 33)
    IGNORED_BY_DEFAULT = "ignored by default"  # SIGCHLD, SIGURG, SIGWINCH, SIGCONT
    FREEZES = "freezes"  # SIGSTOP (uncatchable) and job control's stops: the default
    ENDS = "ends the process"  # SIGKILL (uncatchable); a real fault: handling it would loop


# Their default would end the process without the down path: each one stops the agent cleanly.
_STOP = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR",
         "SIGXCPU", "SIGSTKFLT")
_FIXED = {
    "SIGUSR1": Meaning.STATUS, "SIGUSR2": Meaning.STEP_DOWN,
    "SIGPIPE": Meaning.IGNORED, "SIGXFSZ": Meaning.IGNORED,
    "SIGCHLD": Meaning.IGNORED_BY_DEFAULT, "SIGURG": Meaning.IGNORED_BY_DEFAULT,
    "SIGWINCH": Meaning.IGNORED_BY_DEFAULT, "SIGCONT": Meaning.IGNORED_BY_DEFAULT,
    "SIGSTOP": Meaning.FREEZES, "SIGTSTP": Meaning.FREEZES, "SIGTTIN": Meaning.FREEZES,
    "SIGTTOU": Meaning.FREEZES,
    "SIGKILL": Meaning.ENDS, "SIGSEGV": Meaning.ENDS, "SIGBUS": Meaning.ENDS,
    "SIGILL": Meaning.ENDS, "SIGFPE": Meaning.ENDS, "SIGABRT": Meaning.ENDS,
    "SIGSYS": Meaning.ENDS, "SIGTRAP": Meaning.ENDS,
}
HANDLED = frozenset({Meaning.STOP, Meaning.RELOAD, Meaning.STATUS, Meaning.STEP_DOWN})


def _number(name: str) -> int | None:
    value = getattr(signal, name, None)
    return int(value) if value is not None else None


def meaning(sig: int, as_ucarp: bool) -> Meaning:
    """What ``sig`` does to the agent; ``as_ucarp``: SIGHUP stops it (ucarp exits on it)."""
    if sig == signal.SIGHUP:
        return Meaning.STOP if as_ucarp else Meaning.RELOAD
    if signal.SIGRTMIN <= sig <= signal.SIGRTMAX or sig in map(_number, _STOP):
        return Meaning.STOP
    for name, what in _FIXED.items():
        if _number(name) == sig:
            return what
    if sig in reserved():
        return Meaning.IGNORED
    raise ValueError(f"signal {sig} has no meaning here (not 1..SIGRTMAX on Linux?)")


def handled(as_ucarp: bool) -> dict[int, Meaning]:
    """The numbers the event loop handles, and what for."""
    every = {sig: meaning(sig, as_ucarp) for sig in range(1, signal.SIGRTMAX + 1)}
    return {sig: what for sig, what in every.items() if what in HANDLED}


def reserved() -> range:
    """The real-time numbers below SIGRTMIN that the C library keeps for itself."""
    return range(32, signal.SIGRTMIN) if signal.SIGRTMIN > 32 else range(0)


def name(sig: int) -> str:
    """SIGTERM; SIGRTMIN+3 or SIGRTMAX-1 (``kill -l``'s split); else "signal N"."""
    low, high = signal.SIGRTMIN, signal.SIGRTMAX
    if low < sig < high:
        return f"SIGRTMIN+{sig - low}" if sig - low <= (high - low) // 2 else \
            f"SIGRTMAX-{high - sig}"
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# held back across an in-place restart's exec (sidecar.runtime.restart): pending, not lost, and
# not acted on by a default action before the new image has its handlers
RESTART_BLOCKED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                             signal.SIGUSR2})


def install(loop: asyncio.AbstractEventLoop, as_ucarp: bool, stopping: asyncio.Event,
            actions: dict[Meaning, Callable[[], None]]) -> list[int]:
    """Handle every number from 1 to SIGRTMAX that has a handled meaning: a stop signal sets
    ``stopping``, the others call ``actions[meaning]``; once stopping, each is logged and
    ignored. The numbers handled (for :func:`ignore_from_now`)."""
    def received(sig: int, meaning: Meaning) -> None:
        if stopping.is_set():  # a stop is never interrupted, by a reload or anything else
            log.info("Received %s while stopping: ignored", name(sig))
        elif meaning is Meaning.STOP:
            stopping.set()  # first: nothing after it may keep the agent from stopping
            log.info("Received %s: stopping (a master hands over first)", name(sig))
        else:
            actions[meaning]()

    table = handled(as_ucarp)
    for sig, meaning in table.items():
        loop.add_signal_handler(sig, received, sig, meaning)
    ignore_reserved()
    # handled now: what arrived during an in-place restart's exec is delivered (a no-op else)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RESTART_BLOCKED)
    return list(table)


# rt_sigaction's number, by machine; its struct is (handler, flags, restorer, mask) on these
_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134}


class _KernelSigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                ("restorer", ctypes.c_ulong), ("mask", ctypes.c_ulong)]


def ignore_reserved() -> list[int]:
    """Ignore glibc's reserved numbers (whose default would end the agent without its down
    path) where they still have their default; one glibc already handles (33 once a thread
    exists: setuid and friends across threads) is left to it. The numbers now ignored ([]
    where the machine's syscall is not known here)."""
    number = _RT_SIGACTION.get(platform.machine())
    if number is None:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    ignore = _KernelSigaction(int(signal.SIG_IGN), 0, 0, 0)
    size = ctypes.sizeof(ctypes.c_ulong)
    done = []
    for sig in reserved():
        now = _KernelSigaction()
        if libc.syscall(number, sig, None, ctypes.byref(now), size) != 0:
            continue
        ignored = now.handler == int(signal.SIG_IGN)  # already (inherited across exec)
        if not ignored and now.handler == int(signal.SIG_DFL):
            ignored = libc.syscall(number, sig, ctypes.byref(ignore), None, size) == 0
        if ignored:
            done.append(sig)
    return done


def ignore_from_now(loop: asyncio.AbstractEventLoop, sigs: Iterable[int]) -> None:
    """Once the down path is done, until the process ends: ``sigs`` ignored. The loop must
    forget them without handing them back to their default, as its close() would: a SIGHUP in
    that moment ended a clean stop with status 129."""
    handlers = getattr(loop, "_signal_handlers", {})  # the unix loop's own table (CPython)
    for sig in sigs:
        signal.signal(sig, signal.SIG_IGN)  # at once: no moment with the default in between
        handlers.pop(sig, None)
    if not handlers:
        signal.set_wakeup_fd(-1)  # as the loop does when it removes its last handler
