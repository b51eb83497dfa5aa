"""Configuration: the classic ucarp.conf loads as is; every bad value names its variable."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from sidecar.config.runconfig import Vhid
from sidecar.config.settings import ConfigError, load, read_env_file

ROOT = Path(__file__).resolve().parents[2]


def one(environ: dict[str, str], env_file: Path | None = None) -> Vhid:
    """The environment's single instance, as the agent receives it."""
    config = load(environ, env_file)
    assert len(config.instances) == 1
    return config.runtime().instances[0]
BASE = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "geheim", "CARP_ADDR": "10.0.0.1"}


def script(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def test_classic_ucarp_conf_loads_as_is(tmp_path: Path) -> None:
    conf = (ROOT / "deploy/ucarp.conf.example").read_text()
    conf = conf.replace("/etc/ucarp/ucarp-up.sh", str(script(tmp_path, "up.sh")))
    conf = conf.replace("/etc/ucarp/ucarp-down.sh", str(script(tmp_path, "down.sh")))
    (tmp_path / "ucarp.conf").write_text(conf)
    s = one({}, tmp_path / "ucarp.conf")
    assert s.interface == "eth0" and s.if_alias == "eth0:0" and s.vhid == 1
    assert s.srcip == IPv4Address("172.16.0.11") and s.advbase == 1
    assert s.vips[0] == IPv4Interface("172.16.0.1/16") and s.secret == b"geheim"
    assert s.manages_vip_by_scripts


def test_environment_overrides_env_file(tmp_path: Path) -> None:
    (tmp_path / "e").write_text("CARP_INTERFACE=eth0\nCARP_VHID=1\nCARP_PASS=a\nCARP_ADDR=10.0.0.1\n")
    assert one({"UCARP_VHID": "9", "CARP_VHID": "7"}, tmp_path / "e").vhid == 7


def test_env_file_accepts_export_and_quotes(tmp_path: Path) -> None:
    (tmp_path / "e").write_text("# c\n\nexport A='x y'\nB=\"z\"\n")
    assert read_env_file(tmp_path / "e") == {"A": "x y", "B": "z"}


def test_env_file_bad_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "e").write_text("A=1\nthis is not it\n")
    with pytest.raises(ConfigError, match=r"e:2: expected KEY=VALUE"):
        read_env_file(tmp_path / "e")
    with pytest.raises(ConfigError, match=r"e:2: expected KEY=VALUE"):
        load({}, tmp_path / "e")
    with pytest.raises(ConfigError, match=r"--env-file: cannot read .*nope"):
        load({}, tmp_path / "nope")


def test_env_file_is_read_as_the_shell_reads_ucarp_conf(tmp_path: Path) -> None:
    """What `. /etc/ucarp/ucarp.conf` gives the start script is what the agent gets."""
    conf = tmp_path / "ucarp.conf"
    conf.write_text("UCARP_INTERFACE=eth0\nUCARP_IF_ALIAS=${UCARP_INTERFACE}:0\n"
                    "UCARP_PASS=pw   # the ops password\nUCARP_VHID=3 # vhid\n"
                    "UCARP_ADDR=172.16.0.1\nUCARP_MASK=255.255.0.0\n")
    shell = subprocess.run(["sh", "-c", f". {conf}; printf '%s|%s' \"$UCARP_PASS\" "
                            "\"$UCARP_IF_ALIAS\""], capture_output=True, text=True).stdout
    s = one({}, conf)
    assert shell == "pw|eth0:0"
    assert (s.secret.decode(), s.if_alias, s.vhid) == ("pw", "eth0:0", 3)


def test_every_configuration_error_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "e").write_text("UCARP_PREMPT=1\nUCARP_ADVBASE=x\nUCARP_OWN_THING=kept\n")
    with pytest.raises(ConfigError) as e:
        load({**BASE, "CARP_VHID": "300", "CARP_ADVSKW": "1"}, tmp_path / "e")
    lines = str(e.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "CARP_ADVSKW", "CARP_VHID", "UCARP_ADVBASE", "UCARP_PREMPT"], lines
    assert "did you mean UCARP_PREEMPT?" in str(e.value)
    # a UCARP_ name nowhere near a setting is the user's own: it passes (to the scripts)
    (tmp_path / "e").write_text("UCARP_OWN_THING=kept\nUCARP_NETMASK=255.255.0.0\n")
    assert load(BASE, tmp_path / "e").script_extra == {"UCARP_OWN_THING": "kept",
                                                        "UCARP_NETMASK": "255.255.0.0"}


def test_environment_ucarp_spelling_beats_the_files_carp_spelling(tmp_path: Path) -> None:
    (tmp_path / "e").write_text("CARP_ADVSKEW=5\n")
    assert one({**BASE, "UCARP_ADVSKEW": "9"}, tmp_path / "e").advskew == 9


@pytest.mark.parametrize(("addr", "mask", "want"), [
    ("172.16.0.1", "255.255.0.0", "172.16.0.1/16"),
    ("172.16.0.1/16", None, "172.16.0.1/16"),
    ("172.16.0.1", "24", "172.16.0.1/24"),
    ("172.16.0.1", None, "172.16.0.1/32"),
])
def test_address_and_mask_forms(addr: str, mask: str | None, want: str) -> None:
    env = {**BASE, "CARP_ADDR": addr} | ({"CARP_MASK": mask} if mask else {})
    assert one(env).vips[0] == IPv4Interface(want)


@pytest.mark.parametrize(("override", "message"), [
    ({"CARP_VHID": "0"}, "CARP_VHID: Input should be greater than or equal to 1"),
    ({"CARP_VHID": "300"}, "CARP_VHID: Input should be less than or equal to 255"),
    ({"CARP_VHID": "x"}, "CARP_VHID: Input should be a valid integer"),
    ({"CARP_ADDR": "1.2.3"}, "CARP_ADDR: '1.2.3' is not an IPv4 address"),
    ({"CARP_MASK": "255.0.255.0"}, "CARP_MASK: not a netmask"),
    ({"CARP_ADDR": "10.0.0.1/8", "CARP_MASK": "16"}, "CARP_MASK: disagrees"),
    ({"CARP_ADVBASE": "0"}, "CARP_ADVBASE: advbase and advskew cannot both be 0"),
    ({"CARP_ADVSKEW": "256"}, "CARP_ADVSKEW: Input should be less than or equal to 255"),
    ({"CARP_PASS": "x" * 20}, "CARP_PASS: password longer than 19 bytes"),
    ({"CARP_PASS_FILE": "/nonexistent"}, "CARP_PASS: set exactly one"),
    ({"CARP_IF_ALIAS": "eth1:0"}, "CARP_IF_ALIAS: must start with the interface name"),
    ({"CARP_MCAST": "10.0.0.1"}, "CARP_MCAST: must be an IPv4 multicast group"),
    ({"CARP_UPSCRIPT": "/nonexistent"}, "CARP_UPSCRIPT: /nonexistent is not an executable file"),
    ({"CARP_METRICS_LISTEN": "9655"}, "CARP_METRICS_LISTEN: '9655' is not host:port"),
    ({"CARP_PREEMPT": "maybe"}, "CARP_PREEMPT: Input should be a valid boolean"),
    ({"CARP_LOG_FORMAT": "xml"}, "CARP_LOG_FORMAT: Input should be 'text' or 'json'"),
    ({"CARP_PREMPT": "1"}, "CARP_PREMPT: unknown variable"),
    ({"UCARP_VHID": "0", "CARP_VHID": None}, "UCARP_VHID: Input should be greater"),
    # values that pass a type check but hurt (issue: faults and hostile input)
    ({"CARP_GARP_REFRESH": "1e-9"}, "CARP_GARP_REFRESH: 0 (off) or at least 1 s"),
    ({"CARP_PROBE_INTERVAL": "1e-9"}, "CARP_PROBE_INTERVAL: 0 (off) or at least 1 s"),
    ({"CARP_PROBE_INTERVAL": "-1"}, "CARP_PROBE_INTERVAL: Input should be greater than or "
                                    "equal to 0"),
    ({"CARP_HEALTH_INTERVAL": "1e-9"}, "CARP_HEALTH_INTERVAL: Input should be greater than or "
                                       "equal to 0.1"),
    ({"CARP_HEALTH_INTERVAL": "inf"}, "CARP_HEALTH_INTERVAL: Input should be less than"),
    ({"CARP_SCRIPT_TIMEOUT": "nan"}, "CARP_SCRIPT_TIMEOUT: Input should be"),
    ({"CARP_ADDR": "0.0.0.0"}, "CARP_ADDR: 0.0.0.0 is not a host address"),
    ({"CARP_ADDR": "255.255.255.255"}, "CARP_ADDR: 255.255.255.255 is not a host address"),
    ({"CARP_ADDR": "224.0.0.18"}, "CARP_ADDR: 224.0.0.18 is a multicast"),
    ({"CARP_ADDR": "127.0.0.1"}, "CARP_ADDR: 127.0.0.1 is a multicast, loopback"),
    ({"CARP_ADDR": "172.16.0.0/16"}, "CARP_ADDR: 172.16.0.0 is the network address of 172.16.0.0/16"),
    ({"CARP_ADDR": "172.16.255.255", "CARP_MASK": "255.255.0.0"},
     "CARP_ADDR: 172.16.255.255 is the broadcast address"),
    ({"CARP_SRCIP": "224.0.0.18"}, "CARP_SRCIP: 224.0.0.18 cannot be a host's own"),
    ({"CARP_SRCIP": "0.0.0.0"}, "CARP_SRCIP: 0.0.0.0 cannot be"),
    ({"CARP_HEALTH_URL": "http://[::1"}, "CARP_HEALTH_URL: not a valid URL"),
    ({"CARP_HEALTH_URL": "http://:80/"}, "CARP_HEALTH_URL: must be an http:// or https:// URL with a host"),
    ({"CARP_HEALTH_URL": "http://h:99999/"}, "CARP_HEALTH_URL: not a valid URL"),
    ({"CARP_CONTROL_SOCKET": "run/x.sock"}, "CARP_CONTROL_SOCKET: run/x.sock is not an absolute"),
    ({"CARP_STATE_DIR": "state"}, "CARP_STATE_DIR: state is not an absolute path"),
    ({"CARP_MAINTENANCE_FILE": "down"}, "CARP_MAINTENANCE_FILE: down is not an absolute path"),
    ({"CARP_PREEMPT_DELAY": "-1"}, "CARP_PREEMPT_DELAY: Input should be greater than or equal"),
    ({"CARP_PREEMPT_DELAY": "nan"}, "CARP_PREEMPT_DELAY: Input should be"),
    ({"CARP_PEERS": "224.0.0.18"}, "CARP_PEERS: 224.0.0.18 cannot be a peer's address"),
    ({"CARP_PEERS": "10.0.0.2,10.0.0.2"}, "CARP_PEERS: a peer is listed twice"),
    ({"CARP_PEERS": "10.0.0.2,not-an-ip"}, "CARP_PEERS: Input is not a valid IPv4 address"),
    ({"CARP_PEERS": ",".join(f"10.1.0.{n}" for n in range(1, 34))}, "CARP_PEERS: at most 32 peers"),
    ({"CARP_PEERS": "10.0.0.5", "CARP_SRCIP": "10.0.0.5"}, "CARP_PEERS: lists this node's own"),
    ({"CARP_STRICT": "true"}, "CARP_STRICT: needs CARP_PEERS"),
    ({"CARP_PEERS_MULTICAST": "true"}, "CARP_PEERS_MULTICAST: needs CARP_PEERS"),
    ({"CARP_DEAD_TIMER": "vrrp2"}, "CARP_DEAD_TIMER: Input should be 'auto' or 'ucarp'"),
    ({"CARP_LOG_LEVEL": "chatty"}, "CARP_LOG_LEVEL: Input should be"),
    ({"CARP_MAINTENANCE_FILE": "relative/flag"}, "CARP_MAINTENANCE_FILE: relative/flag is not"),
    # routed VIPs (CARP_VIP_INTERFACE): host routes, nothing announced on a link
    ({"CARP_VIP_INTERFACE": "lo", "CARP_ADDR": "10.0.0.1/24"},
     "CARP_ADDR: 10.0.0.1/24 on CARP_VIP_INTERFACE=lo must be a host route (/32, /128)"),
    ({"CARP_VIP_INTERFACE": "lo", "CARP_ADDR": "2001:db8::1/64"},
     "CARP_ADDR: 2001:db8::1/64 on CARP_VIP_INTERFACE=lo must be a host route"),
    ({"CARP_VIP_INTERFACE": "lo", "CARP_GARP_REPEAT": "3"},
     "CARP_GARP_REPEAT: no gratuitous ARP, NA or probe is sent for VIPs on CARP_VIP_INTERFACE=lo"),
    ({"CARP_VIP_INTERFACE": "lo", "UCARP_GARP_REFRESH": "60"}, "UCARP_GARP_REFRESH: no grat"),
    ({"CARP_VIP_INTERFACE": "lo", "CARP_PROBE_INTERVAL": "10"}, "CARP_PROBE_INTERVAL: no grat"),
    ({"CARP_VIP_INTERFACE": "eth0"}, "CARP_VIP_INTERFACE: is CARP_INTERFACE; leave it unset"),
    ({"CARP_VIP_INTERFACE": "a" * 16}, "CARP_VIP_INTERFACE: not an interface name"),
    ({"CARP_VIP_INTERFACE": "lo", "CARP_IF_ALIAS": "eth0:0"},
     "CARP_IF_ALIAS: must start with the interface name 'lo'"),
])
def test_bad_values_name_the_variable(override: dict[str, str | None], message: str) -> None:
    env = {**BASE, **override}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        one(env)  # type: ignore[arg-type]
    assert str(e.value).startswith(message)


def test_missing_required_variable() -> None:
    with pytest.raises(ConfigError, match=r"^CARP_INTERFACE: required but not set$"):
        one({k: v for k, v in BASE.items() if k != "CARP_INTERFACE"})


def test_pass_file_first_line_only_like_ucarp(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("geheim\nsecond line\n")
    env = {k: v for k, v in BASE.items() if k != "CARP_PASS"} | {"CARP_PASS_FILE": str(tmp_path / "pw")}
    assert one(env).secret == b"geheim"


def test_a_31_or_32_prefix_has_no_network_or_broadcast_address_to_refuse() -> None:
    assert str(one({**BASE, "CARP_ADDR": "10.0.0.0/31"}).vips[0]) == "10.0.0.0/31"
    assert str(one({**BASE, "CARP_ADDR": "10.0.0.255"}).vips[0]) == "10.0.0.255/32"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge"])
def test_pass_file_must_be_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "pw"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block the start forever
    elif kind == "dev-zero":
        path = Path("/dev/zero")  # reading it whole would never end
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"x" * 50_000_000)  # one huge line: only 512 bytes are read
    env = {k: v for k, v in BASE.items() if k != "CARP_PASS"} | {"CARP_PASS_FILE": str(path)}
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^CARP_PASS_FILE: ") as e:
        one(env)
    assert time.monotonic() - started < 1
    want = "password longer than 19" if kind == "huge" else "is not a regular file"
    assert want in str(e.value)


def test_secret_never_in_errors_or_redacted_output() -> None:
    with pytest.raises(ConfigError) as e:
        one({**BASE, "CARP_PASS": "s3cret-s3cret-s3cret-x"})
    assert "s3cret" not in str(e.value)
    config = load({**BASE, "CARP_PASS": "s3cret"})
    shown = config.instances[0].redacted()
    assert shown["CARP_PASS"] == "***" and "s3cret" not in repr(shown)
    assert "s3cret" not in repr(config) and "733363726574" not in repr(config.runtime())


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    return subprocess.run([sys.executable, "-m", "sidecar.tools.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_cli_bad_config_exits_2_with_one_line_no_traceback() -> None:
    r = run_cli("check-config", "--offline", env={**BASE, "CARP_VHID": "256", "CARP_PASS": "topsecret"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "carp-sidecar: configuration error: CARP_VHID: Input should be less than or equal to 255 "
        "(CARP_VHID=256)"]
    assert "topsecret" not in r.stderr + r.stdout


def test_cli_check_config_prints_redacted_effective_config() -> None:
    r = run_cli("check-config", "--offline", env={**BASE, "CARP_PASS": "topsecret", "UCARP_ADVSKEW": "20"})
    assert r.returncode == 0, r.stderr
    assert "CARP_PASS=***" in r.stdout and "CARP_ADVSKEW=20" in r.stdout
    assert "topsecret" not in r.stdout


def test_cli_version() -> None:
    r = run_cli("--version", env={})
    assert r.returncode == 0 and r.stdout.startswith("carp-sidecar ")


def test_empty_value_unsets_and_carp_spelling_wins_even_when_empty(tmp_path: Path) -> None:
    up = script(tmp_path, "up.sh")
    (tmp_path / "e").write_text(f"UCARP_UPSCRIPT={up}\nUCARP_ADVSKEW=20\n")
    s = one({**BASE, "CARP_UPSCRIPT": "", "UCARP_ADVSKEW": ""}, tmp_path / "e")
    assert s.upscript is None and s.advskew == 0
    assert one({**BASE}, tmp_path / "e").upscript == up


# ---- many instances: CARP_CONFIG names a TOML file ----
TOML = """
interface = "eth0"
pass_file = "{pw}"
preempt = true

[health.apache]
url = "http://127.0.0.1/"
fall = 3

[[vhid]]
vhid = 1
addr = ["172.16.0.1/16", "2001:db8::1/64"]
advskew = 0
health = ["apache"]

[[vhid]]
vhid = 2
addr = ["172.16.0.2/16"]
advskew = 100
upscript = "{up}"
"""


def config_file(tmp_path: Path, text: str = TOML, **replace: str) -> Path:
    (tmp_path / "pw").write_text("geheim\n")
    up = script(tmp_path, "vip2-up.sh")
    body = text.format(pw=tmp_path / "pw", up=up)
    for old, new in replace.items():
        body = body.replace(old, new)
    path = tmp_path / "carp.toml"
    path.write_text(body)
    return path


def test_config_file_declares_instances_with_shared_defaults_and_checks(tmp_path: Path) -> None:
    config = load({"CARP_CONFIG": str(config_file(tmp_path))})
    first, second = config.runtime().instances
    assert (first.vhid, first.interface, first.preempt, first.advskew) == (1, "eth0", True, 0)
    assert [str(v) for v in first.vips] == ["172.16.0.1/16", "2001:db8::1/64"]
    assert first.hmac_address == IPv4Address("172.16.0.1") and first.health == ("apache",)
    assert first.secret == b"geheim" and not first.manages_vip_by_scripts
    assert (second.vhid, second.advskew, second.health) == (2, 100, ())
    assert second.manages_vip_by_scripts
    assert config.checks["apache"].url == "http://127.0.0.1/" and config.checks["apache"].fall == 3
    assert config.control_socket == Path("/run/carp-sidecar/control.sock")


def test_environment_overrides_the_files_defaults_but_not_an_instances_own_keys(
        tmp_path: Path) -> None:
    path = config_file(tmp_path)
    config = load({"CARP_CONFIG": str(path), "CARP_INTERFACE": "ens3", "CARP_ADVSKEW": "50",
                   "CARP_METRICS_LISTEN": "127.0.0.1:9700"})
    assert [i.interface for i in config.instances] == ["ens3", "ens3"]
    assert [i.advskew for i in config.instances] == [0, 100]  # the tables win
    assert config.metrics_listen == "127.0.0.1:9700"


@pytest.mark.parametrize(("replace", "message"), [
    ({'vhid = 2': 'vhid = 300'}, "carp.toml: [[vhid]] #2 (vhid 300): vhid: Input should be less "
                                 "than or equal to 255"),
    ({'"172.16.0.2/16"': '"172.16.0.300/16"'},
     "carp.toml: [[vhid]] #2 (vhid 2): addr: '172.16.0.300' is not an IPv4 address"),
    ({'advskew = 100': 'advskw = 100'}, "carp.toml: [[vhid]] #2 (vhid 2) advskw: unknown key"),
    ({'vhid = 2': 'vhid = 1'}, "[[vhid]] #2: vhid 1 on eth0 is already instance #1"),
    ({'"172.16.0.2/16"': '"172.16.0.1/24"'}, "[[vhid]] #2: addr 172.16.0.1 is already a VIP"),
    ({'health = ["apache"]': 'health = ["nginx"]'},
     "[[vhid]] #1 (vhid 1): health: no [health.nginx] table"),
    ({'fall = 3': 'fall = 0'}, "carp.toml: [health.apache]: fall: Input should be greater"),
    ({'preempt = true': 'preempt = true\nhealth_url = "http://x/"'},
     "health_url: unknown key here (declare checks as [health.NAME] tables)"),
    ({'"2001:db8::1/64"': '"fe80::1/64"'}, "addr: fe80::1 is link-local"),
    ({'vhid = 1\n': 'vhid = 1\nmetrics_listen = "x:1"\n'}, "metrics_listen: unknown key here"),
])
def test_config_file_errors_name_the_instance_and_key(tmp_path: Path, replace: dict[str, str],
                                                        message: str) -> None:
    path = config_file(tmp_path, **replace)
    with pytest.raises(ConfigError) as e:
        load({"CARP_CONFIG": str(path)})
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "geheim" not in str(e.value)


def test_config_file_must_exist_parse_and_have_instances(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"CARP_CONFIG: .* is not a readable file"):
        load({"CARP_CONFIG": str(tmp_path / "missing.toml")})
    (tmp_path / "bad.toml").write_text("interface = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load({"CARP_CONFIG": str(tmp_path / "bad.toml")})
    (tmp_path / "none.toml").write_text('interface = "eth0"\n')
    with pytest.raises(ConfigError, match="at least one \\[\\[vhid\\]\\] table"):
        load({"CARP_CONFIG": str(tmp_path / "none.toml")})


def test_several_addresses_in_the_environment_ipv4_and_ipv6(tmp_path: Path) -> None:
    s = one({**BASE, "CARP_ADDR": "172.16.0.1,172.16.0.2/24, 2001:db8::1/64,2001:db8::2",
             "CARP_MASK": "16"})
    assert [str(v) for v in s.vips] == ["172.16.0.1/16", "172.16.0.2/24", "2001:db8::1/64",
                                        "2001:db8::2/128"]
    assert s.hmac_address == IPv4Address("172.16.0.1") and s.script_address == "172.16.0.1"
    six = one({**BASE, "CARP_ADDR": "2001:db8::1/64"})
    assert six.hmac_address == IPv4Address("0.0.0.0") and not six.ipv4_vips
    with pytest.raises(ConfigError, match="CARP_ADDR: an address is listed twice"):
        one({**BASE, "CARP_ADDR": "10.0.0.1,10.0.0.1/24"})


def test_check_config_prints_every_instance(tmp_path: Path) -> None:
    r = run_cli("check-config", "--offline", env={"CARP_CONFIG": str(config_file(tmp_path))})
    assert r.returncode == 0, r.stderr
    assert "# instance eth0/vhid1" in r.stdout and "# instance eth0/vhid2" in r.stdout
    assert "# health apache" in r.stdout and "CARP_HEALTH_URL=http://127.0.0.1/" in r.stdout
    assert "VIPS (effective)=172.16.0.1/16,2001:db8::1/64" in r.stdout


def test_runtime_config_round_trips_through_json_without_pydantic(tmp_path: Path) -> None:
    from sidecar.config.runconfig import RunConfig

    config = load({"CARP_CONFIG": str(config_file(tmp_path))})
    runtime = config.runtime()
    again = RunConfig.from_json(runtime.to_json())
    assert again == runtime
    assert again.instances[0].secret == b"geheim" and again.instances[1].upscript is not None
    assert again.instances[0].hmac_address == IPv4Address("172.16.0.1")
    # the agent's process never imports pydantic: the config arrives as this JSON
    code = ("import sys, sidecar.runtime.agent; "
            "sys.exit(any(m.startswith(('pydantic', 'scapy')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def test_state_dir_default_off_and_maintenance_settings_reach_the_agent(tmp_path: Path) -> None:
    from sidecar.config.runconfig import RunConfig

    assert load(BASE).runtime().state_dir == Path("/var/lib/carp-sidecar")
    assert load({**BASE, "CARP_STATE_DIR": "off"}).runtime().state_dir is None
    env = {**BASE, "UCARP_STATE_DIR": str(tmp_path), "CARP_PREEMPT_DELAY": "2.5",
           "CARP_MAINTENANCE_FILE": "/etc/carp/maintenance"}
    again = RunConfig.from_json(load(env).runtime().to_json())
    assert again.state_dir == tmp_path
    assert again.instances[0].preempt_delay == 2.5
    assert again.instances[0].maintenance_file == Path("/etc/carp/maintenance")


def test_config_file_reports_every_bad_instance_and_check_at_once(tmp_path: Path) -> None:
    path = config_file(tmp_path, **{"fall = 3": "fall = 0", "advskew = 100": "advskew = 300",
                                    'health = ["apache"]': 'health = ["apache", "nginx"]'})
    with pytest.raises(ConfigError) as e:
        load({"CARP_CONFIG": str(path)})
    lines = str(e.value).splitlines()
    assert len(lines) == 3, lines
    assert any("[health.apache]: fall:" in ln for ln in lines)
    assert any("[[vhid]] #2 (vhid 2): advskew:" in ln for ln in lines)
    assert any("health: no [health.nginx] table" in ln for ln in lines)


# ---- check-config: every mistake at once, origins, derived figures, likely mistakes ----
def test_a_bad_vhid_does_not_hide_a_bad_mask() -> None:
    r = run_cli("check-config", "--offline",
                env={**BASE, "CARP_VHID": "256", "CARP_MASK": "255.0.255.0"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert any("CARP_VHID" in line for line in lines) and any("CARP_MASK" in line for line in lines), lines


def test_mask_password_file_and_upscript_are_all_reported(tmp_path: Path) -> None:
    r = run_cli("check-config", env={**BASE, "CARP_PASS": "", "CARP_MASK": "255.0.255.0",
                                     "CARP_PASS_FILE": str(tmp_path / "missing"),
                                     "CARP_UPSCRIPT": str(tmp_path / "up.sh")})
    assert r.returncode == 2
    text = r.stderr
    for var in ("CARP_MASK", "CARP_PASS_FILE", "CARP_UPSCRIPT"):
        assert f"configuration error: {var}:" in text, text
    assert len(text.strip().splitlines()) == 3  # one line each, no duplicates


def test_offline_check_skips_what_only_the_target_host_has(tmp_path: Path) -> None:
    env = {**BASE, "CARP_PASS": "", "CARP_PASS_FILE": "/run/secrets/carp_pass",
           "CARP_UPSCRIPT": "/etc/ucarp/vip-up.sh", "CARP_INTERFACE": "nosuchif0"}
    r = run_cli("check-config", "--offline", env=env)
    assert r.returncode == 0, r.stderr
    assert "# host: not checked (--offline)" in r.stdout
    r = run_cli("check-config", "--offline", env={**env, "CARP_UPSCRIPT": "relative.sh"})
    assert r.returncode == 2 and "CARP_UPSCRIPT: relative.sh is not an absolute path" in r.stderr


def test_check_config_says_where_each_value_came_from_and_the_figures(tmp_path: Path) -> None:
    env_file = tmp_path / "ucarp.conf"
    env_file.write_text("UCARP_INTERFACE=eth0\nUCARP_VHID=3\nUCARP_PASS=pw\n"
                        "UCARP_ADDR=10.0.0.1\nUCARP_MASK=255.255.0.0\nUPSCRIPT=/etc/ucarp/up.sh\n")
    r = run_cli("--env-file", str(env_file), "check-config", "--offline",
                env={"CARP_ADVSKEW": "20"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^CARP_VHID=3 +# env file .*ucarp\.conf$", out, re.M), out
    assert re.search(r"^CARP_ADVSKEW=20 +# environment$", out, re.M)
    assert re.search(r"^CARP_ADVBASE=1 +# default$", out, re.M)
    assert "#   master-down interval: 3.08 s" in out
    assert "#   HMAC covers: 10.0.0.1 (the first IPv4 VIP)" in out
    assert "about 10 ms when it stops or is demoted" in out
    # a known ucarp name without its prefix is ignored by everything: say so
    assert "# warning: UPSCRIPT=/etc/ucarp/up.sh: looks like ucarp's UCARP_UPSCRIPT" in out
    # booleans one way, in every section
    assert "=True" not in out and "=False" not in out and "CARP_REALTIME=false" in out


def test_file_mode_origins_name_the_table(tmp_path: Path) -> None:
    r = run_cli("check-config", "--offline", env={"CARP_CONFIG": str(config_file(tmp_path)),
                                                  "CARP_ADVBASE": "2"})
    assert r.returncode == 0, r.stderr
    assert re.search(r"^CARP_VHID=1 +# .*\[\[vhid\]\] #1$", r.stdout, re.M), r.stdout
    assert re.search(r"^CARP_INTERFACE=eth0 +# .* \(top level\)$", r.stdout, re.M)
    assert re.search(r"^CARP_ADVBASE=2 +# environment$", r.stdout, re.M)


def test_the_password_file_is_read_once_at_validation(tmp_path: Path) -> None:
    """Validated and handed over from one read: a file that changes or goes afterwards
    changes nothing (a reload reads it again, whole)."""
    (tmp_path / "pw").write_text("geheim\n")
    env = {k: v for k, v in BASE.items() if k != "CARP_PASS"} | {"CARP_PASS_FILE": str(tmp_path / "pw")}
    config = load(env)
    (tmp_path / "pw").write_text("changed\n")
    first = config.runtime().instances[0]
    (tmp_path / "pw").unlink()
    again = config.runtime().instances[0]
    assert first.auth.key == again.auth.key == b"geheim"
    assert first.auth.vip == first.ipv4_vips[0].ip


def test_every_setting_is_declared_once_and_the_models_follow() -> None:
    """The variables check-config knows, the pydantic models and the runtime dataclass agree
    because they come from one declaration (sidecar/config/declare.py)."""
    import dataclasses

    from sidecar.config.models import AGENT, CHECK, HELP, VHID, CheckSettings, VhidSettings
    from sidecar.config.runconfig import Check, Vhid
    from sidecar.config.settings import _KNOWN

    envs = [d.setting.env for d in [*VHID, *CHECK, *AGENT]]
    assert len(envs) == len(set(envs)) and set(HELP) == set(envs)
    assert {f"{p}CARP_{e}" for e in envs for p in ("", "U")} == _KNOWN
    assert set(VhidSettings.model_fields) == {d.name for d in VHID}
    assert set(CheckSettings.model_fields) == {f.name for f in dataclasses.fields(Check)}
    derived = {f.name for f in dataclasses.fields(Vhid) if "setting" not in f.metadata}
    assert derived == {"auth", "vips", "vrrp3_dead_timer", "prefix_known", "script_env"}
    vhid = VhidSettings.model_fields["vhid"]
    assert [m.ge for m in vhid.metadata if hasattr(m, "ge")] == [1]


def test_a_routed_vip_goes_on_its_interface_and_the_rest_stays(tmp_path: Path) -> None:
    s = one({**BASE, "CARP_VIP_INTERFACE": "lo", "CARP_ADDR": "10.0.0.1,2001:db8::1",
             "CARP_IF_ALIAS": "lo:carp"})
    assert (s.vip_interface, s.routed, s.if_alias) == ("lo", True, "lo:carp")
    assert [str(v) for v in s.vips] == ["10.0.0.1/32", "2001:db8::1/128"]
    assert not one(BASE).routed


def test_routed_vips_with_the_up_script_are_refused(tmp_path: Path) -> None:
    up = script(tmp_path, "up.sh")
    with pytest.raises(ConfigError) as e:
        one({**BASE, "CARP_VIP_INTERFACE": "lo", "CARP_UPSCRIPT": str(up)})
    assert str(e.value) == ("CARP_VIP_INTERFACE: the up/down scripts own the VIPs "
                            "(CARP_UPSCRIPT/CARP_DOWNSCRIPT); set one or the other "
                            "(CARP_VIP_INTERFACE=lo)")


def test_routed_vip_per_instance_in_toml(tmp_path: Path) -> None:
    (tmp_path / "carp.toml").write_text(
        'pass = "pw"\n[[vhid]]\ninterface = "eth0"\nvhid = 1\naddr = "10.0.0.1"\n'
        'vip_interface = "lo"\n[[vhid]]\ninterface = "eth0"\nvhid = 2\naddr = "10.0.0.2/24"\n')
    config = load({"CARP_CONFIG": str(tmp_path / "carp.toml")}).runtime()
    assert [i.vip_interface for i in config.instances] == ["lo", None]
