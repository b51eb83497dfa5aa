"""Values the settings are made of, checked the way ucarp users expect: the VIPs of CARP_ADDR
and CARP_MASK, the password and its file, and one spelling per type for what is shown."""

from __future__ import annotations

import contextvars
import os
import stat
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface
from pathlib import Path
from typing import Any

from sidecar.config.runconfig import Vip
from sidecar.core.auth import MAX_PASSWORD_BYTES, Auth

IFNAMSIZ = 15
PASS_FILE_MAX_READ = 512  # ucarp reads one line of at most 511 bytes
MIN_GARP_REFRESH = 1.0  # s; below this a refresh is an ARP flood, not a refresh

# check-config --offline: validate a file meant for another host (scripts, password file there)
OFFLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("offline", default=False)


def show(value: Any) -> str:
    """One spelling per type: booleans as true/false, floats without a needless .0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def vips_of(addr: str | list[str], mask: str | None) -> tuple[Vip, ...]:
    """Every VIP with its prefix, in the order given. ``CARP_ADDR`` is ``a.b.c.d``,
    ``a.b.c.d/len``, an IPv6 address with or without its prefix, or several of them separated
    by commas; ``CARP_MASK`` applies to the IPv4 ones given without a prefix."""
    given = addr if isinstance(addr, list) else addr.split(",")
    given = [a.strip() for a in given if a.strip()]
    if not given:
        raise ValueError("CARP_ADDR: no address given")
    vips = tuple(_one_vip(a, mask, strict_mask=len(given) == 1) for a in given)
    if len({v.ip for v in vips}) != len(vips):
        raise ValueError("CARP_ADDR: an address is listed twice")
    return vips


def auth(key: bytes, vips: tuple[Vip, ...], next_key: bytes | None = None) -> Auth:
    """The HMAC inputs: the key and the first IPv4 VIP (docs/protocol.md §3), and the next key
    of a rotation (accepted, never sent with)."""
    first = next((v.ip for v in vips if isinstance(v, IPv4Interface)), IPv4Address(0))
    return Auth(key, first, None if next_key == key else next_key)


def password_bytes(password: str | None, pass_file: Path | None) -> bytes:
    """The HMAC key (the raw password, like ucarp) from CARP_PASS or CARP_PASS_FILE."""
    if (password is None) == (pass_file is None):
        raise ValueError("CARP_PASS: set exactly one of CARP_PASS or CARP_PASS_FILE")
    return _checked(password, pass_file, "CARP_PASS")


def next_password_bytes(password: str | None, pass_file: Path | None) -> bytes | None:
    """The rotation's next key, from CARP_PASS_NEXT or CARP_PASS_NEXT_FILE (None: neither)."""
    if password is None and pass_file is None:
        return None
    if password is not None and pass_file is not None:
        raise ValueError("CARP_PASS_NEXT: set at most one of CARP_PASS_NEXT or "
                         "CARP_PASS_NEXT_FILE")
    return _checked(password, pass_file, "CARP_PASS_NEXT")


def _checked(password: str | None, pass_file: Path | None, name: str) -> bytes:
    if password is not None:
        raw, var = password.encode(), name
    else:
        assert pass_file is not None
        raw, var = first_line(pass_file, f"{name}_FILE"), f"{name}_FILE"
    if not raw:
        raise ValueError(f"{var}: the password is empty")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"{var}: password longer than {MAX_PASSWORD_BYTES} bytes (ucarp's "
                         "limit; ucarp peers could not authenticate it)")
    return raw


def _one_vip(text: str, mask: str | None, strict_mask: bool) -> Vip:
    address, _, prefix = text.partition("/")
    if ":" in address:
        try:
            vip6 = IPv6Interface(text if prefix else f"{address}/128")
        except ValueError:
            raise ValueError(f"CARP_ADDR: {text!r} is not an IPv6 address or prefix") from None
        problem = _unusable_vip(vip6)
        if problem:
            raise ValueError(f"CARP_ADDR: {vip6.ip} {problem}")
        return vip6
    try:
        ip = IPv4Address(address)
    except ValueError:
        raise ValueError(f"CARP_ADDR: {address!r} is not an IPv4 address") from None
    lengths = [p for p in (prefix, None if prefix else mask) if p]
    if prefix and mask and strict_mask:  # a lone address: the two must agree, as before
        lengths.append(mask)
    try:
        lens = {IPv4Network(f"0.0.0.0/{p.strip()}").prefixlen for p in lengths}
    except ValueError:
        raise ValueError("CARP_MASK: not a netmask or prefix length") from None
    if len(lens) > 1:
        raise ValueError("CARP_MASK: disagrees with the prefix length given in CARP_ADDR")
    vip = IPv4Interface((ip, lens.pop() if lens else 32))
    problem = _unusable_vip(vip)
    if problem:
        raise ValueError(f"CARP_ADDR: {vip.ip} {problem}")
    return vip


def _unusable_vip(vip: Vip) -> str | None:
    """Why ``vip`` can never be a service address, or None."""
    ip, net = vip.ip, vip.network
    if ip.is_unspecified or ip == IPv4Address("255.255.255.255"):
        return "is not a host address"
    if ip.is_multicast or ip.is_loopback or ip.is_reserved:
        return "is a multicast, loopback or reserved address"
    if isinstance(vip, IPv6Interface):
        return None  # link-local: an IPv6 VRRP instance's only (sidecar.config.vrrp)
    if net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
        return f"is the {'network' if ip == net.network_address else 'broadcast'} address of {net}"
    return None


def first_line(path: Path, var: str = "CARP_PASS_FILE", limit: int = PASS_FILE_MAX_READ
               ) -> bytes:
    """ucarp's passfile rule (first line, only its '\\n' stripped), bounded and safe: a regular
    file only (a FIFO would block the start, /dev/zero would never end) and one small read of
    at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ValueError(f"{var}: cannot read {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{var}: {path} is not a regular file")
        head = os.read(fd, limit)
    except OSError as e:
        raise ValueError(f"{var}: cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return head.split(b"\n", 1)[0]
