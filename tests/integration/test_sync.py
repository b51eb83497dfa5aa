"""Replicated paths end to end (docs/sync.md): two real agents in network namespaces, real
rsync between them, the VIP moved by cable pulls, partitions and preemption."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab import Lab

from .conftest import metric, wait_for

SECRET = "sync-secret-for-tests"


def data(lab: Lab, node: str) -> Path:
    path = lab.dir / f"{node}-data"
    path.mkdir(exist_ok=True)
    return path


def sync_env(lab: Lab, node: str, **extra: str) -> dict[str, str]:
    secret = lab.dir / "sync.secret"
    if not secret.exists():
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
    return {"CARP_SYNC_PATHS": f"docs={data(lab, node)}", "CARP_SYNC_SECRET_FILE": str(secret),
            **extra}


def sync_status(lab: Lab, node: str) -> dict[str, Any]:
    st = lab.status(node) or {}
    return st.get("sync") or {}


def path_status(lab: Lab, node: str) -> dict[str, Any]:
    paths = sync_status(lab, node).get("paths") or [{}]
    return dict(paths[0])


def replicated(lab: Lab, node: str, rel: str, content: str | None) -> bool:
    """``rel`` on ``node`` has ``content`` (None: is absent)."""
    target = data(lab, node) / rel
    if content is None:
        return not target.exists()
    try:
        return target.read_text() == content
    except OSError:
        return False


def conflicts(lab: Lab, node: str) -> list[str]:
    root = data(lab, node) / ".carp-sync" / "conflicts"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def pair() -> Iterator[Lab]:
    """a: preferred (advskew 0, preempt); b: backup (advskew 100). a master, b caught up."""
    with Lab() as lab:
        (data(lab, "a") / "seed.txt").write_text("seed\n")
        lab.start_agent("a", **sync_env(lab, "a", CARP_ADVSKEW="0", CARP_PREEMPT="true"))
        wait_for(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="100", CARP_PREEMPT="true"))
        wait_for(lambda: replicated(lab, "b", "seed.txt", "seed\n"), 15, "seed on b")
        wait_for(lambda: path_status(lab, "b").get("lag_seconds") == 0, 10, "b caught up")
        yield lab


def test_changes_reach_the_backup_fast_and_deletes_follow(pair: Lab) -> None:
    lab = pair
    a = data(lab, "a")
    start = time.monotonic()
    (a / "sub").mkdir()
    for i in range(20):
        (a / "sub" / f"f{i}.txt").write_text(f"v{i}\n")
    wait_for(lambda: all(replicated(lab, "b", f"sub/f{i}.txt", f"v{i}\n") for i in range(20)),
             10, "20 files on b")
    assert time.monotonic() - start < 5
    (a / "sub" / "f3.txt").unlink()
    (a / "sub" / "f4.txt").write_text("changed\n")
    wait_for(lambda: replicated(lab, "b", "sub/f3.txt", None)
             and replicated(lab, "b", "sub/f4.txt", "changed\n"), 10, "delete and change on b")
    assert conflicts(lab, "b") == []  # agreed files replaced are no conflicts
    assert sync_status(lab, "a")["epoch"] >= 1
    assert sync_status(lab, "b")["epoch"] == sync_status(lab, "a")["epoch"]
    assert metric(lab, "b", "carp_sync_runs_total", result="ok") >= 1
    assert metric(lab, "b", "carp_sync_bytes_total") > 0
    # the private folder is not replicated, and nobody but root reads it
    assert (data(lab, "b") / ".carp-sync").stat().st_mode & 0o077 == 0


def test_cable_pull_and_back_loses_nothing_and_keeps_the_lag_window_aside(pair: Lab) -> None:
    lab = pair
    a, b = data(lab, "a"), data(lab, "b")
    (a / "agreed.txt").write_text("agreed\n")
    wait_for(lambda: replicated(lab, "b", "agreed.txt", "agreed\n"), 10, "agreed on b")
    # agreed once a's manifest has b's confirmation (SYNCED, just after the pull ends)
    wait_for(lambda: path_status(lab, "b").get("lag_seconds") == 0, 10, "b caught up")
    time.sleep(0.5)
    epoch_before = sync_status(lab, "a")["epoch"]
    lab.topo.unplug("a")
    (a / "late.txt").write_text("written on a, never replicated\n")  # a's lag window
    wait_for(lambda: lab.state("b") == "MASTER", 10, "b MASTER")
    st = sync_status(lab, "b")
    assert st["epoch"] > epoch_before
    assert st["took_over_with_lag"] is not None
    (b / "b-only.txt").write_text("written on b while a was away\n")
    (b / "agreed.txt").unlink()  # a legitimate delete on the new master
    lab.topo.plug("a")
    # a comes back behind: it catches up from b first, then preempts (a planned move)
    wait_for(lambda: replicated(lab, "a", "b-only.txt", "written on b while a was away\n"), 20,
             "b's file on a")
    wait_for(lambda: lab.state("a") == "MASTER", 20, "a preempts after catching up")
    assert replicated(lab, "a", "agreed.txt", None)  # the delete followed, nothing came back
    assert not (a / "late.txt").exists()
    late = [c for c in conflicts(lab, "a") if c.endswith("/late.txt")]
    assert len(late) == 1 and conflicts(lab, "a") == late
    kept = a / ".carp-sync" / "conflicts" / late[0]
    assert kept.read_text() == "written on a, never replicated\n"
    assert metric(lab, "a", "carp_sync_conflicts_total") == 1
    assert metric(lab, "a", "carp_transitions_total", reason="sync_caught_up") == 1
    # and b follows a again, in a's new epoch
    (a / "after.txt").write_text("after\n")
    wait_for(lambda: replicated(lab, "b", "after.txt", "after\n"), 10, "after.txt on b")
    wait_for(lambda: sync_status(lab, "b")["epoch"] == sync_status(lab, "a")["epoch"], 10,
             "b in a's epoch")


def test_a_backup_that_cannot_pull_never_preempts_a_healthy_master() -> None:
    with Lab() as lab:
        (data(lab, "a") / "seed.txt").write_text("seed\n")
        lab.start_agent("a", **sync_env(lab, "a", CARP_ADVSKEW="100"))
        wait_for(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        block = ["nft", "-f", "-"]
        rules = "table inet syncblock {\n chain output {\n  type filter hook output priority 0;\n" \
                "  tcp dport 8873 drop\n }\n}\n"
        subprocess.run(lab.topo["b"].argv(*block), input=rules, text=True, check=True)
        # b is preferred and preempts, but its replica never caught up
        lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="0", CARP_PREEMPT="true"))
        wait_for(lambda: lab.state("b") == "BACKUP", 10, "b BACKUP")
        time.sleep(6)
        assert lab.state("a") == "MASTER" and lab.state("b") == "BACKUP"
        st = sync_status(lab, "b")
        assert st["held_back"] == "sync_behind" and st["fresh"] is False
        assert metric(lab, "b", "carp_sync_fresh") == 0
        lab.topo["b"].run("nft", "delete", "table", "inet", "syncblock")
        wait_for(lambda: lab.state("b") == "MASTER", 20, "b preempts once caught up")
        assert replicated(lab, "b", "seed.txt", "seed\n")
        assert metric(lab, "b", "carp_transitions_total", reason="sync_caught_up") == 1


def test_a_healed_split_brain_keeps_both_sides_files(pair: Lab) -> None:
    lab = pair
    a, b = data(lab, "a"), data(lab, "b")
    lab.topo.block_carp("a")  # adverts lost, TCP still flows: both become MASTER
    wait_for(lambda: lab.state("b") == "MASTER", 10, "b MASTER in the split")
    (a / "split-a.txt").write_text("a's side\n")
    (b / "split-b.txt").write_text("b's side\n")
    time.sleep(1)
    lab.topo.block_carp("a", blocked=False)
    wait_for(lambda: lab.state("b") == "BACKUP", 10, "b BACKUP after the heal")
    # a (the better advskew) stays master; b, with the higher epoch, makes a move above it
    wait_for(lambda: replicated(lab, "b", "split-a.txt", "a's side\n"), 20, "a's file on b")
    wait_for(lambda: conflicts(lab, "b"), 10, "b's conflicts")
    assert [c.split("/", 1)[1] for c in conflicts(lab, "b")] == ["split-b.txt"]
    assert replicated(lab, "a", "split-a.txt", "a's side\n")  # a's own side is kept too
    wait_for(lambda: sync_status(lab, "b")["epoch"] == sync_status(lab, "a")["epoch"], 10,
             "b in a's new epoch")
    assert metric(lab, "b", "carp_sync_conflicts_total") == 1


def test_reload_adds_and_removes_a_path_without_moving_the_vip(pair: Lab) -> None:
    lab = pair
    extra = {n: lab.dir / f"{n}-extra" for n in ("a", "b")}
    for d in extra.values():
        d.mkdir()
    (extra["a"] / "x.txt").write_text("x\n")
    envs = {}
    for node in ("a", "b"):
        env_file = lab.dir / f"{node}.env"
        env_file.write_text(f"CARP_SYNC_PATHS=docs={data(lab, node)},extra={extra[node]}\n")
        envs[node] = env_file
    # the agents read CARP_SYNC_PATHS from the environment: a reload re-reads it, so start
    # over with an env file each (the fixture's agents stop first)
    for node in ("b", "a"):
        lab.stop_agent(node)
    lab.start_agent("a", "--env-file", str(envs["a"]),
                    **sync_env(lab, "a", CARP_ADVSKEW="0", CARP_PREEMPT="true",
                               CARP_SYNC_PATHS=""))
    wait_for(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
    lab.start_agent("b", "--env-file", str(envs["b"]),
                    **sync_env(lab, "b", CARP_ADVSKEW="100", CARP_SYNC_PATHS=""))
    wait_for(lambda: (extra["b"] / "x.txt").exists(), 15, "x.txt on b")
    # remove the extra path on both: a reload, no transition
    for node in ("a", "b"):
        envs[node].write_text(f"CARP_SYNC_PATHS=docs={data(lab, node)}\n")
        sock = str(lab.dir / f"{node}.sock")
        out = lab.topo[node].run(sys.executable, "-m", "sidecar.tools.cli", "reload",
                                 "--socket", sock, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: len(sync_status(lab, "b").get("paths") or []) == 1, 10, "one path on b")
    assert lab.state("a") == "MASTER" and lab.state("b") == "BACKUP"
    (data(lab, "a") / "still.txt").write_text("still\n")
    wait_for(lambda: replicated(lab, "b", "still.txt", "still\n"), 10, "docs still replicate")


def test_a_network_cut_during_the_first_catch_up_holds_the_preferred_node_back() -> None:
    """A large tree, the backup's link throttled, the sync port cut half way: no half-written
    file, not caught up, no preempt; the link back: caught up, then the planned preempt."""
    with Lab() as lab:
        blob = b"x" * 1_000_000
        for i in range(30):
            (data(lab, "a") / f"big{i:02d}").write_bytes(blob)
        lab.start_agent("a", **sync_env(lab, "a", CARP_ADVSKEW="100"))
        wait_for(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        a, b = lab.topo["a"], lab.topo["b"]
        a.run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "8mbit", "burst",
              "32kbit", "latency", "400ms")  # the master's sending side: ~30 s for the tree
        lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="0", CARP_PREEMPT="true"))
        wait_for(lambda: path_status(lab, "b").get("running"), 15, "b's first pull running")
        time.sleep(2)
        rules = "table inet syncblock {\n chain output {\n  type filter hook output priority " \
                "0;\n  tcp dport 8873 drop\n }\n}\n"
        subprocess.run(b.argv("nft", "-f", "-"), input=rules, text=True, check=True)
        a.run("tc", "qdisc", "del", "dev", "eth0", "root")
        time.sleep(12)  # rsync's I/O timeout (10 s) ends the cut pull
        st = path_status(lab, "b")
        assert st.get("caught_up") is False and st.get("lag_seconds") is None
        assert lab.state("a") == "MASTER" and lab.state("b") == "BACKUP"
        for f in data(lab, "b").glob("big*"):  # whatever arrived arrived whole
            assert f.stat().st_size == len(blob)
        b.run("nft", "delete", "table", "inet", "syncblock")
        wait_for(lambda: lab.state("b") == "MASTER", 40, "b preempts once caught up")
        assert all(replicated(lab, "b", f"big{i:02d}", "x" * 1_000_000) for i in range(30))


def test_a_restarted_backup_keeps_its_epoch_and_pulls_only_the_difference(pair: Lab) -> None:
    lab = pair
    epoch = sync_status(lab, "b")["epoch"]
    assert epoch >= 1 and (lab.dir / "b-state" / "eth0-vhid1.epoch").read_text().strip() == \
        str(epoch)
    lab.stop_agent("b")
    (data(lab, "a") / "while-b-was-down.txt").write_text("new\n")
    before = metric(lab, "a", "carp_sync_refused_total", reason="address")
    lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="100", CARP_PREEMPT="true"))
    wait_for(lambda: replicated(lab, "b", "while-b-was-down.txt", "new\n"), 15, "the new file")
    assert sync_status(lab, "b")["epoch"] == epoch
    assert conflicts(lab, "b") == []  # its own earlier pulls are agreed, not displaced
    assert not (data(lab, "b") / ".carp-sync" / "before-first-sync").exists()
    assert metric(lab, "a", "carp_sync_refused_total", reason="address") == before


def test_without_a_state_directory_the_epoch_lives_in_memory() -> None:
    with Lab() as lab:
        (data(lab, "a") / "seed.txt").write_text("seed\n")
        lab.start_agent("a", **sync_env(lab, "a", CARP_STATE_DIR="off"))
        wait_for(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="100", CARP_STATE_DIR="off"))
        wait_for(lambda: replicated(lab, "b", "seed.txt", "seed\n"), 15, "seed on b")
        assert sync_status(lab, "a")["epoch"] == 1


def test_a_healed_three_node_split_brain_keeps_what_the_losing_side_agreed_on() -> None:
    """a is cut off (its adverts lost); b takes over, c follows b and confirms file X, so b
    and c agree on it. On the heal a, the better advskew, stays master: X is in neither
    tree any more, and both b and c keep it in their conflicts folders, never deleted."""
    with Lab() as lab:
        (data(lab, "a") / "seed.txt").write_text("seed\n")
        lab.start_agent("a", **sync_env(lab, "a", CARP_ADVSKEW="0"))
        wait_for(lambda: lab.state("a") == "MASTER", 10, "a MASTER")
        lab.start_agent("b", **sync_env(lab, "b", CARP_ADVSKEW="50"))
        lab.start_agent("client", **sync_env(lab, "client", CARP_ADVSKEW="100"))
        for node in ("b", "client"):
            wait_for(lambda n=node: replicated(lab, n, "seed.txt", "seed\n"), 15, f"seed on {node}")
        lab.topo.block_carp("a")
        wait_for(lambda: lab.state("b") == "MASTER", 10, "b MASTER in the split")
        (data(lab, "b") / "x.txt").write_text("written on b, agreed by c\n")
        wait_for(lambda: replicated(lab, "client", "x.txt", "written on b, agreed by c\n"), 15,
                 "x.txt on c")
        time.sleep(1)  # c's confirmation reaches b: b and c agree on x.txt
        lab.topo.block_carp("a", blocked=False)
        wait_for(lambda: lab.state("b") == "BACKUP", 10, "b BACKUP after the heal")
        for node in ("b", "client"):
            wait_for(lambda n=node: not (data(lab, n) / "x.txt").exists(), 20,
                     f"x.txt out of {node}'s tree (a's tree wins)")
            wait_for(lambda n=node: any(c.endswith("/x.txt") for c in conflicts(lab, n)), 10,
                     f"x.txt kept in {node}'s conflicts")
        assert lab.state("a") == "MASTER"
        assert metric(lab, "a", "carp_sync_refused_total", reason="epoch") == 2
