"""Gratuitous ARP as ucarp sends it (plus repeat/refresh), and broadcast mode with real ucarp."""

from __future__ import annotations

import re
import time

from sidecar.lab import Lab

from .conftest import vip_holders, wait_for, write_scripts


def arp_lines(lab: Lab, seconds: float) -> list[str]:
    out = lab.topo["client"].run("timeout", str(seconds), "tcpdump", "-tt", "-e", "-n", "-l",
                                 "-i", "eth0", "arp", check=False, timeout=seconds + 10).stdout
    return [line for line in out.splitlines() if "ARP" in line]


def a_mac(lab: Lab) -> str:
    out = lab.topo["a"].run("ip", "-o", "link", "show", "dev", "eth0").stdout
    match = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert match
    return match.group(1)


def test_takeover_garps_are_ucarps_and_repeat_is_configurable(lab: Lab) -> None:
    lab.start_agent("a", CARP_GARP_REPEAT="3")
    lines = arp_lines(lab, 7.5)  # master-down 3 s, then GARP at once + with the 2nd and 3rd advert
    mac = a_mac(lab)
    # ucarp's GARP: an ARP request from the real MAC to broadcast, sender = target = VIP,
    # and the target MAC is our own MAC (not zeros), which tcpdump prints in parentheses
    garps = [line for line in lines
             if f"Request who-has 172.16.0.1 ({mac}) tell 172.16.0.1" in line]
    assert len(garps) == 3, lines
    for line in garps:
        assert line.split()[1] == mac and "> ff:ff:ff:ff:ff:ff" in line
    stamps = [float(line.split()[0]) for line in garps]
    assert 1.5 < stamps[1] - stamps[0] < 2.6  # the second goes with the 2nd periodic advert


def test_garp_refresh_while_master(lab: Lab) -> None:
    lab.start_agent("a", CARP_GARP_REFRESH="1")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "MASTER")
    time.sleep(3)  # the takeover GARPs are over
    garps = [line for line in arp_lines(lab, 4.2) if "tell 172.16.0.1" in line]
    assert 3 <= len(garps) <= 5, garps


def test_nomcast_adverts_are_broadcast_and_interoperate_with_ucarp_minus_m(lab: Lab) -> None:
    lab.start_agent("a", CARP_NOMCAST="true", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "sidecar MASTER")
    up, down = write_scripts(lab)
    cmd = ["ucarp", "-i", "eth0", "-s", "172.16.0.12", "-v", "1", "-p", "lab-only", "-a",
           "172.16.0.1", "-b", "1", "-k", "100", "-u", str(up), "-d", str(down), "-z", "-M",
           "-f", "none"]
    lab.agents["b"] = lab.topo.start("b", cmd, log=lab.dir / "b.log")
    out = lab.topo["client"].run("timeout", "3", "tcpdump", "-e", "-n", "-l", "-i", "eth0",
                                 "ip proto 112", check=False, timeout=10).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all("> ff:ff:ff:ff:ff:ff" in line for line in lines), out
    assert "224.0.0.18" in out  # the IP destination stays the group, like ucarp -M
    time.sleep(3)
    assert vip_holders(lab) == ["a"]  # ucarp -M hears us and stays BACKUP
    lab.topo.unplug("a")
    wait_for(lambda: vip_holders(lab) == ["b"], 8, "ucarp -M takes over")
    lab.topo.plug("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "sidecar preempts back in broadcast mode")
