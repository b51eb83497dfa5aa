"""The reload plan: what is added, removed, updated in place or restarted, and what the reply
says (never the password)."""

from __future__ import annotations

import dataclasses
import itertools
from ipaddress import IPv4Address, ip_interface
from pathlib import Path

from sidecar.config.runconfig import Check, RunConfig, Vhid
from sidecar.config.values import auth
from sidecar.runtime.reload import LIVE, plan


def vhid(n: int, secret: bytes = b"pw", **kw: object) -> Vhid:
    vips = kw.pop("vips", (ip_interface(f"10.0.0.{n}/24"),))
    fields = {"interface": "eth0", **kw}
    return Vhid(vhid=n, vips=vips, auth=auth(secret, vips), **fields)  # type: ignore[arg-type]


def config(*instances: Vhid, **kw: object) -> RunConfig:
    base = {"instances": instances, "checks": {}, "metrics_listen": "0.0.0.0:9655",
            "control_socket": Path("/run/c.sock"), "log_format": "text", "source": "x.toml"}
    return RunConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_identity_is_interface_and_vhid() -> None:
    p = plan(config(vhid(1), vhid(2)), config(vhid(1), vhid(3), vhid(2, interface="eth1")))
    assert [v.vhid for v in p.added] == [3, 2] and [v.vhid for v in p.removed] == [2]
    assert not p.updated and not p.replaced
    assert "vhid 2 on eth1: added" in p.changes and "vhid 2 on eth0: removed" in p.changes


def test_live_fields_update_in_place_and_are_described() -> None:
    new = vhid(1, advskew=50, preempt=True,
               vips=(ip_interface("10.0.0.1/24"), ip_interface("2001:db8::1/64")))
    p = plan(config(vhid(1)), config(new))
    assert p.updated == [(vhid(1), new)] and not p.replaced
    assert p.changes == ["vhid 1 on eth0: vips +2001:db8::1/64, advskew 0 -> 50, "
                         "preempt False -> True"]


def test_what_the_group_authenticates_replaces_the_instance() -> None:
    for change in ({"srcip": IPv4Address("10.0.0.9")},
                   {"peers": (IPv4Address("10.0.0.8"),)}, {"strict": True},
                   {"vips": (ip_interface("10.0.0.7/24"),)}):  # the HMAC address changes
        p = plan(config(vhid(1)), config(vhid(1, **change)))
        assert len(p.replaced) == 1 and not p.updated, change
        assert "restarted" in p.changes[0]


def rotating(n: int, secret: bytes, next_key: bytes | None, **kw: object) -> Vhid:
    v = vhid(n, secret, **kw)
    return dataclasses.replace(v, auth=auth(secret, v.vips, next_key))


def test_a_password_rotation_is_an_in_place_update_that_hides_the_secrets() -> None:
    """Round 4: a changed password restarted the instance (a master bowed out, the VIP moved);
    each step of a rotation now swaps the keys in place."""
    steps = [rotating(1, b"old", None), rotating(1, b"old", b"n3xt"),
             rotating(1, b"n3xt", b"old"), rotating(1, b"n3xt", None)]
    said = []
    for before, after in itertools.pairwise(steps):
        p = plan(config(before), config(after))
        assert p.updated == [(before, after)] and not p.replaced
        said += p.changes
    assert said == ["vhid 1 on eth0: next password set",
                    "vhid 1 on eth0: password changed, next password changed",
                    "vhid 1 on eth0: next password unset"]
    p = plan(config(vhid(1)), config(vhid(1, secret=b"s3cret")))
    assert p.changes == ["vhid 1 on eth0: password changed"] and p.updated
    assert "s3cret" not in repr(p.changes) and "n3xt" not in repr(said)
    # with the first VIP (what the digest covers) it is another group: restarted
    moved = rotating(1, b"n3xt", None, vips=(ip_interface("10.0.0.7/24"),))
    assert plan(config(vhid(1)), config(moved)).replaced


def test_scripts_and_the_first_vip() -> None:
    up = Path("/bin/true")
    scripted = vhid(1, upscript=up)
    extra = dataclasses.replace(scripted, vips=(*scripted.vips, ip_interface("10.0.0.50/24")))
    assert plan(config(scripted), config(extra)).updated  # the scripts' VIP argument stays
    assert plan(config(vhid(1)), config(scripted)).replaced  # who owns the VIP changes hands


def test_agent_settings_bound_at_start_need_a_restart_but_log_level_is_live() -> None:
    p = plan(config(vhid(1)), config(vhid(1), metrics_listen="127.0.0.1:1", log_level="debug"))
    assert p.at_restart == ["metrics_listen"] and p.log_level == "debug"
    assert any("takes effect at the next restart" in c for c in p.changes)


def test_checks_and_no_change() -> None:
    p = plan(config(vhid(1), checks={"web": Check(url="http://x/")}),
             config(vhid(1), checks={"web": Check(url="http://y/"), "db": Check(tcp="x:1")}))
    assert p.checks == {"web", "db"}
    assert plan(config(vhid(1)), config(vhid(1))).empty


def test_every_vhid_field_is_either_live_or_replacing() -> None:
    names = {f.name for f in dataclasses.fields(Vhid)}
    assert names >= LIVE  # a renamed field must not silently become "replace"
