"""`carp-sidecar import keepalived.conf [-o out.toml]`: keepalived's VRRP instances as a TOML
file for ``CARP_CONFIG`` (one ``[[vhid]]`` each, ``protocol = "vrrp2"`` or ``"vrrp3"``), so
that a carp-sidecar node can replace one keepalived node of a group (docs/keepalived.md).

Every directive that is not carried over is named on a line of its own, with why; nothing is
dropped silently. What is carried is what joins the group: the VRID, priority, interval,
addresses, unicast peers, preemption, the v2 password, and the ``track_script`` checks, which
become health checks that demote (hand the VIP over) instead of changing the priority.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.tools import keepalived_ipv6 as ipv6
from sidecar.tools import keepalived_vmac as vmac
from sidecar.tools.keepalived_conf import ConfError, Node, read, vip_options

SHELL = re.compile(r"[<>|&;$`*?(){}]")  # a script keepalived hands to /bin/sh
# directives with no carp-sidecar counterpart -> why (the rest get a generic reason)
WHY = {
    "vrrp_sync_group": "instances fail over one by one (no sync groups); give them the "
                       "same health checks to move them together",
    "virtual_server": "LVS is not managed: carp-sidecar moves VIPs only",
    "virtual_server_group": "LVS is not managed: carp-sidecar moves VIPs only",
    "static_ipaddress": "configure the host's own addresses outside carp-sidecar",
    "static_routes": "configure the host's own routes outside carp-sidecar",
    "static_rules": "configure the host's own rules outside carp-sidecar",
    "track_interface": "only the instance's own interface's carrier is followed",
    "track_file": "use a health check (cmd) that tests the file",
    "track_process": "use a health check (cmd), e.g. pidof",
    "virtual_routes": "routes are not moved; an up script (CARP_NOTIFYSCRIPT) can",
    "virtual_rules": "rules are not moved; an up script (CARP_NOTIFYSCRIPT) can",
    "virtual_ipaddress_excluded": "not carried: add them in another instance or a script",
    "smtp_alert": "no mail: use the alert rules (grafana/alerts) or CARP_NOTIFYSCRIPT",
    "garp_master_delay": "gratuitous ARPs go with the first adverts (garp_repeat)",
    "lvs_sync_daemon_interface": "LVS is not managed",
    "dont_track_primary": "CARP_IGNOREIFSTATE=true is the nearest (ignores carrier loss)",
    "state": "keepalived's state MASTER shortens its first wait at start to one advert "
             "interval, and with no priority directive it runs at priority 255 (then written "
             "here); carp-sidecar starts BACKUP and takes over after the master-down interval "
             "unless a master is heard, then priority and preempt decide",
    "accept": "the VIP always accepts traffic (keepalived's accept)",
    "net_namespace": "run carp-sidecar in the namespace itself (ip netns exec)",
    "notify_stop": "no stop notification: CARP_NOTIFYSCRIPT is told every state change",
}
GLOBAL_CARRIED = {"vrrp_version", "vrrp_mcast_group4"}
MAIL = ("notification_email", "notification_email_from", "smtp_server", "smtp_connect_timeout",
        "smtp_helo_name")
NOTIFY = ("notify_master", "notify_backup", "notify_fault", "notify_stop")


class ImportError_(Exception):  # ImportError is Python's own
    """Nothing to import; the message says why."""


@dataclass
class Result:
    toml: str
    notes: list[str] = field(default_factory=list)  # one per directive not carried
    instances: int = 0


@dataclass
class _State:
    version: int = 2
    mcast: str | None = None
    strict: bool = False  # vrrp_strict: keepalived then ignores authentication
    scripts: dict[str, Node] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracked: set[str] = field(default_factory=set)  # scripts some instance names
    notes: list[str] = field(default_factory=list)
    vmacs: set[str] = field(default_factory=set)  # use_vmac's names so far (keepalived's)

    def skip(self, node: Node, why: str = "") -> None:
        reason = why or WHY.get(node.name) or "no carp-sidecar counterpart"
        self.notes.append(f"{node.where}: {node.name}: not carried: {reason}")


def translate(path: Path, config_id: str | None = None) -> Result:
    try:
        conf = read(path, config_id)
    except ConfError as e:
        raise ImportError_(str(e)) from None
    state = _State(notes=list(conf.notes))
    instances = []
    for node in conf.nodes:  # globals and scripts first: instances refer to them
        if node.name == "global_defs":
            _globals(node, state)
        elif node.name == "vrrp_script" and node.args:
            state.scripts[node.args[0]] = node
    for node in conf.nodes:
        if node.name == "vrrp_instance":
            table = _instance(node, state)
            if table is not None:
                instances.append(table)
        elif node.name.startswith("$"):
            state.skip(node, "keepalived's parameters ($NAME=...) are not expanded by the "
                       "import: expand them in the file first")
        elif node.name not in ("global_defs", "vrrp_script"):
            state.skip(node)
    for name, node in state.scripts.items():
        if name not in state.tracked:
            state.notes.append(f"{node.where}: vrrp_script {name}: tracked by no instance; "
                               "left out")
    if not instances:
        raise ImportError_(f"{path}: no vrrp_instance to import")
    return Result(_render(path, instances, state), state.notes, len(instances))


def _globals(node: Node, state: _State) -> None:
    for d in node.children():
        if d.name == "vrrp_version" and d.args in (["2"], ["3"]):
            state.version = int(d.args[0])
        elif d.name == "vrrp_mcast_group4" and d.args:
            state.mcast = d.args[0]
        elif d.name == "vrrp_strict":
            state.strict = True
            state.skip(d, "keepalived's own strictness; it also makes keepalived ignore "
                       "authentication, and so does the import")
        elif d.name in MAIL:
            state.skip(d, WHY["smtp_alert"])
        elif d.name == "router_id":
            state.skip(d, "a keepalived name; carp-sidecar names instances interface/vhidN "
                       "(CARP_GROUP labels the metrics)")
        else:
            state.skip(d, "a global setting of keepalived's")


def _instance(node: Node, state: _State) -> dict[str, Any] | None:
    name = node.args[0] if node.args else "?"
    label = f"vrrp_instance {name}"
    table: dict[str, Any] = {"protocol": f"vrrp{state.version}"}
    if state.mcast and state.mcast != "224.0.0.18":
        table["mcast"] = state.mcast
    # the interface first: a VIP's `dev` is compared with it
    for d in sorted(node.children(), key=lambda d: d.name != "interface"):
        handler = HANDLERS.get(d.name)
        if handler is not None:
            handler(d, table, state)
        else:
            state.skip(d)
    if table.pop("state_master", False) and "priority" not in table:
        table["priority"] = 255  # keepalived 2.2.7 vrrp.c: MASTER with no priority is 255
        state.notes.append(f"{node.where}: {label}: state MASTER with no priority: priority "
                           "255, as keepalived runs it (the address owner's); check-config "
                           "says so if the VIP is not this host's own address")
    table.pop("state_master", None)
    ipv6.family(f"{node.where}: {label}", table, state.notes, node, state.strict)  # keepalived's
    vmac.finish(f"{node.where}: {label}", table, state.notes, state.vmacs)
    if "pass" in table and (table["protocol"] == "vrrp3" or state.strict
                            or table.pop("strict_mode", False)):
        del table["pass"]
        state.notes.append(f"{node.where}: {label}: authentication: not carried: keepalived "
                           "ignores it with VRRP version 3 (RFC 5798 has none) and in strict "
                           "mode")
    table.pop("strict_mode", None)
    _interval_as_keepalived(node, table, state)
    if table["protocol"] == "vrrp2" and any(":" in a for a in table.get("addr", [])):
        state.notes.append(f"{node.where}: {label}: "
                           f"{', '.join(a for a in table['addr'] if ':' in a)}: not carried: "
                           "VRRPv2 adverts carry IPv4 only; use version 3 (or another "
                           "instance) for them")
        ipv4 = [a for a in table.pop("addr") if ":" not in a]
        if ipv4:
            table["addr"] = ipv4
    missing = [k for k in ("interface", "vhid", "addr") if k not in table]
    if missing:
        state.notes.append(f"{node.where}: {label}: no {', '.join(missing)}: skipped")
        return None
    return _ordered(table)


def _interval_as_keepalived(node: Node, table: dict[str, Any], state: _State) -> None:
    """keepalived rounds a v2 interval to whole seconds and a v3 one to centiseconds (half
    up, at least one unit; keepalived/vrrp/vrrp.c), and so does the import, saying so."""
    given = table.get("advert_int")
    if given is None:
        return
    unit, top = (1.0, 255.0) if table["protocol"] == "vrrp2" else (0.01, 40.95)
    steps = max(1, int(given / unit + 0.5 + 1e-9))
    value = _int_or_float(round(min(steps * unit, top), 2))
    if abs(value - given) > 1e-9:
        table["advert_int"] = value
        state.notes.append(f"{node.where}: advert_int {given:g}: {value:g} with "
                           f"{table['protocol']}, as keepalived rounds it")


def _ordered(table: dict[str, Any]) -> dict[str, Any]:
    first = ("interface", "vhid", "protocol", "priority", "advert_int", "addr")
    return {**{k: table[k] for k in first if k in table},
            **{k: v for k, v in table.items() if k not in first}}


# ---- one directive of a vrrp_instance each ----
Handler = Callable[[Node, dict[str, Any], _State], None]


def _number(d: Node, state: _State) -> float | None:
    try:
        value = float(d.args[0])
    except (IndexError, ValueError):
        state.skip(d, "not a number")
        return None
    return value


def _int_or_float(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _simple(key: str, kind: str = "str") -> Handler:
    def handle(d: Node, table: dict[str, Any], state: _State) -> None:
        if not d.args:
            state.skip(d, "no value")
        elif kind == "str":
            table[key] = d.args[0]
        else:
            value = _number(d, state)
            if value is not None:
                table[key] = _int_or_float(value)
    return handle


def _version(d: Node, table: dict[str, Any], state: _State) -> None:
    if d.args in (["2"], ["3"]):
        table["protocol"], table[ipv6.VERSION_GIVEN] = f"vrrp{d.args[0]}", True
    else:
        state.skip(d, "VRRP version 2 or 3 only")


def _addresses(d: Node, table: dict[str, Any], state: _State) -> None:
    """``ADDR[/LEN] [dev IF] [label IF:x] [brd ..] [scope ..] ...``, one a line."""
    addrs: list[str] = []
    labels: set[str] = set()
    for entry in d.children():
        address = entry.name
        pairs, flags = vip_options(entry.args)
        dev = pairs.pop("dev", None)
        if dev is not None and dev != table.get("interface", dev):
            state.notes.append(
                f"{entry.where}: WARNING: {address} dev {dev}: not the instance's interface: "
                "kept in the instance's addresses (so our adverts list what keepalived's do "
                "and the group does not split) but carp-sidecar puts it on "
                f"{table.get('interface', 'the instance interface')}, not on {dev}")
        if "label" in pairs:
            labels.add(pairs.pop("label"))
        if pairs or flags:
            shown = [*(f"{k} {v}" for k, v in pairs.items()), *flags]
            state.notes.append(f"{entry.where}: {' '.join(shown)}"
                               f": not carried for {address} (the kernel's defaults)")
        if address in addrs or address.split("/")[0] in [a.split("/")[0] for a in addrs]:
            state.notes.append(f"{entry.where}: {address}: listed twice; once is enough")
            continue
        addrs.append(address)
    if len(labels) == 1:
        table["if_alias"] = labels.pop()
        if len(addrs) > 1:
            state.notes.append(f"{d.where}: label {table['if_alias']}: carried as if_alias, "
                               "which labels every VIP of the instance")
    elif labels:
        state.skip(d, f"labels {', '.join(sorted(labels))}: one label per instance "
                   "(if_alias)")
    if addrs:
        table["addr"] = addrs


def _peers(d: Node, table: dict[str, Any], state: _State) -> None:
    peers = [entry.name for entry in d.children()]
    extra = [entry for entry in d.children() if entry.args]
    for entry in extra:
        state.notes.append(f"{entry.where}: {entry.text}: only the address is carried")
    if peers:
        table["peers"] = peers


def _nopreempt(d: Node, table: dict[str, Any], state: _State) -> None:
    table["preempt"] = False


def _preempt(d: Node, table: dict[str, Any], state: _State) -> None:
    pass  # VRRP mode's default


def _state(d: Node, table: dict[str, Any], state: _State) -> None:
    if d.args[:1] != ["BACKUP"]:  # BACKUP: how every carp-sidecar node starts
        table["state_master"] = d.args[:1] == ["MASTER"]
        state.skip(d)


def _strict_mode(d: Node, table: dict[str, Any], state: _State) -> None:
    table["strict_mode"] = d.args[:1] in ([], ["on"], ["true"], ["yes"])
    state.skip(d, "keepalived's own strictness; it also makes keepalived ignore "
               "authentication, and so does the import")


def _authentication(d: Node, table: dict[str, Any], state: _State) -> None:
    # keepalived's vrrp_parser.c: the first word only, auth_type matched case-sensitively
    values = {c.name: (c.args[:1] or [""])[0] for c in d.children()}
    kind = values.get("auth_type", "")
    if kind != "PASS":
        why = ("keepalived matches PASS and AH case-sensitively, so it runs this instance "
               "without authentication, and so does the import") if kind.upper() in (
            "PASS", "AH") and kind != "AH" else (
            "only PASS (RFC 2338's simple password); imported without authentication, "
            "which AH peers will not accept")
        state.skip(d, f"auth_type {kind or '(none)'}: {why}")
        return
    password = values.get("auth_pass", "")
    if len(password.encode()) > 8:
        state.notes.append(f"{d.where}: auth_pass: longer than 8 bytes: keepalived sends the "
                           "first 8, and so does the import")
        password = password.encode()[:8].decode(errors="ignore")
    if password:
        table["pass"] = password


def _track_script(d: Node, table: dict[str, Any], state: _State) -> None:
    names = []
    for entry in d.children():
        script = state.scripts.get(entry.name)
        state.tracked.add(entry.name)
        if script is None:
            state.notes.append(f"{entry.where}: track_script {entry.name}: no vrrp_script of "
                               "that name; left out")
            continue
        check = _check(script, state)
        if check is None:
            continue
        weight = entry.args[1] if entry.args[:1] == ["weight"] and len(entry.args) > 1 else None
        _weight_note(entry, weight, state)
        state.checks[entry.name] = check
        names.append(entry.name)
    if names:
        table["health"] = names


def _check(script: Node, state: _State) -> dict[str, Any] | None:
    """A vrrp_script as a [health.NAME] check (keepalived's defaults: interval 1, rise and
    fall 1; the timeout, when not given, the interval)."""
    name = script.args[0]
    if name in state.checks:
        return state.checks[name]
    values = {c.name: c.args for c in script.children()}
    command = " ".join(values.get("script", []))
    if not command:
        state.notes.append(f"{script.where}: vrrp_script {name}: no script; left out")
        return None
    if SHELL.search(command):  # keepalived runs such a line through /bin/sh
        command = f"sh -c {shlex.quote(command)}"
    check: dict[str, Any] = {"cmd": command}
    for key, low, high, default in (("interval", 0.1, 3600, 1.0), ("rise", 1, 1000, 1.0),
                                    ("fall", 1, 1000, 1.0), ("timeout", 0.01, 300, None)):
        raw = (values.get(key) or [""])[0]
        try:
            value = float(raw) if raw else default if default is not None else check["interval"]
        except ValueError:
            state.notes.append(f"{script.where}: vrrp_script {name}: {key} {raw}: not a "
                               "number; keepalived's default instead")
            value = default if default is not None else check["interval"]
        check[key] = _int_or_float(min(max(value, low), high))
    for key in sorted(values.keys() - {"script", "interval", "rise", "fall", "timeout",
                                       "weight"}):
        state.notes.append(f"{script.where}: vrrp_script {name}: {key}: not carried")
    _weight_note(script, next(iter(values.get("weight", [])), None), state)
    return check


def _weight_note(node: Node, weight: str | None, state: _State) -> None:
    if weight is None or weight == "0":
        return  # keepalived's weight 0: a failing script is FAULT, which is our demotion
    where = f"{node.where}: {node.text}"
    if where not in " ".join(state.notes):
        state.notes.append(f"{where}: weight {weight} becomes \"demote\": a failing check hands "
                           "the VIP over (priority 0 sent) instead of changing the priority")


def _notify(d: Node, table: dict[str, Any], state: _State) -> None:
    """keepalived's ``notify`` runs ``script TYPE NAME STATE PRIORITY``; ours runs
    ``script VHID STATE REASON``: carried, with the difference said."""
    if d.name == "notify" and len(d.args) == 1 and not SHELL.search(d.args[0]) and \
            " " not in d.args[0]:
        table["notifyscript"] = d.args[0]
        state.notes.append(f"{d.where}: notify {d.args[0]}: carried as notifyscript, whose "
                           "arguments differ: VHID STATE REASON (keepalived: INSTANCE NAME "
                           "STATE PRIORITY); adapt the script")
        return
    state.skip(d, "one notifyscript gets every state change as `script VHID STATE REASON` "
               "(STATE: MASTER, BACKUP, ...); call this command from one")


def _preempt_delay(d: Node, table: dict[str, Any], state: _State) -> None:
    _simple("preempt_delay", "number")(d, table, state)
    if "preempt_delay" in table:
        state.notes.append(f"{d.where}: preempt_delay: carried, but counted from carp-sidecar's "
                           "start or link-up, where keepalived counts from the first "
                           "lower-priority advert it hears")


HANDLERS: dict[str, Handler] = {
    "interface": _simple("interface"), "virtual_router_id": _simple("vhid", "number"),
    "priority": _simple("priority", "number"), "advert_int": _simple("advert_int", "number"),
    "version": _version, "virtual_ipaddress": _addresses,
    "unicast_src_ip": _simple("srcip"), "mcast_src_ip": _simple("srcip"),
    "unicast_peer": _peers, "nopreempt": _nopreempt, "preempt": _preempt, "state": _state,
    "strict_mode": _strict_mode, "native_ipv6": ipv6.native_ipv6, "use_vmac": vmac.use_vmac,
    "vmac_xmit_base": vmac.vmac_xmit_base,
    "preempt_delay": _preempt_delay,
    "authentication": _authentication, "track_script": _track_script,
    "notify": _notify, **{n: _notify for n in NOTIFY},
    "garp_master_repeat": _simple("garp_repeat", "number"),
    "garp_master_refresh": _simple("garp_refresh", "number"),
}


def _render(path: Path, instances: list[dict[str, Any]], state: _State) -> str:
    import tomli_w

    head = [f"# carp-sidecar configuration (CARP_CONFIG=this file), imported from {path}",
            "# by `carp-sidecar import`; check it with `carp-sidecar check-config`"]
    head += [f"# {note}" for note in state.notes]
    body: dict[str, Any] = {"vhid": instances}
    used = {n for i in instances for n in i.get("health", [])}
    checks = {n: c for n, c in state.checks.items() if n in used}
    if checks:
        body["health"] = checks
    return "\n".join([*head, ""]) + tomli_w.dumps(body).rstrip("\n") + "\n"


def looks_like(paths: list[Path]) -> bool:
    """A keepalived.conf, not ucarp's configuration: one file whose statements include a
    keepalived block (ucarp's files have no braces)."""
    if len(paths) != 1:
        return False
    try:
        text = paths[0].read_text(errors="replace")
    except OSError:
        return paths[0].name.startswith("keepalived")  # translate() then says what is wrong
    return bool(KEEPALIVED_BLOCK.search(text))


KEEPALIVED_BLOCK = re.compile(r"^\s*(vrrp_instance|global_defs|vrrp_script|vrrp_sync_group|"
                              r"virtual_server|include)\b", re.M)
