"""VRRP mode's settings (``CARP_PROTOCOL=vrrp2|vrrp3``): the rules RFC 3768, RFC 5798 and
keepalived 2.2 give them, each problem one line naming the variable, as the models report.

Pure (no pydantic): the rules take a validated model, or plain values, so the agent can check
the address owner (priority 255) at start with :func:`owner_problem`, where it knows the
interface's addresses, as check-config does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any

from sidecar.config.runconfig import Vip
from sidecar.config.values import first_line

VRRP = ("vrrp2", "vrrp3")
V2_PASSWORD_BYTES = 8  # RFC 2338's simple text password: 8 octets, padded with NULs
OWNER_PRIORITY = 255
V3_MAX_ADVERT_INT = 40.95  # 12 bits of centiseconds
# CARP's own settings: what each one is in VRRP (shown in the refusal)
CARP_ONLY = {
    "advbase": "CARP_ADVERT_INT (the advert interval)",
    "advskew": "CARP_PRIORITY (1-254, higher wins)",
    "deadratio": "the RFC's fixed 3 x CARP_ADVERT_INT + skew",
    "dead_timer": "the RFC's fixed 3 x CARP_ADVERT_INT + skew",
}
# what check-config and the scripts are not shown: the other protocol's settings
UNSHOWN = {"carp": ("CARP_PROTOCOL", "CARP_PRIORITY", "CARP_ADVERT_INT"),
           "vrrp": ("CARP_ADVBASE", "CARP_ADVSKEW", "CARP_DEADRATIO", "CARP_DEAD_TIMER")}


def unshown(protocol: str) -> tuple[str, ...]:
    return UNSHOWN["carp" if protocol == "carp" else "vrrp"]


def with_preempt_default(data: Any) -> Any:
    """VRRP preempts unless told not to (RFC 3768 §6.1, keepalived without ``nopreempt``):
    a mixed group then behaves as its keepalived nodes expect. CARP keeps ucarp's false."""
    if not isinstance(data, Mapping):
        return data
    protocol = data.get("CARP_PROTOCOL", data.get("UCARP_PROTOCOL"))
    preempt_given = any(k in data for k in ("CARP_PREEMPT", "UCARP_PREEMPT", "preempt"))
    if protocol in VRRP and not preempt_given:
        return {**data, "CARP_PREEMPT": True}
    return data


def problems(m: Any) -> list[str]:
    """Every VRRP rule ``m`` (a validated VhidSettings) breaks, one line each."""
    given = m.model_fields_set
    if m.protocol == "carp":
        out = _link_local(m, "CARP (CARP_PROTOCOL=carp)") + _peer_families(m, False)
        return out + [f"CARP_{name.upper()}: a VRRP setting; CARP uses "
                f"{'CARP_ADVSKEW (lower wins)' if name == 'priority' else 'CARP_ADVBASE'} "
                "(or set CARP_PROTOCOL=vrrp2 or vrrp3)" for name in ("priority", "advert_int")
                if name in given]
    # each line names CARP_PROTOCOL: when that one is wrong, these are not reported
    mode = f"CARP_PROTOCOL={m.protocol}"
    out = [f"CARP_{name.upper()}: CARP only; with {mode} use {instead} instead"
           for name, instead in CARP_ONLY.items() if name in given]
    if m.strict:
        out.append(f"CARP_STRICT: CARP only (carp-sidecar's HMAC over the whole header); "
                   f"{mode} has no such mode")
    if m.password_next is not None or m.pass_next_file is not None:
        var = "CARP_PASS_NEXT" if m.password_next is not None else "CARP_PASS_NEXT_FILE"
        out.append(f"{var}: CARP only (a key rotation); {mode} has one password or none")
    if m.nomcast:
        out.append(f"CARP_NOMCAST: CARP only; with {mode} adverts go to the multicast group "
                   "or to CARP_PEERS")
    out += _interval(m.protocol, m.advert_int)
    if m.protocol == "vrrp3" and (m.password is not None or m.pass_file is not None):
        var = "CARP_PASS" if m.password is not None else "CARP_PASS_FILE"
        out.append(f"{var}: VRRPv3 (RFC 5798, {mode}) has no authentication; remove it "
                   "(keepalived ignores an authentication block with version 3)")
    out += _families(m)
    return out


def _families(m: Any) -> list[str]:
    try:
        vips = list(m.vips)
    except ValueError:
        return []  # CARP_ADDR's own error says it
    v6 = [str(v.ip) for v in vips if isinstance(v, IPv6Interface)]
    if m.protocol == "vrrp2" and v6:
        return [f"CARP_ADDR: VRRPv2 carries IPv4 addresses only ({', '.join(v6)}); use "
                "vrrp3 or another instance (CARP_PROTOCOL=vrrp2)"]
    if not vips or len(v6) != len(vips):
        # IPv4, or mixed: the IPv4 adverts carry the IPv4 VIPs (keepalived's split)
        return _link_local(m, "an instance with IPv4 VIPs") + _peer_families(m, False)
    # an IPv6 instance (RFC 5798 §5.1.2): from the link-local address to ff02::12, or from
    # CARP_SRCIP to CARP_PEERS (keepalived's unicast_src_ip/unicast_peer)
    given, mode = m.model_fields_set, f"an IPv6 VRRP instance (CARP_PROTOCOL={m.protocol})"
    out = _peer_families(m, True)
    if m.vip_interface is not None:  # a host route: fe80::/10 means nothing off the link
        out += _link_local(m, "VIPs on CARP_VIP_INTERFACE")
    if "mcast" in given:
        out.append(f"CARP_MCAST: {mode} advertises to ff02::12 (RFC 5798); unset it")
    routed = [str(p) for p in m.peers if p.version == 6 and not p.is_link_local]
    if routed and m.srcip is None and not out:
        # without it adverts leave from the link-local address, which a peer's CARP_PEERS
        # (or keepalived's, given its global address) does not list: both would be MASTER
        out.append(f"CARP_SRCIP: required with the global CARP_PEERS {', '.join(routed)} of "
                   f"{mode}: the adverts' source, listed in the peers' own (keepalived's "
                   "unicast_src_ip); unset only if every peer is link-local")
    if m.sync_paths:
        out.append(f"CARP_SYNC_PATHS: replication runs over IPv4; not with {mode}")
    return out


def _link_local(m: Any, where: str) -> list[str]:
    """A link-local VIP (RFC 5798 §5.2.9: an IPv6 VRRP router's first address) belongs to
    an IPv6 VRRP instance's link only; anywhere else it is no service address."""
    try:
        local = [str(v.ip) for v in m.vips if v.version == 6 and v.ip.is_link_local]
    except ValueError:
        return []  # CARP_ADDR's own error says it
    if not local:
        return []
    return [f"CARP_ADDR: {', '.join(local)} is link-local (fe80::/10): only an IPv6 VRRP "
            f"instance (CARP_PROTOCOL=vrrp3, IPv6 VIPs only) takes one, not {where}"]


def _peer_families(m: Any, ipv6: bool) -> list[str]:
    """CARP_SRCIP and CARP_PEERS are of the instance's family: IPv6 only for an IPv6 VRRP
    instance (every VIP IPv6, CARP_PROTOCOL=vrrp3), IPv4 for every other."""
    which = ("IPv6", "an IPv6 VRRP instance (CARP_PROTOCOL=vrrp3, IPv6 VIPs only)") if ipv6 \
        else ("IPv4", "an instance with IPv4 VIPs or CARP" if m.protocol == "carp"
              else "an instance with IPv4 VIPs")
    out = []
    for var, addresses in (("CARP_SRCIP", [m.srcip] if m.srcip is not None else []),
                           ("CARP_PEERS", list(m.peers))):
        other = [str(a) for a in addresses if (a.version == 6) != ipv6]
        if other:
            out.append(f"{var}: {', '.join(other)}: {which[0]} addresses only for {which[1]}")
    return out


def _interval(protocol: str, seconds: float) -> list[str]:
    if protocol == "vrrp2" and (seconds != int(seconds) or not 1 <= seconds <= 255):
        return ["CARP_ADVERT_INT: whole seconds 1-255 with CARP_PROTOCOL=vrrp2 (RFC 3768)"]
    centis = seconds * 100
    if protocol == "vrrp3" and (abs(centis - round(centis)) > 1e-6
                                or not 0.01 <= seconds <= V3_MAX_ADVERT_INT):
        return [f"CARP_ADVERT_INT: 0.01-{V3_MAX_ADVERT_INT} s in steps of 0.01 with "
                "CARP_PROTOCOL=vrrp3 (RFC 5798's centiseconds)"]
    return []


def password_key(protocol: str, password: str | None, pass_file: Path | None) -> bytes:
    """The VRRP instance's password: none is allowed (auth type 0, and VRRPv3 has none: its
    refusal is :func:`problems`'), VRRPv2's at most 8 bytes (RFC 2338's simple text password)."""
    if protocol != "vrrp2" or (password is None and pass_file is None):
        return b""
    if password is not None and pass_file is not None:
        raise ValueError("CARP_PASS: set at most one of CARP_PASS or CARP_PASS_FILE")
    var = "CARP_PASS" if password is not None else "CARP_PASS_FILE"
    raw = password.encode() if password is not None else first_line(Path(str(pass_file)), var)
    if not raw:
        raise ValueError(f"{var}: the password is empty")
    if len(raw) > V2_PASSWORD_BYTES:
        raise ValueError(f"{var}: VRRPv2's simple password is at most {V2_PASSWORD_BYTES} "
                         "bytes (RFC 2338; keepalived cuts a longer one) (CARP_PROTOCOL=vrrp2)")
    return raw


def cleartext_warning(protocol: str, has_password: bool, name: str) -> str | None:
    """The start's warning for VRRPv2's password, or None: it must not pass for security."""
    if protocol != "vrrp2" or not has_password:
        return None
    return (f"{name}: VRRPv2's simple password travels in clear text in every advert: it "
            "guards against mistakes (a neighbour's wrong VRID), not against attackers")


def owner_problem(priority: int, interface: str, vips: Sequence[Vip],
                  addresses: Sequence[IPv4Address | IPv6Address]) -> str:
    """Priority 255 belongs to the address owner (RFC 3768 §6.1): every VIP is an address of
    the interface itself. "" when it holds (or the priority is not 255)."""
    if priority != OWNER_PRIORITY:
        return ""
    foreign = [str(v.ip) for v in vips if v.ip not in addresses]
    if not foreign:
        return ""
    return (f"CARP_PRIORITY: 255 is the address owner's, but {', '.join(foreign)} is not an "
            f"address of {interface}; use 1-254")


def figures(protocol: str, priority: int, advert_int: float, has_password: bool
            ) -> dict[str, str]:
    """The numbers behind a VRRP failover plan (RFC 3768 §6.1, RFC 5798 §6.1), for check-config."""
    if protocol == "vrrp2":
        skew, rule = (256 - priority) / 256, f"(256 - {priority})/256"
    else:  # v3 scales the skew by the master's advertised interval (ours shown)
        skew, rule = (256 - priority) * advert_int / 256, f"(256 - {priority}) x {advert_int:g}/256"
    down = 3 * advert_int + skew
    learnt = " (the master's interval, learnt from its adverts; ours shown)" * (
        protocol == "vrrp3")
    auth = ("VRRPv2 simple password (clear text: guards against mistakes, not attackers)"
            if has_password else "none (auth type 0)") if protocol == "vrrp2" else "none (VRRPv3)"
    return {
        "advert interval": f"{advert_int:g} s",
        "skew time": f"{skew:.3g} s ({rule})",
        "master-down interval": f"{down:.3g} s (3 x advert interval + skew time){learnt}",
        "expected failover": (f"about {down:.3g} s when the master fails; about {skew:.3g} s "
                              "when it stops (it sends priority 0)" if priority < OWNER_PRIORITY
                              else "MASTER at once at start (priority 255, the address "
                              "owner); when it fails the backups still wait their master-down "
                              f"interval: {3 * advert_int:.3g} s + their own skew time; when it "
                              "stops (priority 0), their skew time"),
        "authentication": auth,
    }


def is_ipv6(m: Any) -> bool:
    """A settings model's instance is a VRRPv3 one over IPv6 (as Vhid.ipv6); False while
    CARP_ADDR is invalid (its own error says it)."""
    try:
        return bool(m.protocol == "vrrp3" and all(v.version == 6 for v in m.vips))
    except ValueError:
        return False
