"""The one-machine failover lab (`carp-sidecar lab`, `make demo`): the classic ucarp + Apache
tutorial replayed in network namespaces, with a live timeline of what the client sees.

node-a (preferred, preempt) and node-b each run a real Apache whose page names the node and a
carp-sidecar; a client polls http://VIP/ every 10 ms. Each step says what it does, waits for
the expected outcome, and reports the client-visible downtime it measured.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.lab import blackbox
from sidecar.lab.netns import Topology, require_root_and_tools, stop_process
from sidecar.lab.picture import Recording, downtime_text, draw, missed_a_poll
from sidecar.lab.sessions import (
    LAB_USER,
    App,
    LabSession,
    lab_app,
    prepare_lab,
    sessions_step_enabled,
    sync_env,
)

VIP = "172.16.0.1"
ADDRESSES = {"a": "172.16.0.11/16", "b": "172.16.0.12/16", "client": "172.16.0.100/16"}
APACHE = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
LAB_PASSWORD = "lab-only"


def apache_config(root: Path, node: str, port: int = 80, app: App | None = None) -> Path:
    """A minimal Apache serving one page that names ``node`` (not the system service); with
    ``app``, also deploy/example's session pages under /app/ (mod_php: the prefork MPM)."""
    www = root / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text(f"{node}\n")
    conf = root / "httpd.conf"
    mpm = "mpm_prefork" if app else "mpm_event"
    conf.write_text(f"""ServerRoot "{root}"
ServerName {node}
Listen {port}
PidFile {root}/httpd.pid
DefaultRuntimeDir {root}
ErrorLog {root}/error.log
LoadModule {mpm}_module {APACHE_MODULES}/mod_{mpm}.so
LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so
LoadModule dir_module {APACHE_MODULES}/mod_dir.so
User www-data
Group www-data
DocumentRoot {www}
DirectoryIndex index.html
<Directory {www}>
  Require all granted
</Directory>
""" + (app.apache_config() if app else ""))
    for p in (root, www, www / "index.html", conf):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return conf


def agent_env(lab_dir: Path, node: str, srcip: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARP_", "UCARP_"))}
    env.update({
        "CARP_INTERFACE": "eth0", "CARP_SRCIP": srcip, "CARP_VHID": "1",
        "CARP_PASS": LAB_PASSWORD, "CARP_ADDR": f"{VIP}/16", "CARP_IF_ALIAS": "eth0:0",
        "CARP_CONTROL_SOCKET": str(lab_dir / f"{node}.sock"),
        "CARP_STATE_DIR": str(lab_dir / f"{node}-state"),  # never the host's own
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


class ClientView:
    """What the polling client saw (sidecar.lab.probe's lines), for this lab and the routed one."""

    probe_lines: list[dict[str, Any]]

    def client_sees(self) -> str | None:
        return self.probe_lines[-1]["body"] if self.probe_lines else None

    def downtime_ms(self, since: float, body: str) -> float | None:
        """Client-visible gap before the first answer from ``body`` after ``since``."""
        for line in self.probe_lines:
            if line["t"] >= since and line["ok"] and line["body"] == body:
                return float(line["gap_ms"])
        return None

    def missed_a_poll(self, since: float, body: str) -> bool | None:
        """Whether the client went without an answer before its first from ``body`` after
        ``since`` (False: the VIP moved between two of its polls)."""
        answers = [(line["t"], line["body"] if line["ok"] else None) for line in self.probe_lines]
        return missed_a_poll(answers, since, body)

    @staticmethod
    def wait(cond: Callable[[], object], timeout: float, what: str) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if cond():
                return time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Lab(ClientView):
    """Nodes a and b with Apache and carp-sidecar, and a polling client, on one bridge."""

    topo: Topology = field(default_factory=Topology)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="carp-lab-")))
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    apaches: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    probe_lines: list[dict[str, Any]] = field(default_factory=list)
    on_probe: Callable[[dict[str, Any]], None] | None = None
    exited: dict[str, float] = field(default_factory=dict)  # node -> when its agent stopped
    sessions: bool = False  # the example's pages and sessions, replicated by the agents

    def __enter__(self) -> Lab:
        os.chmod(self.dir, 0o755)
        self.topo.create(ADDRESSES)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.topo.destroy()
        if exc_type is not None:
            for log in sorted(self.dir.glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_apache(self, node: str) -> None:
        conf = apache_config(self.dir / f"apache-{node}", f"node-{node}",
                             app=lab_app(self.dir, node) if self.sessions else None)
        self.apaches[node] = self.topo.start(node, [APACHE, "-f", str(conf), "-DFOREGROUND"])
        self.wait(lambda: self.get(node, "http://127.0.0.1/") == f"node-{node}", 10,
                  f"Apache on node-{node}")

    def kill_apache(self, node: str) -> None:
        stop_process(self.apaches.pop(node), sig=signal.SIGKILL)

    def start_agent(self, node: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """carp-sidecar [args] run in the node, with the lab's CARP_* plus ``extra``."""
        srcip = ADDRESSES[node].split("/")[0]
        cmd = [sys.executable, "-m", "sidecar.tools.cli", *args, "run"]
        sync = sync_env(self.dir, node) if self.sessions else {}  # its replicated paths
        env = agent_env(self.dir, node, srcip, **{**sync, **extra})
        env = {k: v for k, v in env.items() if v != ""}  # "" unsets a lab default
        proc = self.topo.start(node, cmd, log=self.dir / f"{node}.log", env=env)
        self.agents[node] = proc
        self.exited.pop(node, None)
        return proc

    def stop_agent(self, node: str, sig: int = signal.SIGTERM) -> int | None:
        code = stop_process(self.agents.pop(node), sig=sig)
        self.exited[node] = time.time()
        return code

    def start_probe(self, timeout: float = 0.1) -> None:
        """The client's view; ``timeout`` bounds each request, so it is also the resolution
        of a measured downtime (a request sent just before the move waits it out)."""
        cmd = [sys.executable, "-m", "sidecar.lab.probe", f"http://{VIP}/", "--timeout",
               str(timeout)]
        proc = subprocess.Popen(self.topo["client"].argv(*cmd), stdout=subprocess.PIPE,
                                start_new_session=True)
        self.topo.procs.append(proc)
        threading.Thread(target=self._read_probe, args=(proc,), daemon=True).start()

    def _read_probe(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = json.loads(raw)
            self.probe_lines.append(line)
            if self.on_probe:
                self.on_probe(line)

    # ---- observations ----
    def get(self, node: str, url: str) -> str | None:
        r = self.topo[node].run("curl", "-s", "-m", "1", url, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    def status(self, node: str) -> dict[str, Any] | None:
        text = self.get(node, "http://127.0.0.1:9655/status")
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return None

    def state(self, node: str) -> str | None:
        st = self.status(node)
        return st["state"] if st else None

    def has_vip(self, node: str) -> bool:
        out = self.topo[node].run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return f" {VIP}/" in out



class Timeline:
    """The lab's running commentary. Each line is stamped with when it happened (an agent's own
    transition time, the client's answer time), which can be some 0.3 s before the lab learns
    of it: lines are held back ``LAG`` s and printed in time order."""

    LAG = 0.5

    def __init__(self) -> None:
        self.t0 = time.time()
        self._lock = threading.Lock()
        self._held: list[tuple[float, int, str]] = []
        self.recording = Recording(self.t0)  # for --timeline

    def say(self, text: str, t: float | None = None) -> None:
        with self._lock:
            heapq.heappush(self._held, (t or time.time(), len(self._held), text))

    def release(self, lag: float = 0.0) -> None:
        """Print the lines stamped more than ``lag`` s ago (0: all of them)."""
        with self._lock:
            while self._held and self._held[0][0] <= time.time() - lag:
                t, _, text = heapq.heappop(self._held)
                print(f"  +{t - self.t0:7.2f}s  {text}", flush=True)


@dataclass
class Step:
    title: str
    expect: str  # the node the client must end up seeing
    act: Callable[[], None]
    downtime_ms: float | None = None
    ok: bool = False
    missed: bool | None = None  # did the client miss a poll (False: the VIP moved between two)
    session: str | None = None  # the logged-in client's whoami after the step (None: no check)


def _watch_states(lab: Lab, timeline: Timeline, stop: threading.Event) -> None:
    """Each node's state, stamped with the agent's own transition time (its /status
    ``last_transition.at``), not when it was polled: the poll comes up to ~0.3 s later, and the
    client's answers would seem to reach a node before it became MASTER."""
    seen: dict[str, tuple[str, str, float | None] | None] = {}
    while not stop.is_set():
        for node in ("a", "b"):
            polled = time.time()
            if node in lab.agents:
                st = lab.status(node)
                last = (st or {}).get("last_transition") or {}
                key = (st["state"], last.get("reason", ""), last.get("at")) if st else None
                at = key[2] if key and key[2] is not None else polled
            elif node in lab.exited:  # stopped by the lab: gone since it exited
                key, at = None, lab.exited[node]
            else:  # never started, or being stopped
                continue
            if key != seen.get(node):
                seen[node] = key
                timeline.recording.states.append((at, node, key[0] if key else "none"))
                timeline.say(f"node-{node}: {key[0]:<6} ({key[1]})" if key
                             else f"node-{node}: agent not running", at)
        timeline.release(timeline.LAG)
        stop.wait(0.1)


def _steps(lab: Lab, short: bool) -> list[Step]:
    def restart_apache_a() -> None:
        lab.start_apache("a")

    def stop_agent_a() -> None:
        lab.stop_agent("a")

    steps = [
        Step("unplug node-a's network cable", "node-b", lambda: lab.topo.unplug("a")),
        Step("plug node-a back in (preempt: it takes the VIP back)", "node-a",
             lambda: lab.topo.plug("a")),
    ]
    if not short:
        steps += [
            Step("kill Apache on node-a (health check fails: it hands over)", "node-b",
                 lambda: lab.kill_apache("a")),
            Step("start Apache on node-a again (healthy: it preempts back)", "node-a",
                 restart_apache_a),
        ]
    steps.append(Step("stop node-a's agent (SIGTERM: immediate handover)", "node-b",
                      stop_agent_a))
    return steps


def run_lab(short: bool = False, keep: bool = False, picture: Path | None = None) -> int:
    """``picture``: also draw the run there (PNG or SVG, by its extension)."""
    why = require_root_and_tools([APACHE, "curl", "ip"])
    if why:
        print(f"carp-sidecar lab: {why}", file=sys.stderr)
        return 2
    timeline = Timeline()
    print("carp-sidecar lab: the classic ucarp + Apache failover, in network namespaces")
    stop = threading.Event()
    steps: list[Step] = []
    try:
        with Lab(sessions=sessions_step_enabled()) as lab:
            _set_up(lab, timeline, stop)
            client = LabSession(lab, VIP) if lab.sessions else None
            if client:
                timeline.say(client.log_in())
            steps = _steps(lab, short)
            for number, step in enumerate(steps, 1):
                _run_step(lab, timeline, number, step, client)
            time.sleep(1)
            lab.on_probe = None
            timeline.release()
            _summary(steps)
            if picture is not None:
                draw(picture, timeline.recording, time.time())
                print(f"carp-sidecar lab: timeline drawn in {picture}", flush=True)
            if keep:
                lab.start_agent("a", CARP_PREEMPT="true", **HEALTH)
                timeline.say("node-a's agent started again (it will preempt back)")
                print("lab left running; press Ctrl-C to tear it down "
                      f"(logs in {lab.dir})", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
            stop.set()
    except TimeoutError as e:
        stop.set()
        timeline.release()
        print(f"carp-sidecar lab: FAILED: {e}", file=sys.stderr)
        _summary(steps)
        return 1
    except KeyboardInterrupt:
        stop.set()
        timeline.release()
        print("carp-sidecar lab: interrupted; everything removed", file=sys.stderr)
        return 130
    lost = [str(n) for n, s in enumerate(steps, 1) if s.session is not None and not _kept(s)]
    if lost:
        print(f"carp-sidecar lab: FAILED: the client's session was lost at step {', '.join(lost)}",
              file=sys.stderr)
        return 1
    print("carp-sidecar lab: all steps passed; namespaces, processes and VIPs removed")
    return 0


HEALTH = {"CARP_HEALTH_URL": "http://127.0.0.1/", "CARP_HEALTH_INTERVAL": "0.5"}


def _set_up(lab: Lab, timeline: Timeline, stop: threading.Event) -> None:
    """Apache and carp-sidecar on both nodes, the client polling, node-a MASTER."""
    def heard(line: dict[str, Any]) -> None:
        timeline.recording.answers.append((line["t"], line["body"] if line["ok"] else None))
        timeline.say(f"client: {'answer from ' + line['body'] if line['ok'] else 'no answer'}"
                     + (f" (after {line['gap_ms']:.0f} ms without an answer)"
                        if line["ok"] and line["gap_ms"] > 50 else ""), line["t"])

    lab.on_probe = heard
    if lab.sessions:
        prepare_lab(lab.dir)
    timeline.say(f"namespaces up (tag {lab.topo.tag}): node-a 172.16.0.11, node-b "
                 f"172.16.0.12, client 172.16.0.100, VIP {VIP}")
    for node in ("a", "b"):
        lab.start_apache(node)
    lab.start_agent("a", CARP_PREEMPT="true", **HEALTH)
    lab.start_agent("b", CARP_ADVSKEW="100", **HEALTH)
    timeline.say("Apache and carp-sidecar running on both nodes (node-a: advskew 0 + "
                 "preempt, node-b: advskew 100)")
    for node, ip in (("a", "172.16.0.11"), ("b", "172.16.0.12")):
        timeline.say(f"metrics of node-{node}: ip netns exec {lab.topo['client'].ns} "
                     f"curl http://{ip}:9655/metrics")
    if blackbox.available():  # the client's view as Prometheus users probe it
        blackbox.start_blackbox(lab.topo, lab.dir)
        timeline.say(f"blackbox exporter in the client: ip netns exec {lab.topo['client'].ns} "
                     f"curl '{blackbox.probe_url(VIP)}'")
    threading.Thread(target=_watch_states, args=(lab, timeline, stop), daemon=True).start()
    lab.start_probe()
    lab.wait(lambda: lab.client_sees() == "node-a", 15, "the client to reach node-a")
    timeline.say("step 0: node-a is MASTER and serves the VIP")


def _run_step(lab: Lab, timeline: Timeline, number: int, step: Step,
              client: LabSession | None = None) -> None:
    time.sleep(1.5)
    timeline.say(f"step {number}: {step.title}")
    began = time.time()
    step.act()
    lab.wait(lambda: lab.client_sees() == step.expect, 20, f"the client to see {step.expect}")
    step.downtime_ms = lab.downtime_ms(began, step.expect)
    step.missed = lab.missed_a_poll(began, step.expect)
    step.ok = True
    timeline.recording.steps.append((began, time.time(), f"{number}. {step.title}",
                                     step.downtime_ms))
    holders = [n for n in ("a", "b") if lab.has_vip(n)]
    timeline.say(f"step {number} done: client sees {step.expect}; VIP on "
                 f"{', '.join('node-' + h for h in holders) or 'nobody'}; "
                 f"client-visible downtime{':' if step.missed is False else ''} {_downtime(step)}")
    if client:
        step.session = client.whoami()
        timeline.recording.sessions[number] = _kept(step)
        timeline.say(f"client: still logged in ({step.session})" if _kept(step)
                     else f"client: session lost (the VIP answered {step.session or 'nothing'!r})")


def _kept(step: Step) -> bool:
    return (step.session or "").split(" ")[0] == LAB_USER


def _downtime(step: Step) -> str:
    return downtime_text(step.downtime_ms, step.missed).removesuffix(" without an answer")


def _summary(steps: list[Step]) -> None:
    if not steps:
        return
    checked = any(s.session is not None for s in steps)
    print(f"\n  {'step':<61}  {'client sees':<11}  {'session kept  ' if checked else ''}"
          "client-visible downtime")
    for i, s in enumerate(steps, 1):
        down = _downtime(s)
        kept = "-" if s.session is None else "yes" if _kept(s) else "NO"
        print(f"  {i}. {s.title[:58]:<58}  {s.expect if s.ok else 'FAILED':<11}  "
              f"{f'{kept:<12}  ' if checked else ''}{down.rjust(7) if down[0].isdigit() else down}")
    print(flush=True)
