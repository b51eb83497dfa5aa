"""CARP_VMAC: keepalived's ``use_vmac`` — the VIPs on a macvlan that carries the VRRP virtual
MAC (RFC 3768 §7.3, RFC 5798 §7.3), so clients never relearn a MAC on a failover.

Pure: the names and addresses keepalived 2.2.7 chooses (vrrp.c ``create_vmac_name``,
vrrp_vmac.c ``netlink_link_add_vmac``) and the rules, one line each naming the variable.
"""

from __future__ import annotations

from typing import Any

OWNER_PRIORITY = 255  # config/vrrp.py's; importing it: a cycle (vrrp -> runconfig -> vmac)
IFNAMSIZ = 15  # bytes, without the NUL (the kernel's IFNAMSIZ is 16)
ON = ("true", "yes", "on", "1")
OFF = ("false", "no", "off", "0", "")


def normalised(value: Any) -> str | None:
    """None (off), "true" (keepalived's default name) or an interface name, checked as the
    kernel's ``dev_valid_name`` does (ValueError otherwise)."""
    if value is None or value is False:
        return None
    if value is True:
        return "true"
    if not isinstance(value, str):
        raise ValueError("true, false or an interface name")
    word = value.strip()
    if word.lower() in OFF:
        return None
    if word.lower() in ON:
        return "true"
    if (len(word.encode()) > IFNAMSIZ or word in (".", "..")
            or any(c in "/:" or c.isspace() for c in word)):
        raise ValueError(f"{word!r} is not an interface name (at most {IFNAMSIZ} bytes, "
                         "no '/', ':' or white space)")
    return word


def interface_name(setting: str | None, vrid: int) -> str | None:
    """keepalived's default is ``vrrp.<vrid>`` for either family (it tries ``vrrp6.<vrid>``
    for IPv6 only when that name is taken by another of its instances)."""
    if setting is None:
        return None
    return f"vrrp.{vrid}" if setting == "true" else setting


def virtual_mac(vrid: int, ipv6: bool = False) -> bytes:
    """00:00:5e:00:01:<vrid> (IPv4), 00:00:5e:00:02:<vrid> (IPv6)."""
    return bytes((0x00, 0x00, 0x5E, 0x00, 0x02 if ipv6 else 0x01, vrid))


def show_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def problems(m: Any) -> list[str]:
    """What CARP_VMAC may not be combined with (``m``: a validated VhidSettings)."""
    name = interface_name(m.vmac, m.vhid)
    if name is None:
        return ["CARP_VMAC_XMIT_BASE: needs CARP_VMAC (keepalived: vmac_xmit_base is only "
                "valid with a vmac)"] if m.vmac_xmit_base else []
    if m.protocol == "carp":
        return ["CARP_VMAC: a VRRP setting (keepalived's use_vmac); CARP (ucarp) has no "
                "virtual MAC interface: set CARP_PROTOCOL=vrrp2 or vrrp3, or remove it"]
    out = []
    if name == m.interface:
        out.append(f"CARP_VMAC: {name} is CARP_INTERFACE; name the macvlan to create "
                   "(true: vrrp.VHID)")
    if m.vip_interface is not None:
        out.append("CARP_VMAC: the VIPs go on CARP_VIP_INTERFACE; set one or the other")
    if m.priority == OWNER_PRIORITY:
        out.append("CARP_VMAC: the address owner's VIPs (CARP_PRIORITY=255) are its own "
                   "addresses and stay on CARP_INTERFACE; no macvlan can carry them")
    if m.upscript is not None or m.downscript is not None:
        out.append("CARP_VMAC: the up/down scripts own the VIPs (CARP_UPSCRIPT/"
                   "CARP_DOWNSCRIPT); the agent must add them to the macvlan")
    return out
