"""The command line: options anywhere, ucarp's options and the `ucarp` drop-in, help that
lists the variables, completion, `import` of ucarp configuration, logs on the right stream."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config.settings import _KNOWN, load
from sidecar.serve import logs
from sidecar.tools.ucarp_import import translate

ROOT = Path(__file__).resolve().parents[2]
BASE = {"CARP_INTERFACE": "eth0", "CARP_VHID": "1", "CARP_PASS": "geheim",
        "CARP_ADDR": "172.16.0.1/16"}


def cli(*args: str, env: dict[str, str] | None = None, argv0: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    code = "import sys; from sidecar.tools.cli import main; sys.exit(main(sys.argv[1:]))"
    if argv0:
        code = f"import sys; sys.argv[0] = {argv0!r}; " + code
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)


def test_env_file_is_accepted_before_and_after_the_command(tmp_path: Path) -> None:
    env_file = tmp_path / "e"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in BASE.items()))
    before = cli("--env-file", str(env_file), "check-config", "--offline")
    after = cli("check-config", "--offline", "--env-file", str(env_file))
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout and "CARP_VHID=1" in after.stdout


def test_check_config_help_lists_every_variable() -> None:
    out = cli("check-config", "--help").stdout
    names = {n for n in _KNOWN if n.startswith("CARP_")}
    missing = [n for n in names if n not in out]
    assert not missing and "CARP_CONFIG" in out


def test_unknown_variable_error_points_to_a_help_that_has_the_list() -> None:
    r = cli("check-config", "--offline", env={**BASE, "CARP_ADVSKW": "1"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("carp-sidecar: configuration error: CARP_ADVSKW: unknown variable; "
                                "did you mean CARP_ADVSKEW? (see `carp-sidecar check-config --help`)")


def test_ucarp_options_on_run_override_the_environment() -> None:
    # validation happens before the agent starts: a bad option value is named at once
    r = cli("run", "-i", "eth0", "-v", "300", env=BASE)
    assert r.returncode == 2 and "--vhid: Input should be less than or equal to 255 (--vhid 300)" in r.stderr
    settings = load({**BASE, "CARP_ADVSKEW": "5", "CARP_VHID": "2"})
    assert settings.instances[0].advskew == 5
    from sidecar.config import ucarp_options

    args = ucarp_options.parser().parse_args(["-k", "20", "--vhid=3", "-P", "-D", "-M", "-n"])
    env = {**BASE, "CARP_ADVSKEW": "5", **ucarp_options.settings(args)}
    s = load(env)
    assert (s.instances[0].advskew, s.instances[0].vhid, s.instances[0].preempt) == (20, 3, True)
    assert s.instances[0].nomcast and s.instances[0].neutral and s.agent.log_level == "debug"


def test_as_ucarp_it_takes_ucarps_command_line_alone() -> None:
    help_text = cli("--help", argv0="/usr/sbin/ucarp").stdout
    for option in ("--interface", "--srcip", "--vhid", "--pass", "--passfile", "--preempt",
                   "--neutral", "--addr", "--advbase", "--advskew", "--upscript", "--downscript",
                   "--deadratio", "--shutdown", "--xparam", "--nomcast", "--mcast",
                   "--ignoreifstate", "--daemonize", "--facility", "--debug"):
        assert option in help_text, option
    r = cli("-i", "eth0", "-s", "10.0.0.2", "-v", "1", "-p", "x", "-a", "10.0.0.1", "-k", "999",
            argv0="ucarp")
    assert r.returncode == 2
    assert "--advskew: Input should be less than or equal to 255 (--advskew 999)" in r.stderr
    r = cli("--bogus", argv0="ucarp")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


def test_facility_must_be_a_syslog_facility() -> None:
    assert load({**BASE, "CARP_SYSLOG": "local3"}).agent.syslog == "local3"
    assert load({**BASE, "CARP_SYSLOG": "off"}).agent.syslog is None
    r = cli("run", "-f", "nonsense", env=BASE)
    assert r.returncode == 2 and "--facility: 'nonsense' is not a syslog facility" in r.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_knows_the_commands_and_options(shell: str) -> None:
    r = cli("completion", shell)
    assert r.returncode == 0
    for word in ("check-config", "demote", "--env-file", "--upscript"):
        assert word in r.stdout, word
    if shell == "bash":
        assert subprocess.run(["bash", "-n"], input=r.stdout, text=True).returncode == 0


def test_info_goes_to_stdout_and_warnings_to_stderr_like_ucarp(
        capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("text", "info")
    log = logging.getLogger("carp-sidecar")
    log.debug("hidden at info")
    log.info("Using [eth0] as a network interface")
    log.warning("Switching to state: MASTER")
    out, err = capsys.readouterr()
    assert "[INFO] Using [eth0]" in out and "MASTER" not in out
    assert "[WARNING] Switching to state: MASTER" in err and "Using" not in err
    assert "hidden" not in out + err
    assert out.split(": [", 1)[0][-6] in "+-"  # the timestamp carries its time zone


# ---- import ----
INTERFACES = """auto eth0
iface eth0 inet static
    address 10.0.0.2
    netmask 255.255.255.0
    ucarp-vid 3
    ucarp-vip 10.0.0.1
    ucarp-password 16charsatmost
    ucarp-advskew 0
    ucarp-advbase 1
    ucarp-master yes
iface eth0:ucarp inet static
    address 10.0.0.1
    netmask 255.255.255.255

iface eth1 inet static
    address 10.1.0.2/24
    ucarp-vid 4
    ucarp-vip 10.1.0.1
    ucarp-password other
    ucarp-advskew 50
    ucarp-master no
    ucarp-weight 7
iface eth1:ucarp inet static
    address 10.1.0.1
    netmask 255.255.255.0
    post-up /usr/local/bin/warm-cache
"""


def test_import_of_two_interfaces_stanzas_gives_a_config_file_check_config_accepts(
        tmp_path: Path) -> None:
    (tmp_path / "interfaces").write_text(INTERFACES)
    r = cli("import", str(tmp_path / "interfaces"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "carp.toml").write_text(r.stdout)
    config = load({"CARP_CONFIG": str(tmp_path / "carp.toml")})
    first, second = config.instances
    assert (first.interface, first.vhid, first.srcip.compressed if first.srcip else None,
            str(first.vips[0]), first.preempt, first.if_alias) == (
        "eth0", 3, "10.0.0.2", "10.0.0.1/32", True, "eth0:ucarp")
    assert (second.vhid, str(second.vips[0]), second.advskew, second.preempt) == (
        4, "10.1.0.1/24", 50, False)
    assert first.secret == b"16charsatmost"
    # what it could not translate is named, not dropped silently
    assert "ucarp-weight" in r.stdout and "post-up" in r.stdout
    assert cli("check-config", "--offline", env={"CARP_CONFIG": str(tmp_path / "carp.toml")}).returncode == 0


def test_import_of_a_start_script_and_its_ucarp_conf_gives_an_env_file(tmp_path: Path) -> None:
    for name in ("up.sh", "down.sh"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    conf = tmp_path / "ucarp.conf"
    conf.write_text(f"UCARP_INTERFACE=eth0\nUCARP_SRCIP=172.16.0.11\nUCARP_VHID=1\n"
                    f"UCARP_PASS=geheim  # shared\nUCARP_ADDR=172.16.0.1\n"
                    f"UCARP_UPSCRIPT={tmp_path}/up.sh\nUCARP_DOWNSCRIPT={tmp_path}/down.sh\n")
    start = tmp_path / "start.sh"
    start.write_text(f"#!/bin/sh\n. {conf}\nexec /usr/sbin/ucarp --interface=$UCARP_INTERFACE \\\n"
                     "  -s $UCARP_SRCIP -v $UCARP_VHID -p $UCARP_PASS -a $UCARP_ADDR \\\n"
                     "  -u $UCARP_UPSCRIPT -d $UCARP_DOWNSCRIPT -B -P -k 10 --frobnicate\n")
    out = translate([start])
    (tmp_path / "out.env").write_text(out)
    s = load({}, tmp_path / "out.env").instances[0]
    assert (s.interface, s.vhid, s.secret, s.preempt, s.advskew) == ("eth0", 1, b"geheim", True, 10)
    assert s.upscript == tmp_path / "up.sh"
    assert "--frobnicate" in out  # named as not understood


def test_import_of_a_ucarp_conf_alone_and_of_nothing_usable(tmp_path: Path) -> None:
    (tmp_path / "ucarp.conf").write_text("UCARP_INTERFACE=eth0\nUCARP_VHID=2\nUCARP_PASS=x\n"
                                         "UCARP_ADDR=10.0.0.1\nUCARP_MASK=255.255.255.0\n")
    out = translate([tmp_path / "ucarp.conf"])
    assert "CARP_VHID=2" in out and "CARP_MASK=255.255.255.0" in out
    (tmp_path / "other").write_text("nothing here\n")
    r = cli("import", str(tmp_path / "other"))
    assert r.returncode == 2 and "no ucarp configuration found" in r.stderr


def test_import_of_the_shipped_example_and_of_a_conf_whose_comments_mention_ucarp() -> None:
    out = translate([ROOT / "deploy/ucarp.conf.example"])
    for line in ("CARP_INTERFACE=eth0", "CARP_IF_ALIAS=eth0:0", "CARP_MASK=255.255.0.0",
                 "CARP_VHID=1", "CARP_ADDR=172.16.0.1"):
        assert line in out.splitlines(), out


def test_import_of_the_readme_migration_keeps_mask_and_label(tmp_path: Path) -> None:
    """README "Migrating from ucarp": `carp-sidecar import start.sh ucarp.conf > carp.env`."""
    r = cli("import", str(ROOT / "deploy/ucarp-start.sh.example"),
            str(ROOT / "deploy/ucarp.conf.example"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "carp.env").write_text(r.stdout)
    s = load({}, tmp_path / "carp.env", offline=True).instances[0]
    assert str(s.vips[0]) == "172.16.0.1/16" and s.if_alias == "eth0:0"  # not /32, not unlabelled
    assert s.preempt and s.upscript == Path("/etc/ucarp/ucarp-up.sh")


def test_import_names_variables_that_are_not_settings(tmp_path: Path) -> None:
    conf = tmp_path / "ucarp.conf"
    conf.write_text("# ucarp settings for the web VIP (read by ucarp's scripts too)\n"
                    "UCARP_INTERFACE=eth0\nUCARP_VHID=2\nUCARP_PASS=x\nUCARP_ADDR=10.0.0.1\n"
                    "UCARP_NETMASK=255.255.255.0\n")
    out = translate([conf])
    assert "\nCARP_NETMASK" not in out and "UCARP_NETMASK: not a setting" in out
    assert "CARP_VHID=2" in out


def test_process_title_is_what_was_started_without_the_password() -> None:
    import dataclasses

    from sidecar.tools.launch import process_title

    config = load({**BASE}, None)
    drop_in = dataclasses.replace(config, origin=(
        "/", "ucarp", "-i", "eth0", "-p", "geheim", "--pass=geheim", "-pgeheim", "-a", "10.0.0.1"))
    assert process_title(drop_in) == "ucarp -i eth0 -p *** --pass=*** -p*** -a 10.0.0.1"
    run = dataclasses.replace(config, origin=("/", "carp-sidecar", "--env-file", "x", "run"))
    assert process_title(run) == "carp-sidecar --env-file x run"
    clustered = dataclasses.replace(config, origin=(
        "/", "ucarp", "-Pp", "geheim", "-zPpgeheim", "-Pv1", "-p", "-v2"))
    assert process_title(clustered) == "ucarp -Pp *** -zPp*** -Pv1 -p ***"
    assert "geheim" not in repr(clustered.runtime())


def test_ucarp_version_answers_like_a_program_not_an_error() -> None:
    r = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'ucarp'; "
                        "from sidecar.tools.cli import main; sys.exit(main(['--version']))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ucarp 1.5.2 compatible (carp-sidecar" in r.stdout, r.stderr


def test_status_piped_into_head_is_not_a_traceback(tmp_path: Path) -> None:
    import json as json_
    import time

    doc = {"instances": [{"vhid": n, "interface": "eth0", "state": "BACKUP", "vips": ["10.0.0.1/24"],
                          "peers": {}, "master_down_interval": 3.0} for n in range(1, 200)]}
    (tmp_path / "status.json").write_text(json_.dumps(doc))
    sock = tmp_path / "a.sock"
    fake_agent = ("import socket, sys\n"  # answers one control-socket command, as the agent
                  "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
                  "c, _ = s.accept(); c.recv(100)\n"
                  "c.sendall(open(sys.argv[2], 'rb').read() + b'\\n'); c.close()\n")
    server = subprocess.Popen([sys.executable, "-c", fake_agent, str(sock),
                               str(tmp_path / "status.json")])
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        r = subprocess.run(f"{sys.executable} -m sidecar.tools.cli status --socket {sock} | head -2",
                           shell=True, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        server.wait(10)
    assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr, r.stderr
    assert r.stdout.startswith("vhid 1 on eth0: BACKUP since"), r.stdout


@pytest.mark.parametrize(("missing", "argv", "extra"), [
    ("sidecar.lab", ["lab", "--short"], "lab"),
    ("tomli_w", ["import", "INTERFACES"], "import"),  # two instances: a TOML file
    ("scapy", ["watch", "--interface", "lo", "--count", "1"], "watch"),
])
def test_a_command_whose_extra_is_not_installed_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], missing: str,
        argv: list[str], extra: str, tmp_path: Path) -> None:
    from sidecar.tools import cli

    (tmp_path / "interfaces").write_text(INTERFACES)
    argv = [str(tmp_path / "interfaces") if a == "INTERFACES" else a for a in argv]

    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: the import fails
    assert cli.main(argv) == 1
    assert f"pip install 'carp-sidecar[{extra}]'" in capsys.readouterr().err


def test_console_entry_leaves_fast_but_says_everything(tmp_path: Path) -> None:
    """entry() skips the interpreter's teardown (os._exit): what was printed must still be
    flushed, through a pipe, with the right exit status, and --version imports no pydantic."""
    code = ("import sys; from sidecar.tools import cli; sys.argv = ['carp-sidecar', *sys.argv[1:]];"
            " cli.entry()")
    env = {"PATH": "/usr/bin:/bin", "CARP_INTERFACE": "eth0", "CARP_VHID": "300"}
    r = subprocess.run([sys.executable, "-c", code, "check-config", "--offline"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CARP_VHID" in r.stderr and "CARP_ADDR" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", code + "; print('not reached')", "--version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("carp-sidecar ") and "reached" not in r.stdout
    probe = ("import sys; from sidecar.tools import cli; sys.argv = ['carp-sidecar', '--help'];"
             "\ntry: cli.main()\nexcept SystemExit: pass\n"
             "print(sorted(m for m in sys.modules if m.startswith(('pydantic', 'pyroute2'))))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("[]"), r.stdout[-500:]


def test_check_config_builds_no_codec_or_machine() -> None:
    """Validating a configuration needs Auth and the intervals, not the codec's enum and
    dataclasses or the state machine (each ~1.5 ms of a check-config that must stay short)."""
    probe = ("import sys; from sidecar.tools import cli\n"
             "try: cli.main(['check-config', '--offline'])\nexcept SystemExit: pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('sidecar.')))")
    env = {"PATH": "/usr/bin:/bin", "CARP_INTERFACE": "eth0", "CARP_VHID": "7",
           "CARP_PASS": "geheim", "CARP_ADDR": "192.0.2.7/24", "CARP_SRCIP": "192.0.2.2",
           "CARP_STATE_DIR": "/nonexistent-test-state"}
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "master-down interval: 3 s" in r.stdout, r.stdout + r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert "sidecar.core.auth" in loaded and "sidecar.core.intervals" in loaded, loaded
    for heavy in ("sidecar.core.protocol", "sidecar.core.machine", "sidecar.runtime"):
        assert f"'{heavy}" not in loaded, loaded
