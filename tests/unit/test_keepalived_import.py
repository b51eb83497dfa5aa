"""`carp-sidecar import keepalived.conf`: keepalived's syntax, its VRRP instances as [[vhid]]
tables that the real loader accepts, and a line for every directive not carried over.

The samples are Debian's keepalived 2.2.7 ones (tests/data/keepalived, unchanged); the three
real-world configurations (tests/data/keepalived/realworld) are checked by keepalived itself
(`keepalived -t`) when it is installed, so they are what keepalived accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from sidecar.config.settings import Config, load
from sidecar.tools.keepalived_conf import ConfError, read, words_of
from sidecar.tools.keepalived_import import ImportError_, looks_like, translate

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/keepalived"
SAMPLES = sorted(DATA.glob("keepalived.conf.*"))
REAL = DATA / "realworld"
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"


def loaded(text: str, tmp_path: Path) -> Config:
    """The imported file through the project's loader, as `check-config --offline` does."""
    out = tmp_path / "imported.toml"
    out.write_text(text)
    return load({"CARP_CONFIG": str(out)}, offline=True)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    code = "import sys; from sidecar.tools.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_every_debian_sample_with_a_vrrp_instance_is_here() -> None:
    shipped = Path("/usr/share/doc/keepalived/samples")
    if shipped.is_dir():
        with_vrrp = {p.name for p in shipped.glob("keepalived.conf.*")
                     if "vrrp_instance" in p.read_text(errors="replace")}
        assert with_vrrp == {p.name for p in SAMPLES}
    assert len(SAMPLES) == 12


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_debian_samples_import_and_load(sample: Path, tmp_path: Path) -> None:
    result = translate(sample)
    config = loaded(result.toml, tmp_path)
    blocks = [n for n in read(sample).nodes if n.name == "vrrp_instance"]
    assert len(config.instances) == result.instances == len(blocks)
    assert all(i.protocol in ("vrrp2", "vrrp3") for i in config.instances)
    for note in result.notes:  # each names where it was, in the sample
        assert note.startswith(f"{sample}:"), note


def test_the_classic_sample(tmp_path: Path) -> None:
    result = translate(DATA / "keepalived.conf.vrrp")
    first, second, *_ = loaded(result.toml, tmp_path).runtime().instances
    assert (first.interface, first.vhid, first.protocol, first.priority) == ("eth0", 51, "vrrp2",
                                                                             100)
    assert first.secret == b"1111" and first.preempt and first.if_alias == "eth0:1"
    assert [str(v) for v in first.vips] == ["192.168.200.16/32", "192.168.200.17/32",
                                            "192.168.200.18/32"]
    assert (second.vhid, second.priority, second.secret) == (50, 50, b"")
    text = "\n".join(result.notes)
    for said in ("smtp_server: not carried", "router_id: not carried", "state: not carried",
                 "garp_master_delay: not carried", "192.168.200.18: listed twice"):
        assert said in text, said


def test_sample_nopreempt_and_lvs(tmp_path: Path) -> None:
    result = translate(DATA / "keepalived.conf.sample")
    (only,) = loaded(result.toml, tmp_path).runtime().instances
    assert only.preempt is False and only.vhid == 50
    assert any("virtual_server: not carried: LVS" in n for n in result.notes)


def test_sample_scripts_weights_become_demotion(tmp_path: Path) -> None:
    result = translate(DATA / "keepalived.conf.vrrp.localcheck")
    config = loaded(result.toml, tmp_path)
    assert config.instances[0].health == ("chk_sshd", "chk_haproxy", "chk_http_port",
                                          "chk_https_port", "chk_smtp_port")
    sshd, http = config.checks["chk_sshd"], config.checks["chk_http_port"]
    assert (sshd.cmd, sshd.interval, sshd.rise, sshd.fall) == ("killall -0 sshd", 2, 2, 2)
    # keepalived runs a shell line through /bin/sh; its defaults are rise 1, fall 1
    assert (http.cmd, http.rise, http.fall) == ("sh -c '</dev/tcp/127.0.0.1/80'", 1, 1)
    assert sum('becomes "demote"' in n for n in result.notes) == 6
    assert any("track_interface: not carried" in n for n in result.notes)


def test_sample_conditional_lines(tmp_path: Path) -> None:
    sample = DATA / "keepalived.conf.conditional_conf"
    plain = translate(sample)
    (i,) = loaded(plain.toml, tmp_path).instances
    assert (i.protocol, i.priority, i.advert_int, i.health) == ("vrrp3", 100, 12, ())
    assert sum("a line for keepalived's -i" in n for n in plain.notes) == 6
    assert i.vmac == "true" and not any("use_vmac" in n for n in plain.notes)  # CARP_VMAC
    high = translate(sample, config_id="low")
    config = loaded(high.toml, tmp_path)
    assert config.instances[0].priority == 85 and config.instances[0].health == ("check_VI_0",)
    check = config.checks["check_VI_0"]
    assert (check.cmd, check.rise, check.fall, check.timeout) == (
        "/etc/keepalived/scripts/check_low_VI_0.sh", 3, 3, 10)
    assert any("net_namespace: not carried" in n for n in high.notes)


def test_sample_other_devices_and_ah(tmp_path: Path) -> None:
    routes = translate(DATA / "keepalived.conf.vrrp.routes")
    (i,) = loaded(routes.toml, tmp_path).instances
    assert [str(v) for v in i.vips] == ["192.168.200.16/32", "192.168.200.17/32",
                                        "192.168.200.18/32"]  # as keepalived's adverts list
    assert sum("WARNING" in n and "not the instance's interface" in n
               for n in routes.notes) == 2
    ah = translate(DATA / "keepalived.conf.SSL_GET")
    (i,) = loaded(ah.toml, tmp_path).instances
    assert i.password is None
    assert any("auth_type AH: only PASS" in n for n in ah.notes)


def test_haproxy_pair(tmp_path: Path) -> None:
    result = translate(REAL / "haproxy_pair.conf")
    assert tomllib.loads(result.toml) == {
        "vhid": [{"interface": "eth0", "vhid": 51, "protocol": "vrrp2", "priority": 101,
                  "advert_int": 1, "addr": ["10.0.0.100/24"], "if_alias": "eth0:vip",
                  "pass": "s3cr3tpw", "health": ["chk_haproxy"],
                  "notifyscript": "/etc/keepalived/notify.sh"}],
        "health": {"chk_haproxy": {"cmd": "/usr/bin/killall -0 haproxy", "interval": 2,
                                   "rise": 2, "fall": 2, "timeout": 2}}}
    config = loaded(result.toml, tmp_path)
    (s,) = config.runtime().instances
    assert (s.protocol, s.priority, s.preempt, s.secret) == ("vrrp2", 101, True, b"s3cr3tpw")
    assert s.vips == (IPv4Interface("10.0.0.100/24"),) and s.health == ("chk_haproxy",)
    assert s.notifyscript == Path("/etc/keepalived/notify.sh")
    assert "clear text" in config.warnings[0]
    text = "\n".join(result.notes)
    assert "weight -20 becomes \"demote\"" in text and "arguments differ" in text
    assert "enable_script_security: not carried" in text


def test_unicast_cloud_pair(tmp_path: Path) -> None:
    result = translate(REAL / "unicast_cloud_pair.conf")
    assert tomllib.loads(result.toml)["vhid"] == [
        {"interface": "ens5", "vhid": 60, "protocol": "vrrp2", "priority": 90,
         "advert_int": 1, "addr": ["172.31.10.100/24"], "preempt": False,
         "srcip": "172.31.10.11", "peers": ["172.31.10.12"], "pass": "cloudpw1"}]
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert s.peers == (IPv4Address("172.31.10.12"),) and s.srcip == IPv4Address("172.31.10.11")
    assert s.preempt is False and s.secret == b"cloudpw1"
    assert any("notify_master: not carried: one notifyscript" in n for n in result.notes)


def test_vrrp3_subsecond_pair(tmp_path: Path) -> None:
    result = translate(REAL / "vrrp3_subsecond_pair.conf")
    assert tomllib.loads(result.toml)["vhid"] == [
        {"interface": "eth1", "vhid": 33, "protocol": "vrrp3", "priority": 200,
         "advert_int": 0.1, "addr": ["192.0.2.50/24", "192.0.2.51/24"], "preempt_delay": 5,
         "garp_repeat": 3, "garp_refresh": 30}]
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert (s.protocol, s.advert_int, s.preempt, s.preempt_delay) == ("vrrp3", 0.1, True, 5)
    assert (s.garp_repeat, s.garp_refresh) == (3, 30)


@pytest.mark.skipif(not Path(KEEPALIVED).exists(), reason="keepalived is not installed")
@pytest.mark.parametrize("conf", sorted(REAL.glob("*.conf")), ids=lambda p: p.name)
def test_real_world_configurations_are_keepalived_s(conf: Path) -> None:
    """keepalived's own config test: only the interfaces, absent here, may be missing."""
    done = subprocess.run([KEEPALIVED, "-t", "-f", str(conf)], capture_output=True, text=True,
                          timeout=30)
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if "doesn't exist" not in line and "Non-existent interface" not in line]
    assert lines == [] and done.returncode in (0, 5), done.stderr


def test_syntax_quotes_comments_braces_and_includes(tmp_path: Path) -> None:
    assert words_of('script "a b # c" # comment') == ["script", "a b # c"]
    assert words_of("virtual_ipaddress { 10.0.0.1 } ! note") == ["virtual_ipaddress", "{",
                                                                  "10.0.0.1", "}"]
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/b.conf").write_text("vrrp_instance B { interface eth0\n"
                                            "virtual_router_id 2\nvirtual_ipaddress {\n"
                                            "10.0.0.2 }\n}\n")
    (tmp_path / "conf.d/a.conf").write_text("vrrp_instance A\n{\n interface eth0\n"
                                            " virtual_router_id 1\n"
                                            " virtual_ipaddress { 10.0.0.1/24 }\n}\n")
    main = tmp_path / "keepalived.conf"
    main.write_text("global_defs {\n vrrp_version 3\n vrrp_mcast_group4 224.0.0.19\n}\n"
                    "include conf.d/*.conf\ninclude missing/*.conf\n$PRIO=100\n")
    result = translate(main)
    config = loaded(result.toml, tmp_path)
    assert [(i.vhid, i.protocol, str(i.mcast)) for i in config.instances] == [
        (1, "vrrp3", "224.0.0.19"), (2, "vrrp3", "224.0.0.19")]
    assert any("$PRIO=100: not carried: keepalived's parameters" in n for n in result.notes)
    assert any("include missing/*.conf: matches no file" in n for n in result.notes)
    main.write_text("vrrp_instance A {\n interface eth0\n")
    with pytest.raises(ImportError_, match="not closed"):
        translate(main)
    main.write_text("include keepalived.conf\n")
    with pytest.raises(ConfError, match="nested"):
        read(main)


def test_cli_writes_the_file_and_says_what_is_not_carried(tmp_path: Path) -> None:
    out = tmp_path / "out.toml"
    done = cli("import", str(DATA / "keepalived.conf.vrrp.sync"), "-o", str(out))
    assert done.returncode == 0 and done.stdout == ""
    assert "vrrp_sync_group: not carried" in done.stderr
    assert all(line.startswith("carp-sidecar: import: ") for line in done.stderr.splitlines())
    assert len(loaded(out.read_text(), tmp_path).instances) == 9
    (tmp_path / "keepalived.conf").write_text("global_defs {\n router_id x\n}\n")
    done = cli("import", str(tmp_path / "keepalived.conf"))
    assert done.returncode == 2
    assert done.stderr.endswith("no vrrp_instance to import\n")


def test_ucarp_files_still_go_to_the_ucarp_import(tmp_path: Path) -> None:
    conf = tmp_path / "ucarp.conf"
    conf.write_text("UCARP_INTERFACE=eth0\nUCARP_VHID=3\nUCARP_PASS=x\nUCARP_ADDR=10.0.0.3\n")
    assert not looks_like([conf]) and looks_like([DATA / "keepalived.conf.sample"])
    done = cli("import", str(conf))
    assert done.returncode == 0 and "CARP_VHID=3" in done.stdout


@pytest.mark.parametrize(("version", "given", "imported"), [
    ("2", "1.5", 2), ("2", "0.4", 1), ("2", "3", 3), ("3", "0.015", 0.02), ("3", "0.004", 0.01),
    ("3", "0.25", 0.25)])
def test_intervals_are_rounded_as_keepalived_does(tmp_path: Path, version: str, given: str,
                                                  imported: float) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(f"vrrp_instance A {{\n version {version}\n interface eth0\n"
                    f" virtual_router_id 1\n advert_int {given}\n"
                    " virtual_ipaddress {\n  10.0.0.1\n }\n}\n")
    result = translate(conf)
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert s.advert_int == imported
    assert any("as keepalived rounds it" in n for n in result.notes) == (
        float(given) != imported)


def test_strict_mode_drops_the_password_as_keepalived_does(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n vrrp_strict\n}\nvrrp_instance A {\n interface eth0\n"
                    " state BACKUP\n virtual_router_id 1\n authentication {\n  auth_type PASS\n"
                    "  auth_pass abc\n }\n virtual_ipaddress {\n  10.0.0.1\n }\n}\n")
    result = translate(conf)
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert s.secret == b""
    assert any("in strict mode" in n for n in result.notes)
    assert not any("state" in n for n in result.notes)  # BACKUP: as every node starts


def test_ipv6_addresses_of_a_v2_instance_are_named_not_carried(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance A {\n interface eth0\n virtual_router_id 1\n"
                    " virtual_ipaddress {\n  10.0.0.1/24\n  2001:db8::1/64\n }\n}\n"
                    "vrrp_instance B {\n interface eth0\n virtual_router_id 2\n version 2\n"
                    " virtual_ipaddress {\n  2001:db8::2/64\n }\n}\n")
    result = translate(conf)
    (s,) = loaded(result.toml, tmp_path).runtime().instances
    assert [str(v) for v in s.vips] == ["10.0.0.1/24"]
    # keepalived ignores an address of another family than the instance's first one
    assert any("WARNING: virtual_ipaddress 2001:db8::1/64: not carried: keepalived ignores"
               in n for n in result.notes)
    # version 2 before an IPv6 address: keepalived runs VRRPv2 over IPv6, we do not
    assert any("keepalived runs VRRPv2 over IPv6 here" in n for n in result.notes)
    assert any("vrrp_instance B: no addr: skipped" in n for n in result.notes)


def test_ipv6_instances_become_vrrp3_ipv6_instances(tmp_path: Path) -> None:
    """keepalived runs an all-IPv6 instance as VRRPv3 unless it says version 2 (native_ipv6
    forces it); what an IPv6 instance of ours cannot take is named, with WARNING."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n vrrp_version 2\n}\n"
                    "vrrp_instance V6 {\n interface eth0\n virtual_router_id 3\n"
                    " priority 150\n advert_int 0.5\n"
                    " virtual_ipaddress {\n  fe80::1/64\n  2001:db8::1/64\n  2001:db8::2/64\n }\n"
                    "}\n"
                    "vrrp_instance U6 {\n interface eth0\n virtual_router_id 4\n native_ipv6\n"
                    " unicast_src_ip 2001:db8::11\n unicast_peer {\n  2001:db8::12\n }\n"
                    " virtual_ipaddress {\n  2001:db8::4/64\n }\n}\n")
    result = translate(conf)
    v6, u6 = loaded(result.toml, tmp_path).runtime().instances
    assert (v6.protocol, v6.ipv6, v6.priority, v6.advert_int) == ("vrrp3", True, 150, 0.5)
    # RFC 5798's link-local first address carried, in keepalived's order (its adverts')
    assert [str(v) for v in v6.vips] == ["fe80::1/64", "2001:db8::1/64", "2001:db8::2/64"]
    assert (u6.protocol, u6.ipv6) == ("vrrp3", True)
    assert (str(u6.srcip), [str(p) for p in u6.peers]) == ("2001:db8::11", ["2001:db8::12"])
    notes = "\n".join(result.notes)
    assert "fe80::1" not in notes
    assert "native_ipv6" not in notes


def _conf(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "keepalived.conf"
    conf.write_text("vrrp_instance A {\n interface eth0\n virtual_router_id 1\n" + body + "}\n")
    return conf


def test_auth_pass_is_the_first_word_only(tmp_path: Path) -> None:
    result = translate(_conf(tmp_path, " authentication {\n  auth_type PASS\n"
                                       "  auth_pass ab cd\n }\n virtual_ipaddress {\n"
                                       "  10.0.0.1\n }\n"))
    assert tomllib.loads(result.toml)["vhid"][0]["pass"] == "ab"


def test_auth_type_is_case_sensitive_as_in_keepalived(tmp_path: Path) -> None:
    result = translate(_conf(tmp_path, " authentication {\n  auth_type pass\n"
                                       "  auth_pass abcd\n }\n virtual_ipaddress {\n"
                                       "  10.0.0.1\n }\n"))
    assert "pass" not in tomllib.loads(result.toml)["vhid"][0]
    assert any("case-sensitively" in n for n in result.notes)


def test_state_master_without_priority_is_255(tmp_path: Path) -> None:
    result = translate(_conf(tmp_path, " state MASTER\n virtual_ipaddress {\n  10.0.0.1\n }\n"))
    assert tomllib.loads(result.toml)["vhid"][0]["priority"] == 255
    assert any("state MASTER with no priority: priority 255" in n for n in result.notes)
    given = translate(_conf(tmp_path, " state MASTER\n priority 150\n"
                                      " virtual_ipaddress {\n  10.0.0.1\n }\n"))
    assert tomllib.loads(given.toml)["vhid"][0]["priority"] == 150


def test_vip_on_another_device_is_kept_with_a_warning(tmp_path: Path) -> None:
    result = translate(_conf(tmp_path, " virtual_ipaddress {\n  10.0.0.1/24\n"
                                       "  10.0.1.1/24 dev eth1\n }\n"))
    assert tomllib.loads(result.toml)["vhid"][0]["addr"] == ["10.0.0.1/24", "10.0.1.1/24"]
    assert any("WARNING: 10.0.1.1/24 dev eth1" in n for n in result.notes)


def test_vip_flags_take_no_value(tmp_path: Path) -> None:
    result = translate(_conf(tmp_path, " virtual_ipaddress {\n  10.0.0.1/24\n"
                                       "  10.0.0.5/24 no_track dev eth1\n }\n"))
    assert any("10.0.0.5/24 dev eth1" in n for n in result.notes)
    assert any("no_track: not carried for 10.0.0.5/24" in n for n in result.notes)


def test_backslash_before_a_comment_is_dropped() -> None:
    assert words_of(r"auth_pass ab\!cd12") == ["auth_pass", "ab"]
    assert words_of(r"auth_pass ab\#cd12") == ["auth_pass", "ab"]


def test_preempt_delay_is_noted(tmp_path: Path) -> None:
    result = translate(_conf(tmp_path, " preempt_delay 10\n virtual_ipaddress {\n"
                                       "  10.0.0.1\n }\n"))
    assert tomllib.loads(result.toml)["vhid"][0]["preempt_delay"] == 10
    assert any("first lower-priority advert" in n for n in result.notes)
