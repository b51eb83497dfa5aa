#!/usr/bin/env python3
"""Regenerate ucarp-1.5.2-adverts.pcap: three adverts from Debian's real ucarp (root needed).

ucarp runs in a throw-away network namespace (vhid 1, password "geheim", VIP 172.16.0.1,
advskew 10, source 172.16.0.11) and tcpdump captures in a second one on the same bridge.
``--check`` writes to a temporary file instead and only verifies the capture.
"""

from __future__ import annotations

import sys
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.core.auth import carp_key
from sidecar.core.protocol import Expect, parse_packet
from sidecar.lab.netns import Topology

TARGET = Path(__file__).with_name("ucarp-1.5.2-adverts.pcap")


def regenerate(out: Path) -> int:
    topo = Topology().create({"a": "172.16.0.11/16", "client": "172.16.0.100/16"})
    try:
        topo.start("a", ["ucarp", "-i", "eth0", "-s", "172.16.0.11", "-v", "1", "-p", "geheim",
                         "-a", "172.16.0.1", "-b", "1", "-k", "10", "-f", "none"])
        topo["client"].run("timeout", "8", "tcpdump", "-U", "-q", "-i", "eth0", "-c", "3", "-w",
                           str(out), "ip proto 112", check=False, timeout=15)
    finally:
        topo.destroy()
    import scapy.layers.l2  # noqa: F401 - registers Ethernet for rdpcap
    from scapy.utils import rdpcap

    expect = Expect(vhid=1, key=carp_key("geheim"), vip=IPv4Address("172.16.0.1"))
    frames = rdpcap(str(out))
    for frame in frames:
        parse_packet(bytes(frame)[14:], expect)
    print(f"{out}: {len(frames)} ucarp adverts, all verified")
    return 0 if len(frames) == 3 else 1


if __name__ == "__main__":
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as d:
            sys.exit(regenerate(Path(d) / "check.pcap"))
    sys.exit(regenerate(TARGET))
