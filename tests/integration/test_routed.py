"""Routed VIPs (CARP_VIP_INTERFACE=lo): CARP elects over unicast across two subnets, a real
routing daemon (BIRD or FRR, with the configurations shipped in deploy/) announces the
MASTER's VIP to a BIRD router, and a client behind the router follows it (sidecar.lab.routed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.lab.routed import NODES, ROUTED_VIP, Daemon, RoutedLab

ROOT = Path(__file__).resolve().parents[2]
MISSING = [t for t in ("bird", "birdc", "vtysh", "/usr/lib/frr/bgpd") if not shutil.which(t)
           and not Path(t).exists()]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"missing {MISSING} (make deps)")
DAEMONS = ["bird", "frr"]
PREFERRED = {"a": {"CARP_PREEMPT": "true"}, "b": {"CARP_ADVSKEW": "100"}}


def figure(what: str, value: float | None) -> None:
    print(f"routed: {what}: {value} ms", file=sys.stderr)


def metrics(lab: RoutedLab, node: str) -> str:
    return lab.run(node, "curl", "-s", "-m", "2", "http://127.0.0.1:9655/metrics").stdout


def sample(text: str, name: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(name + "{")]
    assert lines, f"{name} not exported"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def only_a_holds(lab: RoutedLab) -> bool:
    return lab.client_sees() == "node-a" and lab.has_vip("a") and not lab.has_vip("b") \
        and lab.router_via() == "a"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_the_client_follows_the_master_through_bgp(daemon: Daemon) -> None:
    with RoutedLab(daemon) as lab:
        lab.start_all(**PREFERRED)
        lab.wait(lambda: only_a_holds(lab), 60, "the client reaching node-a through BGP")
        st = lab.status("a")
        assert (st["state"], st["vip_interface"], st["vips"]) == ("MASTER", "lo", [
            f"{ROUTED_VIP}/32"])
        text = metrics(lab, "a")
        assert sample(text, "carp_vip_present") == 1
        assert sample(text, "carp_garps_sent_total") == 0  # nothing to announce on lo
        assert "10.9.0.1" not in lab.run("a", "ip", "-4", "addr", "show", "dev", "eth0").stdout

        # node-a's cable is pulled: node-b's master-down timer runs out, its daemon announces
        pulled = time.time()
        lab.uplink("a", False)
        lab.wait(lambda: lab.client_sees() == "node-b" and lab.router_via() == "b", 20,
                 "the client reaching node-b")
        figure(f"{daemon} cable pull", lab.downtime_ms(pulled, "node-b"))
        lab.wait(lambda: not lab.has_vip("a"), 5, "node-a dropping the VIP off lo")

        # plugged back: node-a waits for its BGP session (the health check), then preempts
        plugged = time.time()
        lab.uplink("a", True)
        lab.wait(lambda: only_a_holds(lab), 40, "node-a preempting once its session is up")
        figure(f"{daemon} preempt back", lab.downtime_ms(plugged, "node-a"))
        assert lab.established("a")

        # a graceful stop of node-a: it bows out, node-b announces, node-a withdraws
        stopped = time.time()
        lab.stop("agent-a")
        lab.wait(lambda: lab.client_sees() == "node-b" and lab.router_via() == "b"
                 and not lab.has_vip("a"), 10, "node-b after node-a's stop")
        figure(f"{daemon} graceful stop", lab.downtime_ms(stopped, "node-b"))
        assert "Switching to state: MASTER" in lab.log("agent-b")


@pytest.mark.parametrize("daemon", DAEMONS)
def test_a_node_whose_routing_daemon_stops_demotes_and_the_other_announces(
        daemon: Daemon) -> None:
    with RoutedLab(daemon) as lab:
        lab.start_router()
        for node in NODES:
            lab.start_routing(node)
            lab.start_apache(node)
        # a VIP a killed run of node-b left on lo: removed at start, never announced
        lab.run("b", "ip", "addr", "add", f"{ROUTED_VIP}/32", "dev", "lo", check=True)
        for node in NODES:
            lab.start_agent(node, **PREFERRED[node])
        lab.start_probe()
        lab.wait(lambda: only_a_holds(lab), 60, "node-a holding the VIP alone")
        assert "Removed stale VIP 10.9.0.1 from lo" in lab.log("agent-b")

        # removed by hand on the master: put back (and announced again by the daemon)
        lab.run("a", "ip", "addr", "del", f"{ROUTED_VIP}/32", "dev", "lo", check=True)
        lab.wait(lambda: only_a_holds(lab), 10, "the VIP back on node-a's lo")
        assert "was removed from lo by someone else" in lab.log("agent-a")

        stopped = time.time()
        lab.stop_routing("a")
        lab.wait(lambda: lab.client_sees() == "node-b" and lab.router_via() == "b", 20,
                 "node-b announcing after node-a's daemon stopped")
        figure(f"{daemon} daemon stopped", lab.downtime_ms(stopped, "node-b"))
        lab.wait(lambda: lab.status("a").get("demoted") is True and not lab.has_vip("a"), 5,
                 "node-a demoted, its VIP gone")
        assert lab.status("a")["health"]["healthy"] is False
        assert lab.status("b")["state"] == "MASTER"

        # the daemon back: node-a healthy again, preempts, the client comes back to it
        lab.start_routing("a")
        lab.wait(lambda: only_a_holds(lab), 40, "node-a back once its daemon is")


def agent_exit(lab: RoutedLab, tmp: Path, **env: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    base.update({"PYTHONPATH": str(ROOT), "CARP_INTERFACE": "eth0", "CARP_VHID": "1",
                 "CARP_PASS": "pw", "CARP_ADDR": f"{ROUTED_VIP}/32",
                 "CARP_STATE_DIR": str(tmp / "state"), "CARP_CONTROL_SOCKET": str(tmp / "a.sock"),
                 "CARP_METRICS_LISTEN": "off", **env})
    r = subprocess.run(lab.argv("a", sys.executable, "-m", "sidecar.tools.cli", "run"),
                       env=base, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stderr.strip()


def test_a_vip_interface_that_cannot_carry_routed_vips_is_refused_at_start(
        tmp_path: Path) -> None:
    with RoutedLab() as lab:
        sh = ["ip", "-n", lab.ns("a"), "link"]
        subprocess.run([*sh, "add", "arp0", "type", "veth", "peer", "name", "arp1"], check=True)
        for env, message in [
            ({"CARP_VIP_INTERFACE": "nosuch0"},
             "CARP_VIP_INTERFACE: no interface named 'nosuch0' (eth0/vhid1)"),
            ({"CARP_VIP_INTERFACE": "arp0"},
             "CARP_VIP_INTERFACE: arp0 does ARP; routed VIPs go on a loopback or NOARP interface"),
            ({"CARP_VIP_INTERFACE": "lo", "CARP_ADDR": "10.9.0.1/24"},
             "CARP_ADDR: 10.9.0.1/24 on CARP_VIP_INTERFACE=lo must be a host route"),
            ({"CARP_VIP_INTERFACE": "lo", "CARP_GARP_REPEAT": "3"},
             "CARP_GARP_REPEAT: no gratuitous ARP, NA or probe is sent for VIPs on "
             "CARP_VIP_INTERFACE=lo"),
        ]:
            code, err = agent_exit(lab, tmp_path, **env)
            assert code == 2, (env, err)
            assert len(err.splitlines()) == 1 and message in err, err
        lines = lab.run("a", "ip", "-o", "addr", "show").stdout
        assert ROUTED_VIP not in lines  # nothing was added by the refused starts
