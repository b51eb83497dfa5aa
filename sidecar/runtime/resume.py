"""What a restart without a move carries from one agent process to the next (docs/architecture.md,
"Restart without a move"): the record, where it travels, and when it may still be used.

Two ways to restart keep the VIP in place:

- ``in_place`` (`carp-sidecar restart`): the running agent execs the installed version in its
  own process (same PID: a container's PID 1, a systemd unit's main process). The record
  travels in an in-memory file whose descriptor the exec keeps; a forked *keeper* advertises
  meanwhile (sidecar.runtime.keeper).
- ``on_stop`` (`carp-sidecar restart --on-stop`, then `podman restart`, `docker compose up -d`):
  the stop signal ends the process without a bow-out; the record waits in ``CARP_STATE_DIR``
  for the next process on the same state directory (a new container on the kept volume).

Either way the record is only good until ``until`` (CLOCK_MONOTONIC, which a stepped wall clock
does not move and every container of the host shares), on the same boot and network namespace:
after that the backups have taken over, and the new process starts afresh. Meanwhile the
VIPs carry a kernel lifetime (:func:`sidecar.net.rtmsg.set_lifetime`) ending then, so a
successor that never comes (a crash loop, an image without NET_ADMIN) cannot leave a second
holder behind: the kernel removes the address itself.

Standard library only: ``carp-sidecar run`` reads it before validating (sidecar.tools.launch).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sidecar.net.held import identity

RESUME_FILE = "restart.json"  # in CARP_STATE_DIR: an on_stop restart's record
KINDS = ("in_place", "on_stop")
MAX_RECORD_BYTES = 4 * 1024 * 1024  # 255 VHIDs x 16 VIPs fit many times over
SAFETY = 0.5  # s: `until` ends this much before the backups' master-down interval would


@dataclass(frozen=True)
class ResumedInstance:
    """One VHID as the old process left it."""

    interface: str
    vhid: int
    state: str  # "MASTER" or "BACKUP" (anything else starts afresh)
    vips: list[tuple[int, str, int]]  # (ifindex, address, prefix length) on the interface
    master_since: float | None = None  # Unix time
    sent_at: float | None = None  # CLOCK_MONOTONIC: its last advert (MASTER)
    advert_interval: float = 1.0  # s, as it advertised
    maintenance: dict[str, float] = field(default_factory=dict)  # source -> since (Unix)
    epoch: int = 0  # its replication epoch (CARP_SYNC_PATHS; kept in memory only without
    # CARP_STATE_DIR): a resumed master serves the same epoch, not a new one
    ipv6: bool = False  # an IPv6 VRRP instance (its VRID may also be an IPv4 instance's)

    @property
    def key(self) -> tuple[str, int, bool]:
        return (self.interface, self.vhid, self.ipv6)


def keeper_key(key: tuple[str, int, bool]) -> str:
    """The restart keeper's name of an instance in its reply (``eth0/9``, ``eth0/9/ipv6``)."""
    return f"{key[0]}/{key[1]}" + "/ipv6" * key[2]


@dataclass(frozen=True)
class ResumedCheck:
    healthy: bool | None
    failed_since: float | None = None


@dataclass(frozen=True)
class ResumeRecord:
    kind: str
    pid: int  # the process that wrote it
    version: str  # its version
    boot_id: str
    netns: int
    until: float  # CLOCK_MONOTONIC: not resumed after this
    restarts: dict[str, int]  # carp_restarts_total so far, by "kind/result" (carried over)
    started: float  # Unix time the old process started
    instances: list[ResumedInstance]
    checks: dict[str, ResumedCheck] = field(default_factory=dict)
    keeper_fd: int | None = None  # in_place: our end of the keeper's socket (given by the
    keeper_pid: int | None = None  # exec's argv, --keeper-fd/--keeper-pid: never from JSON)
    booted: float | None = None  # Unix time of the boot (boot_id may be unreadable)
    written: float | None = None  # CLOCK_MONOTONIC when the restart began (its duration)
    on_stop_until: list[float] | None = None  # an armed --on-stop: [Unix, monotonic] ends

    # ---- JSON ----
    def to_json(self) -> str:
        doc = asdict(self)
        del doc["keeper_fd"], doc["keeper_pid"]  # this process's: they travel in argv
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ResumeRecord:
        """ValueError naming what is wrong: a record that does not parse is never used."""
        try:
            doc = json.loads(text)
            instances = [ResumedInstance(
                interface=str(i["interface"]), vhid=int(i["vhid"]), state=str(i["state"]),
                vips=[(int(x), str(a), int(p)) for x, a, p in i["vips"]],
                master_since=_opt_float(i.get("master_since")),
                sent_at=_opt_float(i.get("sent_at")),
                advert_interval=float(i.get("advert_interval", 1.0)),
                maintenance={str(k): float(v) for k, v in i.get("maintenance", {}).items()},
                epoch=int(i.get("epoch", 0)), ipv6=bool(i.get("ipv6", False)))
                for i in doc["instances"]]
            checks = {str(k): ResumedCheck(None if v["healthy"] is None else bool(v["healthy"]),
                                           _opt_float(v.get("failed_since")))
                      for k, v in doc.get("checks", {}).items()}
            record = cls(kind=str(doc["kind"]), pid=int(doc["pid"]), version=str(doc["version"]),
                         boot_id=str(doc["boot_id"]), netns=int(doc["netns"]),
                         until=float(doc["until"]),
                         restarts={str(k): int(v) for k, v in doc["restarts"].items()},
                         started=float(doc["started"]), instances=instances, checks=checks,
                         booted=_opt_float(doc.get("booted")),
                         written=_opt_float(doc.get("written")),
                         on_stop_until=None if doc.get("on_stop_until") is None else
                         [float(x) for x in doc["on_stop_until"]][:2])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a restart record ({type(e).__name__}: {e})") from None
        if record.kind not in KINDS:
            raise ValueError(f"not a restart record (kind {record.kind!r})")
        return record

    # ---- validity ----
    def why_not(self, now: float | None = None, until: float | None = None) -> str | None:
        """Why this record may not be used here and now, or None if it may. ``until``: a
        later judgement of it (the keeper's last advert), instead of the record's."""
        me = identity()
        if self.boot_id != me["boot_id"]:
            return "written before a reboot"
        # boot_id unreadable (systemd ProtectProc=, ProcSubset=pid): the boot time tells
        if self.booted is None and not self.boot_id:
            return "the boot it was written in is unknown (no boot_id, no boot time)"
        # only then: a wall clock stepped between the two processes moves the boot time too,
        # and must not cost a same-boot restart its resume
        if not self.boot_id and self.booted is not None \
                and abs(self.booted - boot_time()) > BOOT_SLACK:
            return "written before a reboot (another boot time)"
        if self.netns != me["netns"]:
            return "written in another network namespace"
        now = time.monotonic() if now is None else now
        until = self.until if until is None else until
        if now >= until:
            return f"expired {now - until:.1f} s ago (the backups have taken over)"
        return None

    def vips(self) -> set[tuple[int, str, int]]:
        return {v for i in self.instances for v in i.vips}


BOOT_SLACK = 2.0  # s: the boot time read twice differs by the clock's slewing, not more


def boot_time() -> float:
    """Unix time of this boot, from the two clocks (a stepped wall clock moves it: then the
    record is not trusted, which only costs a start afresh)."""
    return round(time.time() - time.monotonic(), 1)


def until_for(instances: list[ResumedInstance], now: float, deadratio: int = 3) -> float:
    """The last moment a successor may resume: before the first backup would take over, i.e.
    ``deadratio`` advert intervals after a MASTER's last advert, less a margin: :data:`SAFETY`,
    or one advert interval when that is shorter (sub-second adverts: 0.5 s would be past the
    backups' whole patience). Without a MASTER there is nothing a backup could take: a
    minute."""
    ends = [(i.sent_at if i.sent_at is not None else now)
            + deadratio * i.advert_interval - min(SAFETY, i.advert_interval)
            for i in instances if i.state == "MASTER"]
    return min(ends) if ends else now + 60.0


def lifetime_for(until: float, now: float) -> int:
    """The kernel lifetime (whole seconds, at least 1) that ends a VIP near ``until``."""
    return max(1, int(until - now))


# ---- where it travels ----
def to_memfd(record: ResumeRecord) -> int:
    """An inheritable in-memory file holding the record (in_place: the exec keeps it; no disk,
    so a full disk does not stop a restart)."""
    fd = os.memfd_create("carp-sidecar-resume", 0)
    os.write(fd, record.to_json().encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def from_fd(fd: int) -> ResumeRecord:
    with os.fdopen(fd, "rb") as f:
        return ResumeRecord.from_json(f.read(MAX_RECORD_BYTES))


def write_state_dir(state_dir: Path, record: ResumeRecord) -> None:
    """on_stop: written whole (a temporary file, fsync, rename) or not at all; OSError if the
    directory cannot take it (then the stop bows out as usual)."""
    path = state_dir / RESUME_FILE
    tmp = state_dir / f".{RESUME_FILE}.{os.getpid()}.tmp"
    data = record.to_json().encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(28, "short write")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def read_state_dir(state_dir: Path) -> ResumeRecord | None:
    """The waiting on_stop record, or None; ValueError if one is there but unreadable."""
    try:
        raw = (state_dir / RESUME_FILE).read_bytes()[:MAX_RECORD_BYTES]
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot read {state_dir / RESUME_FILE}: {e.strerror or e}") from None
    return ResumeRecord.from_json(raw)


def discard_state_dir(state_dir: Path) -> None:
    """A record is used once: the process that read it (resumed or not) deletes it."""
    with contextlib.suppress(OSError):
        (state_dir / RESUME_FILE).unlink(missing_ok=True)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)

