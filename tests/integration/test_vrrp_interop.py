"""Mixed VRRP groups with Debian's real keepalived 2.2.7, either way round (issue 35).

One module-scoped lab (nodes a 172.16.0.11 and b 172.16.0.12 on one bridge); every test starts
its own keepalived (own config, pid files, log; foreground, VRRP only) and agent, and the fixture
stops both and clears the VIP afterwards. v3 runs at advert_int 0.2 s to keep the file short;
v2 needs whole seconds, so its tests are the few that time a resign against a master-down wait.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.lab import VIP, Lab
from sidecar.lab.netns import require_root_and_tools, stop_process

from .conftest import metric, status, vip_holders

KEEPALIVED = "/usr/sbin/keepalived"
ADDR = {"a": "172.16.0.11", "b": "172.16.0.12"}  # b's is the higher: it wins a priority tie
VRID = 7
RUNS = itertools.count(1)
why = require_root_and_tools([KEEPALIVED])
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


@dataclass
class Keepalived:
    node: str
    log: Path
    proc: subprocess.Popen[bytes]

    def states(self) -> list[str]:
        return re.findall(r"\(VI_1\) Entering (\w+) STATE", self.log.read_text(errors="replace"))

    def state(self) -> str | None:
        states = self.states()
        return states[-1] if states else None

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")


@dataclass
class Group:
    """The lab, and what the current test started in it."""

    lab: Lab
    keepalived: list[Keepalived] = field(default_factory=list)

    def start_keepalived(self, node: str, *, version: int = 3, priority: int = 100,
                         advert_int: float = 0.2, unicast: bool = False, password: str = "",
                         nopreempt: bool = False, track: Path | None = None,
                         vip: str = VIP) -> Keepalived:
        base = self.lab.dir / f"ka-{node}-{next(RUNS)}"  # fresh files for every start
        conf = base.with_suffix(".conf")
        conf.write_text(keepalived_conf(node, version=version, priority=priority,
                                        advert_int=advert_int, unicast=unicast,
                                        password=password, nopreempt=nopreempt, track=track,
                                        vip=vip))
        log = base.with_suffix(".log")
        cmd = [KEEPALIVED, "-n", "-l", "-D", "-f", str(conf), "-p", f"{base}.pid",
               "-r", f"{base}.vrrp.pid", "-c", f"{base}.check.pid", "--vrrp"]
        ka = Keepalived(node, log, self.lab.topo.start(node, cmd, log=log))
        self.keepalived.append(ka)
        return ka

    def start_ours(self, node: str, *, version: int = 3, priority: int = 100,
                   advert_int: float = 0.2, unicast: bool = False, password: str = "",
                   **extra: str) -> None:
        env = {"CARP_PROTOCOL": f"vrrp{version}", "CARP_PRIORITY": str(priority),
               "CARP_ADVERT_INT": f"{advert_int:g}", "CARP_VHID": str(VRID),
               "CARP_PASS": password, "CARP_IF_ALIAS": ""}
        if unicast:
            env["CARP_PEERS"] = ADDR["b" if node == "a" else "a"]
        self.lab.start_agent(node, **{**env, **extra})

    def clear(self) -> None:
        for node in list(self.lab.agents):
            self.lab.stop_agent(node)
        for ka in self.keepalived:
            stop_process(ka.proc)
        self.keepalived.clear()
        for node in ADDR:
            self.lab.topo.plug(node)
            self.lab.topo[node].run("ip", "addr", "del", f"{VIP}/16", "dev", "eth0", check=False)
            for log in [*self.lab.dir.glob(f"{node}.log"), *self.lab.dir.glob(f"ka-{node}-*")]:
                log.unlink()


def keepalived_conf(node: str, *, version: int, priority: int, advert_int: float,
                    unicast: bool, password: str, nopreempt: bool, track: Path | None,
                    vip: str = VIP) -> str:
    other = ADDR["b" if node == "a" else "a"]
    lines = ["global_defs {", f"  router_id node_{node}", "  script_user root",
             "  enable_script_security", "}"]
    if track is not None:  # a weight script: demotes the node while ``track`` exists
        lines += ["vrrp_script chk {", f'  script "/usr/bin/test ! -e {track}"',
                  "  interval 1", "  fall 1", "  rise 1", "  weight -60", "}"]
    lines += ["vrrp_instance VI_1 {", "  state BACKUP", "  interface eth0",
              f"  virtual_router_id {VRID}", f"  version {version}", f"  priority {priority}",
              f"  advert_int {advert_int:g}"]
    if nopreempt:
        lines.append("  nopreempt")
    if unicast:
        lines += [f"  unicast_src_ip {ADDR[node]}", "  unicast_peer {", f"    {other}", "  }"]
    if password:
        lines += ["  authentication {", "    auth_type PASS", f"    auth_pass {password}", "  }"]
    if track is not None:
        lines += ["  track_script {", "    chk", "  }"]
    lines += ["  virtual_ipaddress {", f"    {vip}/16 dev eth0", "  }", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.fixture
def group(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Group]:
    g, failed = Group(lab), request.session.testsfailed
    try:
        yield g
    finally:
        if request.session.testsfailed > failed:  # the logs, before clear() deletes them
            print(logs(g))
        g.clear()


def holders(g: Group) -> list[str]:
    return vip_holders(g.lab)


def took(cond: object, timeout: float, what: str) -> float:
    """Seconds until ``cond()`` holds (polled every 10 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def logs(g: Group) -> str:
    out = [f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
           for p in sorted(g.lab.dir.glob("*.log"))]
    return "\n".join(out)


def our_state(g: Group, node: str) -> str | None:
    return g.lab.state(node)


def stop_ours(g: Group, node: str) -> None:
    """SIGTERM without waiting for the exit: timed from the moment the resign can leave."""
    g.lab.agents[node].send_signal(signal.SIGTERM)


def drops(g: Group, node: str) -> float:
    """Adverts our agent dropped for a reason a keepalived peer should never give."""
    reasons = ("addresses", "bad_auth", "bad_checksum", "bad_version", "bad_ttl", "short", "carp")
    return sum(metric(g.lab, node, "carp_adverts_dropped_total", reason=r) for r in reasons)


def conflicts(g: Group, node: str) -> float:
    """Split-brain evidence our agent counted, of every kind."""
    return sum(metric(g.lab, node, "carp_conflicts_total", evidence=e)
               for e in ("advert", "arp", "na", "stale_holder"))


def test_v3_keepalived_master_our_backup_cable_pull_both_ways_and_its_resign(group: Group
                                                                          ) -> None:
    lab = group.lab
    ka = group.start_keepalived("a", priority=150)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    group.start_ours("b", priority=100)
    took(lambda: metric(lab, "b", "carp_adverts_received_total") >= 3, 10, "its adverts")
    st = status(lab, "b")
    assert (st["state"], st["protocol"], st["priority"]) == ("BACKUP", "vrrp3", 100)
    assert metric(lab, "b", "carp_instance_info", vhid=str(VRID), protocol="vrrp3") == 1
    assert holders(group) == ["a"] and drops(group, "b") == 0
    assert conflicts(group, "b") == 0  # keepalived's GARPs are a master's, not a conflict
    lab.topo.unplug("a")  # keepalived's node loses its cable: we take over (master-down)
    pulled = took(lambda: "b" in holders(group), 5, "our takeover")
    lab.topo.plug("a")  # keepalived preempts back: its priority is higher
    back = took(lambda: holders(group) == ["a"], 5, "keepalived preempts back")
    took(lambda: our_state(group, "b") == "BACKUP", 3, "our BACKUP")
    time.sleep(0.5)
    ka.proc.send_signal(signal.SIGTERM)  # keepalived resigns: priority 0
    resigned = took(lambda: "b" in holders(group), 3, "our takeover on its resign")
    print(f"v3 0.2 s: cable pull {pulled:.2f} s, preempt back {back:.2f} s, "
          f"resign {resigned:.2f} s")
    assert 0.4 < pulled < 2.0, logs(group)
    assert resigned < 0.5, f"{resigned:.2f} s: a master-down wait (0.72 s), not the resign skew"


def test_v3_our_master_keepalived_backup_cable_pull_both_ways_and_our_resign(group: Group
                                                                          ) -> None:
    lab = group.lab
    group.start_ours("a", priority=150)
    took(lambda: our_state(group, "a") == "MASTER", 10, "our MASTER")
    ka = group.start_keepalived("b", priority=100)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    time.sleep(1)
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)
    assert conflicts(group, "a") == 0 and drops(group, "a") == 0
    lab.topo.unplug("a")
    pulled = took(lambda: "b" in holders(group), 5, "keepalived takes over")
    lab.topo.plug("a")
    back = took(lambda: holders(group) == ["a"], 5, "we preempt back")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP again")
    sock = {"CARP_CONTROL_SOCKET": str(lab.dir / "a.sock")}
    assert cli(lab, "a", "demote", **sock).returncode == 0  # maintenance: a resign too
    demoted = took(lambda: holders(group) == ["b"], 3, "keepalived takes over on our demotion")
    assert cli(lab, "a", "promote", **sock).returncode == 0
    took(lambda: holders(group) == ["a"], 5, "we preempt back once promoted")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP again")
    time.sleep(0.5)
    stop_ours(group, "a")
    resigned = took(lambda: "b" in holders(group), 3, "keepalived takes over on our resign")
    print(f"v3 0.2 s: cable pull {pulled:.2f} s, preempt back {back:.2f} s, "
          f"demotion {demoted:.2f} s, resign {resigned:.2f} s")
    assert ka.said("Backup received priority 0 advertisement"), logs(group)
    assert demoted < 0.5, f"{demoted:.2f} s: the demoted master did not resign"
    assert resigned < 0.5, f"{resigned:.2f} s: a master-down wait (0.72 s), not the resign skew"


def test_v2_unicast_with_password_both_ways_resign_within_the_skew_time(group: Group) -> None:
    """advert_int 1: a resign (skew 0.61 s at priority 100) is far from master-down (3.6 s)."""
    lab = group.lab
    group.start_ours("a", version=2, priority=150, advert_int=1, unicast=True, password="vrrp-pw")
    ka = group.start_keepalived("b", version=2, priority=100, advert_int=1, unicast=True,
                                password="vrrp-pw")
    took(lambda: holders(group) == ["a"] and ka.state() == "BACKUP", 10, "our MASTER")
    took(lambda: metric(lab, "a", "carp_adverts_sent_total") >= 2, 5, "our adverts")
    assert not ka.said("received lower priority") and drops(group, "a") == 0, logs(group)
    stop_ours(group, "a")
    ours = took(lambda: "b" in holders(group), 3, "keepalived takes over on our resign")
    assert ka.said("Backup received priority 0 advertisement"), logs(group)
    group.start_ours("a", version=2, priority=150, advert_int=1, unicast=True, password="vrrp-pw")
    took(lambda: holders(group) == ["a"], 10, "we preempt back (higher priority)")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP again")
    stop_process(ka.proc)  # a BACKUP's stop: nothing moves
    ka = group.start_keepalived("b", version=2, priority=200, advert_int=1, unicast=True,
                                password="vrrp-pw")
    took(lambda: holders(group) == ["b"], 10, "keepalived preempts (priority 200)")
    took(lambda: our_state(group, "a") == "BACKUP", 3, "our BACKUP")
    time.sleep(1.2)
    ka.proc.send_signal(signal.SIGTERM)
    theirs = took(lambda: "a" in holders(group), 3, "we take over on keepalived's resign")
    print(f"v2 1 s unicast: our resign taken in {ours:.2f} s, keepalived's in {theirs:.2f} s")
    assert ours < 1.5 and theirs < 1.5, "a master-down wait (3.4-3.6 s), not the skew time"


def test_v3_unicast_nopreempt_either_side_keeps_the_lower_priority_master(group: Group) -> None:
    lab = group.lab
    ka = group.start_keepalived("a", priority=100, unicast=True)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    group.start_ours("b", priority=150, unicast=True, CARP_PREEMPT="false")
    took(lambda: metric(lab, "b", "carp_adverts_received_total") >= 3, 10, "its adverts")
    time.sleep(1.2)  # more than our master-down interval (0.6 + 0.04 s)
    assert holders(group) == ["a"] and our_state(group, "b") == "BACKUP", logs(group)
    assert ka.states() == ["BACKUP", "MASTER"]
    group.clear()
    group.start_ours("a", priority=100, unicast=True)
    took(lambda: holders(group) == ["a"], 10, "our MASTER")
    ka = group.start_keepalived("b", priority=150, unicast=True, nopreempt=True)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    time.sleep(1.2)
    assert holders(group) == ["a"] and ka.states() == ["BACKUP"], logs(group)


def partitioned_then_healed(group: Group) -> list[str]:
    """Both MASTER while VRRP is blocked between them, then one: who holds the VIP."""
    lab = group.lab
    lab.topo.block_carp("a")
    try:
        took(lambda: holders(group) == ["a", "b"], 10, "both MASTER while partitioned")
    finally:
        lab.topo.block_carp("a", False)
    took(lambda: len(holders(group)) == 1, 5, "one master after healing")
    time.sleep(0.6)  # and it stays that way
    return holders(group)


def test_v3_equal_priorities_the_higher_address_wins_either_way(group: Group) -> None:
    ka = group.start_keepalived("a", priority=100)
    group.start_ours("b", priority=100)
    assert partitioned_then_healed(group) == ["b"], logs(group)  # 172.16.0.12 > .11
    assert ka.state() == "BACKUP" and our_state(group, "b") == "MASTER"
    group.clear()
    group.start_ours("a", priority=100)
    ka = group.start_keepalived("b", priority=100)
    assert partitioned_then_healed(group) == ["b"], logs(group)
    assert ka.state() == "MASTER" and our_state(group, "a") == "BACKUP"


def test_v2_keepalived_track_script_demotion_seen_by_us_and_watch(group: Group) -> None:
    """keepalived's weight -60 takes its priority 150 to 90, under our 100: we preempt."""
    lab = group.lab
    track = lab.dir / "ka-down"
    ka = group.start_keepalived("a", version=2, priority=150, advert_int=1, track=track)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    group.start_ours("b", version=2, priority=100, advert_int=1)
    took(lambda: our_state(group, "b") == "BACKUP", 10, "our BACKUP")
    seen = cli(lab, "b", "watch", "-i", "eth0", "--seconds", "1.5")
    assert "VRRPv2 vrid 7   priority 150 interval 1s" in seen.stdout, seen.stdout + seen.stderr
    shown = cli(lab, "b", "status", CARP_CONTROL_SOCKET=str(lab.dir / "b.sock"))
    assert "  protocol:     VRRPv2, priority 100, advert_int 1.0 s, preempt on" in shown.stdout
    peer = {"peer": ADDR["a"]}
    assert metric(lab, "b", "carp_peer_priority", **peer) == 150
    assert status(lab, "b")["peers"][ADDR["a"]]["priority"] == 150
    track.touch()
    took(lambda: metric(lab, "b", "carp_peer_priority", **peer) == 90, 5, "its priority 90")
    took(lambda: "b" in holders(group), 8, "our takeover from the demoted keepalived")
    took(lambda: holders(group) == ["b"], 3, "keepalived BACKUP")
    assert ka.said("received lower priority") or ka.states()[-1] == "BACKUP", logs(group)
    track.unlink()
    took(lambda: holders(group) == ["a"], 8, "keepalived preempts back once healthy")
    assert our_state(group, "b") == "BACKUP"


def cli(lab: Lab, node: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """carp-sidecar ARGS in ``node`` (the agent's settings are not needed by status/watch)."""
    import os
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    base.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), **env)
    return subprocess.run(lab.topo[node].argv(sys.executable, "-m", "sidecar.tools.cli", *args),
                          capture_output=True, text=True, env=base, timeout=60)


def test_v3_our_master_restarts_in_place_and_keepalived_never_notices(group: Group) -> None:
    """The restart's keeper sends our VRRP adverts while the new image starts: no move."""
    from sidecar.serve.control import send_command

    lab = group.lab
    group.start_ours("a", priority=150, advert_int=0.5)
    took(lambda: our_state(group, "a") == "MASTER", 10, "our MASTER")
    ka = group.start_keepalived("b", priority=100, advert_int=0.5)
    took(lambda: ka.state() == "BACKUP", 5, "keepalived BACKUP")
    started = status(lab, "a")["agent"]["started"]
    reply = send_command(lab.dir / "a.sock", "restart", timeout=30)
    assert reply.startswith("ok: restarting in place"), reply
    took(lambda: (st := lab.status("a")) and st["agent"]["started"] != started
         and st["state"] == "MASTER", 20, "the new image MASTER")
    time.sleep(1.5)  # more than keepalived's master-down interval (1.5 + 0.3 s)
    assert ka.states() == ["BACKUP"] and holders(group) == ["a"], logs(group)
    assert status(lab, "a")["protocol"] == "vrrp3"


def test_reload_switches_an_instance_from_carp_to_vrrp3_and_priority_live(group: Group) -> None:
    """A node moving over: its CARP instance ignores keepalived's VRID (dropped as vrrp, both
    hold the VIP), a reload to vrrp3 replaces the instance (it joins as BACKUP), a reload of
    the priority alone updates it in place (and it preempts)."""
    from .test_reload import reload

    lab = group.lab
    (lab.dir / "pass").write_text("lab-only\n")
    conf = lab.dir / "b.toml"
    table = f'[[vhid]]\nvhid = {VRID}\naddr = ["{VIP}/16"]\n'
    conf.write_text(f'interface = "eth0"\npass_file = "{lab.dir / "pass"}"\n{table}')
    ka = group.start_keepalived("a", priority=150)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    lab.start_agent("b", CARP_CONFIG=str(conf), CARP_VHID="", CARP_PASS="", CARP_ADDR="",
                    CARP_IF_ALIAS="", CARP_SRCIP="")
    took(lambda: holders(group) == ["a", "b"], 10, "our CARP MASTER too: VRRP ignored")
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="vrrp") >= 1
    assert metric(lab, "b", "carp_instance_info", protocol="carp") == 1
    vrrp = 'protocol = "vrrp3"\npriority = 100\nadvert_int = 0.2\n'
    conf.write_text(f'interface = "eth0"\n{table}{vrrp}')
    reply = reload(lab, "b")
    took(lambda: holders(group) == ["a"], 5, "our VRRP instance BACKUP")
    took(lambda: metric(lab, "b", "carp_instance_info", protocol="vrrp3") == 1, 3, "vrrp3")
    assert metric(lab, "b", "carp_instance_info", protocol="carp") == 0
    assert ka.states()[-1] == "MASTER" and our_state(group, "b") == "BACKUP", reply
    conf.write_text(f'interface = "eth0"\n{table}{vrrp.replace("100", "200")}')
    reply = reload(lab, "b")
    assert "priority 100 -> 200" in reply, reply
    took(lambda: holders(group) == ["b"], 5, "we preempt with priority 200")
    took(lambda: ka.state() == "BACKUP", 3, "keepalived BACKUP")


def test_v3_backup_times_out_on_the_masters_advertised_interval(group: Group) -> None:
    """RFC 5798: Master_Down_Interval from the master's advertised interval (keepalived's
    1 s), not our own 0.2 s: no takeover while it advertises, one after ~3 x 1 s + skew."""
    lab = group.lab
    group.start_keepalived("a", priority=150, advert_int=1)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    group.start_ours("b", priority=100, advert_int=0.2)
    took(lambda: metric(lab, "b", "carp_adverts_received_total") >= 2, 5, "its adverts")
    time.sleep(1.5)  # our own interval would have timed out twice over
    assert holders(group) == ["a"] and our_state(group, "b") == "BACKUP", logs(group)
    assert 3.5 < status(lab, "b")["master_down_interval"] < 3.7  # 3 x 1 + 156/256
    lab.topo.unplug("a")
    pulled = took(lambda: "b" in holders(group), 6, "our takeover")
    assert 2.4 < pulled < 4.2, f"{pulled:.2f} s"


def test_v3_our_address_owner_takes_over_at_once_and_keeps_its_address(group: Group) -> None:
    """Priority 255, the VIP an address of node-b's own (a second one: its adverts leave from
    its first, which keepalived does not hold meanwhile): MASTER at start without a master-down
    wait, keepalived (backing the address up) gives way, and a stop resigns without taking the
    node's address away."""
    lab, owned = group.lab, "172.16.0.50"
    lab.topo["b"].run("ip", "addr", "add", f"{owned}/16", "dev", "eth0")
    try:
        ka = group.start_keepalived("a", priority=100, vip=owned)
        took(lambda: ka.state() == "MASTER", 10, "keepalived MASTER for b's address")
        group.start_ours("b", priority=255, CARP_ADDR=f"{owned}/16")
        took(lambda: ka.states()[-1] == "BACKUP", 10, "keepalived gives way to the owner")
        log = (lab.dir / "b.log").read_text()
        assert re.findall(r"Switching to state: (\w+)", log) == ["MASTER"], log  # no wait
        assert "Removed stale VIP" not in log
        stop_ours(group, "b")
        took(lambda: ka.state() == "MASTER", 3, "keepalived takes over on our resign")
        lab.agents["b"].wait(10)
        out = lab.topo["b"].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert f" {owned}/16" in out, out  # the owner's address stays the node's
    finally:
        lab.topo["b"].run("ip", "addr", "del", f"{owned}/16", "dev", "eth0", check=False)


def test_v3_our_unhealthy_backup_never_takes_over_even_on_a_resign(group: Group) -> None:
    """Health demotion keeps today's model in VRRP mode: a demoted BACKUP stays BACKUP."""
    lab = group.lab
    ka = group.start_keepalived("a", priority=100)
    took(lambda: holders(group) == ["a"], 10, "keepalived MASTER")
    group.start_ours("b", priority=200, CARP_HEALTH_TCP="127.0.0.1:1",  # nothing listens
                     CARP_HEALTH_INTERVAL="0.2")
    took(lambda: ((lab.status("b") or {}).get("health") or {}).get("healthy") is False, 10,
         "our check failing")
    time.sleep(1)  # a healthy priority 200 would have preempted by now (0.72 s)
    assert holders(group) == ["a"] and our_state(group, "b") == "BACKUP", logs(group)
    ka.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # its resign, then more than a master-down interval
    assert holders(group) == [] and our_state(group, "b") == "BACKUP", logs(group)
