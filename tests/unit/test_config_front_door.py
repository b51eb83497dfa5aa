"""Issue 34, the front door: a ucarp.conf read by Docker's env-file parser (not the shell's) is
refused, read by the agent's own reader it is right; every configuration error names the
variable as the user spelled it, with its value (a secret's never)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config.settings import ConfigError, load

BASE = {"UCARP_INTERFACE": "eth0", "UCARP_VHID": "1", "UCARP_ADDR": "10.0.0.1",
        "UCARP_PASS": "geheim"}
# What the README's first command used to feed the agent: a ucarp.conf written for a shell
UCARP_CONF = ("# /etc/ucarp/ucarp.conf\n"
              "UCARP_INTERFACE=lo\n"
              "UCARP_VHID=7\n"
              "UCARP_ADDR=10.0.0.1\n"
              'UCARP_PASS="geheim"   # shared by both nodes\n'
              "UCARP_IF_ALIAS=${UCARP_INTERFACE}:0\n")


def docker_env_file(text: str) -> dict[str, str]:
    """`docker run --env-file`'s reading (docker/cli opts/envfile.go): leading blanks and
    '#' lines skipped, the rest of the line after the first '=' kept as it is."""
    out = {}
    for line in text.splitlines():
        line = line.lstrip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar.tools.cli", *args], text=True,
                          capture_output=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get(
                              "PYTHONPATH", ""), "CARP_STATE_DIR": "off", **env})


def error(environ: dict[str, str], **kwargs: object) -> str:
    with pytest.raises(ConfigError) as e:
        load(environ, **kwargs)  # type: ignore[arg-type]
    return str(e.value)


# ---- defect 2: the shell's syntax left in a value ----
@pytest.mark.parametrize("name", ["CARP_PASS", "UCARP_PASS", "CARP_PASS_NEXT", "UCARP_PASS_NEXT"])
@pytest.mark.parametrize("value", ['"geheim"', "'geheim'", "geheim   # shared",
                                   "geheim\t# shared", "${SECRET}"])
def test_a_password_with_the_shells_syntax_left_in_is_refused_never_shown(
        name: str, value: str) -> None:
    text = error({**BASE, name: value}, offline=True)
    assert text.startswith(f"{name}: the value ")
    assert "CARP_PASS_FILE" in text and "CARP_ENV_FILE" in text  # how to write it instead
    assert "geheim" not in text and "SECRET" not in text


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("UCARP_IF_ALIAS", "${UCARP_INTERFACE}:0", "an unexpanded ${...}"),
    ("CARP_IF_ALIAS", "${CARP_INTERFACE}:0", "an unexpanded ${...}"),
    ("UCARP_VHID", '"7"', "in double quotes"),
    ("CARP_ADDR", "'10.0.0.1'", "in single quotes"),
    ("UCARP_INTERFACE", "eth0 # uplink", "a ' #' comment"),
    ("CARP_UPSCRIPT", '"/etc/ucarp/up.sh"', "in double quotes"),
])
def test_other_settings_with_the_shells_syntax_left_in_are_refused_with_their_value(
        name: str, value: str, problem: str) -> None:
    text = error({**BASE, name: value}, offline=True)
    assert text.splitlines()[0].startswith(f"{name}={value!r}: the value ")
    assert problem in text


def test_a_health_command_may_be_quoted_on_purpose_so_it_is_only_a_warning() -> None:
    config = load({**BASE, "CARP_HEALTH_CMD": "'sh -c \"exit 0\"'"}, offline=True)
    assert any(w.startswith("CARP_HEALTH_CMD=") and "in single quotes" in w
               for w in config.warnings)


def test_plain_values_pass_and_a_hash_without_a_space_is_not_a_comment() -> None:
    config = load({**BASE, "UCARP_PASS": "ge#heim", "UCARP_XPARAM": "a'b"}, offline=True)
    assert config.instances[0].secret == b"ge#heim" and not config.warnings


def test_the_same_file_read_by_the_agent_is_what_the_shell_reads(tmp_path: Path) -> None:
    conf = tmp_path / "ucarp.conf"
    conf.write_text(UCARP_CONF)
    for config in (load({}, conf, offline=True),
                   load({"CARP_ENV_FILE": str(conf)}, offline=True)):
        instance = config.instances[0]
        assert instance.secret == b"geheim"
        assert instance.if_alias == "lo:0" and instance.vhid == 7
    assert error({"CARP_ENV_FILE": str(tmp_path / "none")}).startswith(
        f"CARP_ENV_FILE: cannot read {tmp_path / 'none'}")


def test_check_config_refuses_what_docker_passed_and_accepts_the_file(tmp_path: Path) -> None:
    docker = cli("check-config", "--offline", env=docker_env_file(UCARP_CONF))
    assert docker.returncode == 2, docker.stderr
    lines = [line.removeprefix("carp-sidecar: configuration error: ")
             for line in docker.stderr.splitlines()]
    assert lines[0].startswith("UCARP_IF_ALIAS='${UCARP_INTERFACE}:0': the value has an "
                               "unexpanded ${...} in it, which a shell would have removed")
    assert lines[1].startswith("UCARP_PASS: the value has a ' #' comment in it")
    assert len(lines) == 2
    assert "geheim" not in docker.stderr + docker.stdout
    conf = tmp_path / "ucarp.conf"
    conf.write_text(UCARP_CONF)
    for how in (["--env-file", str(conf)], []):
        ok = cli("check-config", "--offline", *how,
                 env={} if how else {"CARP_ENV_FILE": str(conf)})
        assert ok.returncode == 0, ok.stderr
        assert "CARP_IF_ALIAS=lo:0 " in ok.stdout and "CARP_VHID=7 " in ok.stdout


# ---- defect 7: the variable as spelled, its value, a missing interface as such ----
@pytest.mark.parametrize("name", ["UCARP_MASK", "CARP_MASK"])
def test_a_bad_netmask_is_named_as_spelled_with_its_value(name: str) -> None:
    text = error({**BASE, name: "255.255.0.255"}, offline=True)
    assert text == f"{name}: not a netmask or prefix length ({name}=255.255.0.255)"


def test_an_env_file_key_is_named_as_the_file_spells_it(tmp_path: Path) -> None:
    conf = tmp_path / "ucarp.conf"
    conf.write_text("UCARP_INTERFACE=eth0\nUCARP_VHID=0\nUCARP_ADDR=10.0.0.1\nUCARP_PASS=x\n"
                    "CARP_MASK=24x\n")
    assert error({}, env_file=conf, offline=True).splitlines() == [
        "UCARP_VHID: Input should be greater than or equal to 1 (UCARP_VHID=0)",
        "CARP_MASK: not a netmask or prefix length (CARP_MASK=24x)"]


def test_ucarps_command_line_names_the_long_option_with_its_value() -> None:
    r = cli("run", "-i", "eth0", "-v", "0", "-a", "10.0.0.1", "-p", "geheim", env={})
    assert r.returncode == 2
    assert r.stderr.strip() == ("carp-sidecar: configuration error: --vhid: Input should be "
                                "greater than or equal to 1 (--vhid 0)")
    r = cli("run", "-i", "eth0", "-v", "1", "-a", "10.0.0.1", "-p", "x" * 30, env={})
    assert r.returncode == 2 and r.stderr.startswith(
        "carp-sidecar: configuration error: --pass: password longer than 19 bytes")
    assert "xxx" not in r.stderr


def test_a_toml_file_names_its_key_and_value(tmp_path: Path) -> None:
    (tmp_path / "carp.toml").write_text(
        'pass = "geheim"\n[[vhid]]\ninterface = "eth0"\nvhid = 3\naddr = "10.0.0.1"\n'
        'mask = "255.255.0.255"\n')
    where = tmp_path / "carp.toml"
    assert error({"CARP_CONFIG": str(where)}, offline=True) == (
        f'{where}: [[vhid]] #1 (vhid 3): mask: not a netmask or prefix length '
        f'(mask = "255.255.0.255")')


def test_a_secret_is_named_never_shown() -> None:
    text = error({**BASE, "UCARP_PASS": "geheim-but-far-too-long"}, offline=True)
    assert text.startswith("UCARP_PASS: password longer than 19 bytes")
    assert "geheim" not in text


def test_a_missing_interface_is_reported_as_such_not_as_an_alias_problem() -> None:
    text = error({**BASE, "UCARP_INTERFACE": "eht0", "UCARP_IF_ALIAS": "lo:0"})
    assert text == ("UCARP_INTERFACE: no interface named 'eht0' on this host (UCARP_IF_ALIAS "
                    "is 'lo:0')")
    # offline (a file for another host), the alias error names the interface's variable
    text = error({**BASE, "UCARP_INTERFACE": "eht0", "UCARP_IF_ALIAS": "lo:0"}, offline=True)
    assert text.startswith("UCARP_IF_ALIAS: must start with the interface name 'eht0' "
                           "(UCARP_INTERFACE)")
    assert "(UCARP_IF_ALIAS=lo:0)" in text


def test_a_bad_interface_name_is_not_also_an_alias_problem_about_a_stand_in() -> None:
    long = "averyveryverylongif0"
    lines = error({**BASE, "UCARP_INTERFACE": long, "UCARP_IF_ALIAS": f"{long}:0"},
                  offline=True).splitlines()
    assert lines == [f"UCARP_INTERFACE: not an interface name (1-15 characters) "
                     f"(UCARP_INTERFACE={long})"]


def test_check_config_names_a_missing_interface_as_spelled() -> None:
    r = cli("check-config", env={**BASE, "UCARP_INTERFACE": "eht0"})
    assert ("carp-sidecar: host check: UCARP_INTERFACE: no interface named 'eht0' on this host"
            in r.stderr)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("UCARP_VHID", "a", "UCARP_VHID: Input should be a valid integer, unable to parse string as "
                        "an integer (UCARP_VHID=a)"),
    ("CARP_DEADRATIO", "2555", "CARP_DEADRATIO: Input should be less than or equal to 255 "
                               "(CARP_DEADRATIO=2555)"),
    ("UCARP_ADDR", "0.0.0.0", "UCARP_ADDR: 0.0.0.0 is not a host address"),  # shown already
    ("UCARP_MCAST", "10.0.0.9", "UCARP_MCAST: must be an IPv4 multicast group "
                                "(UCARP_MCAST=10.0.0.9)"),
])
def test_the_value_is_shown_once(name: str, value: str, message: str) -> None:
    assert error({**BASE, name: value}, offline=True) == message


def test_a_url_with_credentials_is_shown_without_them() -> None:
    message = error({**BASE, "CARP_HEALTH_URL": "http://admin:SEKRET@host:99999/x"},
                    offline=True)
    assert "CARP_HEALTH_URL" in message and "SEKRET" not in message and "admin" not in message
