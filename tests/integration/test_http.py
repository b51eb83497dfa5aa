"""The HTTP endpoint never slows the protocol: a slowloris client changes no advert timing."""

from __future__ import annotations

import itertools
import subprocess
import sys

from sidecar.lab import Lab

from .conftest import status, wait_for

SLOWLORIS = r"""
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
conns = []
while time.monotonic() < end:
    while len(conns) < 200:
        try:
            s = socket.create_connection(("172.16.0.11", 9655), timeout=1)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            conns.append(s)
        except OSError:
            break
    for s in list(conns):
        try:
            s.sendall(b"X")  # one byte of a header that never ends
        except OSError:
            conns.remove(s)
    time.sleep(0.3)
"""


def test_slowloris_client_never_delays_adverts(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: lab.state("a") == "MASTER", 10, "MASTER")
    attack = subprocess.Popen(lab.topo["client"].argv(sys.executable, "-c", SLOWLORIS, "9"))
    lab.topo.procs.append(attack)
    try:
        dump = lab.topo["client"].run("timeout", "8", "tcpdump", "-tt", "-n", "-l", "-i", "eth0",
                                      "ip proto 112", check=False, timeout=20).stdout
        # the endpoint still answers an honest client during the attack
        assert status(lab, "a")["state"] == "MASTER"
    finally:
        attack.wait(20)
    stamps = [float(line.split()[0]) for line in dump.splitlines() if line.strip()]
    assert len(stamps) >= 7, dump
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1.5, f"advert gaps under attack: {gaps}"
    assert attack.returncode == 0
