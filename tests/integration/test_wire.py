"""On the wire: real ucarp's adverts verify with our HMAC, tshark decodes ours, and forged or
wrongly keyed adverts change nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sidecar.core.auth import carp_key
from sidecar.core.protocol import AdvertError, DropReason, Expect, parse_packet
from sidecar.lab import LAB_PASSWORD, VIP, Lab

from .conftest import dump_on_failure, metric, start_ucarp, status, transitions, vip_holders, wait_for

DATA = Path(__file__).resolve().parents[1] / "data"


def capture(lab: Lab, seconds: float, out: Path, count: int = 4) -> None:
    lab.topo["client"].run("timeout", str(seconds), "tcpdump", "-U", "-q", "-i", "eth0", "-c",
                           str(count), "-w", str(out), "ip proto 112", check=False,
                           timeout=seconds + 5)


def read_pcap_ip_packets(path: Path) -> list[bytes]:
    import scapy.layers.l2  # noqa: F401 - registers Ethernet for rdpcap
    from scapy.utils import rdpcap

    return [bytes(frame)[14:] for frame in rdpcap(str(path))]


def test_real_ucarp_adverts_verify_with_our_hmac(lab: Lab, tmp_path: Path) -> None:
    start_ucarp(lab, "a", advskew=10)
    pcap = tmp_path / "ucarp.pcap"
    capture(lab, 7, pcap, count=3)
    packets = read_pcap_ip_packets(pcap)
    assert len(packets) == 3, dump_on_failure(lab)
    right = Expect(vhid=1, key=carp_key(LAB_PASSWORD), vip=IPv4Address(VIP))
    for raw in packets:
        got = parse_packet(raw, right)
        assert (got.advert.vhid, got.advert.advbase, got.advert.advskew) == (1, 1, 10)
        assert got.src == IPv4Address("172.16.0.11")
        with pytest.raises(AdvertError) as e:
            parse_packet(raw, Expect(vhid=1, key=b"not-it", vip=IPv4Address(VIP)))
        assert e.value.reason is DropReason.BAD_HMAC


def test_tshark_decodes_our_adverts_as_carp(lab: Lab) -> None:
    lab.start_agent("a", CARP_VHID="7", CARP_ADVBASE="2", CARP_ADVSKEW="42")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "MASTER")
    out = lab.topo["client"].run(
        "tshark", "-i", "eth0", "-a", "duration:5", "-f", "ip proto 112",
        "-d", "ip.proto==112,carp", "-Y", "carp", "-T", "fields", "-E", "separator=,",
        "-e", "carp.version", "-e", "carp.type", "-e", "carp.vhid", "-e", "carp.adver_int",
        "-e", "carp.advskew", "-e", "carp.authlen", "-e", "ip.ttl", "-e", "eth.src",
        timeout=30, check=False).stdout.split()
    assert len(out) >= 2, out
    for row in out:
        assert row == "2,1,7,2,42,7,255,00:00:5e:00:00:07", row


FORGE = r"""
import hashlib, hmac, struct, sys
from scapy.all import Ether, IP, Raw, sendp
from scapy.contrib.carp import CARP
kind, key = sys.argv[1], sys.argv[2].encode()
def carp(advbase, advskew, counter=1, version=2, vhid=1, key=key):
    c = counter.to_bytes(8, "big")
    md = hmac.new(key, bytes([2, 1, vhid]) + bytes([172, 16, 0, 1]) + c, hashlib.sha1).digest()
    pkt = CARP(version=version, type=1, vhid=vhid, advskew=advskew, authlen=7, demotion=0,
               advbase=advbase, counter1=counter >> 32, counter2=counter & 0xffffffff,
               **dict(zip(("hmac1", "hmac2", "hmac3", "hmac4", "hmac5"), struct.unpack("!5I", md))))
    return pkt
ttl = 254 if kind == "ttl" else 255
layer = carp(255, 255, version=3 if kind == "version" else 2,
             key=b"wrong" if kind == "hmac" else key)
ip = IP(src="172.16.0.100", dst="224.0.0.18", ttl=ttl, proto=112, tos=0x10) / layer
raw = bytes(ip)
if kind == "checksum":
    raw = raw[:26] + bytes([raw[26] ^ 0xff]) + raw[27:]
if kind == "short":  # a consistent IPv4 packet whose CARP part is cut to 20 bytes
    raw = bytes(IP(src="172.16.0.100", dst="224.0.0.18", ttl=255, proto=112) / Raw(bytes(layer)[:20]))
frame = Ether(src="00:00:5e:00:00:01", dst="01:00:5e:00:00:12", type=0x0800) / Raw(raw)
sendp(frame, iface="eth0", count=3, inter=0.05, verbose=False)
"""


def test_forged_adverts_change_nothing_and_are_counted_by_reason(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    time.sleep(1)
    expected = {"ttl": "bad_ttl", "checksum": "bad_checksum", "version": "bad_version",
                "short": "short", "hmac": "bad_hmac"}
    for kind in expected:
        # each is a bow-out advert: accepted, it would make node-b take over at once
        lab.topo["client"].run(sys.executable, "-c", FORGE, kind, LAB_PASSWORD, timeout=60)
    time.sleep(1)
    for node in ("a", "b"):
        for reason in expected.values():
            assert metric(lab, node, "carp_adverts_dropped_total", reason=reason) == 3, (node, reason)
    assert transitions(lab, "a") == ["BACKUP", "MASTER"]
    assert transitions(lab, "b") == ["BACKUP"]
    assert vip_holders(lab) == ["a"]
    assert metric(lab, "b", "carp_handovers_received_total") == 0
    # a *valid* bow-out from the same forger does hand over: the test above could fail
    lab.topo["client"].run(sys.executable, "-c", FORGE, "valid", LAB_PASSWORD, timeout=60)
    # (node-a, still the better master, takes the VIP back within a second: count, don't poll)
    wait_for(lambda: metric(lab, "b", "carp_transitions_total", to="MASTER",
                            reason="handover") >= 1, 3, "valid bow-out accepted")
    assert metric(lab, "b", "carp_handovers_received_total") == 3


def test_wrong_password_node_never_displaces_the_master(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_PASS="wrong-secret", CARP_PREEMPT="true", CARP_ADVBASE="0",
                    CARP_ADVSKEW="10")
    time.sleep(6)
    assert transitions(lab, "a") == ["BACKUP", "MASTER"]  # never displaced
    assert status(lab, "a")["state"] == "MASTER"
    assert metric(lab, "a", "carp_adverts_dropped_total", reason="bad_hmac") > 3
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="bad_hmac") > 3
    counters = status(lab, "a")["counters"]  # /status reads the same counters back
    assert counters["adverts_dropped"]["bad_hmac"] > 3 and counters["adverts_sent"] > 3  # type: ignore[index]
    logs = (lab.dir / "a.log").read_text() + (lab.dir / "b.log").read_text()
    metrics = (lab.get("a", "http://127.0.0.1:9655/metrics") or "") + str(status(lab, "b"))
    for secret in ("wrong-secret", LAB_PASSWORD):
        assert secret not in logs and secret not in metrics


def test_pcap_regeneration_script_is_runnable() -> None:
    script = DATA / "regenerate_ucarp_pcap.py"
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
