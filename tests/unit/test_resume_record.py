"""The restart record (sidecar.runtime.resume) and the lifetime request (sidecar.net.rtmsg):
what a successor may trust, with no privileges."""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.net import rtmsg
from sidecar.net.held import identity
from sidecar.runtime import resume
from sidecar.runtime.resume import ResumedCheck, ResumedInstance, ResumeRecord


def record(**changes: object) -> ResumeRecord:
    me = identity()
    fields: dict[str, object] = dict(
        kind="on_stop", pid=41, version="1.2.0", boot_id=me["boot_id"], netns=me["netns"],
        until=time.monotonic() + 5, restarts={"in_place/resumed": 2}, started=1.7e9,
        instances=[ResumedInstance("eth0", 7, "MASTER", [(3, "10.0.0.100", 32),
                                                         (3, "fd00::100", 128)],
                                   master_since=1.7e9, sent_at=time.monotonic(),
                                   advert_interval=1.0, maintenance={"operator": 1.7e9})],
        checks={"web": ResumedCheck(True), "db": ResumedCheck(False, 1.7e9)})
    fields.update(changes)
    return ResumeRecord(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_everything() -> None:
    r = record(booted=resume.boot_time(), written=12.5, on_stop_until=[1.7e9, 99.0])
    r = replace(r, instances=[replace(r.instances[0], epoch=4)])
    assert ResumeRecord.from_json(r.to_json()) == r
    assert r.vips() == {(3, "10.0.0.100", 32), (3, "fd00::100", 128)}


def test_the_keepers_descriptor_and_pid_never_travel_in_the_record() -> None:
    """They come in the exec's argv: a record the new image cannot read still frees them."""
    r = record(kind="in_place", keeper_fd=9, keeper_pid=1234)
    assert "keeper" not in r.to_json()
    assert ResumeRecord.from_json(r.to_json()).keeper_fd is None


def test_an_older_record_without_the_new_fields_parses() -> None:
    doc = json.loads(record().to_json())
    for name in ("booted", "written", "on_stop_until"):
        del doc[name]
    del doc["instances"][0]["epoch"]
    old = ResumeRecord.from_json(json.dumps(doc))
    assert old.booted is None and old.instances[0].epoch == 0


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"kind": "in_place"}', "not json",
    json.dumps({**json.loads(record().to_json()), "kind": "reboot"}),
    json.dumps({**json.loads(record().to_json()), "instances": [{"vhid": 1}]}),
    json.dumps({**json.loads(record().to_json()), "until": "soon"}),
])
def test_anything_else_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError, match="not a restart record"):
        ResumeRecord.from_json(text)


def test_usable_only_on_this_boot_namespace_and_before_until() -> None:
    now = time.monotonic()
    assert record(until=now + 1).why_not(now) is None
    assert "expired 2.0 s ago" in (record(until=now - 2).why_not(now) or "")
    assert "reboot" in (record(boot_id="another-boot").why_not(now) or "")
    assert "namespace" in (record(netns=1).why_not(now) or "")
    # a later judgement (the keeper's last advert) instead of the record's until
    assert record(until=now - 2).why_not(now, until=now + 1) is None
    assert "expired" in (record(until=now + 5).why_not(now, until=now - 1) or "")


def test_without_a_boot_id_the_boot_time_tells_a_reboot(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's ProtectProc=/ProcSubset=pid hide boot_id: "" on both sides says nothing."""
    me = {**identity(), "boot_id": ""}
    monkeypatch.setattr(resume, "identity", lambda: me)
    now, booted = time.monotonic(), resume.boot_time()
    assert record(boot_id="", booted=booted).why_not(now) is None
    assert record(boot_id="", booted=booted + 1.0).why_not(now) is None  # slewing, rounding
    assert "unknown" in (record(boot_id="", booted=None).why_not(now) or "")
    assert "reboot" in (record(boot_id="", booted=booted - 3600).why_not(now) or "")


def test_with_a_boot_id_a_stepped_wall_clock_costs_nothing() -> None:
    """The boot time moves with a wall clock stepped between the two processes: with the boot
    id readable, only the id decides."""
    assert record(booted=resume.boot_time() - 3600).why_not(time.monotonic()) is None


def test_until_ends_before_the_first_backup_would_take_over() -> None:
    fast = ResumedInstance("eth0", 1, "MASTER", [], sent_at=100.0, advert_interval=0.1)
    slow = ResumedInstance("eth0", 2, "MASTER", [], sent_at=99.0, advert_interval=1.0)
    backup = ResumedInstance("eth0", 3, "BACKUP", [], sent_at=None, advert_interval=1.0)
    # sub-second: the margin is one interval (0.5 s would be past the backups' patience)
    assert resume.until_for([fast, slow, backup], now=100.05) == pytest.approx(
        100.0 + 3 * 0.1 - 0.1)
    assert resume.until_for([slow, backup], now=100.05) == pytest.approx(
        99.0 + 3 * 1.0 - resume.SAFETY)
    assert resume.until_for([backup], now=100.0) == pytest.approx(160.0)
    # the kernel's lifetime is whole seconds, at least one
    assert resume.lifetime_for(until=102.9, now=100.0) == 2
    assert resume.lifetime_for(until=100.2, now=100.0) == 1


def test_memfd_carries_it_and_is_inheritable() -> None:
    r = record(kind="in_place")
    fd = resume.to_memfd(r)
    assert os.get_inheritable(fd)
    assert resume.from_fd(fd) == r


def test_state_dir_record_written_whole_read_and_discarded(tmp_path: Path) -> None:
    assert resume.read_state_dir(tmp_path) is None
    r = record()
    resume.write_state_dir(tmp_path, r)
    path = tmp_path / resume.RESUME_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert resume.read_state_dir(tmp_path) == r
    assert not list(tmp_path.glob(".*.tmp"))
    resume.discard_state_dir(tmp_path)
    assert resume.read_state_dir(tmp_path) is None
    path.write_text('{"kind": "on_stop"')  # cut short
    with pytest.raises(ValueError):
        resume.read_state_dir(tmp_path)


def _attrs(message: bytes) -> dict[int, bytes]:
    found, offset = {}, rtmsg.HEADER.size + 8
    while offset + 4 <= len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        found[kind] = message[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


@pytest.mark.parametrize(("seconds", "expected"), [(2, 2), (None, 0xFFFFFFFF), (0, 1)])
def test_lifetime_request_replaces_only_the_lifetimes(seconds: int | None, expected: int) -> None:
    raw = rtmsg.lifetime_request(5, "10.0.0.100", 32, seconds, seq=7)
    length, kind, flags, seq, _ = rtmsg.HEADER.unpack_from(raw)
    assert (length, kind, seq) == (len(raw), rtmsg.RTM_NEWADDR, 7)
    assert flags & rtmsg.NLM_F_REPLACE and not flags & (rtmsg.NLM_F_EXCL | rtmsg.NLM_F_CREATE)
    attrs = _attrs(raw)
    assert struct.unpack("=IIII", attrs[rtmsg.IFA_CACHEINFO])[:2] == (expected, expected)
    assert rtmsg.IFA_LABEL not in attrs  # the VIP keeps its label
    v6 = _attrs(rtmsg.lifetime_request(5, "fd00::1", 128, 3))
    assert struct.unpack("=I", v6[rtmsg.IFA_FLAGS]) == (rtmsg.IFA_F_NODAD,)
