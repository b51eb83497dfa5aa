"""Many VHIDs and VIPs from one agent per host (CARP_CONFIG): active/active with Apache, an IPv6
VIP reached with curl -6 and announced by unsolicited NA, one VHID shared with a real ucarp,
a real Prometheus scraping three VHIDs, and a config mistake named in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sidecar.lab import LAB_PASSWORD, Lab

from .conftest import dump_on_failure, metric, wait_for, write_scripts

VIPS = {1: "172.16.0.1", 2: "172.16.0.2", 3: "172.16.0.3"}
V6 = "2001:db8::1"
V6_HOSTS = {"a": "2001:db8::11/64", "b": "2001:db8::12/64", "client": "2001:db8::100/64"}
NO_LAB_DEFAULTS = {k: "" for k in ("CARP_VHID", "CARP_PASS", "CARP_ADDR", "CARP_IF_ALIAS",
                                   "CARP_SRCIP")}


def write_config(lab: Lab, node: str, tables: str, head: str = "") -> Path:
    (lab.dir / "pass").write_text(LAB_PASSWORD + "\n")
    path = lab.dir / f"{node}.toml"
    path.write_text(f'interface = "eth0"\npass_file = "{lab.dir / "pass"}"\npreempt = true\n'
                    f"{head}\n{tables}")
    return path


def active_active(lab: Lab, node: str, v6: bool = False) -> Path:
    """node-a prefers VHID 1 and 2, node-b prefers VHID 3; each backs up the other."""
    mine = {1, 2} if node == "a" else {3}
    tables = ""
    for vhid, vip in VIPS.items():
        addr = f'"{vip}/16"' + (f', "{V6}/64"' if v6 and vhid == 1 else "")
        tables += (f"[[vhid]]\nvhid = {vhid}\naddr = [{addr}]\n"
                   f"advskew = {0 if vhid in mine else 100}\n\n")
    return write_config(lab, node, tables)


def holders(lab: Lab) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {vhid: [] for vhid in VIPS}
    for node in ("a", "b"):
        addrs = lab.topo[node].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        for vhid, vip in VIPS.items():
            if f" {vip}/" in addrs:
                out[vhid].append(node)
    return out


def serving(lab: Lab) -> dict[int, str | None]:
    return {vhid: lab.get("client", f"http://{vip}/") for vhid, vip in VIPS.items()}


def start_pair(lab: Lab, v6: bool = False) -> None:
    for node in ("a", "b"):
        lab.start_apache(node)
        lab.start_agent(node, CARP_CONFIG=str(active_active(lab, node, v6)), **NO_LAB_DEFAULTS)
    wait_for(lambda: holders(lab) == {1: ["a"], 2: ["a"], 3: ["b"]}, 12, "active/active")


def test_three_vhids_active_active_fail_over_and_back(lab: Lab) -> None:
    start_pair(lab)
    assert serving(lab) == {1: "node-a", 2: "node-a", 3: "node-b"}
    st = lab.status("a")
    assert st is not None and [i["vhid"] for i in st["instances"]] == [1, 2, 3]
    assert [i["state"] for i in st["instances"]] == ["MASTER", "MASTER", "BACKUP"]
    moved = sorted(str(v) for v, h in holders(lab).items() if h == ["a"])  # node-a's VHIDs
    assert moved
    lab.topo.unplug("a")
    wait_for(lambda: holders(lab) == {1: ["b"], 2: ["b"], 3: ["b"]}, 6, "node-b holds all")
    wait_for(lambda: serving(lab) == {1: "node-b", 2: "node-b", 3: "node-b"}, 3, "b serves all")
    lab.topo.plug("a")
    wait_for(lambda: holders(lab) == {1: ["a"], 2: ["a"], 3: ["b"]}, 6, "a takes its two back")
    wait_for(lambda: serving(lab) == {1: "node-a", 2: "node-a", 3: "node-b"}, 3, "served again")
    # one series per instance, every VIP observed by netlink
    assert metric(lab, "a", "carp_is_master", vhid="2") == 1
    assert metric(lab, "a", "carp_vip_present", vhid="3", vip=VIPS[3]) == 0
    assert metric(lab, "b", "carp_vip_present", vhid="3", vip=VIPS[3]) == 1
    # maintenance of one VHID only: VHID 2 moves to node-b, VHID 1 stays
    cli = [sys.executable, "-m", "sidecar.tools.cli", "demote", "--vhid", "2", "--socket",
           str(lab.dir / "a.sock")]
    assert "vhid 2" in lab.topo["a"].run(*cli).stdout
    wait_for(lambda: holders(lab) == {1: ["a"], 2: ["b"], 3: ["b"]}, 5, "VHID 2 drained")
    log = (lab.dir / "a.log").read_text()
    assert "Switching to state: MASTER (vhid 1 on eth0)" in log, dump_on_failure(lab)


def add_ipv6(lab: Lab) -> None:
    for node, address in V6_HOSTS.items():
        lab.topo[node].run("ip", "-6", "addr", "add", address, "dev", "eth0", "nodad")


def test_ipv6_vip_moves_with_its_vhid_and_is_announced_by_unsolicited_na(lab: Lab) -> None:
    add_ipv6(lab)
    start_pair(lab, v6=True)
    url = f"http://[{V6}]/"
    curl = ["curl", "-6", "-g", "-s", "-m", "1", url]
    wait_for(lambda: lab.topo["client"].run(*curl, check=False).stdout.strip() == "node-a", 5,
             "curl -6 reaches node-a")
    a_addrs = lab.topo["a"].run("ip", "-6", "addr", "show", "dev", "eth0").stdout
    assert f"{V6}/64" in a_addrs and "tentative" not in a_addrs.split(V6)[1].split("\n")[0]
    capture = subprocess.Popen(lab.topo["client"].argv(
        "tshark", "-i", "eth0", "-a", "duration:8", "-f", "icmp6", "-Y",
        "icmpv6.type == 136", "-T", "fields", "-e", "eth.src", "-e", "ipv6.src",
        "-e", "icmpv6.nd.na.target_address", "-e", "icmpv6.nd.na.flag.o",
        "-e", "icmpv6.opt.linkaddr"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    time.sleep(2)  # tshark is capturing
    lab.topo.unplug("a")
    wait_for(lambda: lab.topo["client"].run(*curl, check=False).stdout.strip() == "node-b", 7,
             "curl -6 reaches node-b after failover")
    out, _ = capture.communicate(timeout=30)
    b_mac = lab.topo["b"].run("cat", "/sys/class/net/eth0/address").stdout.strip()
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    assert [b_mac, V6, V6, "1", b_mac] in [[f.lower() for f in r] for r in rows], rows
    assert metric(lab, "b", "carp_vip_present", vhid="1", vip=V6) == 1
    lab.topo.plug("a")
    wait_for(lambda: lab.topo["client"].run(*curl, check=False).stdout.strip() == "node-a", 7,
             "curl -6 back on node-a")


def test_one_vhid_shared_with_real_ucarp_while_others_are_sidecar_only(lab: Lab) -> None:
    # node-a: carp-sidecar for VHIDs 1 (IPv4 + IPv6 VIPs; the HMAC covers the IPv4 one, which
    # is all ucarp knows) and 2; node-b: ucarp for VHID 1 and carp-sidecar for VHID 2.
    add_ipv6(lab)
    tables = (f'[[vhid]]\nvhid = 1\naddr = ["{VIPS[1]}/16", "{V6}/64"]\n\n'
              f'[[vhid]]\nvhid = 2\naddr = ["{VIPS[2]}/16"]\n')
    lab.start_agent("a", CARP_CONFIG=str(write_config(lab, "a", tables)), **NO_LAB_DEFAULTS)
    wait_for(lambda: holders(lab)[1] == ["a"] and holders(lab)[2] == ["a"], 10, "a MASTER")
    up, down = write_scripts(lab)
    ucarp = ["ucarp", "-i", "eth0", "-s", "172.16.0.12", "-v", "1", "-p", LAB_PASSWORD, "-a",
             VIPS[1], "-b", "1", "-k", "100", "-u", str(up), "-d", str(down), "-z", "-f", "none"]
    lab.topo.start("b", ucarp, log=lab.dir / "ucarp.log")
    b_tables = f'[[vhid]]\nvhid = 2\naddr = ["{VIPS[2]}/16"]\nadvskew = 100\n'
    lab.start_agent("b", CARP_CONFIG=str(write_config(lab, "b", b_tables)), **NO_LAB_DEFAULTS)
    time.sleep(4)
    assert holders(lab) == {1: ["a"], 2: ["a"], 3: []}  # ucarp hears us: it stays BACKUP
    assert metric(lab, "a", "carp_adverts_dropped_total", vhid="1", reason="bad_hmac") == 0
    lab.topo.unplug("a")
    wait_for(lambda: holders(lab)[1] == ["b"] and holders(lab)[2] == ["b"], 8,
             "ucarp takes VHID 1, the sidecar VHID 2")
    lab.topo.plug("a")
    wait_for(lambda: holders(lab)[1] == ["a"] and holders(lab)[2] == ["a"], 8,
             "node-a preempts both back")
    assert metric(lab, "a", "carp_adverts_received_total", vhid="1") > 0  # ucarp's adverts
    assert metric(lab, "a", "carp_adverts_dropped_total", vhid="1", reason="bad_hmac") == 0
    assert "Bad digest" not in (lab.dir / "ucarp.log").read_text()


def test_config_file_mistake_exits_2_naming_instance_and_key(lab: Lab) -> None:
    path = write_config(lab, "a", '[[vhid]]\nvhid = 1\naddr = ["172.16.0.1/16"]\n\n'
                                  '[[vhid]]\nvhid = 2\naddr = ["172.16.0.2/16"]\nadvskw = 4\n')
    lab.start_agent("a", CARP_CONFIG=str(path), **NO_LAB_DEFAULTS)
    proc = lab.agents.pop("a")
    assert proc.wait(10) == 2
    lines = [t for t in (lab.dir / "a.log").read_text().splitlines() if t.strip()]
    assert lines == [f"carp-sidecar: configuration error: {path}: [[vhid]] #2 (vhid 2) "
                     "advskw: unknown key here"]


def test_prometheus_and_alert_rules_with_three_vhids(lab: Lab) -> None:
    from .test_prometheus import QUERIES, SYNC_PANELS, api, concrete, firing, query, start_prometheus

    start_pair(lab)
    start_prometheus(lab)
    wait_for(lambda: "Ready" in (lab.get("client", "http://127.0.0.1:9090/-/ready") or ""), 20,
             "Prometheus ready")
    wait_for(lambda: len(query(lab, 'up{job="carp-sidecar"} == 1')) == 2, 30, "both targets up")
    time.sleep(3)
    masters = {r["metric"]["vhid"]: r["value"][1]
               for r in query(lab, "sum by (vhid) (carp_is_master)")}
    assert masters == {"1": "1", "2": "1", "3": "1"}
    for title, queries in QUERIES.items():
        if title in ("Maintenance since", "Last failover (exact)") or title in SYNC_PANELS:
            continue  # only nodes in maintenance; only after a failover (checked below); no path
        for expr, _legend in queries:
            assert query(lab, concrete(expr)), f"dashboard panel {title!r} has no data"
    moved = sorted(str(v) for v, h in holders(lab).items() if h == ["a"])  # node-a's VHIDs
    assert moved
    lab.topo.unplug("a")
    wait_for(lambda: holders(lab) == {1: ["b"], 2: ["b"], 3: ["b"]}, 6, "node-b holds all")
    time.sleep(3)
    masters = {r["metric"]["vhid"]: r["value"][1]
               for r in query(lab, "sum by (vhid) (carp_is_master)")}
    assert masters == {"1": "1", "2": "1", "3": "1"}
    # node-b measured each takeover, and Prometheus saw each as an increase (the series were
    # there at 0 since node-b first heard node-a)
    measured = ('sum by (vhid) (increase(carp_failover_duration_seconds_count'
                '{reason="master_down"}[5m])) > 0')
    wait_for(lambda: sorted(r["metric"]["vhid"] for r in query(lab, measured)) == moved, 10,
             f"a failover measured for each of VHIDs {moved}")
    last = concrete(QUERIES["Last failover (exact)"][0][0])
    assert sorted(r["metric"]["vhid"] for r in query(lab, last)) == moved
    rules = json.dumps(api(lab, "rules"))
    assert "CarpSplitBrain" in rules and not firing(lab, "CarpSplitBrain")
    assert not firing(lab, "CarpNoMaster") and not firing(lab, "CarpMasterWithoutVip")


def test_instances_on_two_interfaces_and_one_health_check_gating_several(lab: Lab) -> None:
    """VHID 1 on eth0, VHID 2 on eth1 (another network), both gated by one Apache check
    declared once: killing node-a's Apache moves both; each interface has its own socket."""
    lab.topo.add_second_network({"a": "10.99.0.11/24", "b": "10.99.0.12/24",
                                 "client": "10.99.0.100/24"})
    for node in ("a", "b"):
        lab.start_apache(node)
    head = '[health.apache]\nurl = "http://127.0.0.1/"\ninterval = 0.5\n'
    for node, skew in (("a", 0), ("b", 100)):
        tables = (f'[[vhid]]\nvhid = 1\naddr = ["{VIPS[1]}/16"]\nadvskew = {skew}\n'
                  'health = ["apache"]\n\n'
                  f'[[vhid]]\ninterface = "eth1"\nvhid = 2\naddr = ["10.99.0.2/24"]\n'
                  f'advskew = {skew}\nhealth = ["apache"]\n')
        lab.start_agent(node, CARP_CONFIG=str(write_config(lab, node, tables, head)),
                        **NO_LAB_DEFAULTS)

    def on(node: str) -> list[str]:
        out = lab.topo[node].run("ip", "-4", "-o", "addr").stdout
        return [vip for vip in (VIPS[1], "10.99.0.2") if f" {vip}/" in out]

    wait_for(lambda: on("a") == [VIPS[1], "10.99.0.2"] and on("b") == [], 12, "node-a both")
    assert lab.get("client", "http://10.99.0.2/") == "node-a"
    st = lab.status("a")
    assert st is not None and [(i["interface"], i["vhid"]) for i in st["instances"]] == [
        ("eth0", 1), ("eth1", 2)]
    lab.kill_apache("a")
    wait_for(lambda: on("b") == [VIPS[1], "10.99.0.2"] and on("a") == [], 6,
             "one failing check moves both VHIDs")
    assert lab.get("client", "http://10.99.0.2/") == "node-b"
    assert metric(lab, "a", "carp_health_up", vhid="2", interface="eth1") == 0
    lab.start_apache("a")
    wait_for(lambda: on("a") == [VIPS[1], "10.99.0.2"], 8, "healthy again: both come back")
