"""keepalived's ``use_vmac [name] [MAC]`` for `carp-sidecar import`
(sidecar.tools.keepalived_import): ``vmac = true`` (keepalived's default name, vrrp.VRID) or
``vmac = "name"`` (``CARP_VMAC``); a MAC of its own is not carried: the RFC's is used."""

from __future__ import annotations

from typing import Any

from sidecar.tools.keepalived_conf import Node


def vmac_xmit_base(d: Node, table: dict[str, Any], state: Any) -> None:
    table["vmac_xmit_base"] = True  # adverts from the base's MAC, ARP from the virtual one


def use_vmac(d: Node, table: dict[str, Any], state: Any) -> None:
    names = [a for a in d.args if ":" not in a]  # keepalived: a name never has a ':'
    table["vmac"] = names[0] if names else True
    if len(names) < len(d.args):
        state.notes.append(f"{d.where}: use_vmac: its own MAC: not carried (the RFC's "
                           "00:00:5e:00:01:VRID is used)")
