"""CARP_VMAC's lifecycle around an instance (keepalived's use_vmac; the netlink side is
:mod:`sidecar.net.vmac`): the macvlan is created or adopted at start, the VIPs go on it, it
follows its base interface (the kernel deletes it with the base; we create it again when the
base comes back), and it is deleted on a graceful stop or a reload that replaces the instance
— never on a restart in place or ``restart --on-stop``, whose VIPs stay leased on it for the
next process, which adopts it."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.config.vmac import virtual_mac
from sidecar.net import rtmsg
from sidecar.net.netlink import LinkEvent, Netlink
from sidecar.net.vmac import Macvlan, VmacError, show
from sidecar.runtime.startup import StartupError
from sidecar.runtime.vips import vip_link
from sidecar.serve.logs import fields

if TYPE_CHECKING:
    from sidecar.config.runconfig import Vhid
    from sidecar.runtime.agent import Agent
    from sidecar.runtime.instance import Instance

log = logging.getLogger("carp-sidecar")
# each CARP_VMAC instance's macvlan (kept here: the instance itself knows only vip_ifindex)
_MACVLANS: weakref.WeakKeyDictionary[Instance, Macvlan] = weakref.WeakKeyDictionary()


def macvlan_of(instance: Instance) -> Macvlan | None:
    return _MACVLANS.get(instance)


async def place_vips(netlink: Netlink, instance: Instance, base: int,
                     state_dir: Path | None) -> None:
    """At start, where the VIPs live: CARP_VIP_INTERFACE (checked), CARP_VMAC's macvlan
    (created or adopted), else the interface itself (vip_ifindex unused)."""
    s = instance.s
    if s.routed:
        instance.vip_ifindex = await vip_link(netlink, s)
    if s.vmac_name is None or s.vmac_address is None:
        return
    macvlan = Macvlan(s.vmac_name, s.interface, s.vmac_address, ipv6=bool(s.ipv6_vips),
                      state_dir=state_dir)  # the base's values before, across restarts
    try:
        instance.vip_ifindex = await macvlan.ensure(base)
    except VmacError as e:
        raise StartupError(f"{e} ({s.name})") from None
    _MACVLANS[instance] = macvlan
    log.info("%s the macvlan %s on %s with the virtual MAC %s (CARP_VMAC): the VIPs go on it",
             "Adopted" if macvlan.adopted else "Created", macvlan.name, s.interface,
             show(macvlan.mac), extra=fields(vhid=s.vhid, interface=s.interface))


async def check_vmac(s: Vhid, base: int, freed: set[str]) -> None:
    """A reload's look before anything changes: CARP_VMAC's name is free or this base's
    macvlan with this MAC (StartupError naming CARP_VMAC otherwise). ``freed``: the macvlans
    of the instances the reload removes or replaces, deleted before the new ones start."""
    if s.vmac_name is None or s.vmac_address is None or s.vmac_name in freed:
        return
    try:
        await Macvlan(s.vmac_name, s.interface, s.vmac_address, False).usable(base, freed)
    except VmacError as e:
        raise StartupError(f"{e} ({s.name})") from None


async def stop_instance(instance: Instance) -> None:
    """A graceful stop (or a reload replacing the instance), then its macvlan goes, as
    keepalived deletes its VMAC on a stop. A restart's stop never comes here."""
    macvlan = _MACVLANS.get(instance)
    if macvlan is not None and instance.vip_ifindex is not None:  # a master keeps its VIPs
        # until the successor speaks: answering its GARPs (same MAC) pulls the switch back
        await macvlan.mute(instance.vip_ifindex)
    await instance.stop()
    macvlan = _MACVLANS.pop(instance, None)
    if macvlan is not None:
        await macvlan.delete()


async def abandon(instances: list[Instance]) -> None:
    """A start or reload that failed part way: the macvlans it created go, the base's count
    is given back (an adopted macvlan stays, as a crash left it)."""
    for instance in instances:
        macvlan = _MACVLANS.pop(instance, None)
        if macvlan is not None:
            await macvlan.abandon()


async def leftover(instance: Instance, name: str) -> str | None:
    """The stale sweep's evidence (sidecar.runtime.stale): ``name``, holding a VIP, is a private
    macvlan on the instance's interface with its VRID's virtual MAC, not its CARP_VMAC of now:
    a run before this one's, under an old or dropped CARP_VMAC. Deleted, its VIPs with it."""
    s = instance.s
    base = rtmsg.link(s.interface)
    if name == s.vmac_name or base is None:
        return None
    mac = virtual_mac(s.vhid, s.ipv6)
    if not await Macvlan(name, s.interface, mac, False).remove_if_ours(base[0]):
        return None
    return (f"a macvlan with vhid {s.vhid}'s virtual MAC {show(mac)} on {s.interface}, left "
            "under a CARP_VMAC changed or dropped since: deleted")


async def _recreate(instance: Instance, macvlan: Macvlan, base: int) -> None:
    try:
        index = await macvlan.ensure(base)
    except (VmacError, OSError) as e:  # the next link event of the base tries again
        log.error("%s; the VIPs cannot go up until it exists", e)
        return
    finally:
        macvlan.pending = False
    log.info("Created the macvlan %s again on %s (it was deleted)", macvlan.name,
             instance.s.interface, extra=fields(vhid=instance.vhid))
    instance.vip_link_changed(index)


def vmac_link_event(agent: Agent, event: LinkEvent) -> None:
    """The macvlan went (with its base, which the kernel does, or by hand: then at once
    again), or its base came back."""
    for i in agent.instances:
        macvlan = _MACVLANS.get(i)
        if macvlan is None or i.stopped.is_set():
            continue
        if event.name == macvlan.name and event.deleted and event.index == i.vip_ifindex:
            i.vip_link_changed(None)
            base = rtmsg.link(i.s.interface)  # still there: someone deleted the macvlan
            if base is not None and not macvlan.pending:
                macvlan.pending = True
                agent.spawn(_recreate(i, macvlan, base[0]))
        elif (event.name == i.s.interface and not event.deleted and i.vip_ifindex is None
              and not macvlan.pending):
            macvlan.pending = True
            agent.spawn(_recreate(i, macvlan, event.index))
