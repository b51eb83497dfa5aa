"""bench_vrrp's IPv6 lab: sidecar.lab's Lab (fresh namespaces, Apache on node-a and node-b, a
polling client) with DAD off inside its namespaces and the client on 2001:db8::/64 polling
http://[VIP6]/ (as tests/integration/test_vrrp6_interop.py sets it up). Apache's Listen 80
answers on IPv6 too; the advert sources are the nodes' link-local addresses (no CARP_SRCIP).
"""

from __future__ import annotations

import subprocess
import sys
import threading

from sidecar.lab import Lab

VIP6 = "2001:db8::1"
CLIENT6 = "2001:db8::100/64"


class Lab6(Lab):
    def __enter__(self) -> Lab6:
        super().__enter__()
        try:
            for node in ("a", "b", "client"):  # only inside the lab's namespaces
                host = self.topo[node]
                host.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                         "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.eth0.accept_dad=0")
                host.run("ip", "link", "set", "eth0", "down")  # its link-local anew, no DAD
                host.run("ip", "link", "set", "eth0", "up")
            self.topo["client"].run("ip", "addr", "add", CLIENT6, "dev", "eth0", "nodad")
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def start_probe(self, timeout: float = 0.1) -> None:
        """Lab.start_probe, polling the IPv6 VIP (port 80 spelt out: before 9c5d329 the HTTP
        client split an IPv6 literal without a port at its last colon)."""
        cmd = [sys.executable, "-m", "sidecar.lab.probe", f"http://[{VIP6}]:80/", "--timeout",
               str(timeout)]
        proc = subprocess.Popen(self.topo["client"].argv(*cmd), stdout=subprocess.PIPE,
                                start_new_session=True)
        self.topo.procs.append(proc)
        threading.Thread(target=self._read_probe, args=(proc,), daemon=True).start()

    def has_vip(self, node: str) -> bool:
        out = self.topo[node].run("ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
        return f" {VIP6}/" in out


def agent_env6(priority: int, interval: float) -> dict[str, str]:
    """carp-sidecar's VRRPv3 instance on the IPv6 VIP: no password, no label (IPv6 has none),
    the lab's IPv4 source unset (it advertises from its link-local address)."""
    return {"CARP_PROTOCOL": "vrrp3", "CARP_PRIORITY": str(priority),
            "CARP_ADVERT_INT": f"{interval:g}", "CARP_ADDR": f"{VIP6}/64", "CARP_PASS": "",
            "CARP_IF_ALIAS": "", "CARP_SRCIP": ""}
