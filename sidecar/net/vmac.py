"""CARP_VMAC's macvlan through netlink and /proc/sys, as keepalived 2.2.7 sets it up
(vrrp_vmac.c ``netlink_link_add_vmac``, vrrp_if_config.c ``set_interface_parameters``):

- a macvlan in private mode on the base interface, carrying the virtual MAC, always up;
- on it: arp_ignore=1 (answer ARP only for its own addresses, the VIPs), accept_local=1,
  rp_filter=0, promote_secondaries=1; no IPv6 link-local (addr_gen_mode=1), IPv6 off
  altogether unless the instance has IPv6 VIPs;
- on the base: arp_ignore=1 and arp_filter=1, so the base never answers for the VIPs with
  its own MAC; the previous values are put back when the last macvlan on it is deleted,
  by whichever process deletes it: they are kept in CARP_STATE_DIR (``vmac-base.<base>.json``)
  from when they are first changed until they are put back, so a restart in place or on stop
  (whose next process adopts the macvlan and finds the base at 1 already) loses nothing.

Our packet socket stays on the base: the adverts (multicast) reach it whatever the macvlan
does, and the frames we send carry the virtual MAC as their source.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.net._pyroute2 import AsyncIPRoute, NetlinkError

log = logging.getLogger("carp-sidecar")
SYSCTL = Path("/proc/sys/net")
ON_VMAC = {"ipv4/conf/{}/arp_ignore": 1, "ipv4/conf/{}/accept_local": 1,
           "ipv4/conf/{}/rp_filter": 0, "ipv4/conf/{}/promote_secondaries": 1}
ON_BASE = {"ipv4/conf/{}/arp_ignore": 1, "ipv4/conf/{}/arp_filter": 1}
# base interface -> (macvlans on it, its sysctls before the first one set them)
BASES: dict[str, tuple[int, dict[str, str]]] = {}


class VmacError(Exception):
    """One line for the operator, naming CARP_VMAC."""


@dataclass(frozen=True, slots=True)
class Found:
    index: int
    kind: str
    base: int  # IFLA_LINK: the interface it sits on (0: none)
    mac: bytes
    mode: str  # macvlan's mode as pyroute2 names it ("private"; "": not a macvlan)


def show(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


async def find(ipr: AsyncIPRoute, name: str) -> Found | None:
    try:
        msgs = [m async for m in await ipr.get_links(ifname=name)]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    return found(msgs[0]) if msgs else None


def found(m: Any) -> Found:
    mode = m.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_MACVLAN_MODE") or ""
    return Found(m["index"], m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
                 m.get("IFLA_LINK") or 0,
                 bytes.fromhex((m.get("IFLA_ADDRESS") or "").replace(":", "")), mode)


async def twin(ipr: AsyncIPRoute, name: str, base: int, mac: bytes) -> str | None:
    """Another macvlan on this base with this MAC (a crash under an old CARP_VMAC name, or a
    keepalived of this host with this VRID): the kernel refuses a second one up (EADDRINUSE)."""
    async for m in await ipr.get_links():
        f, other = found(m), m.get("IFLA_IFNAME")
        if other != name and f.kind == "macvlan" and f.base == base and f.mac == mac:
            return str(other)
    return None


def ours(found: Found, base: int, mac: bytes) -> bool:
    """A macvlan in private mode on this base with this MAC: left by a crash, or kept across
    a restart in place; adopted as it is (keepalived adopts it too)."""
    return (found.kind == "macvlan" and found.base == base and found.mac == mac
            and str(found.mode) == "private")


class Macvlan:
    """One instance's macvlan: :meth:`ensure` at start and when the base comes back,
    :meth:`delete` on a graceful stop."""

    def __init__(self, name: str, base_name: str, mac: bytes, ipv6: bool,
                 state_dir: Path | None = None) -> None:
        self.name, self.base_name, self.mac, self.ipv6 = name, base_name, mac, ipv6
        # where the base's values before the first macvlan live until put back (None: memory)
        self.saved_in = None if state_dir is None else state_dir / f"vmac-base.{base_name}.json"
        self._holds_base = False  # counted in BASES
        self.adopted = False
        self.created = False  # by this run: a start or reload failing part way deletes it
        self.pending = False  # being created again (its base came back)

    async def ensure(self, base: int) -> int:
        """The macvlan's index: adopted if it is ours, else created. VmacError otherwise,
        with what this call created deleted and the base's count taken back."""
        ipr, held, created = AsyncIPRoute(), self._holds_base, False
        try:
            found = await find(ipr, self.name)
            self.check(found, base)
            if (other := await twin(ipr, self.name, base, self.mac)) is not None:
                raise VmacError(f"CARP_VMAC: the macvlan {other} on {self.base_name} already "
                                f"has the virtual MAC {show(self.mac)} (left under an old "
                                "CARP_VMAC name, or keepalived's): delete it or stop its user")
            self.adopted = found is not None
            if found is None:
                created = await self._create(ipr, base)
                if (found := await find(ipr, self.name)) is None:
                    raise VmacError(f"CARP_VMAC: {self.name} vanished after its creation")
            self.configure()
            await ipr.link("set", index=found.index, state="up")
            self.created = self.created or created
            return found.index
        except (NetlinkError, VmacError) as e:
            if created:
                with contextlib.suppress(NetlinkError):
                    await ipr.link("del", ifname=self.name)
            if not held:
                self.release_base(restore=created)
            if isinstance(e, VmacError):
                raise
            raise VmacError(f"CARP_VMAC: the macvlan {self.name} on {self.base_name}: "
                            f"{e.args[-1]}") from None
        finally:
            ipr.close()

    def check(self, found: Found | None, base: int) -> None:
        """VmacError unless the name is free or already ours."""
        if found is not None and not ours(found, base, self.mac):
            raise VmacError(
                f"CARP_VMAC: an interface named {self.name} exists and is not this "
                f"instance's macvlan (kind {found.kind or 'none'}, MAC {show(found.mac)}; "
                f"wanted a private macvlan on {self.base_name} with {show(self.mac)}); "
                "remove it or name another")

    async def usable(self, base: int, freed: set[str]) -> None:
        """:meth:`check` and the twin's look on what is there now, changing nothing (a
        reload's look first; ``freed``: macvlans the reload deletes before this one)."""
        ipr = AsyncIPRoute()
        try:
            self.check(await find(ipr, self.name), base)
            if (other := await twin(ipr, self.name, base, self.mac)) not in (None, *freed):
                raise VmacError(f"CARP_VMAC: the macvlan {other} on {self.base_name} already "
                                f"has the virtual MAC {show(self.mac)}: delete it or stop its "
                                "user")
        except NetlinkError as e:
            raise VmacError(f"CARP_VMAC: {self.name}: {e.args[-1]}") from None
        finally:
            ipr.close()

    async def _create(self, ipr: AsyncIPRoute, base: int) -> bool:
        try:
            await ipr.link("add", ifname=self.name, kind="macvlan", link=base,
                           macvlan_mode="private", address=show(self.mac))
        except NetlinkError as e:
            why = ("the kernel has no macvlan support (module macvlan)"
                   if e.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL) else e.args[-1])
            raise VmacError(f"CARP_VMAC: cannot create the macvlan {self.name} on "
                            f"{self.base_name}: {why}") from None
        # no link-local from the virtual MAC (RFC 5798 §7.4), set before it goes up
        write(f"ipv6/conf/{self.name}/addr_gen_mode", "1")
        return True

    def configure(self) -> None:
        for key, value in ON_VMAC.items():
            write(key.format(self.name), str(value))
        write(f"ipv6/conf/{self.name}/disable_ipv6", "0" if self.ipv6 else "1")
        if not self._holds_base:  # counted: several macvlans may share a base (keepalived's)
            self._holds_base = True
            users, saved = BASES.get(self.base_name, (0, {}))
            BASES[self.base_name] = (users + 1, saved or self._load())
        saved, before_save = BASES[self.base_name][1], len(BASES[self.base_name][1])
        for key, value in ON_BASE.items():
            path = key.format(self.base_name)
            before = read(path)
            if before is not None and before != str(value):
                saved.setdefault(path, before)
                write(path, str(value))
        if len(saved) > before_save:
            self._save(saved)

    def _load(self) -> dict[str, str]:
        """The base's values a process before this one saved (a restart, a crash)."""
        try:
            if self.saved_in is not None and self.saved_in.exists():
                got = json.loads(self.saved_in.read_text())
                return {str(k): str(v) for k, v in got.items() if k in self._keys()}
        except (OSError, ValueError, AttributeError) as e:
            log.warning("Cannot read %s: %s", self.saved_in, e)
        return {}

    def _keys(self) -> set[str]:
        return {key.format(self.base_name) for key in ON_BASE}

    def _save(self, saved: dict[str, str]) -> None:
        if self.saved_in is None:
            return
        try:
            self.saved_in.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.saved_in.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved))
            tmp.replace(self.saved_in)
        except OSError as e:  # kept in memory: only a restart in between loses them
            log.warning("Cannot keep the base's sysctls in %s: %s", self.saved_in, e)

    async def mute(self, index: int) -> None:
        """No more ARP replies from the macvlan (arp_ignore=8: none for any address), for a
        master handing over: the successor announces the same MAC. Only if the interface of
        that name is still this macvlan (``index``): never a foreign one that took the name."""
        ipr = AsyncIPRoute()
        try:
            found = await find(ipr, self.name)
        except NetlinkError as e:
            log.warning("Cannot look at the macvlan %s: %s", self.name, e)
            return
        finally:
            ipr.close()
        if (found is not None and found.index == index and found.kind == "macvlan"
                and found.mac == self.mac):
            write(f"ipv4/conf/{self.name}/arp_ignore", "8")

    async def delete(self) -> None:
        """Graceful stop: the macvlan goes (its VIPs with it), the base's sysctls come back."""
        ipr = AsyncIPRoute()
        try:
            found = await find(ipr, self.name)
            if found is not None and found.kind == "macvlan" and found.mac == self.mac:
                await ipr.link("del", index=found.index)
        except NetlinkError as e:
            log.warning("Cannot delete the macvlan %s: %s", self.name, e)
        finally:
            ipr.close()
        self.release_base()

    async def remove_if_ours(self, base: int) -> bool:
        """Delete it if it is a private macvlan on this base with this MAC (its VIPs go with
        it): one a run before this left under a CARP_VMAC since changed or dropped."""
        ipr = AsyncIPRoute()
        try:
            found = await find(ipr, self.name)
            if found is None or not ours(found, base, self.mac):
                return False
            await ipr.link("del", index=found.index)
            return True
        except NetlinkError as e:
            log.warning("Cannot delete the macvlan %s: %s", self.name, e)
            return False
        finally:
            ipr.close()

    async def abandon(self) -> None:
        """A start or reload failed part way: what this run created goes, an adopted one
        stays as it was found (the base keeps its values for it)."""
        if self.created:
            await self.delete()
        else:
            self.release_base(restore=False)

    def release_base(self, restore: bool = True) -> None:
        """The last one out puts the base's values back (``restore``: its macvlan is gone;
        else it stays, and the base keeps answering for nothing on it)."""
        if self._holds_base:
            self._holds_base = False
            users, saved = BASES.pop(self.base_name)
            if users > 1:
                BASES[self.base_name] = (users - 1, saved)
            elif restore:
                for path, value in (saved or self._load()).items():
                    write(path, value)
                if self.saved_in is not None:
                    with contextlib.suppress(OSError):
                        self.saved_in.unlink()


def read(key: str) -> str | None:
    try:
        return (SYSCTL / key).read_text().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    try:
        (SYSCTL / key).write_text(value)
    except OSError as e:  # e.g. IPv6 disabled on the host: keepalived logs and goes on too
        log.warning("Cannot set net.%s=%s: %s", key.replace("/", "."), value, e.strerror or e)
