"""The sync port on a master, for real: the server runs in a network namespace of its own, the
clients (Debian's rsync, and the watch channel spoken by hand) in another, joined by a veth
pair. The client side has two addresses: one in the VHID's group (10.x.0.0/25), one outside."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sidecar.core import syncwire as wire
from sidecar.replica.secret import Secrets
from sidecar.replica.server import SyncServer
from sidecar.replica.watcher import MasterSide

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SECRET = b"sync-test-secret"
VHID = 7
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(ns: str) -> None:
    """Move the calling *thread* into ``ns`` (its sockets and children are made there)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


class Net:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.octet = 100 + secrets.randbelow(100)
        self.srv, self.cli = f"sync{tag}-m", f"sync{tag}-c"
        self.master = IPv4Address(f"10.{self.octet}.0.1")
        self.member = f"10.{self.octet}.0.2"
        self.outsider = f"10.{self.octet}.0.200"
        self.group = IPv4Network(f"10.{self.octet}.0.0/25")

    def create(self) -> None:
        sh("ip", "netns", "add", self.srv)
        sh("ip", "netns", "add", self.cli)
        sh("ip", "-n", self.srv, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", self.cli)
        for ns, addrs in ((self.srv, [str(self.master)]), (self.cli, [self.member, self.outsider])):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", f"{a}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def destroy(self) -> None:
        for ns in (self.srv, self.cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def client(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.cli, *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def connect(self, port: int, source: str) -> socket.socket:
        """A TCP connection from the client namespace (made in a thread that enters it)."""
        out: list[socket.socket | BaseException] = []

        def dial() -> None:
            try:
                enter_netns(self.cli)
                s = socket.create_connection((str(self.master), port), 5, (source, 0))
                out.append(s)
            except BaseException as e:  # handed to the caller
                out.append(e)
        t = threading.Thread(target=dial)
        t.start()
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]


class Loop:
    """An event loop in a thread that lives in the master's namespace."""

    def __init__(self, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(ns,), daemon=True)
        self.thread.start()

    def _run(self, ns: str) -> None:
        enter_netns(ns)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()
        return self.run(wrapped())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Master:
    def __init__(self, net: Net, root: Path, tmp: Path) -> None:
        self.net, self.root = net, root
        self.port = 20000 + secrets.randbelow(20000)
        self.refusals: list[str] = []
        self.higher: list[int] = []
        self.secrets = Secrets(SECRET)
        try:
            self.loop = Loop(net.srv)
            self.server = SyncServer(net.master, self.port, self.secrets, self.refusals.append)
            self.side = self.loop.call(lambda: self.new_side(epoch=3))
        except BaseException:
            self.secrets.remove()  # close() is never called for a master not built
            raise
        self.password_file = self.secrets.password_file
        self.wrong_password = tmp / "wrong.pass"
        self.wrong_password.write_text("not-the-secret\n")
        self.wrong_password.chmod(0o600)

    def new_side(self, epoch: int) -> MasterSide:
        return MasterSide(VHID, epoch, {"www": self.root}, self.higher.append)

    def start(self) -> None:
        async def go() -> None:
            await self.server.start()
            await self.side.start()
            self.server.allow(VHID, [self.net.group])
            self.server.serve(self.side)
        self.loop.run(go())

    def close(self) -> None:
        async def stop() -> None:
            await self.server.close()
            await self.side.close()
        try:
            self.loop.run(stop())
        finally:
            self.loop.stop()
            self.secrets.remove()

    def pull(self, dest: Path, *extra: str, module: str = f"v{VHID}-www/",
             password: Path | None = None, source: str | None = None
             ) -> subprocess.CompletedProcess[str]:
        return self.net.client(
            "rsync", "-a", "--safe-links", "--numeric-ids", "--exclude=/.carp-sync/",
            f"--password-file={password or self.password_file}", "--contimeout=5",
            "--timeout=10", f"--address={source or self.net.member}", *extra,
            f"rsync://carp@{self.net.master}:{self.port}/{module}", f"{dest}/")


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    net = Net()
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("a" * 5000)
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc")
    (root / "inside").symlink_to("index.html")
    m: Master | None = None
    try:
        net.create()
        m = Master(net, root, tmp_path)
        m.start()
        yield m
    finally:
        if m is not None:
            m.close()
        net.destroy()


class Channel:
    """The backup's end of a watch channel, spoken line by line."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        self.sock, self.file = sock, sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self, epoch: int, secret: bytes = SECRET) -> bytes:
        nonce = secrets.token_hex(16)
        self.send(wire.hello(VHID, nonce))
        answer = self.line()
        if not answer.startswith(b"CHALLENGE"):
            return answer
        server_nonce = wire.parse_challenge(answer)
        self.send(wire.auth(epoch, wire.client_proof(secret, VHID, server_nonce, nonce, epoch)))
        answer = self.line()
        if answer.startswith(b"OK"):
            theirs, proof = wire.parse_ok(answer)
            expected = wire.server_proof(SECRET, VHID, nonce, server_nonce, theirs)
            assert wire.proven(expected, proof), "the master's proof does not check"
        return answer

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_rsync_pulls_the_module_with_the_secret(master: Master, tmp_path: Path) -> None:
    dest = tmp_path / "replica"
    dest.mkdir()
    r = master.pull(dest)
    assert r.returncode == 0, r.stderr
    assert (dest / "index.html").read_text() == "hello\n"
    assert (dest / "sub" / "a.txt").read_text() == "a" * 5000
    assert os.readlink(dest / "inside") == "index.html"  # a link inside the tree is kept
    assert not (dest / ".carp-sync").exists()  # the master's private folder is not served
    # the links that leave the tree are not transferred, as links or as files
    assert not (dest / "passwd").exists() and not (dest / "passwd").is_symlink()
    assert not (dest / "etc").exists() and not (dest / "etc").is_symlink()
    assert master.refusals == []
    wait(lambda: master.loop.call(lambda: master.server.daemons) == 0, 5, "daemon ended")


def test_the_daemon_never_follows_a_link_out_of_the_module(master: Master, tmp_path: Path
                                                           ) -> None:
    passwd = Path("/etc/passwd").read_text()
    for n, (extra, module) in enumerate([
            (("--copy-links",), f"v{VHID}-www/"),  # refused: it would make the daemon follow
            (("--copy-unsafe-links",), f"v{VHID}-www/"),
            ((), f"v{VHID}-www/etc/passwd"),  # through a linked folder
            ((), f"v{VHID}-www/passwd"),
            ((), f"v{VHID}-www/../../../../etc/passwd")]):
        dest = tmp_path / f"try{n}"
        dest.mkdir()
        r = master.pull(dest, *extra, module=module)
        if extra:
            assert r.returncode != 0 and "configured to refuse" in r.stderr, r.stderr
        for f in dest.rglob("*"):
            assert not (f.is_file() and not f.is_symlink() and f.read_text() == passwd), (
                f"{extra} {module}: /etc/passwd came through as {f}\n{r.stderr}")


def test_a_wrong_password_is_refused(master: Master, tmp_path: Path) -> None:
    dest = tmp_path / "replica"
    dest.mkdir()
    r = master.pull(dest, password=master.wrong_password)
    assert r.returncode != 0
    assert "auth failed" in r.stderr
    assert list(dest.iterdir()) == []


def test_an_address_outside_the_group_is_refused_and_counted(master: Master,
                                                             tmp_path: Path) -> None:
    dest = tmp_path / "replica"
    dest.mkdir()
    r = master.pull(dest, source=master.net.outsider)
    assert r.returncode != 0 and list(dest.iterdir()) == []
    sock = master.net.connect(master.port, master.net.outsider)  # the watch channel
    with contextlib.suppress(OSError):
        sock.sendall(wire.hello(VHID, secrets.token_hex(16)))
    assert _closed(sock), "closed before a word"
    wait(lambda: master.refusals.count("address") == 2, 3, f"refusals {master.refusals}")


def _closed(sock: socket.socket) -> bool:
    """The master closed the connection without a word (a reset: what was sent went unread)."""
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def test_a_garbage_first_line_is_refused_as_protocol(master: Master) -> None:
    sock = master.net.connect(master.port, master.net.member)
    sock.settimeout(5)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert _closed(sock)
    wait(lambda: master.refusals == ["protocol"], 3, f"refusals {master.refusals}")


def test_watch_channel_says_gen_within_a_second_of_a_write(master: Master) -> None:
    ch = Channel(master.net.connect(master.port, master.net.member))
    try:
        assert ch.handshake(epoch=2).startswith(b"OK 3 ")
        first = wire.parse_server(ch.line())
        assert first is not None and first.name == "www"
        time.sleep(0.2)
        (master.root / "new.txt").write_text("new")
        t0 = time.monotonic()
        line = ch.line()
        while line == wire.PING:
            line = ch.line()
        took = time.monotonic() - t0
        gen = wire.parse_server(line)
        assert gen is not None and gen.name == "www" and gen.gen > first.gen, line
        assert took < 1.0, f"GEN after {took:.2f} s"
        # nothing to say: a PING each second
        t0 = time.monotonic()
        assert ch.line() == wire.PING and time.monotonic() - t0 < 1.5
        ch.send(wire.synced("www", gen.gen))
        ch.send(b"SYNCED nosuchpath 1\n")  # a bad line after auth: closed, not counted
        assert _drain(ch) == b""
    finally:
        ch.close()
    assert master.refusals == []


def _drain(ch: Channel) -> bytes:
    line = ch.line()
    while line in (wire.PING,) or line.startswith(b"GEN"):
        line = ch.line()
    return line


def test_notmaster_after_unserve(master: Master, tmp_path: Path) -> None:
    ch = Channel(master.net.connect(master.port, master.net.member))
    assert ch.handshake(epoch=3).startswith(b"OK")
    master.loop.call(lambda: master.server.unserve(VHID))
    assert _drain(ch) == b"", "unserve closes the VHID's watch connections"
    ch.close()
    ch = Channel(master.net.connect(master.port, master.net.member))
    assert ch.handshake(epoch=3) == wire.NOTMASTER
    ch.close()
    dest = tmp_path / "replica"
    dest.mkdir()
    r = master.pull(dest)
    assert r.returncode != 0 and "Unknown module" in r.stderr, r.stderr
    assert master.refusals == ["not_master"]


def test_wrong_proof_is_refused_as_auth(master: Master) -> None:
    ch = Channel(master.net.connect(master.port, master.net.member))
    assert ch.handshake(epoch=3, secret=b"guess") == wire.denied("auth")
    ch.close()
    assert master.refusals == ["auth"]


def test_a_backup_with_a_higher_epoch_moves_the_master_on(master: Master) -> None:
    ch = Channel(master.net.connect(master.port, master.net.member))
    assert ch.handshake(epoch=9) == b"DENIED epoch\n"  # it voids its agreements, reconnects
    ch.close()
    assert master.higher == [9]
    side = master.loop.call(lambda: master.new_side(epoch=10))
    side.void = (4, 9)  # what the agent records when it moves from 3 past 9 (service.py)
    master.loop.run(side.start())
    master.loop.call(lambda: master.server.serve(side))
    # a second backup of the losing line is told too (it voids its agreements) ...
    ch = Channel(master.net.connect(master.port, master.net.member))
    assert ch.handshake(epoch=9) == b"DENIED epoch\n"
    ch.close()
    assert master.higher == [9]  # ... without moving the master again
    ch = Channel(master.net.connect(master.port, master.net.member))
    try:  # and comes back offering epoch 0 (its line is void)
        assert ch.handshake(epoch=0).startswith(b"OK 10 ")
    finally:
        ch.close()
        master.loop.run(side.close())


def test_confirmed_generations_reach_the_masters_manifest(master: Master) -> None:
    from sidecar.replica.manifest import Manifest, stamp

    ch = Channel(master.net.connect(master.port, master.net.member))
    try:
        assert ch.handshake(epoch=3).startswith(b"OK")
        first = wire.parse_server(ch.line())
        assert first is not None
        ch.send(wire.synced("www", first.gen))  # the whole tree, the first time
        (master.root / "later.txt").write_text("later")
        line = ch.line()
        while line == wire.PING:
            line = ch.line()
        gen = wire.parse_server(line)
        assert gen is not None

        def recorded(rel: str) -> bool:
            m = Manifest(master.root)
            try:
                return m.get(rel) == stamp(master.root / rel)
            finally:
                m.close()
        wait(lambda: recorded("index.html") and recorded("sub/a.txt"), 3, "tree recorded")
        assert not recorded("later.txt"), "changed after the confirmed generation"
        ch.send(wire.synced("www", gen.gen))
        wait(lambda: recorded("later.txt"), 3, "later.txt recorded once confirmed")
    finally:
        ch.close()


def test_a_taken_port_is_a_clear_error(master: Master) -> None:
    other = Secrets(SECRET)
    try:
        second = SyncServer(master.net.master, master.port, other, master.refusals.append)
        with pytest.raises(OSError, match=rf"sync port {master.net.master}:{master.port}.*"
                                          "CARP_SYNC_PORT"):
            master.loop.run(second.start())
    finally:
        other.remove()


def test_unserve_kills_a_running_daemon(master: Master, tmp_path: Path) -> None:
    with open(master.root / "big.bin", "wb") as f:
        f.write(os.urandom(8 << 20))
    dest = tmp_path / "replica"
    dest.mkdir()
    argv = ["ip", "netns", "exec", master.net.cli, "rsync", "-a", "--bwlimit=500",
            f"--password-file={master.password_file}", f"--address={master.net.member}",
            f"rsync://carp@{master.net.master}:{master.port}/v{VHID}-www/", f"{dest}/"]
    pull = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        daemons = lambda: master.loop.call(lambda: master.server.daemons)  # noqa: E731
        wait(lambda: daemons() == 1, 5, "a daemon serving the pull")
        master.loop.call(lambda: master.server.unserve(VHID))
        wait(lambda: daemons() == 0, 3, "the daemon killed")
        assert pull.wait(10) != 0
    finally:
        pull.kill()
        pull.wait()
