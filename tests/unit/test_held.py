"""The held-VIP record's file rules and the RTM_DELADDR it sends (no root: no address is
touched; the removal itself is tests/integration/test_held.py)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import struct
import traceback
import zlib
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from sidecar.net.held import HeldVips, identity, reserve_for, sweep
from sidecar.net.netlink import Netlink
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
    held.flush()
    assert sweep(tmp_path) == [] and _records(tmp_path) == [held.path]
    doc = json.loads(held.path.read_text())
    assert doc["held"] == [[1, "lo", "127.0.0.77", 32]]
    held.removed(1, "127.0.0.77")
    held.flush()
    assert json.loads(held.path.read_text())["held"] == []
    held.close()
    assert _records(tmp_path) == [], "a clean stop with nothing held deletes the record"


def test_close_writes_what_was_left_unwritten_and_a_later_write_is_a_no_op(
        tmp_path: Path) -> None:
    held = HeldVips(tmp_path)
    held.adding(1, "127.0.0.77", 32)  # its write was scheduled, the add cancelled at exit
    held.close()
    doc = json.loads(held.path.read_text().strip())
    assert doc["held"] == [[1, "lo", "127.0.0.77", 32]], "the next run's sweep must see it"
    held.removed(1, "127.0.0.77")
    held.flush()  # the scheduled write runs after the close: nothing, no closed fd written
    assert json.loads(held.path.read_text().strip())["held"] == [[1, "lo", "127.0.0.77", 32]]


def test_a_dead_record_is_swept_and_foreign_entries_are_not_trusted(tmp_path: Path) -> None:
    held = HeldVips(tmp_path)
    held.adding(1, "127.0.0.77", 32)
    held.flush()
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


def _in_a_child(body: Callable[[], None]) -> None:
    """``body`` in a forked child: a file size limit it sets never applies to this worker
    (another test's writes would get EFBIG)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        status = 0
        try:
            body()
        except BaseException:
            traceback.print_exc()
            status = 1
        os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0, "the child failed (its traceback is above)"


def _add_cut_short(held: HeldVips, address: str) -> None:
    """Add under a file size limit inside the new entry: the kernel cuts the write short as a
    full disk does (a short count), leaving a list that stops part-way. Only in a child of
    the test worker (:func:`_in_a_child`)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(held.path.read_bytes().rstrip()) + 20,
                                               resource.RLIM_INFINITY))
    held.adding(1, address, 32)
    held.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_a_record_cut_short_is_said_and_never_read_as_whole(tmp_path: Path) -> None:
    _in_a_child(lambda: _cut_short(tmp_path))
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY
    untrusted: list[str] = []
    assert sweep(tmp_path, untrusted) == [] and len(untrusted) == 1, "the child's record"
    assert _records(tmp_path) == []


def _cut_short(tmp_path: Path) -> None:
    held = HeldVips(tmp_path)
    problems: list[str | None] = []
    held.on_problem = problems.append
    for i in range(20):
        held.adding(1, f"127.0.1.{i}", 32)
    held.flush()
    _add_cut_short(held, "127.0.2.1")
    assert problems and problems[0] and "cut short" in problems[0], problems
    assert held.problem == problems[-1]
    held.removed(1, "127.0.2.1")  # shorter again, and it fits: whole again, the tail blanked
    held.flush()
    assert held.problem is None and problems[-1] is None
    assert len(json.loads(held.path.read_text())["held"]) == 20
    _add_cut_short(held, "127.0.2.2")
    assert held.problem and "cut short" in held.problem
    held.close()  # still holding: left for the next run, as after a SIGKILL


def test_a_record_that_cannot_be_created_is_an_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "held").write_text("a file where the directory should be")
    with pytest.raises(NotADirectoryError):
        HeldVips(tmp_path)
    assert sweep(tmp_path, []) == []


def _write_record(state: Path, held: list[object], crc: bool = True) -> Path:
    (state / "held").mkdir(exist_ok=True)
    path = state / "held" / "123-deadbeef.json"
    doc: dict[str, object] = dict(identity(), held=held)
    if crc:
        doc["crc"] = zlib.crc32(json.dumps(held, separators=(",", ":")).encode())
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("bad", [
    [-1, "lo", "127.0.0.99", 32],  # OverflowError in if_indextoname
    [1, "lo", "not-an-ip", 32],  # ValueError
    [1, "lo", "127.0.0.99", 300],  # struct.error: a prefix over 255
    [1, "lo"], "junk",  # not an entry at all
], ids=["index", "address", "prefix", "short", "junk"])
def test_a_bad_entry_in_a_whole_record_is_skipped_never_fatal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: list[object]) -> None:
    """A valid crc proves the record whole, not its entries sane (a bug, a hand edit): the
    sweep (run's before validation, the agent's at start) logs the entry and goes on."""
    fine = [1, "lo", "127.0.0.99", 32]  # not on lo: nothing removed, but it is tried
    path = _write_record(tmp_path, [bad, fine])
    untrusted: list[str] = []
    assert sweep(tmp_path, untrusted) == [] and untrusted == []
    assert not path.exists(), "read, its entries tried, and deleted"
    assert caplog.text.count("skipping the entry") == 1, caplog.text


def test_a_record_of_the_previous_release_is_read(tmp_path: Path) -> None:
    """1a36780's format: no crc, compact-less json.dumps, truncated then written whole: an
    upgrade must still remove what a killed old agent held."""
    path = _write_record(tmp_path, [[1, "lo", "127.0.0.99", 32]], crc=False)
    assert path.read_text().startswith('{"boot_id": "')  # exactly the old json.dumps(doc)
    untrusted: list[str] = []
    assert sweep(tmp_path, untrusted) == [] and untrusted == [], "trusted, not deleted unread"
    assert not path.exists()
    # not whole (padding after it, or a piece): not the old format, never trusted
    for text in ('{"boot_id": "x", "netns": 1, "held": []}   ', '{"held": [[1, "lo"'):
        (tmp_path / "held" / "x.json").write_text(text)
        untrusted = []
        assert sweep(tmp_path, untrusted) == [] and untrusted == ["x.json"]


def test_the_adds_of_one_turn_are_one_write_made_before_any_is_sent(tmp_path: Path) -> None:
    """255 VHIDs x 16 VIPs becoming MASTER together: one rewrite of the record, not 4080 (a
    stand-in kernel: a unit test adds no address to the host)."""
    held = HeldVips(tmp_path)
    seen: list[int] = []

    async def kernel(kind: int, index: int, vip: object, label: str | None = None,
                     flags: int = 0) -> int:
        seen.append(len(json.loads(held.path.read_bytes())["held"]))  # on disk when sent
        return 0

    vips = [IPv4Interface(f"127.0.{i // 200}.{i % 200 + 1}/32") for i in range(400)]

    async def main() -> None:
        nl = Netlink(held)
        nl._write = kernel  # type: ignore[method-assign]
        try:
            before = held.writes
            await asyncio.gather(*(nl.add_address(1, vip, None) for vip in vips))
            assert held.writes - before == 1
            assert seen == [len(vips)] * len(vips), "every add listed on disk before it is sent"
        finally:
            nl.close()

    asyncio.run(main())


def test_the_reservation_fits_the_configuration_and_grows_on_a_reload(tmp_path: Path) -> None:
    """255 VHIDs x 16 IPv6 VIPs on interfaces with 15-character names: ~330 KB, more than
    the 256 KiB reserved before."""
    entry = [4294967295, "x" * 15, str(IPv6Interface("ffff:ffff::1:2:3:4/128").ip), 128]
    worst = [[*entry[:2], "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 128]] * 4080
    doc = dict(identity(), crc=4294967295, held=worst)
    assert len(json.dumps(doc, separators=(",", ":"))) <= reserve_for(4080)
    held = HeldVips(tmp_path, reserve_for(2))
    assert held.path.stat().st_size == reserve_for(2)
    held.reserve(reserve_for(4080))
    assert held.path.stat().st_size == reserve_for(4080)
    json.loads(held.path.read_bytes())  # whole, padded
    held.close()
