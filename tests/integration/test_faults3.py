"""Faults, round 3 (README "Fault behaviour"): a clock step under strict mode, a source address
that comes back late, a killed master's VIP left behind, a VRRP router on our VHID. Each would
give two VIP holders that last, or that nobody sees; each test failed before its fix."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from sidecar.lab import ADDRESSES, VIP, Lab

from .conftest import dump_on_failure, metric, status, transitions, vip_holders, wait_for
from .test_faults import HolderSampler, log_of, mac_of

A, B = ADDRESSES["a"].split("/")[0], ADDRESSES["b"].split("/")[0]
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
MASTER_DOWN = 3.0  # advbase 1 x deadratio 3 (+ skew)


def clock_behind(hours: float) -> dict[str, str]:
    """The agent's wall clock ``hours`` behind (libfaketime), its monotonic clock untouched:
    a host booted before NTP, or NTP stepping back a fast clock."""
    if not FAKETIME.exists():
        pytest.skip("faketime is not installed (make deps installs it)")
    return {"LD_PRELOAD": str(FAKETIME), "FAKETIME": f"-{hours:g}h",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def ready_code(lab: Lab, node: str) -> str:
    return lab.topo[node].run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "http://127.0.0.1:9655/readyz", check=False).stdout


# ---- 1. strict mode and a wall clock stepped back ----
def strict_pair(lab: Lab, **a_extra: str) -> None:
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B, CARP_STRICT="true", **a_extra)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A, CARP_STRICT="true")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    time.sleep(1.5)  # node-b has remembered node-a's counter


def test_strict_master_restarted_with_its_clock_behind_keeps_one_holder(lab: Lab) -> None:
    """The counter mark kept in CARP_STATE_DIR: the restarted master starts above every counter
    it used before, whatever its clock says, so node-b accepts it and yields."""
    strict_pair(lab)
    state = lab.dir / "a-state"
    assert (state / "eth0-vhid1.counter").exists()
    assert lab.stop_agent("a") == 0
    wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b takes over")
    with HolderSampler(lab) as sampler:
        lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B, CARP_STRICT="true",
                        **clock_behind(1))
        took = wait_for(lambda: vip_holders(lab) == ["a"], MASTER_DOWN + 3, "node-a back")
        time.sleep(8)
    assert vip_holders(lab) == ["a"], dump_on_failure(lab)
    assert sampler.longest(2) < 0.5, (sampler.longest(2), dump_on_failure(lab))
    print(f"\nclock 1 h behind, mark kept: node-a held the VIP alone {took:.2f} s after its "
          f"start; longest two-holder sample {sampler.longest(2):.2f} s")
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="replay") == 0
    assert metric(lab, "b", "carp_peer_counter_behind", peer=A) == 0


def test_strict_master_restarted_behind_without_its_state_is_signalled(lab: Lab) -> None:
    """No state directory: the counter restarts from the clock, an hour below what node-b
    remembers. node-b never accepts it (that would reopen replays), but says so loudly."""
    strict_pair(lab, CARP_STATE_DIR="off")
    assert lab.stop_agent("a") == 0
    wait_for(lambda: vip_holders(lab) == ["b"], 5, "node-b takes over")
    started = time.monotonic()
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B, CARP_STRICT="true",
                    CARP_STATE_DIR="off", **clock_behind(1))
    signalled = wait_for(lambda: metric(lab, "b", "carp_peer_counter_behind", peer=A) == 1,
                         MASTER_DOWN + 6, "node-b flags node-a's counter")
    text = log_of(lab, "b")
    assert re.search(rf"Peer {re.escape(A)}: every advert for [\d.]+ s was dropped as a replay",
                     text), dump_on_failure(lab)
    assert "restarted with its clock behind" in text and "CARP_STATE_DIR" in text
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="replay") > 0
    print(f"\nclock 1 h behind, no mark: signal on node-b {time.monotonic() - started:.1f} s "
          f"after node-a's start ({signalled:.1f} s of waiting)")
    # the operator's fix, as the log line says: restart node-b's agent; one holder again
    assert lab.stop_agent("b") == 0
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A, CARP_STRICT="true")
    wait_for(lambda: vip_holders(lab) == ["a"] and lab.state("b") == "BACKUP", 8, "healed")


# ---- 2. unicast: the source address comes back late ----
def test_unicast_node_without_its_address_never_takes_the_vip(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A)
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    lab.topo.remove_interface("a")
    wait_for(lambda: vip_holders(lab) == ["b"], 6, "node-b takes over")
    with HolderSampler(lab) as sampler:
        lab.topo.recreate_interface("a", address=False)
        time.sleep(6)  # node-a hears node-b's adverts on its packet socket meanwhile
        assert vip_holders(lab) == ["b"], dump_on_failure(lab)
        st = status(lab, "a")
        assert st["state"] == "BACKUP" and st["can_advertise"] is False, st
        assert "source address" in str(st["cannot_advertise_reason"])
        assert ready_code(lab, "a") == "503"
        lab.topo.add_address("a")
        back = wait_for(lambda: vip_holders(lab) == ["a"], MASTER_DOWN + 2, "node-a preempts")
        time.sleep(1)
    assert sampler.longest(2) == 0, (sampler.longest(2), dump_on_failure(lab))
    assert ready_code(lab, "a") == "200"
    assert "Adverts can leave again" in log_of(lab, "a")
    print(f"\naddress back -> node-a MASTER in {back:.2f} s; two holders for "
          f"{sampler.longest(2):.2f} s")


def test_a_master_whose_source_address_is_removed_steps_down(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A)
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    lab.topo["a"].run("ip", "addr", "del", ADDRESSES["a"], "dev", "eth0")
    wait_for(lambda: vip_holders(lab) == ["b"], MASTER_DOWN + 2, "node-b takes over")
    assert lab.state("a") == "BACKUP"
    assert metric(lab, "a", "carp_transitions_total", **{"from": "MASTER", "to": "BACKUP"},
                  reason="cannot_advertise") == 1
    assert "Cannot advertise (source address" in log_of(lab, "a")
    lab.topo.add_address("a")
    wait_for(lambda: vip_holders(lab) == ["a"], MASTER_DOWN + 2, "node-a back")


def test_unicast_backup_with_no_route_to_its_peers_does_not_take_over(lab: Lab) -> None:
    """Sends failing (no route to the peer): a fault like link down, cleared by a send that
    would work (the route check sends nothing)."""
    lab.start_agent("a", CARP_PREEMPT="true", CARP_PEERS=B)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PEERS=A)
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    lab.topo["b"].run("ip", "route", "add", "unreachable", f"{A}/32")
    wait_for(lambda: status(lab, "b")["can_advertise"] is False, 3, "node-b sees it cannot send")
    lab.stop_agent("a", sig=signal.SIGKILL)
    time.sleep(MASTER_DOWN + 2)
    assert lab.state("b") == "BACKUP" and not lab.has_vip("b"), dump_on_failure(lab)
    assert "No route to host" in str(status(lab, "b")["cannot_advertise_reason"]) or \
        "unreachable" in str(status(lab, "b")["cannot_advertise_reason"]).lower()
    lab.topo["b"].run("ip", "route", "del", "unreachable", f"{A}/32")
    wait_for(lambda: lab.has_vip("b"), MASTER_DOWN + 3, "node-b takes over once it can send")


# ---- 3. a killed master's VIP stays up: found by probing ----
def test_killed_master_left_its_vip_and_the_new_master_finds_it(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    killed = time.monotonic()
    lab.stop_agent("a", sig=signal.SIGKILL)  # no down path: the VIP stays on node-a
    wait_for(lambda: lab.state("b") == "MASTER", MASTER_DOWN + 2, "node-b MASTER")
    assert sorted(vip_holders(lab)) == ["a", "b"]
    found = wait_for(lambda: metric(lab, "b", "carp_conflicts_total", evidence="stale_holder") > 0,
                     6, "node-b finds the stale holder")
    print(f"\nkill -9 of the master: stale holder signalled {time.monotonic() - killed:.1f} s "
          f"after the kill ({found:.1f} s after node-b became MASTER)")
    text = log_of(lab, "b")
    assert f"the host with MAC {mac_of(lab, 'a')} still has the address" in text, text[-2000:]
    assert mac_of(lab, "a") in status(lab, "b")["stale_holders"]  # type: ignore[operator]
    assert metric(lab, "b", "carp_vip_probes_sent_total") >= 1
    # once per back-off period in the log, however many answers
    time.sleep(1)
    assert text.count("Stale holder of VIP") == log_of(lab, "b").count("Stale holder of VIP") == 1
    # the operator's fix: starting the agent again removes the stale VIP
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "node-a back, one holder")


def test_probes_can_be_switched_off(lab: Lab) -> None:
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.start_agent("b", CARP_ADVSKEW="100", CARP_PROBE_INTERVAL="0")
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    lab.stop_agent("a", sig=signal.SIGKILL)
    wait_for(lambda: lab.state("b") == "MASTER", MASTER_DOWN + 2, "node-b MASTER")
    time.sleep(4)
    assert metric(lab, "b", "carp_vip_probes_sent_total") == 0
    assert metric(lab, "b", "carp_conflicts_total", evidence="stale_holder") == 0


def test_killed_master_left_its_ipv6_vip_and_the_new_master_finds_it(lab: Lab) -> None:
    from .test_instances import V6, add_ipv6

    add_ipv6(lab)
    addr = {"CARP_ADDR": f"{VIP}/16,{V6}/64"}
    lab.start_agent("a", CARP_PREEMPT="true", **addr)
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    # node-b's own v4 VIP is removed by hand after the takeover: only the IPv6 one can answer
    lab.start_agent("b", CARP_ADVSKEW="100", **addr)
    wait_for(lambda: lab.state("b") == "BACKUP", 8, "node-b BACKUP")
    lab.stop_agent("a", sig=signal.SIGKILL)
    lab.topo["a"].run("ip", "addr", "del", f"{VIP}/16", "dev", "eth0")
    wait_for(lambda: lab.state("b") == "MASTER", MASTER_DOWN + 2, "node-b MASTER")
    wait_for(lambda: metric(lab, "b", "carp_conflicts_total", evidence="stale_holder") > 0,
             6, "node-b finds the IPv6 stale holder")
    assert f"the host with MAC {mac_of(lab, 'a')} still has the address" in log_of(lab, "b")


def test_another_host_announcing_our_ipv6_vip_is_split_brain_evidence(lab: Lab) -> None:
    from .test_instances import V6, add_ipv6

    add_ipv6(lab)
    lab.start_agent("a", CARP_ADDR=f"{VIP}/16,{V6}/64", CARP_PROBE_INTERVAL="0")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    time.sleep(1)
    # the client claims the VIP: an unsolicited NA with its own MAC (what another master sends)
    send_na = ("import socket, sys; from ipaddress import IPv6Address;"
               "from sidecar.net.announce import build_unsolicited_na;"
               "mac = bytes.fromhex(open('/sys/class/net/eth0/address').read().strip()"
               ".replace(':', ''));"
               "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW);"
               "s.sendto(build_unsolicited_na(mac, IPv6Address(sys.argv[1])), ('eth0', 0x86dd))")
    lab.topo["client"].run(sys.executable, "-c", send_na, V6)
    wait_for(lambda: metric(lab, "a", "carp_conflicts_total", evidence="na") > 0, 6,
             "node-a counts the NA from another MAC")
    assert "announces a VIP of vhid 1: re-announcing ours" in log_of(lab, "a")


# ---- 4. a VRRP router on our VHID ----
KEEPALIVED = """global_defs {{
  {version}
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface eth0
  virtual_router_id {vrid}
  priority 100
  advert_int 1
  virtual_ipaddress {{
    172.16.0.77/16
  }}
}}
"""


@pytest.mark.parametrize("version", [2, 3])
def test_keepalived_on_our_vhid_is_counted_as_vrrp_and_named(lab: Lab, version: int) -> None:
    conf = lab.dir / "keepalived.conf"
    conf.write_text(KEEPALIVED.format(version="vrrp_version 3" if version == 3 else "", vrid=1))
    lab.start_agent("a", CARP_PREEMPT="true")
    wait_for(lambda: vip_holders(lab) == ["a"], 10, "node-a MASTER")
    lab.topo.start("client", ["keepalived", "-n", "-l", "-D", "--vrrp", "-f", str(conf),
                              "-p", str(lab.dir / "ka.pid"), "-r", str(lab.dir / "vrrp.pid")],
                   log=lab.dir / "keepalived.log")
    client = ADDRESSES["client"].split("/")[0]
    # keepalived's own start takes 4-9 s here, and while it hears our (to it, too short)
    # adverts it paces its own at 1-13 s (seen with tcpdump on node-a: every advert it sent
    # was counted, the gaps are keepalived's): wait for it to advertise, then for two of its
    # adverts, each counted as vrrp and none as anything else
    wait_for(lambda: "Entering MASTER STATE" in (lab.dir / "keepalived.log").read_text(), 25,
             "keepalived advertising")
    wait_for(lambda: metric(lab, "a", "carp_adverts_dropped_total", reason="vrrp") >= 2, 45,
             "keepalived's adverts counted as vrrp")
    assert metric(lab, "a", "carp_adverts_dropped_total", reason="short") == 0
    text = log_of(lab, "a")
    assert f"VRRPv{version} router {client}, VRID 1" in text, text[-2000:]
    assert text.count("VRRP advertisement on our VHID") == 1  # once a minute, not per advert
    assert transitions(lab, "a") == ["BACKUP", "MASTER"] and vip_holders(lab) == ["a"]
