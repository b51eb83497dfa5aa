"""deploy/example's sessions on real Apache (Debian's apache2 + libapache2-mod-php) in network
namespaces: a PHP file session moves with its directory (a plain copy stands in for the
replication), a mod_session_crypto cookie is read by every node holding the key and by no other,
and the replication's .carp-sync/ folder is never served."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.lab.netns import Topology, stop_processes
from sidecar.lab.scenario import APACHE, apache_config
from sidecar.lab.sessions import (
    APP_URL,
    EXAMPLE,
    App,
    SessionClient,
    php_module,
    sessions_step_enabled,
)

pytestmark = pytest.mark.skipif(php_module() is None or not EXAMPLE.is_dir(),
                                reason="needs libapache2-mod-php (make deps) and deploy/example")
ADDRESSES = {"a": "172.16.0.11/16", "b": "172.16.0.12/16", "client": "172.16.0.100/16"}
A, B = "http://172.16.0.11", "http://172.16.0.12"


@dataclass
class Nodes:
    topo: Topology
    dir: Path
    apps: dict[str, App]

    def client(self, name: str = "jar") -> SessionClient:
        return SessionClient(self.topo["client"], self.dir / f"{name}.cookies")

    def start_apache(self, node: str, port: int = 80, key_file: Path | None = None) -> None:
        """Apache on ``node`` (its own config, not the system service), the example under /app/;
        another ``port`` with another ``key_file``: a second Apache on the same node."""
        app = self.apps[node]
        if key_file is not None:
            app = App(app.htdocs, app.sessions, key_file)
        root = self.dir / f"apache-{node}-{port}"
        conf = apache_config(root, f"node-{node}", port=port, app=app)
        log = root / "stdout.log"
        self.topo.start(node, [APACHE, "-f", str(conf), "-DFOREGROUND"], log=log)
        for _ in range(100):
            r = self.topo[node].run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    f"http://127.0.0.1:{port}{APP_URL}whoami.php", check=False)
            if r.stdout == "200":
                return
            subprocess.run(["sleep", "0.1"], check=True)
        raise AssertionError(f"Apache on node-{node}:{port} did not answer: "
                             + (root / "error.log").read_text(errors="replace")[-2000:])


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    tmp_path = Path(tempfile.mkdtemp(prefix="carp-sessions-"))
    tmp_path.chmod(0o755)  # Apache's children run as www-data: the whole path must be theirs to walk
    topo = Topology()
    try:
        topo.create(ADDRESSES)
        key = tmp_path / "session.key"
        key.write_text("the-shared-session-key\n")
        key.chmod(0o600)  # read by Apache's parent, root, at start
        apps = {n: App(tmp_path / n / "htdocs", tmp_path / n / "sessions", key) for n in "ab"}
        for app in apps.values():
            app.install()
        yield Nodes(topo, tmp_path, apps)
    finally:
        stop_processes(topo.procs)
        topo.destroy()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_php_file_session_is_valid_on_another_node_once_its_file_is_there(nodes: Nodes) -> None:
    for node in "ab":
        nodes.start_apache(node)
    alice = nodes.client()
    assert alice.login(A, "alice") == "logged in: alice"
    assert alice.whoami(A) == "alice 1"
    sid = alice.cookie("PHPSESSID")
    assert sid
    session = nodes.apps["a"].sessions / f"sess_{sid}"
    mode = session.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and session.owner() == "www-data"
    assert [p.name for p in nodes.apps["a"].sessions.iterdir()] == [session.name]
    cookie = ("-H", f"Cookie: PHPSESSID={sid}")  # the same cookie, sent to the other node
    # before the copy: node-b knows no such session; strict mode does not adopt the id, and the
    # page leaves no file behind
    assert nodes.client("b1").get(f"{B}{APP_URL}whoami.php", *cookie)[1] == "anonymous"
    assert list(nodes.apps["b"].sessions.iterdir()) == []
    # the replication's stand-in: the session directory copied as it is (owner, mode, mtime)
    subprocess.run(["cp", "-a", f"{nodes.apps['a'].sessions}/.", str(nodes.apps["b"].sessions)],
                   check=True)
    assert nodes.client("b2").get(f"{B}{APP_URL}whoami.php", *cookie)[1] == "alice 2"
    # a POST logs in too, and a bad name is refused
    bob = nodes.client("bob")
    assert bob.get(f"{A}{APP_URL}login.php", "--data", "user=bob")[1] == "logged in: bob"
    assert bob.get(f"{A}{APP_URL}login.php?user=a%20b")[0] == 400
    assert bob.whoami(A) == "bob 1" and alice.whoami(A) == "alice 2"


def test_a_cookie_session_is_read_by_every_node_with_the_key_and_no_other(nodes: Nodes) -> None:
    other_key = nodes.dir / "other.key"
    other_key.write_text("another-key\n")
    rotated = nodes.dir / "rotated.key"  # a new key first, the old one kept to read old cookies
    rotated.write_text("a-newer-key\nthe-shared-session-key\n")
    nodes.start_apache("a")
    nodes.start_apache("b")
    nodes.start_apache("b", port=8081, key_file=other_key)
    nodes.start_apache("b", port=8082, key_file=rotated)
    carol = nodes.client()
    assert carol.login(A, "carol", cookie=True) == "logged in: carol"
    value = carol.cookie("carp_session")
    assert value and "carol" not in value  # encrypted: the client cannot read nor forge it
    assert list(nodes.apps["a"].sessions.iterdir()) == []  # nothing on the server's disk
    cookie = ("-H", f"Cookie: carp_session={value}")
    url = f"{APP_URL}cookie/whoami.php"
    assert nodes.client("b").get(f"{B}{url}", *cookie)[1] == "carol 1"
    assert nodes.client("other").get(f"{B}:8081{url}", *cookie)[1] == "anonymous"
    assert nodes.client("rotated").get(f"{B}:8082{url}", *cookie)[1] == "carol 1"
    # SessionEnv's HTTP_SESSION cannot be planted by a request header "Session:"
    forged = nodes.client("forged").get(f"{A}{url}", "-H", "Session: user=mallory")
    assert forged[1] == "anonymous"


def test_the_replications_own_folder_is_never_served(nodes: Nodes) -> None:
    nodes.start_apache("a")
    conflicts = nodes.apps["a"].htdocs / ".carp-sync/conflicts/3"
    conflicts.mkdir(parents=True)
    (conflicts / "page.html").write_text("an older version\n")
    (conflicts / "page.html").chmod(0o644)
    for p in (nodes.apps["a"].htdocs / ".carp-sync", conflicts.parent, conflicts):
        p.chmod(0o755)
    shutil.copy(conflicts / "page.html", nodes.apps["a"].htdocs / "page.html")
    client = nodes.client()
    assert client.get(f"{A}{APP_URL}page.html") == (200, "an older version")
    for path in (".carp-sync/conflicts/3/page.html", ".carp-sync/", ".carp-sync/conflicts/"):
        assert client.get(f"{A}{APP_URL}{path}")[0] == 403, path


@pytest.mark.skipif(not sessions_step_enabled(),
                    reason="the lab's sessions step is off until the agent replicates "
                    "(sidecar.lab.sessions.SESSIONS_STEP, or CARP_LAB_SESSIONS=1)")
def test_the_lab_client_stays_logged_in_through_every_step(tmp_path: Path) -> None:
    """`carp-sidecar lab --short` with its sessions step: logged in through the VIP before the
    cable pull, the same cookie still logged in after each move, in the table and the picture."""
    picture = tmp_path / "lab.svg"
    r = subprocess.run([sys.executable, "-m", "sidecar.tools.cli", "lab", "--short",
                        "--timeline", str(picture)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"client: logged in as alice through the VIP; its session file was on "
                     r"both nodes [\d.]+ s later", r.stdout), r.stdout
    assert r.stdout.count("client: still logged in (alice ") == 3, r.stdout
    table = r.stdout.split("session kept", 1)[1]
    assert re.search(r"1\. unplug node-a's network cable +node-b +yes ", table), table
    assert "session LOST" not in picture.read_text() and "session kept" in picture.read_text()
