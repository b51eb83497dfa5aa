"""`carp-sidecar watch` on a real link: our adverts, real ucarp's with the right and the wrong
password, another group; the pcap it writes; the summary's verdicts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sidecar.lab import LAB_PASSWORD, VIP, Lab

from .conftest import start_ucarp, vip_holders, wait_for

ROOT = Path(__file__).resolve().parents[2]


def watch(lab: Lab, seconds: float, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    base.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(lab.topo["client"].argv(sys.executable, "-m", "sidecar.tools.cli", "watch",
                                                  "--seconds", str(seconds), *args),
                          capture_output=True, text=True, env=base, timeout=seconds + 60)


CONFIGURED = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": LAB_PASSWORD,
              "CARP_ADDR": f"{VIP}/16"}


def test_watch_tells_our_adverts_and_ucarps_apart_by_auth_and_role(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
    start_ucarp(lab, "b", advskew=100, password="not-the-lab-one")  # wrong password: 2 masters
    wait_for(lambda: vip_holders(lab) == ["a", "b"], 8, "ucarp MASTER too (split brain)")
    pcap = lab.dir / "carp.pcap"
    r = watch(lab, 4, "--pcap", str(pcap), **CONFIGURED)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    ours = [ln for ln in lines if " 172.16.0.11 " in ln and "auth=" in ln]
    theirs = [ln for ln in lines if " 172.16.0.12 " in ln and "auth=" in ln]
    assert len(ours) >= 3 and all("auth=ok" in ln and "vhid 1 " in ln for ln in ours), ours
    assert len(theirs) >= 3 and all("auth=bad" in ln and "advskew 100" in ln for ln in theirs)
    assert "00:00:5e:00:00:01" in ours[0] and "+1.0" in ours[1]  # the interval since the last
    summary = r.stdout.split("\n\n", 1)[1]
    assert "2 nodes advertise at once: split brain" in summary
    assert "bad: password or VIP differ from ours" in summary
    from scapy.utils import rdpcap

    assert len(rdpcap(str(pcap))) == len(ours) + len(theirs)


def test_watch_sees_the_master_fall_silent_and_the_backup_take_over(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    start_ucarp(lab, "b", advskew=100)  # Debian's ucarp, right password: a silent backup
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")

    def stop_a() -> None:
        time.sleep(2)
        lab.topo.unplug("a")

    import threading

    threading.Thread(target=stop_a, daemon=True).start()
    r = watch(lab, 9, **CONFIGURED)
    summary = r.stdout.split("\n\n", 1)[1]
    assert "vhid 1: master 172.16.0.12" in summary, r.stdout
    a_row = next(ln for ln in summary.splitlines() if ln.strip().startswith("172.16.0.11"))
    b_row = next(ln for ln in summary.splitlines() if ln.strip().startswith("172.16.0.12"))
    assert "ok; silent" in a_row and "ok; advertising (master)" in b_row, summary


def test_watch_without_a_password_still_decodes_and_says_why_auth_is_unknown(lab: Lab) -> None:
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
    r = watch(lab, 3, "--interface", "eth0", "--count", "2")
    assert r.returncode == 0
    adverts = [ln for ln in r.stdout.splitlines() if "auth=" in ln]
    assert len(adverts) == 2 and all("auth=unknown" in ln for ln in adverts)
    assert "no usable configuration" in r.stderr
    assert "not checked (no password and VIP configured)" in r.stdout
    assert LAB_PASSWORD not in r.stdout + r.stderr


def test_watch_prints_no_scapy_warning_before_the_adverts(lab: Lab) -> None:
    # scapy warned "Unable to guess type (interface=eth0 ...)" on its sniffing socket, as the
    # first line a user saw, before any advert
    lab.start_agent("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
    r = watch(lab, 2.5, **CONFIGURED)
    assert r.returncode == 0, r.stderr
    assert not any(ln.startswith("WARNING") for ln in r.stderr.splitlines()), r.stderr
    assert r.stdout.splitlines()[0].split()[1] == "172.16.0.11", r.stdout  # an advert first
