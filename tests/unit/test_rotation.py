"""Faults, round 4: rotating the password (CARP_PASS_NEXT) without a split, and the secret kept
out of every child's environment. The codec accepts an advert authenticated by either key (pure,
fuzzed); a group of pure sessions rotated step by step never drops an advert nor has two
masters; strict mode's replay window survives the key change; the settings are declared,
validated and redacted like CARP_PASS."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.config.settings import ConfigError, load
from sidecar.core import outputs as out
from sidecar.core.auth import carp_key
from sidecar.core.machine import Transition
from sidecar.core.protocol import (
    Advert,
    AdvertError,
    DropReason,
    Expect,
    build_ip_packet,
    parse_packet,
)
from sidecar.tools.launch import secret_variables
from tests.unit.session_sim import GROUP, KEY, VIP, Net, Node, node

from .test_config import BASE, config_file, one, run_cli

SRC = IPv4Address("10.0.0.2")
OLD, NEW, OTHER = carp_key("old-pw"), carp_key("new-pw"), carp_key("someone-else")


def signed(key: bytes, counter: int = 7, strict: bool = False) -> bytes:
    return build_ip_packet(Advert(vhid=1, advbase=1, advskew=0, counter=counter), key=key,
                           vip=VIP, src=SRC, dst=GROUP, strict=strict)


def expect(key: bytes, next_key: bytes | None = None, strict: bool = False) -> Expect:
    return Expect(vhid=1, key=key, vip=VIP, next_key=next_key, strict=strict)


# ---- the codec: either key ----
@pytest.mark.parametrize("strict", [False, True])
def test_an_advert_signed_with_either_key_is_accepted_and_says_which(strict: bool) -> None:
    e = expect(OLD, NEW, strict)
    assert not parse_packet(signed(OLD, strict=strict), e).by_next_key
    assert parse_packet(signed(NEW, strict=strict), e).by_next_key
    with pytest.raises(AdvertError) as err:
        parse_packet(signed(OTHER, strict=strict), e)
    assert err.value.reason is DropReason.BAD_HMAC
    with pytest.raises(AdvertError):  # without a next key, only the current one
        parse_packet(signed(NEW, strict=strict), expect(OLD))


def test_the_keys_are_not_in_the_reprs() -> None:
    e = expect(carp_key("s3cret"), carp_key("n3xt"))
    assert "s3cret" not in repr(e) and "n3xt" not in repr(e)


keys = st.binary(min_size=1, max_size=19)


@given(keys, keys, keys, st.booleans(), st.integers(0, 2**64 - 1))
@example(b"\0", b"\0\0", b"\0\0", False, 0)  # keys equal but for trailing zeros: one key
def test_accepted_exactly_when_signed_with_the_key_or_the_next_key(
        current: bytes, next_key: bytes, sender: bytes, strict: bool, counter: int) -> None:
    packet = signed(sender, counter, strict)

    def same(a: bytes, b: bytes) -> bool:  # HMAC pads a short key with zeros to its block
        return a.rstrip(b"\0") == b.rstrip(b"\0")

    known = same(sender, current) or same(sender, next_key)
    try:
        got = parse_packet(packet, expect(current, next_key, strict))
    except AdvertError as e:
        assert e.reason is DropReason.BAD_HMAC and not known
        return
    assert known
    assert got.by_next_key == (not same(sender, current))


# ---- a group of pure sessions rotated ----
def set_keys(net: Net, n: Node, key: bytes, next_key: bytes | None) -> None:
    cfg = n.session.config
    n.session.reconfigure(net.now, dataclasses.replace(
        cfg, expect=dataclasses.replace(cfg.expect, key=key, next_key=next_key)))


def rotate(net: Net, nodes: list[Node], step: float) -> list[int]:
    """docs/runbook.md's three steps, one node every ``step`` s; the number of masters after
    each move of the clock."""
    masters = []
    for key, next_key in ((KEY, NEW), (NEW, KEY), (NEW, None)):
        for n in nodes:
            set_keys(net, n, key, next_key)
            for _ in range(int(step * 10)):
                net.run(net.now + 0.1)
                masters.append(len(net.masters(*nodes)))
    return masters


@pytest.mark.parametrize("strict", [False, True])
def test_a_three_node_rotation_drops_no_advert_and_keeps_one_master(strict: bool) -> None:
    peers = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}

    def listed(me: str) -> tuple[str, ...]:
        return tuple(ip for name, ip in peers.items() if name != me) if strict else ()

    nodes = [node(name, ip, advskew=skew, strict=strict, peers=listed(name))
             for (name, ip), skew in zip(peers.items(), (0, 100, 150), strict=True)]
    net = Net(*nodes)
    net.start()
    net.run(10)
    assert net.masters(*nodes) == ["a"]
    elected = [len(n.of(Transition)) for n in nodes]
    masters = rotate(net, nodes, step=5.0)  # the 5 s between nodes
    net.run(net.now + 10)
    assert set(masters) == {1} and net.masters(*nodes) == ["a"]
    assert [len(n.of(Transition)) for n in nodes] == elected
    assert not [d for n in nodes for d in n.of(out.Dropped)]
    by_next = [a for n in nodes for a in n.of(out.Accepted) if a.by_next_key]
    assert by_next  # node-a spoke the new password before the others sent with it


def test_the_same_change_without_a_next_key_is_a_split() -> None:
    """What CARP_PASS_NEXT prevents: the password changed node by node, 5 s apart."""
    a, b = node("a", "10.0.0.1"), node("b", "10.0.0.2", advskew=100)
    net = Net(a, b)
    net.start()
    net.run(10)
    set_keys(net, a, NEW, None)
    net.run(net.now + 5)
    assert net.masters(a, b) == ["a", "b"]
    assert b.of(out.Dropped)[-1].error.reason is DropReason.BAD_HMAC


def test_strict_replay_window_is_kept_across_the_key_change() -> None:
    """A recorded advert signed with the old key still authenticates while it is the next key
    (step 2): the counters run on across keys, so it is still a replay."""
    a, b = node("a", "10.0.0.1", strict=True), node("b", "10.0.0.2", advskew=100, strict=True)
    net = Net(a, b)
    net.start()
    net.run(10)
    recorded = a.sent[-1][1]  # signed with the old key
    for n in (a, b):
        set_keys(net, n, NEW, KEY)
    net.deliver(b, recorded)  # at once: before a new advert could raise the window again
    assert b.of(out.Dropped)[-1].error.reason is DropReason.REPLAY
    net.run(net.now + 3)
    assert net.masters(a, b) == ["a"]


# ---- the settings ----
def test_next_password_is_declared_like_the_password(tmp_path: Path) -> None:
    s = one({**BASE, "UCARP_PASS_NEXT": "n3xt"})
    assert s.auth.key == b"geheim" and s.auth.next_key == b"n3xt"
    assert "n3xt" not in repr(s) and "n3xt" not in repr(dict(s.script_env))
    assert "CARP_PASS_NEXT" not in dict(s.script_env)
    (tmp_path / "next").write_text("from-file\nignored\n")
    assert one({**BASE, "CARP_PASS_NEXT_FILE": str(tmp_path / "next")}).auth.next_key == (
        b"from-file")
    assert one(BASE).auth.next_key is None
    assert one({**BASE, "CARP_PASS_NEXT": "geheim"}).auth.next_key is None  # nothing to add


@pytest.mark.parametrize(("extra", "message"), [
    ({"CARP_PASS_NEXT": "x" * 20}, "CARP_PASS_NEXT: password longer than 19 bytes"),
    ({"CARP_PASS_NEXT": "a", "CARP_PASS_NEXT_FILE": "/etc/hostname"},
     "CARP_PASS_NEXT: set at most one"),
    ({"CARP_PASS_NEXT_FILE": "/nonexistent"}, "CARP_PASS_NEXT_FILE: cannot read"),
])
def test_a_bad_next_password_names_its_variable(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load({**BASE, **extra})
    assert "xxxxx" not in str(e.value)


def test_next_password_per_vhid_in_toml(tmp_path: Path) -> None:
    path = config_file(tmp_path, **{"vhid = 2\n": 'vhid = 2\npass_next = "n3xt"\n'})
    instances = load({"CARP_CONFIG": str(path)}).runtime().instances
    assert [i.auth.next_key for i in instances] == [None, b"n3xt"]


def test_check_config_redacts_the_next_password() -> None:
    r = run_cli("check-config", "--offline", env={**BASE, "CARP_PASS_NEXT": "n3xt-pw"})
    assert r.returncode == 0, r.stderr
    assert "CARP_PASS_NEXT=***" in r.stdout and "n3xt-pw" not in r.stdout


# ---- the secret out of the children ----
def test_the_password_variables_are_every_secret_setting() -> None:
    assert secret_variables() == {"CARP_PASS", "UCARP_PASS", "CARP_PASS_NEXT",
                                  "UCARP_PASS_NEXT"}


def test_a_reload_child_reads_the_command_line_and_the_password_from_its_stdin() -> None:
    """Neither is in its argv (ucarp's -p) nor its environment: the agent has neither."""
    env = {k: v for k, v in BASE.items() if k != "CARP_PASS"} | {"CARP_STATE_DIR": "off"}
    request = {"origin": ["/", "carp-sidecar", "run"], "environ": {"CARP_PASS": "fr0m-pipe"}}
    code = "import sys; from sidecar.tools.cli import dump_runtime_config as d; " \
           "sys.exit(d(sys.stdin.read()))"
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(request), env={
        **{k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("CARP_", "UCARP_"))}, **env},
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["instances"][0]["auth"]["key"]
    assert bytes.fromhex(got) == b"fr0m-pipe"
