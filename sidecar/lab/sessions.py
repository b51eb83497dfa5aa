"""Logged-in clients across a failover: deploy/example's PHP pages and Apache configuration
(file sessions in a replicated path; mod_session_crypto cookie sessions) served by the lab's and
the tests' Apache, and a client that logs in and asks who it is, with a cookie jar.

The pages and the configuration are read from the checkout's deploy/example (the files an
operator installs), never copied here, so what the tests prove is what deploy/ ships. An
installed wheel has no deploy/: the lab then runs without its sessions step.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.lab.netns import Host

if TYPE_CHECKING:
    from sidecar.lab.scenario import Lab

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "example"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
APP_URL = "/app/"  # where a node's Apache serves the example (its replicated document root)
WWW_DATA = "www-data"
# The lab's sessions step needs the replicated paths of issue 32 in the agent (CARP_SYNC_PATHS):
# the lead turns it on when that lands (True here), or CARP_LAB_SESSIONS=1 / 0 for one run.
SESSIONS_STEP = True
LAB_USER = "alice"


def php_module() -> Path | None:
    """Debian's mod_php (libapache2-mod-php), if installed."""
    found = sorted(APACHE_MODULES.glob("libphp*.so"))
    return found[-1] if found else None


def sessions_step_enabled() -> bool:
    """The lab's sessions step: switched on, PHP installed, deploy/example at hand."""
    wanted = os.environ.get("CARP_LAB_SESSIONS", "1" if SESSIONS_STEP else "0") == "1"
    return wanted and php_module() is not None and (EXAMPLE / "htdocs").is_dir()


@dataclass
class App:
    """One node's copy of the example: ``htdocs`` (the pages; a replicated path in the lab),
    ``sessions`` (PHP's session.save_path; replicated), ``key_file`` (mod_session_crypto's
    passphrases, one a line; None: no cookie sessions)."""

    htdocs: Path
    sessions: Path
    key_file: Path | None = None

    def install(self) -> None:
        """The pages with their mtimes (copy2: every node's copy is the same to rsync's quick
        check, as code deployed on each node is), the session store owned by Apache's user."""
        shutil.copytree(EXAMPLE / "htdocs", self.htdocs, copy_function=shutil.copy2,
                        dirs_exist_ok=True)
        for path in [self.htdocs, *self.htdocs.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.sessions.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.sessions, WWW_DATA, WWW_DATA)
        self.sessions.chmod(0o700)  # session ids are credentials: nobody else lists them

    def apache_config(self) -> str:
        """Lines for a node's httpd.conf (after its MPM, prefork: mod_php is not thread-safe)."""
        php = php_module()
        if php is None:
            raise RuntimeError("libapache2-mod-php is not installed (make demo installs it)")
        lines = [
            f"LoadModule php_module {php}",
            f"LoadModule alias_module {APACHE_MODULES}/mod_alias.so",
            f"Define CARP_SESSIONS_DIR {self.sessions}",
            '<FilesMatch "\\.php$">\n  SetHandler application/x-httpd-php\n</FilesMatch>',
            f"Alias {APP_URL} {self.htdocs}/",
            f"<Directory {self.htdocs}>\n  Require all granted\n  DirectoryIndex whoami.php\n"
            "</Directory>",
            f"Include {EXAMPLE / 'apache/carp-sessions.conf'}",
        ]
        if self.key_file is not None:
            lines += [f"Define CARP_SESSION_KEY_FILE {self.key_file}",
                      f"Define CARP_COOKIE_URL {APP_URL}cookie/",
                      f"Include {EXAMPLE / 'apache/carp-cookie-sessions.conf'}"]
        return "\n".join(lines) + "\n"


class SessionClient:
    """A client with a cookie jar, run in ``host``'s namespace (curl), so the cookie goes back to
    the address it came from: the VIP in the lab, whichever node holds it."""

    def __init__(self, host: Host, jar: Path) -> None:
        self.host, self.jar = host, jar

    def get(self, url: str, *extra: str) -> tuple[int, str]:
        """(HTTP status, body); status 0 when nothing answered."""
        r = self.host.run("curl", "-s", "-m", "3", "-b", str(self.jar), "-c", str(self.jar),
                          "-w", "\n%{http_code}", *extra, url, check=False, timeout=10)
        body, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body.strip()

    def login(self, base: str, user: str, cookie: bool = False) -> str:
        return self.get(f"{base}{APP_URL}{'cookie/' if cookie else ''}login.php?user={user}")[1]

    def whoami(self, base: str, cookie: bool = False) -> str:
        """"USER COUNT", "anonymous", or "" when nothing answered."""
        return self.get(f"{base}{APP_URL}{'cookie/' if cookie else ''}whoami.php")[1]

    def cookie(self, name: str) -> str | None:
        """The value of cookie ``name`` in the jar (Netscape format: 7 tab-separated fields)."""
        if not self.jar.exists():
            return None
        for line in self.jar.read_text().splitlines():
            fields = line.removeprefix("#HttpOnly_").split("\t")
            if len(fields) == 7 and fields[5] == name:
                return fields[6]
        return None


def lab_app(lab_dir: Path, node: str) -> App:
    """A lab node's replicated paths: <labdir>/<node>/htdocs and <labdir>/<node>/sessions."""
    return App(lab_dir / node / "htdocs", lab_dir / node / "sessions")


def sync_env(lab_dir: Path, node: str) -> dict[str, str]:
    """What a lab agent replicates (issue 32's settings); the secret is <labdir>/sync.secret."""
    app = lab_app(lab_dir, node)
    return {"CARP_SYNC_PATHS": f"docs={app.htdocs},sessions={app.sessions}",
            "CARP_SYNC_SECRET_FILE": str(lab_dir / "sync.secret")}


def prepare_lab(lab_dir: Path, nodes: tuple[str, ...] = ("a", "b")) -> None:
    """The sync secret (0600, lab-only) and each node's copy of the example pages."""
    fd = os.open(lab_dir / "sync.secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("lab-only-sync-secret\n")
    for node in nodes:
        (lab_dir / node).mkdir(mode=0o755, exist_ok=True)
        lab_app(lab_dir, node).install()


class LabSession:
    """The lab's logged-in client: it logs in through the VIP before the cable pull, then asks
    through the VIP who it is after each step (the same cookie, whichever node answers)."""

    def __init__(self, lab: Lab, vip: str) -> None:
        self.lab, self.base = lab, f"http://{vip}"
        self.client = SessionClient(lab.topo["client"], lab.dir / "client.cookies")

    def log_in(self, timeout: float = 15) -> str:
        """Log in, then wait (up to ``timeout`` s) for the session file to be the same on every
        node: the replication caught up. A line for the timeline."""
        answer = self.client.login(self.base, LAB_USER)
        sid = self.client.cookie("PHPSESSID")
        if answer != f"logged in: {LAB_USER}" or sid is None:
            raise TimeoutError(f"the client could not log in through the VIP ({answer!r})")
        self.whoami()  # a write after the login: the session is being used
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.replicated(sid):
                return (f"client: logged in as {LAB_USER} through the VIP; its session file was on "
                        f"both nodes {time.monotonic() - began:.1f} s later")
            time.sleep(0.05)
        return f"client: logged in as {LAB_USER}; its session file did not reach every node"

    def replicated(self, sid: str) -> bool:
        copies = set()
        for node in ("a", "b"):
            try:
                copies.add((lab_app(self.lab.dir, node).sessions / f"sess_{sid}").read_bytes())
            except OSError:
                return False
        return len(copies) == 1

    def whoami(self) -> str:
        return self.client.whoami(self.base)
