"""Networks without multicast, trusted peers only: CARP_PEERS (unicast), strict mode."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

from sidecar.core.protocol import Advert, build_ip_packet
from sidecar.lab import LAB_PASSWORD, VIP, Lab

from .conftest import metric, status, transitions, vip_holders, wait_for

ROOT = Path(__file__).resolve().parents[2]
A, B = "172.16.0.11", "172.16.0.12"


def test_hub_without_multicast_splits_multicast_groups_and_unicast_elects_one(lab: Lab) -> None:
    lab.topo.drop_multicast()
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a", "b"], 10, "split brain: both MASTER")
    lab.stop_agent("a")
    lab.stop_agent("b")
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B)
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "one master over unicast")
    time.sleep(2)
    assert vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP"
    assert metric(lab, "b", "carp_adverts_received_total") >= 2
    lab.topo.unplug("a")
    wait_for(lambda: lab.state("b") == "MASTER", 6, "node-b takes over")
    lab.topo.plug("a")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a preempts back over unicast")


def forge(src: str, dst: str, advskew: int, counter: int, password: str = LAB_PASSWORD,
          strict: bool = False) -> bytes:
    return build_ip_packet(Advert(vhid=1, advbase=1, advskew=advskew, counter=counter),
                           key=password.encode(), vip=IPv4Address(VIP), src=IPv4Address(src),
                           dst=IPv4Address(dst), strict=strict)


def send_from(lab: Lab, node: str, packets: list[bytes], dst: str, rate: float) -> None:
    """Raw IP packets (our own headers, any source) from inside ``node``'s namespace."""
    code = ("import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)\n"
            "s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)\n"
            "data = sys.stdin.buffer.read()\n"
            "for i in range(0, len(data), 56):\n"
            f"    s.sendto(data[i:i + 56], ({dst!r}, 0)); time.sleep({1 / rate})\n")
    subprocess.run(lab.topo[node].argv(sys.executable, "-c", code), input=b"".join(packets),
                   check=True, timeout=120)


def test_forged_unicast_adverts_from_a_non_peer_are_dropped(lab: Lab) -> None:
    lab.start_agent("a", CARP_PEERS=B)
    wait_for(lambda: lab.state("a") == "MASTER", 8, "node-a MASTER alone")
    # right password, better skew, from the client's address: not a listed peer
    send_from(lab, "client", [forge("172.16.0.100", A, 0, n) for n in range(20)], A, 50)
    assert metric(lab, "a", "carp_adverts_dropped_total", reason="not_a_peer") == 20
    assert lab.state("a") == "MASTER" and transitions(lab, "a") == ["BACKUP", "MASTER"]


def test_strict_mode_drops_replays_and_fails_over_on_time(lab: Lab) -> None:
    """The attack: record the master's adverts, kill it, replay them to the backup. Plain CARP
    accepts them (the HMAC covers neither skew nor source, nothing checks the counter) and the
    backup stays quiet; strict mode drops them as replays and the backup takes over on time."""
    for strict in ("false", "true"):
        lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B, CARP_STRICT=strict)
        lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A, CARP_STRICT=strict)
        wait_for(lambda: lab.state("a") == "MASTER" and lab.state("b") == "BACKUP", 10,
                 "node-a MASTER")  # (a VIP left by the SIGKILL of the first round is no proof)
        # the adverts node-a really sent carry its counters: record them off node-b's link
        dump = lab.dir / f"rec-{strict}.pcap"
        cap = lab.topo["b"].popen(["tcpdump", "-Z", "root", "-i", "eth0", "-w", str(dump), "-U",
                                   "ip proto 112 and src host " + A], log=lab.dir / "td.log")
        time.sleep(3.5)
        cap.terminate()
        cap.wait(5)
        from scapy.layers.inet import IP
        from scapy.utils import rdpcap

        recorded = [bytes(p[IP]) for p in rdpcap(str(dump)) if IP in p]
        assert len(recorded) >= 3, (dump.stat().st_size, (lab.dir / "td.log").read_text())
        lab.stop_agent("a", 9)  # gone without a bow-out
        killed = time.monotonic()
        replays = (recorded * 20)[:22]  # 5.5 s of replays, one every 0.25 s
        send_from(lab, "client", replays, B, 4)
        took = time.monotonic() - killed
        assert took > 5.0  # longer than node-b's master-down interval (3.39 s)
        if strict == "false":  # the replays kept node-b quiet the whole time
            assert lab.state("b") == "BACKUP"
            assert metric(lab, "b", "carp_adverts_dropped_total", reason="replay") == 0
        else:
            assert metric(lab, "b", "carp_adverts_dropped_total", reason="replay") >= 20
            st = status(lab, "b")
            assert st["state"] == "MASTER"
            assert st["last_transition"]["reason"] == "master_down"  # type: ignore[index]
            took_over = st["last_transition"]["at"] - (time.time() - took)  # type: ignore[index]
            assert took_over < 3.39 + 0.5, took_over  # on time, as if no replay had come
        lab.stop_agent("b")


def test_peers_behind_a_router_elect_one_master_and_fail_over(tmp_path: Path) -> None:
    """node-a in 10.1.0.0/24, node-b in 10.2.0.0/24, a router between them: adverts arrive
    with TTL 254 (one hop), which unicast mode accepts from listed peers (FreeBSD's rule)."""
    import uuid

    from sidecar.lab.netns import _kill_namespace_processes, sh

    tag = uuid.uuid4().hex[:6]
    ns = {n: f"carp{tag}-{n}" for n in ("a", "r", "b")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ns.values():
            sh("ip", "netns", "add", name)
        for side, net in (("a", "10.1.0"), ("b", "10.2.0")):
            sh("ip", "link", "add", f"c{tag}{side}", "netns", ns[side], "type", "veth",
               "peer", "name", f"r{tag}{side}", "netns", ns["r"])
            sh("ip", "-n", ns[side], "link", "set", f"c{tag}{side}", "name", "eth0")
            sh("ip", "-n", ns[side], "addr", "add", f"{net}.2/24", "dev", "eth0")
            sh("ip", "-n", ns[side], "link", "set", "eth0", "up")
            sh("ip", "-n", ns[side], "link", "set", "lo", "up")
            sh("ip", "-n", ns[side], "route", "add", "default", "via", f"{net}.1")
            sh("ip", "-n", ns["r"], "addr", "add", f"{net}.1/24", "dev", f"r{tag}{side}")
            sh("ip", "-n", ns["r"], "link", "set", f"r{tag}{side}", "up")
        sh("ip", "netns", "exec", ns["r"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
        base.update(PYTHONPATH=str(ROOT), CARP_INTERFACE="eth0", CARP_VHID="1",
                    CARP_PASS=LAB_PASSWORD, CARP_ADDR="10.9.0.1/32")

        def start(side: str, **env: str) -> subprocess.Popen[bytes]:
            log = open(tmp_path / f"{side}.log", "ab")  # noqa: SIM115 - owned by the child
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns[side], sys.executable, "-m", "sidecar.tools.cli", "run"],
                env={**base, "CARP_CONTROL_SOCKET": str(tmp_path / f"{side}.sock"),
                     "CARP_STATE_DIR": str(tmp_path / f"{side}-state"), **env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            return proc

        def state(side: str) -> str:
            r = subprocess.run(["ip", "netns", "exec", ns[side], "curl", "-s", "-m", "1",
                                "http://127.0.0.1:9655/status"], capture_output=True, text=True)
            return r.stdout.split('"state": "')[1].split('"')[0] if '"state"' in r.stdout else ""

        a = start("a", CARP_PEERS="10.2.0.2", CARP_PREEMPT="true")
        start("b", CARP_PEERS="10.1.0.2", CARP_ADVSKEW="100")
        wait_for(lambda: state("a") == "MASTER" and state("b") == "BACKUP", 10, "one master")
        time.sleep(2)
        assert state("b") == "BACKUP", (tmp_path / "b.log").read_text()
        a.kill()
        wait_for(lambda: state("b") == "MASTER", 6, "node-b takes over across the router")
        assert "bad_ttl" not in (tmp_path / "b.log").read_text()
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        for name in ns.values():
            _kill_namespace_processes(name)
            sh("ip", "netns", "del", name, check=False)


def test_subsecond_pair_holds_steady_with_busy_cpus_and_fails_over_fast(lab: Lab) -> None:
    """advbase 0: adverts every 20/256 s (~78 ms); node-b's dead timer is VRRPv3's, 3 x the
    master's interval + its own skew (~336 ms), not ucarp's skew alone (~102 ms)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    try:
        # one after the other: started together on starved cores, whichever interpreter is
        # up first times out first (a start-up race that preemption then settles, not a flap)
        lab.start_agent("a", CARP_ADVBASE="0", CARP_ADVSKEW="20", CARP_PREEMPT="true")
        wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a MASTER")
        lab.start_agent("b", CARP_ADVBASE="0", CARP_ADVSKEW="26")
        wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
        time.sleep(15)  # both cores busy: no spurious takeover
        assert transitions(lab, "b") == ["BACKUP"], transitions(lab, "b")
        assert transitions(lab, "a") == ["BACKUP", "MASTER"]
        assert status(lab, "b")["state"] == "BACKUP"
        lab.topo.unplug("a")
        took = wait_for(lambda: lab.state("b") == "MASTER", 5, "node-b takes over")
        assert took < 1.5, took  # dead timer ~0.34 s (+ polling through a busy machine)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def test_migration_mode_joins_a_multicast_ucarp_group_while_advertising_to_peers(
        lab: Lab) -> None:
    from .conftest import start_ucarp

    start_ucarp(lab, "b", advskew=100)  # the running group: multicast only
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B, CARP_PEERS_MULTICAST="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER, ucarp backs off")
    time.sleep(2)
    assert vip_holders(lab) == ["a"]
    assert metric(lab, "a", "carp_adverts_dropped_total", reason="bad_hmac") == 0
    lab.stop_agent("a", 9)
    wait_for(lambda: vip_holders(lab) == ["b", "a"] or "b" in vip_holders(lab), 6,
             "ucarp takes over")
    lab.topo["a"].run("ip", "addr", "flush", "dev", "eth0", "label", "eth0:0", check=False)
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B, CARP_PEERS_MULTICAST="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a hears ucarp's multicast, preempts")
    assert metric(lab, "a", "carp_adverts_received_total") >= 1
