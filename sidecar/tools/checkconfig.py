"""`carp-sidecar check-config`: the effective configuration, where each value came from, the
figures an operator plans with, and (unless ``--offline``) whether this host can run it.

Everything is reported at once: the configuration errors (one line each, from :mod:`config`),
then the host's problems — the interface missing, the source address not on it, a missing
capability — each on a line of its own. Exit status 2 when there is any.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from sidecar.config import vrrp
from sidecar.config.settings import Config, VhidSettings, show
from sidecar.config.spelling import renamed
from sidecar.core.intervals import US, advert_interval_us, master_down_interval_us
from sidecar.net.caps import missing_capability, source_address, vip_interface_problem

WIDTH = 40  # the value column before "# origin"


def derived(i: VhidSettings) -> dict[str, str]:
    """The numbers behind a failover plan (docs/protocol.md §5)."""
    if i.protocol != "carp":
        has_password = i.password is not None or i.pass_file is not None
        return {**vrrp.figures(i.protocol, i.priority, i.advert_int, has_password),
                "VIPs": ", ".join(map(str, i.vips))}
    vrrp3 = i.dead_timer == "auto" and i.advbase == 0
    advert = advert_interval_us(i.advbase, i.advskew) / US  # the agent's own rules
    down = master_down_interval_us(i.advbase, i.advskew, i.deadratio, vrrp3) / US
    if vrrp3:  # VRRPv3's dead timer: before a master is heard, our interval stands in
        rule = f"{i.deadratio} x the master's advert interval + own skew (shown with ours)"
    else:
        rule = f"advbase x deadratio + advskew/256 = {i.advbase} x {i.deadratio} + {i.advskew}/256"
    ipv4 = [v.ip for v in i.vips if v.version == 4]
    covered = ipv4[0] if ipv4 else IPv4Address(0)
    hmac = (f"{covered} (the first IPv4 VIP" + ("; strict: also every header field and the "
            "sender" if i.strict else "") + ")")
    return {
        "advert interval": f"{advert:g} s",
        "master-down interval": f"{down:.3g} s ({rule})",
        "expected failover": (f"about {down:.3g} s when the master fails (this node as backup: "
                              "its last advert + master-down); "
                              f"about {i.advskew / 2048 * 1000:.0f} ms when it stops or is "
                              "demoted (bow-out)"),
        "HMAC covers": hmac,
        "VIPs": ", ".join(map(str, i.vips)),
    }


def host_problems(config: Config) -> list[str]:
    """What this host lacks to run ``config``: interfaces, source addresses, capabilities.
    Plain netlink and ioctls (sidecar.net.rtmsg): no event loop, no pyroute2, ~40 ms less."""
    from sidecar.net.rtmsg import interface, ipv4_addresses

    problems: list[str] = []

    def link(variable: str, name: str, instance: str) -> tuple[int, int] | None:
        found = interface(name)
        if found is None:
            problems.append(f"{variable}: no interface named {name!r} on this host ({instance})")
        return found

    for i in config.instances:
        found = link("CARP_INTERFACE", i.interface, i.name)
        if found is None:
            continue
        addresses = [a.ip for a in ipv4_addresses(found[0])]
        srcip, problem = source_address(i.srcip, i.interface, addresses, [v.ip for v in i.vips])
        if srcip is None and not vrrp.is_ipv6(i):  # an IPv6 one's source: the start checks it
            problems.append(problem)
        problem = vrrp.owner_problem(i.priority, i.interface, i.vips, addresses)
        if problem:
            problems.append(f"{problem} ({i.name})")
        vip_link = None if i.vip_interface is None else link(
            "CARP_VIP_INTERFACE", i.vip_interface, i.name)
        if i.vip_interface is not None and vip_link is not None:
            problem = vip_interface_problem(i.vip_interface, vip_link[1], i.vips)
            if problem:
                problems.append(f"{problem} ({i.name})")
    problem = missing_capability(any(not i.upscript and not i.downscript
                                     for i in config.instances))
    if problem:
        problems.append(problem)
    return [renamed(p, config.names) for p in problems]  # UCARP_INTERFACE if they wrote so


def report(config: Config, offline: bool) -> tuple[list[str], list[str]]:
    """The lines to print, and the host's problems (empty: the host can run it)."""
    lines = [f"# warning: {w}" for w in config.warnings]
    for title, values in config.redacted():
        lines.append(f"# {title}")
        origins = config.origins.get(title, {})
        for var, value in values.items():
            where = "derived" if var == "VIPS (effective)" else origins.get(var, "")
            line = f"{var}={value}"
            lines.append(f"{line:<{WIDTH}} # {where}" if where else line)
        instance = next((i for i in config.instances if title == f"instance {i.name}"), None)
        if instance is not None:
            lines += [f"#   {k}: {v}" for k, v in derived(instance).items()]
    problems = [] if offline else list(host_problems(config))
    lines.append("# host: not checked (--offline)" if offline else
                 "# host: " + ("can run this" if not problems else f"{len(problems)} problem(s)"))
    return lines, problems


__all__ = ["derived", "host_problems", "report", "show"]
