"""keepalived's ``use_vmac [name] [MAC]`` for `carp-sidecar import`
(sidecar.tools.keepalived_import): ``vmac = true`` (keepalived's default name, vrrp.VRID) or
``vmac = "name"`` (``CARP_VMAC``). A MAC of its own (not the RFC's) leaves the instance
without vmac, with a note: its keepalived peers would answer for the VIP from that MAC."""

from __future__ import annotations

from typing import Any

from sidecar.tools.keepalived_conf import Node


def vmac_xmit_base(d: Node, table: dict[str, Any], state: Any) -> None:
    table["vmac_xmit_base"] = True  # adverts from the base's MAC, ARP from the virtual one


def use_vmac(d: Node, table: dict[str, Any], state: Any) -> None:
    names = [a for a in d.args if ":" not in a]  # keepalived: a name never has a ':'
    table["vmac"] = names[0] if names else True
    macs = [a for a in d.args if ":" in a]
    if macs:  # judged by finish, once the VRID and the family are known
        table["vmac_mac"] = (d.where, macs[0])


def keepalived_name(vrid: int, ipv6: bool, taken: set[str]) -> str:
    """keepalived 2.2.7's name for ``use_vmac`` with none (vrrp.c ``create_vmac_name``):
    vrrp.VRID, else vrrpN.VRID with N = 1, 2, ... (IPv6 tries 6 first) not yet taken."""
    name, nums = f"vrrp.{vrid}", ([6] if ipv6 else []) + [n for n in range(1, 100)
                                                           if not (ipv6 and n == 6)]
    for num in nums:
        if name not in taken:
            break
        name = f"vrrp{num}.{vrid}"
    return name


def finish(where: str, table: dict[str, Any], notes: list[str], taken: set[str]) -> None:
    """Once the instance's directives are read: the macvlan's name as keepalived gives it
    (a second instance of a VRID gets vrrp1.VRID); a name given twice keepalived refuses."""
    if "vmac" not in table:
        if table.pop("vmac_xmit_base", False):
            notes.append(f"{where}: vmac_xmit_base: not carried: keepalived ignores it "
                         "without use_vmac")
        return
    if (given := table.pop("vmac_mac", None)) is not None and not rfc_mac(table, given[1]):
        notes.append(f"{given[0]}: use_vmac {given[1]}: not carried: the keepalived peers "
                     "answer for the VIP from that MAC, CARP_VMAC only from the RFC's "
                     "00:00:5e:00:0X:VRID (a failover would change the VIP's MAC); the VIPs "
                     "stay on the interface: use_vmac without a MAC on every node carries it")
        del table["vmac"]
        table.pop("vmac_xmit_base", None)
        return
    name = table["vmac"]
    if name is True:
        name = keepalived_name(table.get("vhid", 0), ipv6(table), taken)
        table["vmac"] = True if name == f"vrrp.{table.get('vhid')}" else name
    elif name in taken:
        notes.append(f"{where}: use_vmac {name}: not carried: another instance's macvlan "
                     "already has that name (keepalived refuses it too)")
        del table["vmac"]
        table.pop("vmac_xmit_base", None)
        return
    taken.add(name)
    conflicts(where, table, name, notes)


def conflicts(where: str, table: dict[str, Any], name: str, notes: list[str]) -> None:
    """What check-config will refuse beside CARP_VMAC, said while the file is imported."""
    if table.get("priority") == 255:
        notes.append(f"{where}: WARNING: use_vmac with priority 255 (the address owner's, or "
                     "state MASTER with no priority): check-config refuses CARP_VMAC with it; "
                     "give the instance a priority below 255")
    alias = table.get("if_alias")
    if isinstance(alias, str) and not alias.startswith(f"{name}:"):
        notes.append(f"{where}: WARNING: label {alias}: with use_vmac the VIPs are on {name}, "
                     f"whose labels start with its name: rename it (if_alias = \"{name}:1\")")


def ipv6(table: dict[str, Any]) -> bool:
    return bool(table.get("addr")) and all(":" in a for a in table["addr"])


def rfc_mac(table: dict[str, Any], mac: str) -> bool:
    """keepalived's own-MAC form naming the RFC's virtual MAC anyway: carried as is."""
    vrid = table.get("vhid", 0)
    want = f"00:00:5e:00:{2 if ipv6(table) else 1:02x}:{vrid:02x}"
    return mac.lower() == want
