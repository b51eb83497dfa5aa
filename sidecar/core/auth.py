"""What the configuration needs of the codec, without the codec: the HMAC inputs (:class:`Auth`),
ucarp's password limit and the default multicast group (docs/protocol.md §3).

Its own module so that validating a configuration (check-config, the launcher) does not build
the codec's enum and dataclasses (sidecar.core.protocol)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

DEFAULT_GROUP = IPv4Address("224.0.0.18")
MAX_PASSWORD_BYTES = 19  # ucarp copies the password and its NUL into a 20-byte key buffer
NO_IPV4_VIP = IPv4Address(0)


@dataclass(frozen=True, slots=True)
class Auth:
    """What an advert's HMAC covers besides the advert: the key (ucarp's: the raw password) and
    the first IPv4 VIP (0.0.0.0 with IPv6 VIPs only). Built once from the configuration.
    ``next_key`` (CARP_PASS_NEXT, a rotation under way): adverts signed with it are accepted
    too; adverts are always sent with ``key``."""

    key: bytes = field(repr=False)
    vip: IPv4Address = NO_IPV4_VIP
    next_key: bytes | None = field(default=None, repr=False)


def carp_key(password: str | bytes) -> bytes:
    """The HMAC key exactly as ucarp derives it: the raw password bytes (at most 19)."""
    raw = password.encode() if isinstance(password, str) else password
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes (ucarp's limit)")
    return raw
