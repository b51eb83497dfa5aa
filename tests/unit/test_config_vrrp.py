"""VRRP mode's settings (CARP_PROTOCOL=vrrp2|vrrp3): what they default to, what the agent
receives, and every refusal as one line naming its variable."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from sidecar.config import vrrp
from sidecar.config.runconfig import RunConfig, Vhid, vrrp_params
from sidecar.config.settings import ConfigError, load

ROOT = Path(__file__).resolve().parents[2]
BASE = {"CARP_INTERFACE": "eth0", "CARP_VHID": "7", "CARP_ADDR": "10.0.0.7/24"}


def one(environ: dict[str, str]) -> Vhid:
    config = load({**BASE, **environ})
    return config.runtime().instances[0]


def refused(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load({**BASE, **environ})
    return str(e.value).splitlines()


def test_carp_stays_as_it_was() -> None:
    s = one({"CARP_PASS": "geheim"})
    assert (s.protocol, s.preempt, s.secret) == ("carp", False, b"geheim")
    assert vrrp_params(s) == {}
    # check-config and the scripts are not shown VRRP's settings in CARP mode
    assert "CARP_PROTOCOL" not in dict(s.script_env) and "CARP_PRIORITY" not in dict(s.script_env)


def test_vrrp_defaults_are_keepalived_s() -> None:
    s = one({"CARP_PROTOCOL": "vrrp2"})
    assert (s.protocol, s.priority, s.advert_int, s.preempt) == ("vrrp2", 100, 1.0, True)
    assert s.secret == b""  # no password: auth type 0
    env = dict(s.script_env)
    assert env["CARP_PROTOCOL"] == "vrrp2" and env["CARP_PRIORITY"] == "100"
    assert "CARP_ADVBASE" not in env and "CARP_ADVSKEW" not in env


def test_nopreempt_is_kept() -> None:
    assert one({"CARP_PROTOCOL": "vrrp3", "CARP_PREEMPT": "false"}).preempt is False
    assert one({"CARP_PROTOCOL": "vrrp3", "UCARP_PREEMPT": "no"}).preempt is False


def test_vrrp3_sub_second_reaches_the_agent_as_json() -> None:
    config = load({**BASE, "CARP_PROTOCOL": "vrrp3", "CARP_PRIORITY": "254",
                   "CARP_ADVERT_INT": "0.07", "CARP_PEERS": "10.0.0.2"})
    back = RunConfig.from_json(config.runtime().to_json())
    s = back.instances[0]
    assert (s.protocol, s.priority, s.advert_int) == ("vrrp3", 254, 0.07)
    assert s.peers == (IPv4Address("10.0.0.2"),) and s.vips == (IPv4Interface("10.0.0.7/24"),)
    assert vrrp_params(s) == {"protocol": "vrrp3", "priority": 254, "advert_int_cs": 7}


def test_vrrp2_password_is_eight_bytes_at_most_and_warned_about() -> None:
    config = load({**BASE, "CARP_PROTOCOL": "vrrp2", "CARP_PASS": "12345678"})
    assert config.runtime().instances[0].secret == b"12345678"
    assert len(config.warnings) == 1 and "clear text" in config.warnings[0]
    assert refused({"CARP_PROTOCOL": "vrrp2", "CARP_PASS": "123456789"}) == [
        "CARP_PASS: VRRPv2's simple password is at most 8 bytes (RFC 2338; keepalived cuts a "
        "longer one) (CARP_PROTOCOL=vrrp2)"]
    assert load({**BASE, "CARP_PROTOCOL": "vrrp2"}).warnings == ()


def test_vrrp2_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    s = one({"CARP_PROTOCOL": "vrrp2", "CARP_PASS_FILE": str(tmp_path / "pw")})
    assert s.secret == b"s3cret"


@pytest.mark.parametrize(("given", "line"), [
    ({"CARP_PROTOCOL": "vrrp3", "CARP_PASS": "x"},
     "CARP_PASS: VRRPv3 (RFC 5798, CARP_PROTOCOL=vrrp3) has no authentication; remove it "
     "(keepalived ignores an authentication block with version 3)"),
    ({"CARP_PROTOCOL": "vrrp2", "CARP_ADVBASE": "1"},
     "CARP_ADVBASE: CARP only; with CARP_PROTOCOL=vrrp2 use CARP_ADVERT_INT (the advert "
     "interval) instead (CARP_ADVBASE=1)"),
    ({"CARP_PROTOCOL": "vrrp2", "UCARP_ADVSKEW": "10"},
     "UCARP_ADVSKEW: CARP only; with CARP_PROTOCOL=vrrp2 use CARP_PRIORITY (1-254, higher "
     "wins) instead (UCARP_ADVSKEW=10)"),
    ({"CARP_PROTOCOL": "vrrp3", "CARP_STRICT": "true", "CARP_PEERS": "10.0.0.2"},
     "CARP_STRICT: CARP only (carp-sidecar's HMAC over the whole header); "
     "CARP_PROTOCOL=vrrp3 has no such mode (CARP_STRICT=true)"),
    ({"CARP_PROTOCOL": "vrrp2", "CARP_PASS_NEXT": "x"},
     "CARP_PASS_NEXT: CARP only (a key rotation); CARP_PROTOCOL=vrrp2 has one password or none"),
    ({"CARP_PASS": "x", "CARP_PRIORITY": "150"},
     "CARP_PRIORITY: a VRRP setting; CARP uses CARP_ADVSKEW (lower wins) (or set "
     "CARP_PROTOCOL=vrrp2 or vrrp3) (CARP_PRIORITY=150)"),
    ({"CARP_PASS": "x", "CARP_ADVERT_INT": "2"},
     "CARP_ADVERT_INT: a VRRP setting; CARP uses CARP_ADVBASE (or set CARP_PROTOCOL=vrrp2 or "
     "vrrp3) (CARP_ADVERT_INT=2)"),
    ({"CARP_PROTOCOL": "vrrp2", "CARP_ADVERT_INT": "0.5"},
     "CARP_ADVERT_INT: whole seconds 1-255 with CARP_PROTOCOL=vrrp2 (RFC 3768) "
     "(CARP_ADVERT_INT=0.5)"),
    ({"CARP_PROTOCOL": "vrrp3", "CARP_ADVERT_INT": "0.015"},
     "CARP_ADVERT_INT: 0.01-40.95 s in steps of 0.01 with CARP_PROTOCOL=vrrp3 (RFC 5798's "
     "centiseconds) (CARP_ADVERT_INT=0.015)"),
    ({"CARP_PROTOCOL": "vrrp3", "CARP_ADVERT_INT": "41"},
     "CARP_ADVERT_INT: 0.01-40.95 s in steps of 0.01 with CARP_PROTOCOL=vrrp3 (RFC 5798's "
     "centiseconds) (CARP_ADVERT_INT=41)"),
    ({"CARP_PROTOCOL": "vrrp2", "CARP_PRIORITY": "0"},
     "CARP_PRIORITY: Input should be greater than or equal to 1 (CARP_PRIORITY=0)"),
    ({"CARP_PROTOCOL": "vrrp2", "CARP_ADDR": "10.0.0.7,2001:db8::7"},
     "CARP_ADDR: VRRPv2 carries IPv4 addresses only (2001:db8::7); use vrrp3 or another "
     "instance (CARP_PROTOCOL=vrrp2) (CARP_ADDR=10.0.0.7,2001:db8::7)"),
    ({"CARP_PROTOCOL": "vrrp", "CARP_PASS": "x"},
     "CARP_PROTOCOL: Input should be 'carp', 'vrrp2' or 'vrrp3' (CARP_PROTOCOL=vrrp)"),
])
def test_refusals_are_one_line_naming_the_variable(given: dict[str, str], line: str) -> None:
    assert refused(given) == [line]


def test_a_bad_protocol_hides_no_other_mistake() -> None:
    assert sorted(refused({"CARP_PROTOCOL": "vrrp", "CARP_VHID": "0"})) == [
        "CARP_PROTOCOL: Input should be 'carp', 'vrrp2' or 'vrrp3' (CARP_PROTOCOL=vrrp)",
        "CARP_VHID: Input should be greater than or equal to 1 (CARP_VHID=0)"]


def test_toml_per_vhid(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        'state_dir = "off"\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 5\naddr = "10.0.0.5/24"\nprotocol = "vrrp3"\n'
        'priority = 200\nadvert_int = 0.1\npreempt = false\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 6\naddr = "10.0.0.6"\nprotocol = "vrrp2"\n'
        'pass = "pw"\n'
        '[[vhid]]\ninterface = "eth0"\nvhid = 8\naddr = "10.0.0.8"\npass = "carp"\n')
    config = load({"CARP_CONFIG": str(tmp_path / "c.toml")})
    v3, v2, carp = config.runtime().instances
    assert (v3.protocol, v3.priority, v3.advert_int, v3.preempt) == ("vrrp3", 200, 0.1, False)
    assert (v2.protocol, v2.priority, v2.preempt, v2.secret) == ("vrrp2", 100, True, b"pw")
    assert (carp.protocol, carp.preempt) == ("carp", False)
    assert [w.split(":")[0] for w in config.warnings] == ["eth0/vhid6"]
    (tmp_path / "c.toml").write_text(
        '[[vhid]]\ninterface = "eth0"\nvhid = 5\naddr = "10.0.0.5"\nprotocol = "vrrp3"\n'
        'advskew = 4\n')
    with pytest.raises(ConfigError) as e:
        load({"CARP_CONFIG": str(tmp_path / "c.toml")})
    assert str(e.value) == (f"{tmp_path / 'c.toml'}: [[vhid]] #1 (vhid 5): advskew: CARP only; "
                            "with protocol=vrrp3 use priority (1-254, higher wins) "
                            "instead (advskew = 4)")


def test_owner_priority_needs_every_vip_on_the_interface() -> None:
    vips = (IPv4Interface("10.0.0.7/24"),)
    assert vrrp.owner_problem(255, "eth0", vips, [IPv4Address("10.0.0.7")]) == ""
    assert vrrp.owner_problem(254, "eth0", vips, []) == ""
    assert vrrp.owner_problem(255, "eth0", vips, [IPv4Address("10.0.0.1")]) == (
        "CARP_PRIORITY: 255 is the address owner's, but 10.0.0.7 is not an address of eth0; "
        "use 1-254")


def test_figures_follow_the_rfcs() -> None:
    v2 = vrrp.figures("vrrp2", 100, 1.0, True)
    assert v2["skew time"].startswith("0.609 s") and v2["master-down interval"].startswith("3.61 s")
    assert "clear text" in v2["authentication"]
    v3 = vrrp.figures("vrrp3", 200, 0.1, False)
    assert v3["skew time"].startswith("0.0219 s") and v3["master-down interval"].startswith("0.322")


def test_check_config_shows_vrrp_figures_and_the_warning() -> None:
    env = {**BASE, "CARP_PROTOCOL": "vrrp2", "CARP_PASS": "pw", "CARP_PRIORITY": "150",
           "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "sidecar.tools.cli", "check-config",
                           "--offline"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "# warning: eth0/vhid7: VRRPv2's simple password travels in clear text" in done.stdout
    assert "CARP_PROTOCOL=vrrp2" in done.stdout and "CARP_ADVBASE" not in done.stdout
    assert "#   skew time: 0.414 s ((256 - 150)/256)" in done.stdout


def test_run_refuses_with_one_line_and_status_2(tmp_path: Path) -> None:
    env = {**BASE, "CARP_PROTOCOL": "vrrp3", "CARP_PASS": "x", "CARP_STATE_DIR": "off",
           "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "sidecar.tools.cli", "run"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "carp-sidecar: configuration error: CARP_PASS: VRRPv3 (RFC 5798, CARP_PROTOCOL=vrrp3) "
        "has no authentication; remove it (keepalived ignores an authentication block with "
        "version 3)"]


def test_an_ipv6_only_instance_is_vrrp3_s_and_refuses_what_it_cannot_use() -> None:
    (line,) = refused({"CARP_PROTOCOL": "vrrp2", "CARP_ADDR": "2001:db8::7/64"})
    assert line.startswith("CARP_ADDR: VRRPv2 carries IPv4 addresses only")
    s = one({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::8/64,2001:db8::7/64"})
    assert s.ipv6 and not one({"CARP_PROTOCOL": "vrrp3",
                               "CARP_ADDR": "10.0.0.7/24,2001:db8::7/64"}).ipv6
    assert not one({"CARP_ADDR": "10.0.0.7/24,2001:db8::7/64", "CARP_PASS": "x"}).ipv6
    for extra, variable in (({"CARP_SRCIP": "10.0.0.1"}, "CARP_SRCIP"),
                            ({"CARP_PEERS": "10.0.0.2"}, "CARP_PEERS"),
                            ({"CARP_MCAST": "224.0.0.18"}, "CARP_MCAST")):
        (line,) = refused({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::7/64", **extra})
        assert line.startswith(f"{variable}: ") and "an IPv6 VRRP instance" in line
    (line,) = refused({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::7/64",
                       "CARP_SYNC_PATHS": str(ROOT / "docs")})
    assert line.startswith("CARP_SYNC_PATHS: replication runs over IPv4; not with an IPv6")
    uni = one({"CARP_PROTOCOL": "vrrp3", "CARP_ADDR": "2001:db8::7/64",
               "CARP_SRCIP": "2001:db8::11", "CARP_PEERS": "2001:db8::12,fe80::12"})
    assert [str(p) for p in (uni.srcip, *uni.peers)] == ["2001:db8::11", "2001:db8::12",
                                                         "fe80::12"]
    # IPv6 peers of an IPv4 instance, CARP's or VRRP's: one line each, naming the variable
    for protocol, password in (("carp", "x"), ("vrrp3", "")):
        lines = refused({"CARP_PROTOCOL": protocol, "CARP_PASS": password,
                         "CARP_SRCIP": "2001:db8::11", "CARP_PEERS": "10.0.0.2,2001:db8::12"})
        assert [line.split(":")[0] for line in lines] == ["CARP_SRCIP", "CARP_PEERS"]
        assert "2001:db8::12: IPv4 addresses only" in lines[1]


def test_the_owner_s_failover_is_not_at_once_for_a_failure() -> None:
    failover = vrrp.figures("vrrp2", 255, 1.0, False)["expected failover"]
    assert "the backups still wait their master-down interval: 3 s + their own skew" in failover
    assert not failover.startswith("at once")
