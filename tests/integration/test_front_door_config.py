"""Issue 34, the front door: the README's first command fed a ucarp.conf to the agent through
`docker run --env-file`, whose parser keeps the shell's quotes and comments: the password then
differs from the ucarp peer's and both nodes are master. Now such a value is refused at start,
and the same file read by the agent (--env-file, as mounted in the container) joins the ucarp
group as a backup, its adverts authenticated."""

from __future__ import annotations

from sidecar.lab import VIP, Lab

from .conftest import dump_on_failure, metric, start_ucarp, status, vip_holders, wait_for

# A ucarp.conf as written for a shell; the password is the lab's (start_ucarp's)
UCARP_CONF = ("# shared by both nodes\n"
              "UCARP_INTERFACE=eth0\n"
              "UCARP_VHID=1\n"
              f"UCARP_ADDR={VIP}/16\n"
              'UCARP_PASS="lab-only"\n'
              "UCARP_ADVSKEW=100\n")
# The lab's own settings the file gives instead ("" unsets them)
FROM_THE_FILE = {k: "" for k in ("CARP_INTERFACE", "CARP_VHID", "CARP_ADDR", "CARP_PASS",
                                 "CARP_IF_ALIAS")}


def docker_env_file(text: str) -> dict[str, str]:
    """`docker run --env-file`'s reading: the value after the first '=' kept as it is."""
    return dict(line.partition("=")[::2] for line in text.splitlines()
                if "=" in line and not line.startswith("#"))


def test_ucarp_conf_docker_parsed_is_refused_read_by_the_agent_joins_ucarp(lab: Lab) -> None:
    start_ucarp(lab, "a", advskew=0, preempt=True)
    wait_for(lambda: vip_holders(lab) == ["a"], 8, "ucarp MASTER with the VIP")
    # through Docker's parser: refused at start, before it could send a single advert (it
    # used to run with the password '"lab-only"', fail every advert's HMAC and be master too)
    docker = lab.start_agent("b", **{**FROM_THE_FILE, **docker_env_file(UCARP_CONF)})
    wait_for(lambda: docker.poll() is not None, 20, "the agent refusing to start")
    assert docker.returncode == 2 and vip_holders(lab) == ["a"], dump_on_failure(lab)
    log = (lab.dir / "b.log").read_text()
    assert "UCARP_PASS: the value is in double quotes" in log and "lab-only" not in log
    lab.agents.pop("b")
    # the same file read by the agent, as the shell reads it: the right password
    conf = lab.dir / "ucarp.conf"
    conf.write_text(UCARP_CONF)
    lab.start_agent("b", "--env-file", str(conf), **FROM_THE_FILE)
    wait_for(lambda: metric(lab, "b", "carp_adverts_received_total") >= 3, 10,
             "adverts from ucarp")
    assert metric(lab, "b", "carp_adverts_dropped_total", reason="bad_hmac") == 0
    assert status(lab, "b")["state"] == "BACKUP", dump_on_failure(lab)
    assert vip_holders(lab) == ["a"]
