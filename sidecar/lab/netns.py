"""Throw-away network topologies in network namespaces, for the lab and the integration tests.

A "switch" namespace holds a bridge; every host namespace gets an ``eth0`` veth whose other end
is a port on that bridge. Nothing is created in the caller's namespace, every name carries a
random tag so parallel runs never collide, and :meth:`Topology.destroy` removes everything
(deleting a namespace deletes its veths and bridge with it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Host:
    name: str
    ns: str
    address: IPv4Interface
    port: str  # the bridge port (switch side) of this host's cable

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(*cmd), check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str], log: Path | None = None,
              env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        try:
            proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                self.argv(*cmd), stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, **kw)
            return proc
        finally:
            if log:
                out.close()  # type: ignore[union-attr]


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"carp{self.tag}-sw"

    def create(self, addresses: dict[str, str]) -> Topology:
        """``{"a": "172.16.0.11/16", ...}``: one namespace per host, all on one bridge."""
        try:
            sh("ip", "netns", "add", self.switch)
            sw = ["ip", "-n", self.switch]
            sh(*sw, "link", "add", "br0", "type", "bridge")
            sh(*sw, "link", "set", "br0", "up")
            sh(*sw, "link", "set", "lo", "up")
            for i, (name, addr) in enumerate(addresses.items()):
                ns, port = f"carp{self.tag}-{name}", f"p{i}"
                sh("ip", "netns", "add", ns)
                sh(*sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                sh(*sw, "link", "set", port, "master", "br0", "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                self.hosts[name] = Host(name, ns, IPv4Interface(addr), port)
        except BaseException:
            self.destroy()
            raise
        return self

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def unplug(self, name: str) -> None:
        """Pull the cable: the host's eth0 loses carrier, like ucarp's users do in the tutorial."""
        sh("ip", "-n", self.switch, "link", "set", self.hosts[name].port, "down")

    def plug(self, name: str) -> None:
        sh("ip", "-n", self.switch, "link", "set", self.hosts[name].port, "up")

    def add_second_network(self, addresses: dict[str, str]) -> None:
        """An ``eth1`` on each named host, all on a second bridge ``br1`` (another broadcast
        domain, as a second NIC on another VLAN would be). Deleted with the namespaces."""
        sw = ["ip", "-n", self.switch]
        sh(*sw, "link", "add", "br1", "type", "bridge")
        sh(*sw, "link", "set", "br1", "up")
        for name, addr in addresses.items():
            host, port = self.hosts[name], f"q{list(self.hosts).index(name)}"
            sh(*sw, "link", "add", port, "type", "veth", "peer", "name", "eth1", "netns", host.ns)
            sh(*sw, "link", "set", port, "master", "br1", "up")
            sh("ip", "-n", host.ns, "addr", "add", addr, "dev", "eth1")
            sh("ip", "-n", host.ns, "link", "set", "eth1", "up")

    def remove_interface(self, name: str) -> None:
        """Delete the host's eth0 (and its switch port): a container restart, a re-plumbed veth."""
        sh("ip", "-n", self.switch, "link", "del", self.hosts[name].port)

    def recreate_interface(self, name: str, address: bool = True) -> None:
        """A new eth0 (new ifindex, new MAC) plugged into the switch, with the same address
        unless ``address`` is false (DHCP or a slow network manager adds it later)."""
        host = self.hosts[name]
        sw = ["ip", "-n", self.switch]
        sh(*sw, "link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        sh(*sw, "link", "set", host.port, "master", "br0", "up")
        if address:
            self.add_address(name)
        sh("ip", "-n", host.ns, "link", "set", "eth0", "up")

    def add_address(self, name: str) -> None:
        host = self.hosts[name]
        sh("ip", "-n", host.ns, "addr", "add", str(host.address), "dev", "eth0")

    def block_carp(self, name: str, blocked: bool = True) -> None:
        """Drop IP protocol 112 to and from the host at the switch; everything else passes (a
        partition of the CARP group only, so Prometheus still scrapes both sides)."""
        port = self.hosts[name].port
        if blocked:
            rules = (f"table bridge carpblock_{port} {{\n chain forward {{\n"
                     "  type filter hook forward priority 0;\n"
                     f'  iifname "{port}" ip protocol 112 drop\n'
                     f'  oifname "{port}" ip protocol 112 drop\n }}\n}}\n')
            subprocess.run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"], input=rules,
                           text=True, check=True, capture_output=True, timeout=30)
        else:
            sh("ip", "netns", "exec", self.switch, "nft", "delete", "table", "bridge",
               f"carpblock_{port}")

    def drop_multicast(self) -> None:
        """The switch drops every IPv4 multicast frame, as many clouds and vSwitches do."""
        rules = ("table bridge nomcast {\n chain forward {\n"
                 "  type filter hook forward priority 0;\n"
                 "  ip daddr 224.0.0.0/4 drop\n }\n}\n")
        subprocess.run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True, timeout=30)

    def start(self, name: str, cmd: Sequence[str], log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = self.hosts[name].popen(cmd, log=log, env=env)
        self.procs.append(proc)
        return proc

    def destroy(self) -> None:
        stop_processes(self.procs, timeout=3)
        for ns in [f"carp{self.tag}-{n}" for n in self.hosts] + [self.switch]:
            _kill_namespace_processes(ns)
            sh("ip", "netns", "del", ns, check=False)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 3,
                   sig: int = signal.SIGTERM) -> None:
    """``sig`` to every process group at once, then one deadline for all, then SIGKILL. One
    after the other, the 510 ucarp processes of bench_together took ~3 s each to go (most
    ran into the timeout): ~25 minutes of teardown."""
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5, sig: int = signal.SIGTERM) -> int | None:
    stop_processes([proc], timeout, sig)
    return proc.returncode


def _kill_namespace_processes(ns: str) -> None:
    result = sh("ip", "netns", "pids", ns, check=False)
    for pid in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 3
    while sh("ip", "netns", "pids", ns, check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.05)


def require_root_and_tools(tools: Sequence[str]) -> str | None:
    """None when we can build namespaces and run ``tools``; else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        return f"missing programs: {', '.join(missing)} (make demo installs them)"
    return None
