"""The held-VIP record's file rules and the RTM_DELADDR it sends (no root: no address is
touched; the removal itself is tests/integration/test_held.py)."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

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
    # an index whose name changed (a re-created interface): nothing is removed
    record["held"] = [[1, "eth-gone", "127.0.0.77", 32]]
    held.path.write_text(json.dumps(record))
    (tmp_path / "held" / "junk.json").write_text("{not json")
    assert sweep(tmp_path) == []
    assert _records(tmp_path) == [], "both swept: nothing in them to keep"
