"""What this process has put on interfaces, where the next run finds it if this one is killed.

A SIGKILLed (or OOM-killed, or crashed) master leaves its VIPs in place, and until the next run
removes them the VIP is held twice. The configuration says which VIPs are ours, but reading it
costs pydantic's import and a validation (~150 ms); this record does not need it. Each agent
keeps one file, ``held/<pid>-<random>.json`` in the state directory, holding an exclusive
``flock`` on it for as long as it lives and rewriting it before each VIP it adds and after each
it removes. The kernel drops the lock when the process dies, however it dies, so a file that
can be locked is a dead agent's: :func:`sweep` removes exactly what it lists (same boot, same
network namespace, interface index and name unchanged) and deletes the file. An agent that
stops cleanly has removed its VIPs and deletes its own file.

The record is a hint for speed only: after validation the agent still removes every VIP of its
configuration it finds (Agent.remove_stale_vips), with or without a record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from sidecar.net.rtmsg import delete_address

MAX_RECORD_BYTES = 256 * 1024  # 255 VHIDs x 16 VIPs x ~60 bytes


def _identity() -> dict[str, Any]:
    """Addresses do not survive a reboot, and an index means nothing in another namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return {"boot_id": boot, "netns": os.stat("/proc/self/ns/net").st_ino}


class HeldVips:
    """This process's record; every method is a few syscalls (no fsync: a host crash takes
    the addresses with it)."""

    def __init__(self, state_dir: Path) -> None:
        directory = state_dir / "held"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        temporary = directory / f".{name}.tmp"
        # locked before it has its final name: a sweeper never sees it unlocked
        self._fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = directory / f"{name}.json"
        self._identity = _identity()
        self._held: dict[tuple[int, str, int], str] = {}  # (index, address, prefix) -> ifname
        self._write()
        os.rename(temporary, self.path)

    def adding(self, index: int, address: str, prefixlen: int) -> None:
        key = (index, address, prefixlen)
        if key not in self._held:
            try:
                self._held[key] = socket.if_indextoname(index)
            except OSError:
                return  # no such interface: the add fails too
            self._write()

    def removed(self, index: int, address: str) -> None:
        gone = [k for k in self._held if k[0] == index and k[1] == address]
        for key in gone:
            del self._held[key]
        if gone:
            self._write()

    def _write(self) -> None:
        doc = dict(self._identity, held=[[i, name, a, p] for (i, a, p), name in self._held.items()])
        data = json.dumps(doc).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def close(self) -> None:
        """At exit: a clean stop released every VIP and deletes the record; one that could
        not leaves it, unlocked, for the next run's sweep."""
        if not self._held:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)


def sweep(state_dir: Path) -> list[tuple[str, str]]:
    """Remove what dead agents' records list; (address, interface) for each one removed.
    Records of live agents (locked) are left alone; unreadable ones are deleted."""
    removed: list[tuple[str, str]] = []
    try:
        paths = sorted((state_dir / "held").glob("*.json"))
    except OSError:
        return removed
    me = _identity()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # swept by someone else meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its agent is alive
            if os.fstat(fd).st_nlink == 0:
                continue  # another sweeper finished it after we opened it
            removed += _remove_listed(os.pread(fd, MAX_RECORD_BYTES, 0), me)
            os.unlink(path)
        except OSError:
            continue  # e.g. EPERM without NET_ADMIN: the file stays, the agent will say why
        finally:
            os.close(fd)
    return removed


def _remove_listed(raw: bytes, me: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        doc = json.loads(raw)
        entries = [(int(i), str(n), str(a), int(p)) for i, n, a, p in doc["held"]]
        same_host = doc["boot_id"] == me["boot_id"] and doc["netns"] == me["netns"]
    except (ValueError, KeyError, TypeError):
        return []  # not a record we wrote (or cut short by a full disk): nothing to trust
    removed = []
    for index, name, address, prefixlen in entries if same_host else []:
        try:
            if socket.if_indextoname(index) != name:
                continue  # the interface was re-created: its addresses went with it
        except OSError:
            continue
        if delete_address(index, address, prefixlen):
            removed.append((address, name))
    return removed
