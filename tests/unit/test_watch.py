"""`carp-sidecar watch`'s pure part: frames in, lines and verdicts out (scapy decodes)."""

from __future__ import annotations

from ipaddress import IPv4Address

from sidecar.core.auth import DEFAULT_GROUP
from sidecar.core.protocol import Advert, build_frame, build_ip_packet
from sidecar.tools.watch import Key, Watch

VIP = IPv4Address("172.16.0.1")


def frame(src: str, vhid: int = 1, password: bytes = b"geheim", advskew: int = 0,
          counter: int = 7) -> bytes:
    packet = build_ip_packet(Advert(vhid=vhid, advbase=1, advskew=advskew, counter=counter),
                             key=password, vip=VIP, src=IPv4Address(src))
    return build_frame(packet, vhid=vhid, group=DEFAULT_GROUP, broadcast=False)


def test_auth_is_checked_with_the_configured_password_and_vip() -> None:
    w = Watch({1: Key(b"geheim", VIP)})
    ok = w.frame(10.0, frame("10.0.0.1"))
    bad = w.frame(10.1, frame("10.0.0.2", password=b"other", advskew=100))
    other = w.frame(10.2, frame("10.0.0.3", vhid=7))
    assert ok is not None and bad is not None and other is not None
    assert (ok.auth, bad.auth, other.auth) == ("ok", "bad", "unknown")
    assert ok.counter == 7 and bad.advskew == 100 and ok.since_previous is None
    again = w.frame(11.0, frame("10.0.0.1", counter=8))
    assert again is not None and again.since_previous == 1.0
    line = Watch.line(again)
    assert "10.0.0.1" in line and "00:00:5e:00:00:01" in line and "+1.000s" in line
    assert line.endswith("auth=ok")
    assert w.frame(12.0, b"\xff" * 6 + b"\x00" * 6 + b"\x08\x06" + b"\x00" * 28) is None  # ARP


def test_summary_names_master_split_brain_silence_and_likely_causes() -> None:
    w = Watch({1: Key(b"geheim", VIP)})
    for t in range(5):
        w.frame(100.0 + t, frame("10.0.0.1", counter=t))
        w.frame(100.0 + t, frame("10.0.0.2", password=b"wrong", counter=t))
    w.frame(100.0, frame("10.0.0.9", vhid=7))
    text = w.summary(104.5)
    assert "vhid 1: 2 nodes advertise at once: split brain" in text
    assert "bad: password or VIP differ from ours" in text
    assert "vhid 7:" in text and "another group (not the configured VHID)" in text
    later = w.summary(120.0)
    assert "vhid 1: no master (every sender has fallen silent)" in later
    assert Watch({}).summary(0) == "no CARP advertisements seen"


def bow_out(src: str, counter: int) -> bytes:
    packet = build_ip_packet(Advert(vhid=1, advbase=255, advskew=255, counter=counter),
                             key=b"geheim", vip=VIP, src=IPv4Address(src))
    return build_frame(packet, vhid=1, group=DEFAULT_GROUP, broadcast=False)


def test_a_handover_inside_the_window_is_not_a_split_brain() -> None:
    """8 s of watching across a graceful handover: the old master's adverts, its bow-out, the
    new master's adverts. Both are 'recent', but they never advertised together."""
    w = Watch({1: Key(b"geheim", VIP)})
    for t in range(5):
        w.frame(100.0 + t, frame("10.0.0.11", counter=t))
    w.frame(104.5, bow_out("10.0.0.11", 5))
    for t in range(4):
        w.frame(104.51 + t * (1 + 100 / 256), frame("10.0.0.12", advskew=100, counter=9 + t))
    text = w.summary(109.0)
    assert "split brain" not in text, text
    assert "bowed out (handed over)" in text
    assert "vhid 1: master 10.0.0.12 (took over from 10.0.0.11)" in text, text


def test_a_preemption_crossing_for_one_advert_is_not_a_split_brain() -> None:
    w = Watch({1: Key(b"geheim", VIP)})
    for t in range(5):
        w.frame(100.0 + t, frame("10.0.0.12", advskew=100, counter=t))
    for t in range(3):  # the preferred node preempts; the old master sends one last advert
        w.frame(104.2 + t, frame("10.0.0.11", counter=9 + t))
    text = w.summary(106.5)
    assert "split brain" not in text and "master 10.0.0.11" in text, text


def test_watch_does_not_print_scapys_warning(capfd: object) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from sidecar.tools.watch import _scapy; _scapy()"],
                       capture_output=True, text=True, timeout=60)
    assert "overwrites" not in r.stdout + r.stderr, r.stderr
