"""What this process has put on interfaces, where the next run finds it if this one is killed.

A SIGKILLed (or OOM-killed, or crashed) master leaves its VIPs in place, and until the next run
removes them the VIP is held twice. The configuration says which VIPs are ours, but reading it
costs pydantic's import and a validation (~150 ms); this record does not need it. Each agent
keeps one file, ``held/<pid>-<random>.json`` in the state directory, holding an exclusive
``flock`` on it for as long as it lives and rewriting it before each VIP it adds and after each
it removes. The kernel drops the lock when the process dies, however it dies, so a file that
can be locked is a dead agent's: :func:`sweep` removes exactly what it lists (same boot, same
network namespace, same interface index: an interface renamed meanwhile kept its addresses, so
they are removed under its new name; a deleted one took them along) and deletes the file. An
agent that stops cleanly has removed its VIPs and deletes its own file. The adds of one event
loop turn are recorded in one write before any of them is sent (sidecar.net.netlink): 255
VHIDs x 16 VIPs are one rewrite, not 4080.

The record is a hint for speed only: after validation the agent still removes every VIP of its
configuration it finds (sidecar.runtime.stale.remove_stale_vips), with or without a record. So
a state directory that cannot take it (full, read-only, a file where ``held/`` should be) never
stops an agent: it runs without one and says so (:attr:`HeldVips.problem`,
sidecar.runtime.stale.HeldRecord); nor does a record it cannot read, or an entry of one.

A full disk must not cut a record short either: the file is written at its full reserved size
(:func:`reserve_for`: the configuration's VIPs x the longest entry, space-padded JSON) when it is
created and again when a reload needs more, so each rewrite lands on blocks it already owns;
every write's count is checked, and a checksum of the list (``crc``) makes a record that was
cut short anyway (a copy-on-write file system, a size limit) unreadable rather than taken for a
whole one. A record without ``crc`` is the previous release's (truncated, then written whole):
read when it is a whole JSON document, so an upgrade still removes a killed old agent's VIPs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import zlib
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from sidecar.net.rtmsg import delete_address

# the longest entry: [4294967295,"<15 chars>","ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",128],
ENTRY_BYTES = 88
MIN_RESERVED_BYTES = 64 * 1024  # a reload adding a few VIPs fits without growing it
MAX_RECORD_BYTES = 16 * 1024 * 1024  # read at most this much: anything larger is not ours
log = logging.getLogger("carp-sidecar")


def reserve_for(vips: int) -> int:
    """Bytes to reserve for a record of ``vips`` VIPs: each may be listed twice for a while
    (its interface re-created under a new index before the old entry is dropped)."""
    return max(MIN_RESERVED_BYTES, 2 * vips * ENTRY_BYTES + 512)


def identity() -> dict[str, Any]:
    """Addresses do not survive a reboot, and an index means nothing in another namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return {"boot_id": boot, "netns": os.stat("/proc/self/ns/net").st_ino}


def _crc(held: list[list[Any]]) -> int:
    return zlib.crc32(json.dumps(held, separators=_COMPACT).encode())


_COMPACT = (",", ":")


class HeldVips:
    """This process's record; every method is a few syscalls (no fsync: a host crash takes
    the addresses with it). OSError from the constructor: no record can be kept here."""

    def __init__(self, state_dir: Path, reserved: int = MIN_RESERVED_BYTES) -> None:
        directory = state_dir / "held"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:  # something else is there: say what, not "File exists"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        temporary = directory / f".{name}.tmp"
        # locked before it has its final name: a sweeper never sees it unlocked
        self._fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.path = directory / f"{name}.json"
        self._identity = identity()
        # (index, address, prefix) -> the entry, encoded once: a write joins them
        self._held: dict[tuple[int, str, int], str] = {}
        self._prefixes: dict[tuple[int, str], list[int]] = {}  # a removal finds its keys at once
        self._head = json.dumps(self._identity, separators=_COMPACT)[:-1]
        self._length = self._reserved = reserved  # the first write reserves the blocks
        self._dirty = False
        self.writes = 0  # how many times the record was rewritten (tests count them)
        self.problem: str | None = None  # why the record on disk is not whole, None if it is
        self.on_problem: Callable[[str | None], None] = lambda _: None  # called on a change
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._write()
            if self.problem:
                raise OSError(self.problem)
            os.rename(temporary, self.path)
        except OSError:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def adding(self, index: int, address: str, prefixlen: int) -> None:
        """Listed in memory; :meth:`flush` writes it (before the add is sent)."""
        key = (index, address, prefixlen)
        if key not in self._held:
            try:
                name = socket.if_indextoname(index)
            except OSError:
                return  # no such interface: the add fails too
            self._held[key] = json.dumps([index, name, address, prefixlen], separators=_COMPACT)
            self._prefixes.setdefault((index, address), []).append(prefixlen)
            self._dirty = True

    def removed(self, index: int, address: str) -> None:
        """Dropped in memory; :meth:`flush` writes it."""
        gone = self._prefixes.pop((index, address), [])
        for prefixlen in gone:
            del self._held[(index, address, prefixlen)]
        self._dirty = self._dirty or bool(gone)

    def flush(self) -> None:
        """Write what changed since the last write, if anything did."""
        if self._dirty:
            self._write()

    def reserve(self, reserved: int) -> None:
        """Own at least ``reserved`` bytes (a reload added VIPs): written now, padded."""
        if reserved > self._reserved:
            self._reserved = reserved
            self._length = max(self._length, reserved)
            self._write()

    def _write(self) -> None:
        if self._fd < 0:  # closed: a write scheduled before the exit finds nothing to write to
            return
        self._dirty = False
        self.writes += 1
        held = "[" + ",".join(self._held.values()) + "]"
        crc = zlib.crc32(held.encode())
        data = f'{self._head},"crc":{crc},"held":{held}}}'.encode()
        padded = data.ljust(self._length)  # blanks what a longer record left beyond it
        try:
            written = os.pwrite(self._fd, padded, 0)
            if written != len(padded):  # ENOSPC after the blocks it had: the rest is old bytes
                raise OSError(f"cut short ({written} of {len(padded)} bytes written)")
        except OSError as e:
            self._length = len(padded)  # some of it may be there: the next write blanks it
            self._set_problem(f"cannot write {self.path.name}: {e.strerror or e}")
            return
        self._length = len(data)  # the file keeps its size: later writes pad to this only
        self._set_problem(None)

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            self.on_problem(problem)

    def close(self) -> None:
        """At exit: a clean stop released every VIP and deletes the record; one that could
        not leaves it, unlocked, for the next run's sweep."""
        if self._fd < 0:
            return
        self.flush()  # what a cancelled add or removal left unwritten
        if not self._held:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


Kept = frozenset[tuple[int, str, int]]  # (interface index, address, prefix length)


def sweep(state_dir: Path, untrusted: list[str] | None = None,
          keep: Kept = frozenset()) -> list[tuple[str, str]]:
    """Remove what dead agents' records list; (address, interface) for each one removed.
    Records of live agents (locked) are left alone. A record that cannot be trusted (cut
    short, not ours) is deleted and its name added to ``untrusted`` when the caller passes
    that list (the agent, which logs them); without it (``run``'s early sweep, before logging
    is set up) it is left for the agent's. An entry in ``keep`` stays on its interface: a
    restart's record (sidecar.runtime.resume) hands those VIPs to this process, which writes
    its own record of them, so the dead one's file is deleted all the same."""
    keep = frozenset((i, _normal(a), p) for i, a, p in keep)
    removed: list[tuple[str, str]] = []
    try:  # a crashed start's temporary file too (it never got its final name)
        held = state_dir / "held"
        paths = sorted(held.glob("*.json")) + sorted(held.glob(".*.tmp"))
    except OSError:
        return removed
    me = identity()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # swept by someone else meanwhile, or not a file
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its agent is alive
            st = os.fstat(fd)
            if st.st_nlink == 0 or st.st_size == 0:
                continue  # another sweeper finished it, or its agent has not locked it yet
            listed = _remove_listed(os.pread(fd, min(st.st_size, MAX_RECORD_BYTES), 0), me,
                                    keep)
            if listed is None:
                if untrusted is None:
                    continue
                if path.suffix == ".json":
                    untrusted.append(path.name)
            removed += listed or []
            os.unlink(path)
        except OSError:
            continue  # e.g. EPERM without NET_ADMIN: the file stays, the agent will say why
        finally:
            os.close(fd)
    return removed


def _entries(raw: bytes, me: dict[str, Any]) -> list[Any] | None:
    """The list of a whole record, None if it is not one: with a ``crc`` that matches, or
    without one, the previous release's (written whole after a truncate, never padded)."""
    try:
        doc = json.loads(raw.rstrip(b" "))  # the padding (stripped, never decoded)
        if "crc" not in doc:
            if raw.endswith(b" ") or set(doc) != {"boot_id", "netns", "held"}:
                raise ValueError("not the previous release's record")
        elif doc["crc"] != _crc(doc["held"]):
            raise ValueError("cut short")  # new bytes before old ones: a list, but not ours
        if not isinstance(doc["held"], list):
            raise TypeError("no list")
        same_host = doc["boot_id"] == me["boot_id"] and doc["netns"] == me["netns"]
    except (ValueError, KeyError, TypeError):
        return None  # not a record we wrote, or cut short: nothing in it to trust
    return doc["held"] if same_host else []


def _remove_listed(raw: bytes, me: dict[str, Any], keep: Kept) -> list[tuple[str, str]] | None:
    """What the record lists, removed; None if it is not a whole record of ours. An entry that
    makes no sense (a crc is no proof against a bug or a hand edit) is logged and skipped."""
    entries = _entries(raw, me)
    if entries is None:
        return None
    removed = []
    for entry in entries:
        try:
            found = _remove_one(entry, keep)
        except PermissionError:
            raise  # no NET_ADMIN: the record stays, the agent will say why
        except Exception as e:  # never fatal: the configured VIPs are removed anyway
            log.warning("Held-VIP record: skipping the entry %.80r (%s)", entry, e)
            continue
        if found is not None:
            removed.append(found)
    return removed


def _remove_one(entry: Any, keep: Kept) -> tuple[str, str] | None:
    index, name, address, prefixlen = entry
    if not isinstance(index, int) or not isinstance(prefixlen, int):
        raise TypeError("index and prefix length must be numbers")
    if keep and (index, _normal(str(address)), prefixlen) in keep:
        return None  # handed to the restarted agent: not stale
    try:  # renamed while the agent was dead: the addresses stayed with the index
        current = socket.if_indextoname(index)
    except OSError:
        return None  # the interface was deleted (or re-created): its addresses went with it
    if not delete_address(index, str(address), prefixlen):
        return None
    return str(address), current if current == name else f"{current} (was {name})"


def _normal(address: str) -> str:
    """One spelling per address (``fd00::1`` and ``fd00:0::1`` are one VIP)."""
    try:
        return str(ip_address(address))
    except ValueError:
        return address  # a bad entry: _remove_one says so
