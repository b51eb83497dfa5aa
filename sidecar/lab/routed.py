"""The routed lab: CARP elects across two subnets, BGP carries the VIP (docs/networks.md "Routed networks").

::

    client 10.3.0.2 ── 10.3.0.1 [router: BIRD, AS 65000] 10.1.0.1 ── 10.1.0.2 node-a (AS 65001)
                                                          10.2.0.1 ── 10.2.0.2 node-b (AS 65002)

Each node runs Apache, a routing daemon (BIRD or FRR, with the configurations shipped in
deploy/bird and deploy/frr, used as they are) and carp-sidecar with ``CARP_VIP_INTERFACE=lo``
and unicast peers (the nodes share no link). The MASTER holds 10.9.0.1/32 on lo, its daemon
announces it, the router installs it: the client reaches whichever node is MASTER. Every
namespace carries a random tag and :meth:`RoutedLab.close` removes them all.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from sidecar.lab.netns import _kill_namespace_processes, sh, stop_process
from sidecar.lab.scenario import APACHE, LAB_PASSWORD, ClientView, agent_env, apache_config

ROUTED_VIP = "10.9.0.1"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FRR = Path("/usr/lib/frr")
NODES = {"a": ("10.1.0.2", "10.1.0.1"), "b": ("10.2.0.2", "10.2.0.1")}  # own, the router's
CLIENT = ("10.3.0.2", "10.3.0.1")
Daemon = Literal["bird", "frr"]


class RoutedLab(ClientView):
    def __init__(self, daemon: Daemon = "bird") -> None:
        if not (DEPLOY / "bird" / "bird.conf").is_file():
            raise FileNotFoundError(f"{DEPLOY}: the routed lab runs from a checkout (deploy/)")
        self.daemon = daemon
        self.tag = secrets.token_hex(3)
        self.dir = Path(tempfile.mkdtemp(prefix="carp-routed-"))
        self.dir.chmod(0o755)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.probe_lines: list[dict[str, Any]] = []

    # ---- the topology ----
    def ns(self, name: str) -> str:
        return f"carp{self.tag}-{name}"

    def argv(self, name: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name), *cmd]

    def run(self, name: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(name, *cmd), check=check)

    def __enter__(self) -> RoutedLab:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:  # the logs first (close removes them), but the namespaces go whatever happens
            if exc_type is not None:
                for log in sorted(self.dir.glob("*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-12:]
                    print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=sys.stderr)
        finally:
            self.close()

    def _create(self) -> None:
        for name in ("r", "a", "b", "c"):
            sh("ip", "netns", "add", self.ns(name))
            sh("ip", "-n", self.ns(name), "link", "set", "lo", "up")
        for name, (own, router) in [*NODES.items(), ("c", CLIENT)]:
            sh("ip", "link", "add", f"n{self.tag}{name}", "netns", self.ns(name), "type", "veth",
               "peer", "name", f"to-{name}", "netns", self.ns("r"))
            sh("ip", "-n", self.ns(name), "link", "set", f"n{self.tag}{name}", "name", "eth0")
            sh("ip", "-n", self.ns(name), "addr", "add", f"{own}/24", "dev", "eth0")
            sh("ip", "-n", self.ns(name), "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns(name), "route", "add", "default", "via", router)
            sh("ip", "-n", self.ns("r"), "addr", "add", f"{router}/24", "dev", f"to-{name}")
            sh("ip", "-n", self.ns("r"), "link", "set", f"to-{name}", "up")
        self.run("r", "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)

    def close(self) -> None:
        for proc in self.procs.values():
            stop_process(proc, timeout=3)
        for name in ("r", "a", "b", "c"):
            _kill_namespace_processes(self.ns(name))
            sh("ip", "netns", "del", self.ns(name), check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self, key: str, name: str, cmd: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{key}.log", "ab") as log:
            proc = subprocess.Popen(self.argv(name, *cmd), stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd, start_new_session=True)
        self.procs[key] = proc
        return proc

    def stop(self, key: str, sig: int = signal.SIGTERM) -> None:
        stop_process(self.procs.pop(key), sig=sig)

    def uplink(self, node: str, up: bool) -> None:
        """Pull the node's cable (the router's port goes down, the node's eth0 loses carrier
        and keeps its routes, as with a real cable) or plug it back."""
        sh("ip", "-n", self.ns("r"), "link", "set", f"to-{node}", "up" if up else "down")

    # ---- the daemons ----
    def start_router(self) -> None:
        self._bird("r", DEPLOY / "bird" / "upstream.conf")

    def _bird(self, name: str, conf: Path) -> None:
        self._start(f"bird-{name}", name, ["bird", "-f", "-c", str(conf), "-s",
                                            str(self.dir / f"bird-{name}.ctl")])

    def start_routing(self, node: str) -> None:
        """The node's routing daemon with the shipped configuration for it, as is."""
        if self.daemon == "bird":
            here = self.dir / f"bird-{node}"
            here.mkdir(exist_ok=True)
            shutil.copy(DEPLOY / "bird" / "bird.conf", here / "bird.conf")
            shutil.copy(DEPLOY / "bird" / f"site-{node}.conf", here / "site.conf")
            self._bird(node, here / "bird.conf")
            return
        run = self.dir / f"frr-{node}"
        shutil.rmtree(run, ignore_errors=True)  # a restart: no sockets of the last run
        run.mkdir()
        shutil.chown(run, "frr", "frr")
        common = ["-u", "frr", "-g", "frr", "--vty_socket", str(run), "-z", str(run / "zserv"),
                  "-P", "0", "-f", "/dev/null"]
        self._start(f"zebra-{node}", node, [str(FRR / "zebra"), *common, "-i",
                                            str(run / "zebra.pid")])
        self.wait(lambda: (run / "zserv").exists() and (run / "zebra.vty").exists(), 10,
                  f"zebra on node-{node}")
        self._start(f"bgpd-{node}", node, [str(FRR / "bgpd"), *common, "-i",
                                           str(run / "bgpd.pid")])
        self.wait(lambda: (run / "bgpd.vty").exists(), 10, f"bgpd on node-{node}")
        # what `vtysh -b` does at boot with /etc/frr/frr.conf: the file's commands, applied
        self.run(node, "vtysh", "--vty_socket", str(run), "-f",
                 str(DEPLOY / "frr" / f"frr-{node}.conf"), check=True)

    def stop_routing(self, node: str) -> None:
        for key in (f"bird-{node}", f"bgpd-{node}", f"zebra-{node}"):
            if key in self.procs:
                self.stop(key)

    def health_cmd(self, node: str) -> str:
        """CARP_HEALTH_CMD: the shipped check-bgp.sh, on this lab's socket."""
        if self.daemon == "bird":
            return (f"{DEPLOY / 'bird' / 'check-bgp.sh'} upstream "
                    f"{self.dir / f'bird-{node}.ctl'}")
        return f"{DEPLOY / 'frr' / 'check-bgp.sh'} {NODES[node][1]} {self.dir / f'frr-{node}'}"

    def established(self, node: str) -> bool:
        return self.run(node, *self.health_cmd(node).split()).returncode == 0

    def start_apache(self, node: str) -> None:
        conf = apache_config(self.dir / f"apache-{node}", f"node-{node}")
        self._start(f"apache-{node}", node, [APACHE, "-f", str(conf), "-DFOREGROUND"])

    def start_agent(self, node: str, **extra: str) -> subprocess.Popen[bytes]:
        own = NODES[node][0]
        peer = next(addr for n, (addr, _) in NODES.items() if n != node)
        env = agent_env(self.dir, node, own, CARP_ADDR=f"{ROUTED_VIP}/32",
                        CARP_VIP_INTERFACE="lo", CARP_PEERS=peer,
                        CARP_HEALTH_CMD=self.health_cmd(node), CARP_HEALTH_INTERVAL="0.5",
                        CARP_PASS=LAB_PASSWORD, **extra)
        env.pop("CARP_IF_ALIAS")
        return self._start(f"agent-{node}", node, [sys.executable, "-m", "sidecar.tools.cli",
                                                   "run"], env=env)

    def start_all(self, **agents: dict[str, str]) -> None:
        """Router, daemons, Apache and agents (``agents``: node -> extra CARP_* settings)."""
        self.start_router()
        for node in NODES:
            self.start_routing(node)
            self.start_apache(node)
        for node in NODES:
            self.start_agent(node, **agents.get(node, {}))
        self.start_probe()

    # ---- what the client and the nodes see ----
    def start_probe(self, timeout: float = 0.1) -> None:
        proc = subprocess.Popen(self.argv("c", sys.executable, "-m", "sidecar.lab.probe",
                                          f"http://{ROUTED_VIP}/", "--timeout", str(timeout)),
                                stdout=subprocess.PIPE, start_new_session=True)
        self.procs["probe"] = proc
        threading.Thread(target=self._read_probe, args=(proc,), daemon=True).start()

    def _read_probe(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.probe_lines.append(json.loads(raw))

    def has_vip(self, node: str) -> bool:
        return f" {ROUTED_VIP}/32" in self.run(node, "ip", "-4", "-o", "addr", "show", "dev",
                                               "lo").stdout

    def router_via(self) -> str | None:
        """The node the router forwards the VIP to (None: no route)."""
        out = self.run("r", "ip", "-4", "route", "show", f"{ROUTED_VIP}/32").stdout
        for node, (own, _) in NODES.items():
            if f"via {own} " in out:
                return node
        return None

    def status(self, node: str) -> dict[str, Any]:
        out = self.run(node, "curl", "-s", "-m", "1", "http://127.0.0.1:9655/status").stdout
        try:
            return dict(json.loads(out)) if out else {}
        except json.JSONDecodeError:
            return {}

    def log(self, key: str) -> str:
        return (self.dir / f"{key}.log").read_text(errors="replace")
