"""The parser of only the named command parses every command line as the whole one does:
the same namespace, or the same exit status and message."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from sidecar.tools import cliargs

ARGVS = [
    [], ["--env-file", "/etc/ucarp/ucarp.conf"], ["--env-file=/x.env"],
    ["run"], ["run", "--interface", "eth0", "--vhid", "3", "-P", "--addr", "10.0.0.1"],
    ["--env-file", "a.env", "run", "-i", "eth0"],
    ["check-config"], ["check-config", "--offline"], ["check-config", "--env-file", "b.env"],
    ["--env-file", "a.env", "check-config", "--offline", "--env-file", "b.env"],
    ["status", "--json"], ["status", "--url", "http://127.0.0.1:9655/status"],
    ["healthcheck"], ["demote", "--vhid", "4"], ["promote", "--socket", "/run/x.sock"],
    ["reload"], ["import", "ucarp.conf", "interfaces"], ["watch", "-i", "eth0", "-c", "3"],
    ["completion", "bash"], ["lab", "--short"],
    # errors: each must fail the same way
    ["check-config", "--bogus"], ["demote", "--vhid", "x"], ["completion", "fish"],
    ["import"], ["chek-config"], ["--env-file"], ["--bogus"], ["run", "--vhid"],
    # what needs the whole parser
    ["--version"], ["-h"], ["--env-file", "a.env", "--help"], ["--env", "a.env", "status"],
    ["check-config", "-h"],
]


def _outcome(parser_only: str | None, argv: list[str]) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result: object = vars(cliargs.parser(only=parser_only).parse_args(argv))
        except SystemExit as e:
            result = ("exit", e.code)
    return result, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", ARGVS, ids=lambda a: " ".join(a) or "(none)")
def test_the_named_command_alone_parses_as_the_whole_parser(argv: list[str]) -> None:
    assert _outcome(cliargs.named(argv), argv) == _outcome(None, argv)


def test_named() -> None:
    assert cliargs.named([]) == "" and cliargs.named(["--env-file", "x"]) == ""
    assert cliargs.named(["--env-file=x", "check-config", "--offline"]) == "check-config"
    assert cliargs.named(["--env-file", "status", "run"]) == "run"  # status is the file's name
    for argv in (["-h"], ["--version"], ["chek-config"], ["--env", "x", "status"]):
        assert cliargs.named(argv) is None, argv


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_only_builds_that_command() -> None:
    assert _commands(cliargs.parser(only="check-config")) == ["check-config"]
    assert _commands(cliargs.parser(only="")) == []
    assert _commands(cliargs.parser()) == list(cliargs.BUILDERS)
