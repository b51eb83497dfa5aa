"""The backup's side of replication against a real rsync daemon, in a network namespace of its
own (loopback inside it): trees pulled, changes and deletions followed, local edits kept as
conflicts, a killed transfer and a full disk leave no half-written file, a master with a lower
epoch gets no pull, symlinks out of the tree are not created. The master's side is a small one
written here (tests/integration/sync_fake_master.py), not the agent's."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core import syncwire as wire
from sidecar.replica.epoch import EpochStore
from sidecar.replica.puller import Puller
from sidecar.replica.secret import Secrets
from sidecar.serve.syncmetrics import SyncFamilies, SyncMetrics
from tests.integration.sync_fake_master import FakeMaster, run_in_netns

pytestmark = pytest.mark.integration
LABELS = {"group": "g", "vhid": "1", "interface": "lo"}
LOCAL = IPv4Address("127.0.0.1")
CAFE = os.fsdecode(b"caf\xe9")  # a name with a byte that is not UTF-8


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"carpsync-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], check=False)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    handler, logger = _Records(), logging.getLogger("carp-sidecar")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class Rig:
    master: FakeMaster
    puller: Puller
    src: Path
    dst: Path
    epochs: EpochStore
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {**LABELS, "path": "web", **labels})
        return 0.0 if value is None else value

    def synced(self, gen: int) -> bool:
        return ("web", gen) in self.master.synced


@contextlib.asynccontextmanager
async def rig(tmp: Path, master_epoch: int = 3, our_epoch: int = 0,
              first_sync_free: bool = False, dst: Path | None = None) -> AsyncIterator[Rig]:
    src, dst = tmp / "master", dst or tmp / "backup"
    src.mkdir(exist_ok=True)
    dst.mkdir(exist_ok=True)
    keys = Secrets(b"only-for-this-test")
    try:
        master = FakeMaster(tmp, 1, keys.secret, master_epoch, {"web": src})
        serving = asyncio.get_running_loop().create_task(master.serve())
        epochs = EpochStore(tmp / "test.epoch")
        epochs.raise_to(our_epoch)
        registry = CollectorRegistry()
        metrics = SyncMetrics(SyncFamilies(registry), LABELS, ["web"])
        puller = Puller(1, {"web": dst}, master.port, keys, epochs, metrics, lambda: None,
                        first_sync_free)
        try:
            yield Rig(master, puller, src, dst, epochs, registry)
        finally:
            await puller.close()
            serving.cancel()
            await master.close()
    finally:
        keys.remove()  # also when the rig could not be built: no copy of the secret left


async def until(cond: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def tree(root: Path) -> dict[str, str]:
    """Every file and symlink under root but .carp-sync: content or link target."""
    found: dict[str, str] = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".carp-sync"]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = Path(top) / name
            rel = str(path.relative_to(root))
            found[rel] = (("-> " + os.readlink(path)) if path.is_symlink()
                          else path.read_bytes().decode(errors="replace"))
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rsync_clients(dst: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if argv[0] == b"rsync" and f"{dst}/".encode() in argv:
                pids.append(int(entry))
    return pids


def test_a_tree_is_pulled_then_updates_and_deletions_follow(netns: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            (r.src / "sub").mkdir()
            (r.src / "a.txt").write_text("alpha")
            (r.src / "sub/b.txt").write_text("beta")
            (r.src / "link").symlink_to("sub/b.txt")
            (r.src / "out-abs").symlink_to("/etc/passwd")
            (r.src / "sub/out-rel").symlink_to("../../../etc")
            latin1 = os.fsencode(r.src) + b"/caf\xe9"  # not UTF-8: rsync prints caf\#351
            Path(os.fsdecode(latin1)).write_text("latin-1 name")
            r.puller.follow(LOCAL)
            await until(lambda: r.synced(1), "the first pull")
            assert tree(r.dst) == {"a.txt": "alpha", "sub/b.txt": "beta", CAFE: "latin-1 name",
                                   "link": "-> sub/b.txt"}  # no symlink out of the tree
            assert r.epochs.epoch == 3  # the master's, adopted
            assert r.puller.lags(time.monotonic()) == {"web": 0.0}
            view = r.puller.view()
            assert view["paths"][0]["caught_up"] and view["paths"][0]["synced_generation"] == 1
            assert r.metric("carp_sync_bytes_total") > 0
            assert r.metric("carp_sync_last_success_timestamp_seconds") > time.time() - 60
            (r.src / "a.txt").write_text("alpha, second version")
            (r.src / "sub/b.txt").unlink()
            (r.src / "c.txt").write_text("gamma")
            Path(os.fsdecode(latin1)).write_text("latin-1 name, changed")
            r.master.bump("web")
            await until(lambda: r.synced(2), "the second pull")
            assert tree(r.dst) == {"a.txt": "alpha, second version", "c.txt": "gamma",
                                   CAFE: "latin-1 name, changed", "link": "-> sub/b.txt"}
            assert r.metric("carp_sync_runs_total", result="ok") == 2
            assert r.metric("carp_sync_conflicts_total") == 0
            private = r.dst / ".carp-sync"
            assert not (private / "conflicts").exists()
            assert list((private / "displaced").iterdir()) == []  # agreed copies discarded
            assert private.stat().st_mode & 0o777 == 0o700
    run_in_netns(netns, scenario)


def test_local_edits_a_pull_overwrites_or_deletes_are_kept_as_conflicts(
        netns: str, tmp_path: Path, logged: list[str]) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            (r.src / "a.txt").write_text("agreed a")
            (r.src / "b.txt").write_text("agreed b")
            r.puller.follow(LOCAL)
            await until(lambda: r.synced(1), "the first pull")
            (r.dst / "a.txt").write_text("edited on the backup")
            (r.dst / "extra.txt").write_text("only on the backup")
            (r.src / "a.txt").write_text("the master's a, later")
            (r.src / "b.txt").write_text("the master's b, later")  # b: agreed, replaced
            r.master.bump("web")
            await until(lambda: r.synced(2), "the second pull")
            assert tree(r.dst) == {"a.txt": "the master's a, later",
                                   "b.txt": "the master's b, later"}
            kept = r.dst / ".carp-sync/conflicts/3"
            assert tree(kept) == {"a.txt": "edited on the backup",
                                  "extra.txt": "only on the backup"}
            assert r.metric("carp_sync_conflicts_total") == 2
            line = next(m for m in logged if "conflicts" in m)
            assert "a.txt" in line and "extra.txt" in line and "b.txt" not in line
    run_in_netns(netns, scenario)


def test_on_a_node_never_master_the_first_catch_up_sets_old_files_aside(
        netns: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, first_sync_free=True) as r:
            (r.src / "index.html").write_text("the group's")
            (r.dst / "index.html").write_text("what this node had")
            r.puller.follow(LOCAL)
            await until(lambda: r.synced(1), "the first pull")
            aside = r.dst / ".carp-sync/before-first-sync"
            assert (aside / "index.html").read_text() == "what this node had"
            assert r.metric("carp_sync_conflicts_total") == 0
    run_in_netns(netns, scenario)


async def _big_change_under_way(r: Rig, netns_lo_slow: bool = True) -> str:
    """After a first pull of big.bin (1 MB), the master writes an 8 MB one and the loopback is
    throttled; returns once the pull has written part of it. The old file's digest."""
    (r.src / "big.bin").write_bytes(os.urandom(1 << 20))
    r.puller.follow(LOCAL)
    await until(lambda: r.synced(1), "the first pull")
    old = digest(r.dst / "big.bin")
    sh("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "16mbit", "burst", "64kb",
       "latency", "2s")
    (r.src / "big.bin").write_bytes(os.urandom(8 << 20))
    r.master.bump("web")

    def partial() -> bool:
        return any(p.is_file() and p.stat().st_size > 0 and p.name != "big.bin"
                   for p in r.dst.rglob("*") if ".carp-sync" not in p.parts)
    await until(partial, "a partial file of the transfer")
    return old


def test_a_transfer_killed_midway_leaves_no_half_written_file_and_the_next_completes(
        netns: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            old = await _big_change_under_way(r)
            r.master.kill_daemons()
            await until(lambda: r.metric("carp_sync_runs_total", result="failed") >= 1,
                        "the killed pull to fail")
            assert digest(r.dst / "big.bin") == old  # the old file whole, never a mix
            assert r.puller.lags(time.monotonic())["web"] > 0
            sh("tc", "qdisc", "del", "dev", "lo", "root")
            await until(lambda: r.synced(2), "the next pull", timeout=30)
            assert digest(r.dst / "big.bin") == digest(r.src / "big.bin")
            assert tree(r.dst).keys() == {"big.bin"}  # no temporary left
    run_in_netns(netns, scenario)


def test_a_stop_kills_the_pull_under_way(netns: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            old = await _big_change_under_way(r)
            for pid in rsync_clients(r.dst):  # the secret in neither argv nor environment
                seen = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert b"only-for-this-test" not in seen + b"".join(environ)
                assert {e.split(b"=")[0] for e in environ if e} == {b"PATH", b"LANG"}
            assert rsync_clients(r.dst)
            r.puller.follow(None)
            await until(lambda: not rsync_clients(r.dst), "rsync to be killed", timeout=5)
            await until(lambda: not r.puller.view()["paths"][0]["running"], "the run to end")
            assert digest(r.dst / "big.bin") == old
            assert not list((r.dst / ".carp-sync").rglob("displaced/*"))  # settled
    run_in_netns(netns, scenario)


def test_a_full_disk_fails_the_pull_lag_grows_and_nothing_is_half_written(
        netns: str, tmp_path: Path, logged: list[str]) -> None:
    small = tmp_path / "small"
    small.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small))

    async def scenario() -> None:
        async with rig(tmp_path, dst=small) as r:
            (r.src / "note.txt").write_text("fits")
            r.puller.follow(LOCAL)
            await until(lambda: r.synced(1), "the first pull")
            assert r.puller.lags(time.monotonic()) == {"web": 0.0}
            (r.src / "big.bin").write_bytes(os.urandom(3 << 20))
            r.master.bump("web")
            await until(lambda: r.metric("carp_sync_runs_total", result="failed") >= 2,
                        "two failed pulls (a retry)")
            first = r.puller.lags(time.monotonic())["web"]
            await asyncio.sleep(0.5)
            later = r.puller.lags(time.monotonic())["web"]
            assert first is not None and later is not None and later > first > 0
            assert r.metric("carp_sync_lag_seconds") > 0
            assert not (r.dst / "big.bin").exists()
            assert (r.dst / "note.txt").read_text() == "fits"
            failures = [m for m in logged if "failed" in m and "Sync of path" in m]
            assert len(failures) == 1 and "No space left" in failures[0], failures
    try:
        run_in_netns(netns, scenario)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_master_with_a_lower_epoch_gets_no_pull_until_it_raises_its_own(
        netns: str, tmp_path: Path, logged: list[str]) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, master_epoch=3, our_epoch=5) as r:
            (r.src / "a.txt").write_text("from a former master")
            r.puller.follow(LOCAL)
            await until(lambda: r.metric("carp_sync_runs_total", result="fenced") >= 1,
                        "a fenced pull")
            await asyncio.sleep(0.5)
            assert tree(r.dst) == {} and r.master.synced == [] and 5 in r.master.auth_epochs
            assert r.puller.view()["fenced"] is True
            assert sum("epoch 3 is below ours" in m for m in logged) == 1
            r.master.epoch = 6  # as a master does that hears a higher epoch: it moves on...
            r.master.drop_sessions()  # ...and closes its channels
            await until(lambda: r.synced(1), "the pull once the master's epoch is above ours")
            assert r.epochs.epoch == 6 and tree(r.dst) == {"a.txt": "from a former master"}
    run_in_netns(netns, scenario)


def test_notmaster_is_asked_again_and_a_bad_proof_gets_no_pull(netns: str,
                                                              tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            (r.src / "a.txt").write_text("a")
            r.master.refuse = wire.NOTMASTER
            r.puller.follow(LOCAL)
            await asyncio.sleep(1.2)
            assert r.master.synced == [] and not r.puller.view()["connected"]
            r.master.bad_proof, r.master.refuse = True, None
            await asyncio.sleep(1.5)
            assert r.master.synced == [] and tree(r.dst) == {}
            r.master.bad_proof = False
            await until(lambda: r.synced(1), "the pull from a master that proves itself",
                        timeout=5)
    run_in_netns(netns, scenario)


def test_a_new_master_kills_the_pull_from_the_old_one_and_is_pulled_from(
        netns: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await _big_change_under_way(r)
            other = tmp_path / "other-master"
            other.mkdir()
            (other / "new.txt").write_text("written on the new master")
            new = FakeMaster(tmp_path, 1, r.master.secret, 4, {"web": other},
                             address="127.0.0.2", port=r.master.port)
            serving = asyncio.get_running_loop().create_task(new.serve())
            try:
                r.puller.follow(IPv4Address("127.0.0.2"))
                await until(lambda: not rsync_clients(r.dst) or ("web", 1) in new.synced,
                            "the pull from the old master to be killed", timeout=5)
                sh("tc", "qdisc", "del", "dev", "lo", "root")
                await until(lambda: ("web", 1) in new.synced, "the pull from the new master",
                            timeout=30)
                # no partial file of the killed pull left in rsync's holding folder
                assert tree(r.dst) == {"new.txt": "written on the new master"}
                assert r.epochs.epoch == 4 and r.master.synced == [("web", 1)]
                assert r.metric("carp_sync_conflicts_total") == 0  # big.bin was agreed
            finally:
                serving.cancel()
                await new.close()
    run_in_netns(netns, scenario)
