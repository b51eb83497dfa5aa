"""`carp-sidecar restart` (control verb ``restart``): the agent execs the installed version in
its own process while a forked keeper advertises, and the VIP never moves (docs/architecture.md,
"Restart without a move"). Two real agents in network namespaces; what the backup hears is
sniffed in its namespace, the VIP sampled every 10 ms in the master's."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sidecar.lab import VIP, Lab
from sidecar.serve.control import send_command

from .conftest import dump_on_failure, max_gap, metric, status, transitions, vip_holders, wait_for

A_SRC = "172.16.0.11"
B_SRC = "172.16.0.12"

# adverts from ``src`` as the node hears them: arrival (monotonic), advbase, advskew, counter
SNIFF = r"""
import json, socket, sys, time
end, src = time.monotonic() + float(sys.argv[1]), socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind(("eth0", 0))
s.settimeout(0.1)
print("ready", flush=True)
while time.monotonic() < end:
    try:
        data = s.recv(2048)
    except OSError:
        continue
    if len(data) < 40 or data[9] != 112 or data[12:16] != src:
        continue
    c = data[(data[0] & 15) * 4:]
    print(json.dumps([time.monotonic(), c[5], c[2], int.from_bytes(c[8:16], "big")]), flush=True)
"""

# the VIP on eth0, sampled every 10 ms: samples, absent
SAMPLE = r"""
import socket, sys, time
from sidecar.net.rtmsg import ipv4_addresses
end, vip = time.monotonic() + float(sys.argv[1]), sys.argv[2]
index, n, absent = socket.if_nametoindex("eth0"), 0, 0
print("ready", flush=True)
while time.monotonic() < end:
    n += 1
    absent += not any(str(a.ip) == vip for a in ipv4_addresses(index))
    time.sleep(0.01)
print(n, absent, flush=True)
"""


def watch(lab: Lab, node: str, code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(lab.topo[node].argv(sys.executable, "-c", code, *args),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def lines(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=30)
    return out.splitlines()


def restart(lab: Lab, node: str) -> str:
    return send_command(lab.dir / f"{node}.sock", "restart", timeout=30)


def agent_of(lab: Lab, node: str) -> dict[str, Any]:
    st = lab.status(node)
    return st["agent"] if st else {}


def restarted(lab: Lab, node: str, before: float, timeout: float = 15) -> dict[str, Any]:
    """/status once the new image runs its instances (it serves HTTP a moment before)."""
    def done() -> dict[str, Any] | None:
        st = lab.status(node)
        ok = st and st["agent"]["started"] != before and st["state"] != "INIT"
        return st if ok else None
    wait_for(done, timeout, f"node-{node} restarted")
    return status(lab, node)


def log_of(lab: Lab, node: str) -> str:
    return (lab.dir / f"{node}.log").read_text()


def test_master_restarts_in_place_without_a_move(lab: Lab) -> None:
    """Same PID, the VIP never absent, the backup never leaves BACKUP, the adverts keep their
    rhythm with strict mode's counter rising, a passing check does not start unknown."""
    lab.start_agent("a", CARP_PREEMPT="true", CARP_HEALTH_TCP="127.0.0.1:9655",
                    CARP_STRICT="true", CARP_PEERS=B_SRC)  # unicast: the keeper's too
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_STRICT="true", CARP_PEERS=A_SRC)
    wait_for(lambda: vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP", 15,
             "node-a MASTER, node-b BACKUP")
    pid, before = lab.agents["a"].pid, agent_of(lab, "a")
    b_before = transitions(lab, "b")
    sniff = watch(lab, "b", SNIFF, "7", A_SRC)
    sample = watch(lab, "a", SAMPLE, "6", VIP)
    time.sleep(1.2)
    reply = restart(lab, "a")
    assert reply.startswith(f"ok: restarting in place (pid {pid}, version "), reply
    st = restarted(lab, "a", before["started"])
    # a passing check is known at once: not unknown, not demoted
    assert st["health"]["healthy"] is True and not st["demoted"], st["health"]
    adverts = [json.loads(x) for x in lines(sniff)]
    n, absent = map(int, lines(sample)[-1].split())
    assert lab.agents["a"].poll() is None, dump_on_failure(lab)  # the same process: no exit
    assert absent == 0 and n > 100, (n, absent)
    assert vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP"
    assert transitions(lab, "b") == b_before
    times, counters = [a[0] for a in adverts], [a[3] for a in adverts]
    assert max_gap(times) <= 1.0 + 0.6, max_gap(times)  # interval + start, at advbase 1
    assert all(x < y for x, y in itertools.pairwise(counters)), counters  # strict: rising
    assert all(a[1] == 1 and a[2] == 0 for a in adverts), adverts  # never a bow-out
    agent = st["agent"]
    assert agent["pid"] == pid and agent["started"] > before["started"]
    assert agent["version"] and agent["last_restart"]["kind"] == "in_place"
    assert st["state"] == "MASTER" and st["last_transition"]["reason"] == "resumed"
    assert metric(lab, "a", "carp_restarts_total", kind="in_place", result="resumed") == 1
    assert metric(lab, "a", "carp_restarts_total", kind="in_place", result="refused") == 0
    text = log_of(lab, "a")
    assert "Restarting in place: version" in text and "Restarted in place in " in text
    assert "eth0 vhid 1 kept MASTER with 172.16.0.1" in text
    assert "Removed stale VIP" not in text and "sweep of earlier runs' records failed" not in text
    # the old image's held-VIP record swept (its VIPs kept), the new one's lists them
    [held] = (lab.dir / "a-state" / "held").glob("*.json")
    assert VIP in held.read_text()
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="replay") == 0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert not any(b"keeper" in Path(f"/proc/{c}/cmdline").read_bytes() for c in children)


def test_backup_restarts_demoted_and_failing_and_stays_so(lab: Lab) -> None:
    """No state directory: the record carries the operator's demotion; a failing check stays
    failing (no moment of healthy); the master does not notice."""
    lab.start_agent("a", CARP_PREEMPT="true")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_STATE_DIR="", CARP_PREEMPT="true",
                    CARP_HEALTH_TCP="127.0.0.1:1", CARP_HEALTH_INTERVAL="0.2")
    wait_for(lambda: vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP", 15,
             "node-a MASTER, node-b BACKUP")
    wait_for(lambda: status(lab, "b")["health"]["healthy"] is False, 5, "node-b unhealthy")
    assert "maintenance=on" in send_command(lab.dir / "b.sock", "demote")
    a_before, b_before = transitions(lab, "a"), agent_of(lab, "b")
    pid = lab.agents["b"].pid
    assert restart(lab, "b").startswith("ok: restarting in place")
    st = restarted(lab, "b", b_before["started"])
    assert st["state"] == "BACKUP" and st["maintenance"] is True
    assert st["health"]["healthy"] is False
    assert st["agent"]["pid"] == pid and lab.agents["b"].poll() is None
    assert metric(lab, "b", "carp_restarts_total", kind="in_place", result="resumed") == 1
    # again: the new process got the password variables of the start (CARP_PASS) too
    assert restart(lab, "b").startswith("ok: restarting in place")
    st = restarted(lab, "b", st["agent"]["started"])
    assert st["state"] == "BACKUP" and st["maintenance"] is True and st["agent"]["restarts"] == 2
    assert metric(lab, "b", "carp_restarts_total", kind="in_place", result="resumed") == 2
    assert send_command(lab.dir / "b.sock", "reload", timeout=30) == "reloaded: no changes"
    time.sleep(1)
    assert vip_holders(lab) == ["a"] and transitions(lab, "a") == a_before
    assert "MASTER" not in transitions(lab, "b")


def test_a_configuration_the_new_version_refuses_changes_nothing(lab: Lab) -> None:
    env = lab.dir / "a.env"
    env.write_text("CARP_DEADRATIO=3\n")
    lab.start_agent("a", "--env-file", str(env), CARP_ADVBASE="0", CARP_ADVSKEW="40")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    before = agent_of(lab, "a")
    env.write_text("CARP_DEADRATIO=0\n")
    try:
        restart(lab, "a")
        raise AssertionError("the restart was not refused")
    except OSError as e:
        assert str(e).startswith("error: restart refused: the new version does not accept"), e
        assert "DEADRATIO" in str(e), e
    time.sleep(0.5)
    assert lab.agents["a"].poll() is None and agent_of(lab, "a")["started"] == before["started"]
    assert vip_holders(lab) == ["a"] and lab.state("a") == "MASTER"
    assert metric(lab, "a", "carp_restarts_total", kind="in_place", result="refused") == 1
    assert "Restart in place refused" in log_of(lab, "a")


def test_a_new_image_that_crashes_hands_over_within_the_master_down_interval(
        lab: Lab, tmp_path: Path) -> None:
    """The keeper sees its successor die (EOF) and bows out: the backup takes over at once,
    the VIP leaves the old host, never two holders."""
    site = tmp_path / "site"
    site.mkdir()
    path = f"{site}:{Path(__file__).resolve().parents[2]}"
    lab.start_agent("a", CARP_PREEMPT="true", PYTHONPATH=path)
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP", 15,
             "node-a MASTER, node-b BACKUP")
    # only the restarted image crashes: the pre-flight child and the first start did not
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '--resume-fd' in sys.argv:\n    os._exit(1)\n")
    assert restart(lab, "a").startswith("ok: restarting in place")
    assert lab.agents["a"].wait(15) == 1  # the new image's crash ends the process
    crashed = time.monotonic()
    wait_for(lambda: lab.state("b") == "MASTER", 4, "node-b MASTER")
    took = time.monotonic() - crashed
    assert took < 3.0 + 100 / 256, took  # within one master-down interval (at once, in fact)
    wait_for(lambda: vip_holders(lab) == ["b"], 2, "the VIP on node-b only")
    for _ in range(20):  # never two holders after
        assert vip_holders(lab) == ["b"]
        time.sleep(0.05)
    assert status(lab, "b")["last_transition"]["reason"] == "handover"


def test_while_a_slow_new_image_starts_the_keeper_keeps_the_rhythm(
        lab: Lab, tmp_path: Path) -> None:
    """Multicast, adverts every 156 ms: the new image takes a second more to start, so the
    keeper's adverts are what the backup hears meanwhile (the counter one up from the
    agent's), with the VIP's kernel lease renewed; the backup stays BACKUP."""
    site = tmp_path / "site"
    site.mkdir()
    path = f"{site}:{Path(__file__).resolve().parents[2]}"
    lab.start_agent("a", CARP_PREEMPT="true", CARP_ADVBASE="0", CARP_ADVSKEW="40",
                    PYTHONPATH=path)
    lab.start_agent("b", CARP_ADVBASE="0", CARP_ADVSKEW="100")
    wait_for(lambda: vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP", 20,
             "node-a MASTER, node-b BACKUP")
    (site / "sitecustomize.py").write_text(
        "import sys, time\nif '--resume-fd' in sys.argv:\n    time.sleep(1.0)\n")
    before, b_before = agent_of(lab, "a"), transitions(lab, "b")
    sniff = watch(lab, "b", SNIFF, "5", A_SRC)
    sample = watch(lab, "a", SAMPLE, "4.5", VIP)
    time.sleep(0.5)
    asked = time.monotonic()
    assert restart(lab, "a").startswith("ok: restarting in place")
    restarted(lab, "a", before["started"])
    ready = time.monotonic()
    adverts = [json.loads(x) for x in lines(sniff)]
    n, absent = map(int, lines(sample)[-1].split())
    meanwhile = [a for a in adverts if asked + 0.3 < a[0] < ready - 0.3]
    assert len(meanwhile) >= 3, (asked, ready, adverts)  # never silent while it starts
    # the agent's counters are random (ucarp's, until a peer's is heard); the keeper's first
    # goes on from the agent's last, and the new image from the keeper's: found by value, not
    # by a time window (the pre-flight's length varies with the machine's load)
    counters = [a[3] for a in adverts]
    first = next((i for i in range(1, len(counters)) if counters[i] == counters[i - 1] + 1),
                 None)
    assert first is not None, counters
    keepers = [a for a in adverts[first:] if a[0] < ready - 0.3]
    assert len(keepers) >= 3, (first, ready, adverts)  # the keeper's, while the image starts
    assert all(b > a for a, b in itertools.pairwise(counters[first - 1:])), counters
    gap = max_gap([a[0] for a in adverts])
    # what matters is that b never waits out its master-down interval (1.6 s); the gap itself
    # (the keeper's last advert to the new image's first, ~0.2 s here, more on a loaded
    # machine) is measured by tests/bench/bench_restart.py, not asserted to the millisecond
    assert gap < 1.2, (gap, adverts)
    assert absent == 0 and n > 100, (n, absent)
    assert all(a[1] == 0 and a[2] == 40 for a in adverts), adverts  # never a bow-out
    assert lab.state("b") == "BACKUP" and transitions(lab, "b") == b_before
    assert vip_holders(lab) == ["a"] and lab.state("a") == "MASTER"
    print(f"largest advert gap at 156 ms: {gap * 1000:.0f} ms")


def test_a_resumed_master_keeps_serving_its_replicated_paths(lab: Lab) -> None:
    """Without CARP_STATE_DIR the epoch lives in memory: the record carries it, and the
    resumed master serves the same epoch (no new one): the backup's pulls carry on."""
    from .test_sync import data, path_status, replicated, sync_env, sync_status

    (data(lab, "a") / "seed.txt").write_text("seed\n")
    lab.start_agent("a", **sync_env(lab, "a", CARP_PREEMPT="true", CARP_STATE_DIR="off"))
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="100"))
    wait_for(lambda: replicated(lab, "b", "seed.txt", "seed\n"), 15, "seed on node-b")
    epoch, before = sync_status(lab, "a")["epoch"], agent_of(lab, "a")
    assert epoch >= 1
    assert restart(lab, "a").startswith("ok: restarting in place")
    assert restarted(lab, "a", before["started"])["state"] == "MASTER"
    (data(lab, "a") / "new.txt").write_text("new\n")
    wait_for(lambda: replicated(lab, "b", "new.txt", "new\n"), 15, "new.txt on node-b")
    assert sync_status(lab, "a")["epoch"] == epoch and lab.state("b") == "BACKUP"
    assert path_status(lab, "b")["caught_up"], path_status(lab, "b")
    assert "Serving vhid 1's replicated paths again after the restart" in log_of(lab, "a")


def test_a_record_the_new_image_cannot_read_has_the_keeper_bow_out_at_once(
        lab: Lab, tmp_path: Path) -> None:
    """The keeper comes in argv, apart from the record: the new image frees it, it bows out
    (the backup takes over at once), and the new image starts afresh: one holder."""
    site = tmp_path / "site"
    site.mkdir()
    lab.start_agent("a", PYTHONPATH=f"{site}:{Path(__file__).resolve().parents[2]}")
    wait_for(lambda: lab.state("a") == "MASTER", 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")  # no preempt: the afresh node-a stays BACKUP
    wait_for(lambda: vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP", 15,
             "node-a MASTER, node-b BACKUP")
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '--resume-fd' in sys.argv:\n"
        "    fd = int(sys.argv[sys.argv.index('--resume-fd') + 1])\n"
        "    os.ftruncate(fd, 0); os.pwrite(fd, b'{\"kind\": \"in_place_v2\"}', 0)\n")
    pid = lab.agents["a"].pid
    assert restart(lab, "a").startswith("ok: restarting in place")
    asked = time.monotonic()
    wait_for(lambda: lab.state("b") == "MASTER", 3, "node-b MASTER at once")
    assert time.monotonic() - asked < 2.0  # a bow-out, not a master-down interval
    wait_for(lambda: vip_holders(lab) == ["b"] and lab.state("a") == "BACKUP", 10,
             "node-a restarted as BACKUP, the VIP on node-b only")
    for _ in range(20):
        assert vip_holders(lab) == ["b"]
        time.sleep(0.05)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert not children, children  # no keeper left, not even a zombie
    assert agent_of(lab, "a")["last_restart"]["result"] == "afresh"
    assert metric(lab, "a", "carp_restarts_total", kind="in_place", result="afresh") == 1
