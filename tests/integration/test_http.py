"""The HTTP endpoint never slows the protocol: a slowloris client changes no advert timing."""

from __future__ import annotations

import subprocess
import sys

from sidecar.lab import Lab

from .conftest import advert_times, max_gap, status, wait_for

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
        stamps = advert_times(lab, 8)
        # the endpoint still answers an honest client during the attack
        assert status(lab, "a")["state"] == "MASTER"
    finally:
        attack.wait(20)
    assert len(stamps) >= 7, stamps
    assert max_gap(stamps) < 1.5, f"advert times under attack: {stamps}"
    assert attack.returncode == 0
