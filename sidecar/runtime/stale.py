"""A killed run's VIPs, removed at start: the held-VIP record (sidecar.net.held) and its
sweep, and the configured VIPs wherever they are found.

The record is only a speed-up, so nothing about it may stop the agent: a state directory that
cannot take it (full, read-only, a file where ``held/`` should be) means running without it,
said in the log, ``carp_held_record_ok`` 0 (alert CarpStateDirUnwritable) and /status
``held_record``; the configured VIPs are removed as ever. A configured VIP is looked for on
every interface, not only the configured one: an interface renamed while the agent was dead
keeps its addresses under its new name.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.config.runconfig import RunConfig
from sidecar.net.held import HeldVips, sweep
from sidecar.net.netlink import Netlink, NetlinkError
from sidecar.runtime.instance import Instance
from sidecar.runtime.startup import StartupError
from sidecar.serve.metrics import HeldRecordMetrics

log = logging.getLogger("carp-sidecar")


class HeldRecord:
    """This agent's record (``vips``, None without one) and whether it is kept whole."""

    def __init__(self, config: RunConfig, registry: CollectorRegistry) -> None:
        self.state_dir = config.state_dir
        self.metrics = HeldRecordMetrics(registry)
        self.problem: str | None = None
        self.vips: HeldVips | None = None
        if self.state_dir is None:
            return
        if not any(s.neutral for s in config.instances):
            self.sweep()  # first: a dead run's record frees the space this one reserves
        try:
            self.vips = HeldVips(self.state_dir)
        except OSError as e:
            self.changed(f"cannot keep a record in {self.state_dir / 'held'}: "
                         f"{e.strerror or e}")
            return
        self.vips.on_problem = self.changed

    def changed(self, problem: str | None) -> None:
        was, self.problem = self.problem, problem
        self.metrics.ok.set(problem is None)
        if problem is not None:
            log.error("CARP_STATE_DIR: %s; running without a record of the VIPs this agent "
                      "holds (if it is killed, the next run removes only the configured ones): "
                      "free space in %s or fix it", problem, self.state_dir)
        elif was is not None:
            log.warning("CARP_STATE_DIR: the record of held VIPs is kept again")

    def status(self) -> dict[str, Any]:
        return {"kept": self.vips is not None and self.problem is None, "problem": self.problem}

    def sweep(self) -> None:
        """A dead agent's record: what it lists removed, one that cannot be trusted said
        (again after ``run``'s own sweep, which an env file or a TOML file prevents)."""
        assert self.state_dir is not None
        untrusted: list[str] = []
        log_swept(sweep(self.state_dir, untrusted))
        for name in untrusted:
            log.error("CARP_STATE_DIR: the record %s of an earlier run was cut short or is not "
                      "ours: deleted unread (the configured VIPs are removed all the same; "
                      "others it held may remain)", Path(self.state_dir, "held", name))


def log_swept(swept: list[tuple[str, str]]) -> None:
    for address, ifname in swept:
        log.warning("Removed stale VIP %s from %s (left by an earlier run)", address, ifname)


async def remove_stale_vips(nl: Netlink, instance: Instance) -> None:
    """Before the first election: the instance's VIPs, left by an earlier run, removed from its
    interface and from any other (ucarp --neutral: what is there at start stays)."""
    s, index = instance.s, instance.vip_index
    assert index is not None
    if not s.neutral and not s.manages_vip_by_scripts:
        try:
            for vip in s.vips:
                if await nl.remove_address(index, vip):
                    log.warning("Removed stale VIP %s from %s (left by an earlier run)",
                                vip.ip, s.vip_interface or s.interface)
            wanted = {vip.ip for vip in s.vips}
            for other, have in await nl.all_addresses():
                if other != index and have.ip in wanted and await nl.remove_address(other, have):
                    log.warning("Removed stale VIP %s from %s, which is not %s (renamed "
                                "while no agent ran?)", have.ip, _name(other),
                                s.vip_interface or s.interface)
        except NetlinkError as e:
            if e.code == 1:
                raise StartupError("missing capability NET_ADMIN: cannot manage the VIP "
                                   "by netlink (docker run --cap-add=NET_ADMIN)") from None
            raise
    present = {a.ip for a in await nl.addresses(index)}
    if s.neutral:
        for vip in s.vips:
            if vip.ip in present:
                log.warning("Neutral start: leaving VIP %s on %s until the group decides",
                            vip.ip, s.vip_interface or s.interface)
    instance.vip_observed(present)


def _name(index: int) -> str:
    with contextlib.suppress(OSError):
        return socket.if_indextoname(index)
    return f"interface index {index}"
