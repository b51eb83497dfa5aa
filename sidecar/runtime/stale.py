"""A killed run's VIPs, removed at start: the held-VIP record (sidecar.net.held) and its
sweep, and the configured VIPs wherever they are found.

The record is only a speed-up, so nothing about it may stop the agent: a state directory that
cannot take it (full, read-only, a file where ``held/`` should be) means running without it,
said in the log, ``carp_held_record_ok`` 0 (alert CarpStateDirUnwritable) and /status
``held_record``; the configured VIPs are removed as ever.

A configured VIP is looked for on every interface (one dump for all instances): an interface
renamed while the agent was dead keeps its addresses under its new name. It is removed from
another interface only on evidence that it is ours: the record listed it (the sweep removed it
already), its label is CARP_IF_ALIAS's under the new name, or the interface is not in the
configuration and of the same kind as the configured one (veth, physical...; never a loopback
or a dummy). Anywhere else (kube-proxy IPVS's ``kube-ipvs0``, LVS-DR or anycast on ``lo``) it is
someone else's, left in place, and said.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.config.runconfig import RunConfig, Vhid
from sidecar.config.vrrp import owner_problem
from sidecar.net.held import HeldVips, reserve_for, sweep
from sidecar.net.netlink import Netlink, NetlinkError
from sidecar.runtime.instance import Instance
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import address_owner
from sidecar.runtime.vmac import leftover
from sidecar.serve.metrics import HeldRecordMetrics

log = logging.getLogger("carp-sidecar")


class HeldRecord:
    """This agent's record (``vips``, None without one) and whether it is kept whole."""

    def __init__(self, config: RunConfig, registry: CollectorRegistry,
                 keep: frozenset[tuple[int, str, int]] = frozenset()) -> None:
        self.state_dir = config.state_dir
        self.keep = keep  # a restart's VIPs (sidecar.runtime.resume): the sweep leaves them
        self.metrics = HeldRecordMetrics(registry)
        self.problem: str | None = None
        self.vips: HeldVips | None = None
        if self.state_dir is None:
            return
        if not any(s.neutral for s in config.instances):
            self.sweep()  # first: a dead run's record frees the space this one reserves
        try:
            self.vips = HeldVips(self.state_dir, reserve_for(_vip_count(config.instances)))
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

    def reserve(self, instances: list[Instance]) -> None:
        """A reload may have added VIPs: room for every one of them."""
        if self.vips is not None:
            self.vips.reserve(reserve_for(_vip_count([i.s for i in instances])))

    def status(self) -> dict[str, Any]:
        return {"kept": self.vips is not None and self.problem is None, "problem": self.problem}

    def sweep(self) -> None:
        """A dead agent's record: what it lists removed, one that cannot be trusted said
        (again after ``run``'s own sweep, which an env file or a TOML file prevents)."""
        assert self.state_dir is not None
        untrusted: list[str] = []
        try:
            if self.keep:
                log_swept(sweep(self.state_dir, untrusted, keep=self.keep))  # type: ignore[call-arg,unused-ignore]
            else:
                log_swept(sweep(self.state_dir, untrusted))
        except Exception:  # a bug in a speed-up must not stop the agent
            log.exception("CARP_STATE_DIR: the sweep of earlier runs' records failed (the "
                          "configured VIPs are removed all the same)")
        for name in untrusted:
            log.error("CARP_STATE_DIR: the record %s of an earlier run was cut short or is not "
                      "ours: deleted unread (the configured VIPs are removed all the same; "
                      "others it held may remain)", Path(self.state_dir, "held", name))


def log_swept(swept: list[tuple[str, str]]) -> None:
    for address, ifname in swept:
        log.warning("Removed stale VIP %s from %s (left by an earlier run)", address, ifname)


def _vip_count(instances: Sequence[Vhid]) -> int:
    return sum(len(s.vips) for s in instances)


async def remove_stale_vips(nl: Netlink, instances: Sequence[Instance],
                            configured: Sequence[Instance],
                            keep: frozenset[tuple[int, str]] = frozenset()) -> None:
    """Before the first election: the instances' VIPs, left by an earlier run, removed from
    their interface, and from another where the evidence says they are ours (the module's
    docstring); ucarp --neutral: what is there at start stays. ``configured``: every instance,
    the new ones included (an interface any of them names is not a renamed one). ``keep``:
    (ifindex, address) a restart resumes holding (sidecar.runtime.resume)."""
    owned = [i for i in instances if not i.s.neutral and not i.s.manages_vip_by_scripts
             and not address_owner(i.s)]  # an address owner's VIPs are the node's own
    try:
        for instance in owned:
            s, index = instance.s, instance.vip_index
            assert index is not None
            for vip in s.vips:
                if (index, str(vip.ip)) in keep:
                    continue
                if await nl.remove_address(index, vip):
                    log.warning("Removed stale VIP %s from %s (left by an earlier run)",
                                vip.ip, s.vip_interface or s.interface)
        if owned:
            await _remove_elsewhere(nl, owned, configured)
    except NetlinkError as e:
        if e.code == 1:
            raise StartupError("missing capability NET_ADMIN: cannot manage the VIP "
                               "by netlink (docker run --cap-add=NET_ADMIN)") from None
        raise
    for instance in instances:
        s, index = instance.s, instance.vip_index
        assert index is not None
        present = {a.ip for a in await nl.addresses(index)}
        problem = owner_problem(s.priority, s.interface, s.vips, list(present)) \
            if address_owner(s) else ""
        if problem:
            raise StartupError(f"{problem} ({s.name})")
        if s.neutral:
            for vip in s.vips:
                if vip.ip in present:
                    log.warning("Neutral start: leaving VIP %s on %s until the group decides",
                                vip.ip, s.vip_interface or s.interface)
        instance.vip_observed(present)


async def _remove_elsewhere(nl: Netlink, owned: list[Instance],
                            configured: Sequence[Instance]) -> None:
    # a link-local VIP is the link's own (fe80::1 on another link is another router's)
    wanted = {vip.ip: instance for instance in owned for vip in instance.s.vips
              if not (vip.version == 6 and vip.ip.is_link_local)}
    addresses = await nl.all_addresses()
    if not any(have.ip in wanted for _, have, _ in addresses):
        return  # the usual case: one dump, no link dump
    links = await nl.all_links()
    names = {n for i in configured for n in (i.s.interface, i.s.vip_interface) if n}
    gone: set[int] = set()  # leftover macvlans deleted (CARP_VMAC), their VIPs with them
    for index, have, label in addresses:
        instance = wanted.get(have.ip)
        if instance is None or index == instance.vip_index or index in gone:
            continue
        on = instance.s.vip_interface or instance.s.interface
        name, _, kind = links.get(index, (f"interface index {index}", 0, ""))
        why = _evidence(instance, links.get(index), links.get(instance.vip_index or 0), label,
                        names)
        if why is None and kind == "macvlan" and (why := await leftover(instance, name)):
            gone.add(index)
            log.warning("Removed stale VIP %s from %s, which is not %s (%s)", have.ip, name,
                        on, why)
        elif why is None:
            log.warning("VIP %s of %s is also on %s, which this agent has no claim on (not "
                        "the same kind of interface as %s, no label of ours): left in place",
                        have.ip, instance.s.name, name, on)
        elif await nl.remove_address(index, have):
            log.warning("Removed stale VIP %s from %s, which is not %s (%s)", have.ip, name,
                        on, why)


ARPHRD_LOOPBACK = 772
NEVER_RENAMED_KINDS = ("dummy", "ipvs")  # kube-proxy IPVS's kube-ipvs0, anycast/LVS-DR holders


def _evidence(instance: Instance, link: tuple[str, int, str] | None,
              own: tuple[str, int, str] | None, label: str | None,
              configured_names: set[str]) -> str | None:
    """Why an address of ours found on ``link`` was put there by an earlier run; None if
    nothing says so."""
    if link is None:
        return None
    name, kind_type, kind = link
    alias, on = instance.s.if_alias, instance.s.vip_interface or instance.s.interface
    suffix = alias[len(on):] if alias and alias.startswith(on) else ""
    if suffix and label == name + suffix:  # the kernel renames a label with its interface
        return f"labelled {label}, CARP_IF_ALIAS {alias} under a new name"
    if (own is not None and name not in configured_names and kind_type == own[1]
            and kind == own[2] and kind_type != ARPHRD_LOOPBACK
            and kind not in NEVER_RENAMED_KINDS):
        return (f"an interface of the same kind ({kind or 'device'}) that is not configured: "
                f"renamed while no agent ran?")
    return None
