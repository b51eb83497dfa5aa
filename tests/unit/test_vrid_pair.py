"""One VRID, two families on one interface (keepalived lets an IPv4 and an IPv6 instance share
a VRID: their adverts differ by family and MAC): two instances, told apart everywhere an
instance is keyed, named or labelled."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_interface
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.config.runconfig import RunConfig, Vhid
from sidecar.config.settings import ConfigError, load
from sidecar.config.values import auth
from sidecar.runtime.reload import plan
from sidecar.runtime.resume import ResumedInstance, ResumeRecord, keeper_key

PAIR = ('protocol = "vrrp3"\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 9\naddr = ["10.0.0.1/24"]\n{four}'
        '[[vhid]]\ninterface = "eth0"\nvhid = 9\naddr = ["fe80::9/64", "2001:db8::1/64"]\n{six}')


def pair(tmp_path: Path, four: str = "", six: str = "") -> Any:
    path = tmp_path / "pair.toml"
    path.write_text(PAIR.format(four=four, six=six))
    return load({"CARP_CONFIG": str(path)})


def test_an_ipv4_and_an_ipv6_instance_share_a_vrid_told_apart(tmp_path: Path) -> None:
    v4, v6 = pair(tmp_path).runtime().instances
    assert (v4.ipv6, v6.ipv6) == (False, True)
    assert v4.key == ("eth0", 9, False) and v6.key == ("eth0", 9, True)
    # CARP_STATE_DIR's files (maintenance, counters) and the logs: eth0-vhid9(-ipv6).json
    assert (v4.name, v6.name) == ("eth0/vhid9", "eth0/vhid9/ipv6")
    # the metrics' labels (group, vhid, interface): the default groups differ
    assert (v4.group_name, v6.group_name) == ("vhid9-10.0.0.1", "vhid9-fe80::9")


@pytest.mark.parametrize(("four", "six", "message"), [
    ("", 'addr = ["10.0.0.2/24"]\n', "vhid 9 on eth0 is already instance #1"),
    ('group = "web"\n', 'group = "web"\n', "group 'web' of vhid 9 on eth0 is already "
                                           "instance #1's"),
    ("vmac = true\n", "vmac = true\n", "vmac (CARP_VMAC): vrrp.9 is already the macvlan of "
                                       "instance #1; name this one (keepalived's next name: "
                                       "vrrp6.9)"),
])
def test_what_the_pair_would_share_is_refused_in_one_line(tmp_path: Path, four: str, six: str,
                                                          message: str) -> None:
    text = PAIR.format(four=four, six=six)
    if six.startswith("addr"):  # two IPv4 instances of one VRID: as before
        text = text.replace('addr = ["fe80::9/64", "2001:db8::1/64"]\n', "")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load({"CARP_CONFIG": str(path)})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_named_macvlans_let_the_pair_both_use_vmac(tmp_path: Path) -> None:
    v4, v6 = pair(tmp_path, "vmac = true\n", 'vmac = "vrrp6.9"\n').runtime().instances
    assert (v4.vmac_name, v6.vmac_name) == ("vrrp.9", "vrrp6.9")


def config(*instances: Vhid) -> RunConfig:
    return RunConfig(instances=instances, checks={}, metrics_listen="off",
                     control_socket=Path("/run/c.sock"), log_format="text", source="x")


def vhid(*vips: str) -> Vhid:
    ifs = tuple(ip_interface(v) for v in vips)
    return Vhid(vhid=9, vips=ifs, auth=auth(b"", ifs), interface="eth0",  # type: ignore[arg-type]
                protocol="vrrp3")


def test_a_reload_adds_and_removes_one_of_the_pair_leaving_the_other() -> None:
    v4, v6 = vhid("10.0.0.1/24"), vhid("2001:db8::1/64")
    grown = plan(config(v4), config(v4, v6))
    assert grown.added == [v6] and not grown.removed and not grown.replaced
    assert grown.changes == ["vhid 9 on eth0 (IPv6): added"]
    shrunk = plan(config(v4, v6), config(v4))
    assert shrunk.removed == [v6] and not shrunk.added and not shrunk.replaced
    both = plan(config(v4, v6), config(v4, vhid("2001:db8::1/64", "2001:db8::2/64")))
    assert [new for _, new in both.updated] == [both.updated[0][1]] and not both.replaced
    moved = plan(config(v4), config(v6))  # alone, into IPv6: the same instance, replaced
    assert moved.replaced == [(v4, v6)] and not moved.added and not moved.removed


def test_the_restart_record_and_the_keeper_tell_the_pair_apart() -> None:
    r4 = ResumedInstance("eth0", 9, "MASTER", [(2, "10.0.0.1", 24)])
    r6 = ResumedInstance("eth0", 9, "BACKUP", [], ipv6=True)
    record = ResumeRecord(kind="in_place", pid=1, version="1", boot_id="b", netns=1, until=1.0,
                          restarts={}, started=1.0, instances=[r4, r6])
    back = ResumeRecord.from_json(record.to_json())
    assert [r.key for r in back.instances] == [("eth0", 9, False), ("eth0", 9, True)]
    assert [keeper_key(r.key) for r in back.instances] == ["eth0/9", "eth0/9/ipv6"]
    old = record.to_json().replace(',"ipv6":false', "").replace(',"ipv6":true', "")
    assert ResumeRecord.from_json(old).instances[0].key == ("eth0", 9, False)  # older record


class Receiver:
    def __init__(self, vhid: int) -> None:
        self.vhid, self.adverts, self.drops = vhid, list[bytes](), 0

    @property
    def expect(self) -> Any:
        return SimpleNamespace()

    def advert_packet(self, packet: bytes) -> None:
        self.adverts.append(packet)

    def dropped(self, error: Exception) -> None:
        self.drops += 1

    def interface_changed(self, present: bool, running: bool, reattached: bool) -> None:
        pass


def test_the_channel_routes_each_family_to_its_instance_of_the_vrid() -> None:
    import asyncio
    from ipaddress import IPv6Address

    from sidecar.net.channel import Channel

    channel = Channel("eth0", asyncio.new_event_loop())
    r4, r6 = Receiver(9), Receiver(9)
    channel.add(r4, IPv4Address("10.0.0.11"), IPv4Address("224.0.0.18"), [])  # type: ignore
    channel.add(r6, IPv6Address("fe80::11"), None, [])  # type: ignore[arg-type]
    ipv4 = bytes([0x45]) + bytes(8) + bytes([112]) + bytes(2) + bytes([10, 0, 0, 12]) + \
        bytes(4) + bytes([0x31, 9]) + bytes(30)
    ipv6 = bytes([0x60]) + bytes(5) + bytes([112, 255]) + bytes(15) + b"\x12" + bytes(16) + \
        bytes([0x31, 9]) + bytes(30)
    channel.ip_packet(ipv4)
    channel.ip6_packet(ipv6)
    assert (r4.adverts, r6.adverts) == ([ipv4], [ipv6])
    assert len(channel.every()) == 2
    channel.remove(r6)  # type: ignore[arg-type]
    assert channel.receivers == {9: r4} and not channel.receivers6
    channel.remove(r4)  # type: ignore[arg-type]
    assert not channel.every()


def test_the_import_names_the_pair_s_macvlans_as_keepalived(tmp_path: Path) -> None:
    from sidecar.tools.keepalived_import import translate

    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance V6 {\n interface eth0\n virtual_router_id 9\n use_vmac\n"
                    " virtual_ipaddress {\n  fe80::9/64\n  2001:db8::1/64\n }\n}\n"
                    "vrrp_instance V4 {\n interface eth0\n virtual_router_id 9\n use_vmac\n"
                    " virtual_ipaddress {\n  10.0.0.1/24\n }\n}\n")
    result = translate(conf)
    out = tmp_path / "carp.toml"
    out.write_text(result.toml)
    v6, v4 = load({"CARP_CONFIG": str(out)}, offline=True).runtime().instances
    # keepalived's create_vmac_name: the first gets vrrp.9, an IPv4 one then vrrp1.9
    assert (v6.ipv6, v6.vmac_name, v4.vmac_name) == (True, "vrrp.9", "vrrp1.9")


def test_one_process_each_the_pair_s_default_sockets_differ() -> None:
    base = {"CARP_INTERFACE": "eth0", "CARP_VHID": "9", "CARP_PROTOCOL": "vrrp3"}
    four = load({**base, "CARP_ADDR": "10.0.0.1/24"}).control_socket
    six = load({**base, "CARP_ADDR": "fe80::9/64,2001:db8::1/64"}).control_socket
    assert (str(four), str(six)) == ("/run/carp-sidecar/eth0-vhid9.sock",
                                     "/run/carp-sidecar/eth0-vhid9-ipv6.sock")


def test_carp_sidecar_status_shows_which_of_the_pair() -> None:
    from sidecar.tools.statusview import render

    doc = {"instances": [{"vhid": 9, "interface": "eth0", "state": "MASTER", "ipv6": False},
                         {"vhid": 9, "interface": "eth0", "state": "BACKUP", "ipv6": True}]}
    heads = [line for line in render(doc, now=0).splitlines() if line.startswith("vhid")]
    assert heads[0].startswith("vhid 9 on eth0: MASTER")
    assert heads[1].startswith("vhid 9 on eth0 (IPv6): BACKUP")


def test_carp_sidecar_restart_reports_each_of_the_pair() -> None:
    from sidecar.tools.restartcli import lost_masters, outcome

    def doc(six: str) -> dict[str, Any]:
        return {"agent": {"version": "1"}, "instances": [
            {"interface": "eth0", "vhid": 9, "state": "MASTER", "ipv6": False},
            {"interface": "eth0", "vhid": 9, "state": six, "ipv6": True}]}

    assert lost_masters(doc("MASTER"), doc("BACKUP")) == "eth0 vhid 9 (IPv6) is BACKUP"
    assert outcome(doc("MASTER"), doc("MASTER"), 0.5).endswith(
        "eth0 vhid 9 MASTER kept, eth0 vhid 9 (IPv6) MASTER kept")
