"""The rules across the instances of one agent, checked once each instance is valid on its
own: no VHID twice on an interface, no VIP in two instances, no CARP_VMAC name twice, and
the replicated paths' (sidecar.config.sync: disjoint directories, the state directory apart,
a sync secret)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.config import vrrp
from sidecar.config.models import AgentSettings, VhidSettings
from sidecar.config.runconfig import ConfigError
from sidecar.config.spelling import as_given
from sidecar.config.sync import Owned, sync_problems
from sidecar.config.values import OFFLINE
from sidecar.config.vmac import interface_name


def check_unique(instances: Sequence[VhidSettings], where: str) -> None:
    """One instance per interface, VHID and family (keepalived's IPv4 and IPv6 instances may
    share a VRID: their adverts differ by family), told apart where they are seen: the metrics'
    labels (group, vhid, interface) and CARP_VMAC's macvlan."""
    seen: dict[tuple[str, int, bool], int] = {}
    shown: dict[tuple[str, int, str], int] = {}
    owners: dict[Any, str] = {}
    macvlans: dict[str, int] = {}  # CARP_VMAC's: one interface each (keepalived refuses too)
    for number, i in enumerate(instances, 1):
        ipv6 = vrrp.is_ipv6(i)
        key = (i.interface, i.vhid, ipv6)
        if key in seen:
            raise ConfigError(f"{where}: [[vhid]] #{number}: vhid {i.vhid} on {i.interface} is "
                              f"already instance #{seen[key]}")
        seen[key] = number
        label = (i.group or f"vhid{i.vhid}-{i.vips[0].ip}", i.vhid, i.interface)
        if label in shown:  # its series would be the other's
            raise ConfigError(f"{where}: [[vhid]] #{number}: group {label[0]!r} of vhid {i.vhid} "
                              f"on {i.interface} is already instance #{shown[label]}'s; give "
                              "the IPv6 one another group")
        shown[label] = number
        if (name := interface_name(i.vmac, i.vhid)) in macvlans:
            raise ConfigError(f"{where}: [[vhid]] #{number}: vmac (CARP_VMAC): {name} is already "
                              f"the macvlan of instance #{macvlans[name]}; name this one "
                              f"(keepalived's next name: vrrp{6 if ipv6 else 1}.{i.vhid})")
        if name is not None:
            macvlans[name] = number
        for vip in i.vips:
            # a link-local address is unique on its link only (macvlans share their base's)
            owner = (i.interface, vip.ip) if vip.version == 6 and vip.ip.is_link_local \
                else vip.ip
            if owner in owners:
                raise ConfigError(f"{where}: [[vhid]] #{number}: addr {vip.ip} is already a VIP "
                                  f"of {owners[owner]}")
            owners[owner] = i.name


def across_sync(agent: AgentSettings, instances: Sequence[VhidSettings],
                names: Mapping[str, str], values: Mapping[str, Any], where: str = ""
                ) -> list[str]:
    """The replicated paths' rules, one line per problem naming the variable as given
    (``names``: CARP_X -> its spelling; ``values``: what it was set to, shown after the
    reason). ``where``: a TOML file, whose keys ``names`` maps to; an instance's problem then
    also names its ``[[vhid]]`` table."""
    owned = [Owned(f"[[vhid]] #{n} (vhid {i.vhid})" if where else i.name, i.sync_paths)
             for n, i in enumerate(instances, 1)]
    out = []
    for p in sync_problems(owned, agent.state_dir, agent.sync_secret_file, OFFLINE.get()):
        # the secret file's value is its path; no secret ever reaches a reason
        line = as_given(f"{p.var}: {p.reason}", names, values, set(),
                        names.get(p.var, "") if where else "")
        if where and p.instance is not None:  # (the environment has one instance)
            line = f"{owned[p.instance].label}: {line}"
        # an agent variable the environment set is the environment's, not the file's
        from_file = where and not (p.instance is None and names.get(p.var) == p.var)
        out.append(f"{where}: {line}" if from_file else line)
    return out
