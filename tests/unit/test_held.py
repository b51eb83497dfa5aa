"""The held-VIP record's file rules and the RTM_DELADDR it sends (no root: no address is
touched; the removal itself is tests/integration/test_held.py)."""

from __future__ import annotations

import json
import resource
import socket
import struct
import zlib
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from sidecar.net.held import HeldVips, sweep
from sidecar.net.rtmsg import (
    RTM_DELADDR,
    RTM_NEWADDR,
    acknowledgements,
    address_request,
    delete_request,
)


def test_delete_request_decodes_with_pyroute2() -> None:
    raw = delete_request(7, "172.16.0.1", 16, seq=1)
    msg = ifaddrmsg(raw)
    msg.decode()
    assert msg["header"]["type"] == RTM_DELADDR and msg["header"]["length"] == len(raw)
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (socket.AF_INET, 16, 7)
    assert msg.get_attr("IFA_LOCAL") == msg.get_attr("IFA_ADDRESS") == "172.16.0.1"
    six = ifaddrmsg(delete_request(3, "fd00::1", 128))
    six.decode()
    assert (six["family"], six["prefixlen"], six.get_attr("IFA_ADDRESS")) == (
        socket.AF_INET6, 128, "fd00::1")


def test_add_request_carries_label_and_flags_and_acks_parse() -> None:
    msg = ifaddrmsg(address_request(RTM_NEWADDR, 2, "10.0.0.5", 24, seq=9, label="eth0:0"))
    msg.decode()
    assert msg["header"]["type"] == RTM_NEWADDR and msg["header"]["sequence_number"] == 9
    assert msg["header"]["flags"] & 0x600 == 0x600  # create, exclusive: EEXIST if present
    assert msg.get_attr("IFA_LABEL") == "eth0:0" and msg["index"] == 2
    six = ifaddrmsg(address_request(RTM_NEWADDR, 2, "fd00::5", 64, seq=1, flags=0x02))
    six.decode()
    assert six["flags"] == 0x02 and six.get_attr("IFA_LABEL") is None
    # two acknowledgements in one datagram (NETLINK_CAP_ACK: header + errno + the request's
    # header), then a cut-short tail that is ignored
    ack = struct.Struct("=LHHLL")
    one = ack.pack(36, 2, 0x100, 7, 0) + struct.pack("=i", 0) + ack.pack(16, 20, 0, 7, 0)
    two = ack.pack(36, 2, 0x100, 8, 0) + struct.pack("=i", -17) + ack.pack(16, 20, 0, 8, 0)
    assert acknowledgements(one + two + b"\x01\x02") == [(7, 0), (8, 17)]


def _records(state: Path) -> list[Path]:
    return sorted((state / "held").glob("*.json"))


def test_a_live_record_is_never_swept(tmp_path: Path) -> None:
    held = HeldVips(tmp_path)
    held.adding(1, "127.0.0.77", 32)  # lo is index 1
    assert sweep(tmp_path) == [] and _records(tmp_path) == [held.path]
    doc = json.loads(held.path.read_text())
    assert doc["held"] == [[1, "lo", "127.0.0.77", 32]]
    held.removed(1, "127.0.0.77")
    assert json.loads(held.path.read_text())["held"] == []
    held.close()
    assert _records(tmp_path) == [], "a clean stop with nothing held deletes the record"


def test_a_dead_record_is_swept_and_foreign_entries_are_not_trusted(tmp_path: Path) -> None:
    held = HeldVips(tmp_path)
    held.adding(1, "127.0.0.77", 32)
    held.close()  # still holding: the file stays, unlocked, as after a SIGKILL
    assert _records(tmp_path) == [held.path]
    record = json.loads(held.path.read_text())
    # an index whose name changed, the address not there: nothing is removed
    record["held"] = [[1, "eth-gone", "127.0.0.77", 32]]
    record["crc"] = zlib.crc32(json.dumps(record["held"], separators=(",", ":")).encode())
    held.path.write_text(json.dumps(record))
    (tmp_path / "held" / "junk.json").write_text("{not json")
    assert sweep(tmp_path) == []
    assert _records(tmp_path) == [tmp_path / "held" / "junk.json"], "left for the agent's sweep"
    untrusted: list[str] = []
    assert sweep(tmp_path, untrusted) == [] and untrusted == ["junk.json"]
    assert _records(tmp_path) == [], "both swept: nothing in them to keep"


def _add_cut_short(held: HeldVips, address: str) -> None:
    """Add under a file size limit inside the new entry: the kernel cuts the write short as a
    full disk does (a short count), leaving a list that stops part-way."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(held.path.read_bytes().rstrip()) + 20, hard))
    try:
        held.adding(1, address, 32)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_record_cut_short_is_said_and_never_read_as_whole(tmp_path: Path) -> None:
    held = HeldVips(tmp_path)
    problems: list[str | None] = []
    held.on_problem = problems.append
    for i in range(20):
        held.adding(1, f"127.0.1.{i}", 32)
    _add_cut_short(held, "127.0.2.1")
    assert problems and problems[0] and "cut short" in problems[0], problems
    assert held.problem == problems[-1]
    held.removed(1, "127.0.2.1")  # shorter again, and it fits: whole again, the tail blanked
    assert held.problem is None and problems[-1] is None
    assert len(json.loads(held.path.read_text())["held"]) == 20
    _add_cut_short(held, "127.0.2.2")
    assert held.problem and "cut short" in held.problem
    held.close()  # still holding: left for the next run, as after a SIGKILL
    untrusted: list[str] = []
    assert sweep(tmp_path, untrusted) == [] and untrusted == [held.path.name]
    assert _records(tmp_path) == []


def test_a_record_that_cannot_be_created_is_an_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "held").write_text("a file where the directory should be")
    with pytest.raises(NotADirectoryError):
        HeldVips(tmp_path)
    assert sweep(tmp_path, []) == []
