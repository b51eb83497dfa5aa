"""The held-VIP record's file rules and the RTM_DELADDR it sends (no root: no address is
touched; the removal itself is tests/integration/test_held.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from sidecar.net.addrdel import RTM_DELADDR, delete_request
from sidecar.net.held import HeldVips, sweep


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
