"""The restart keeper: a forked child that keeps each MASTER's adverts at their rhythm while
the agent's process execs the new version (docs/architecture.md, "Restart without a move").

The child never returns to asyncio: the loop's state, its threads and the logging lock (another
thread may hold it at the fork) are the parent's. It runs a small synchronous loop (select on
its end of a socketpair and the next advert due) and logs nothing. It ends on:

- ``STOP`` from the successor: one JSON line ``{"<iface>/<vhid>": {"sent_at": mono,
  "counter": n}}`` and exit, touching nothing (the successor carries on from there);
- EOF (the successor died: every exec'd image holds the other end, so its death closes it),
  its deadline (``until``: the successor is too late), or SIGTERM/SIGINT: the bow-out of a
  stop (a bow-out advert per MASTER, the netlink VIPs deleted), so the backup takes over at
  once and no second holder is left.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address

from sidecar.core.machine import SendAdvert
from sidecar.core.protocol import BOW_OUT
from sidecar.net.rtmsg import delete_address, if_addresses, set_lifetimes
from sidecar.runtime.sendport import SendPort

TITLE = "carp-sidecar restart keeper"
STOP = b"STOP\n"
Vip = tuple[int, str, int]  # (ifindex, address, prefix length)


@dataclass
class Kept:
    """One MASTER's adverts, as the agent last sent them."""

    key: str  # "<interface>/<vhid>": the reply's key
    send: Callable[[SendAdvert], object]  # SendPort.advert (nothing logged, nothing counted)
    advbase: int
    advskew: int
    counter: int  # the last one sent
    interval: float  # s
    sent_at: float  # CLOCK_MONOTONIC of the last advert
    vips: list[Vip]  # what to delete at a bow-out (those the agent manages by netlink)
    lease: int = 0  # s: their kernel lifetime, renewed with each advert (0: not renewed)

    @property
    def next_at(self) -> float:
        return self.sent_at + self.interval

    def advert(self, now: float) -> None:
        self.counter += 1
        self.send(SendAdvert(self.advbase, self.advskew, self.counter))
        self.sent_at = now
        if self.lease and self.vips:  # a keeper killed too leaves them a master-down at most
            with contextlib.suppress(OSError):
                self.vips = present(self.vips)  # one removed since is not renewed, ever
                set_lifetimes(self.vips, self.lease)

    def bow_out(self) -> None:
        self.counter += 1
        self.send(SendAdvert(BOW_OUT, BOW_OUT, self.counter, handover=True))


def present(vips: list[Vip]) -> list[Vip]:
    """Those still on their interface: a lease's replace would *add* a missing address, IPv4
    or IPv6 (link-local too; an operator's `ip addr del`, a successor's afresh start must not
    be undone)."""
    if not vips:
        return vips
    found = {(index, str(a.ip)) for index in {i for i, _, _ in vips}
             for a in if_addresses(index)}
    return [v for v in vips if (v[0], _normal(v[1])) in found]


def _normal(address: str) -> str:
    with contextlib.suppress(ValueError):
        return str(ip_address(address))
    return address


def quiet_port(port: SendPort) -> Callable[[SendAdvert], object]:
    """The instance's own port, sharing its sockets, that counts nothing: a metric's lock may
    be held by another thread at the fork (and the logger is disabled in the child)."""
    mine = copy.copy(port)
    mine._on_error = lambda: None
    return mine.advert


def fork(kept: list[Kept], until: float, fds: Iterable[int]) -> tuple[socket.socket, int]:
    """Start the keeper; (the agent's end of its socket, inheritable, its pid). ``fds``: the
    descriptors it needs (the packet and unicast sockets): every other one is closed in the
    child, so the old process's control socket, HTTP listener and held-VIP record lock die
    with the exec and the new process can take them."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: tests see it from outside)
        code = 1
        try:
            ours.close()
            code = _child(theirs, kept, until, set(fds))
        finally:
            os._exit(code)
    theirs.close()
    ours.set_inheritable(True)
    return ours, pid


class _Bow(Exception):
    """SIGTERM/SIGINT in the keeper: bow out now."""


def _raise_bow(_sig: int, _frame: object) -> None:
    raise _Bow


def _child(sock: socket.socket, kept: list[Kept], until: float, fds: set[int]) -> int:
    logging.getLogger("carp-sidecar").disabled = True  # no lock taken: the flag is read first
    for sig in signal.valid_signals():  # the parent's handlers wrote to asyncio's wakeup fd
        with contextlib.suppress(OSError, ValueError, TypeError):
            if signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, _raise_bow)
    signal.signal(signal.SIGINT, _raise_bow)
    _close_all_but({0, 1, 2, sock.fileno(), *fds})
    set_title(TITLE)
    try:
        return serve(sock, kept, until)
    except _Bow:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bow_out(kept)
        return 0
    except Exception:  # whatever went wrong, never leave the VIPs with nobody advertising
        bow_out(kept)
        return 1


def serve(sock: socket.socket, kept: list[Kept], until: float,
          clock: Callable[[], float] = time.monotonic) -> int:
    """The loop (raises _Bow on a stop signal); the exit status."""
    sock.setblocking(True)
    while True:
        now = clock()
        if now >= until:
            bow_out(kept)
            return 0
        due = min([k.next_at for k in kept] + [until])
        readable, _, _ = select.select([sock], [], [], max(0.0, due - now))
        if readable:
            data = sock.recv(64)
            if not data:  # the successor died
                bow_out(kept)
                return 0
            if data.startswith(STOP.strip()):
                try:
                    sock.sendall(reply(kept).encode() + b"\n")
                except OSError:  # the successor asked, then died: nobody took over
                    bow_out(kept)
                return 0
        now = clock()
        for k in kept:
            if now >= k.next_at:
                with contextlib.suppress(OSError):
                    k.advert(now)


def reply(kept: list[Kept]) -> str:
    return json.dumps({k.key: {"sent_at": k.sent_at, "counter": k.counter} for k in kept},
                      separators=(",", ":"))


def bow_out(kept: list[Kept]) -> None:
    """As a stop does: the backups take over at once, and no VIP is left behind."""
    for k in kept:
        with contextlib.suppress(OSError):
            k.bow_out()
    for k in kept:
        for index, address, prefixlen in k.vips:
            with contextlib.suppress(OSError):
                delete_address(index, address, prefixlen)


def stop(sock: socket.socket, pid: int, timeout: float) -> dict[str, dict[str, float]] | None:
    """The successor's side: tell the keeper to go; what it last sent, or None if it has gone
    already (its deadline passed: it bowed out). Waits for it to exit either way."""
    reply_: dict[str, dict[str, float]] | None = None
    try:
        sock.settimeout(max(0.1, timeout))
        sock.sendall(STOP)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if data.endswith(b"\n"):
            reply_ = json.loads(data)
    except (OSError, ValueError):
        reply_ = None
    finally:
        sock.close()
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)
    return reply_


def release(fd: int, pid: int, timeout: float = 3.0) -> None:
    """The successor's side when it cannot resume: its end closed, so the keeper bows out as
    a stop does (bow-out adverts, its VIPs deleted: the backups take over at once); waited
    for (SIGTERM, the same bow-out, if it is slow), so its VIPs are gone before a start."""
    with contextlib.suppress(OSError):
        os.close(fd)
    for nudge in (False, True):
        if nudge:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:  # not ours, or reaped already
                return
            time.sleep(0.02)


def _close_all_but(keep: set[int]) -> None:
    """What /proc lists (a container's descriptor limit can be 2^30: no loop up to it)."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own, closed already
                os.close(fd)


def set_title(title: str) -> None:
    """/proc/PID/cmdline and comm: `pidof ucarp` and `killall -USR1 ucarp` find the drop-in
    (the exec left them `python3 -m sidecar.runtime.agent`); the keeper says what it is."""
    try:
        import setproctitle
    except ImportError:  # optional at run time: only the name is lost
        return
    setproctitle.setproctitle(title)
    setproctitle.setthreadtitle(title.split()[0][:15])
