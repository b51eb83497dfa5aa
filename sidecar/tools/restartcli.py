"""`carp-sidecar restart [--on-stop [--within S] | --cancel]`: the client side of a restart
without a move (docs/architecture.md, "Restart without a move").

In place, the agent answers before it execs the installed version; the control socket is then
closed for the new process's start (~0.5 s), so the command asks ``status`` until a process
that started later answers, and says in one line what came of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Send = Callable[..., str]  # sidecar.serve.control.send_command(path, command, timeout=...)
DEFAULT_WITHIN = 300.0  # s: how long an armed --on-stop waits for its stop
WAIT = 30.0  # s: how long `restart` waits for the new process to answer


def within(text: str) -> float:
    """--within's type: seconds, 1 to 86400 (a day: an intent left armed for longer is a
    forgotten one, and a forgotten one turns a real stop into a kept VIP)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= 86400:
        raise ValueError(f"{text} s: between 1 and 86400")
    return value


def on_stop(path: Path, send: Send, seconds: float | None, cancel: bool) -> str:
    """Arm (or with ``cancel`` disarm) the intent: the agent's reply."""
    arg = "off" if cancel else f"{DEFAULT_WITHIN if seconds is None else seconds:g}"
    return send(path, f"restart-on-stop {arg}")


def in_place(path: Path, send: Send, out: Callable[[str], None], wait: float = WAIT,
             poll: float = 0.1) -> int:
    """Ask for the restart, print the agent's reply, then wait for the new image: 0 once the
    same process answers as a new image that resumed (or started afresh) every instance it
    had as MASTER, 1 on a refusal, on a lost MASTER, or if none answers within ``wait`` s."""
    before = json.loads(send(path, "status"))
    asked = time.monotonic()
    try:
        reply = send(path, "restart", timeout=60)  # the pre-flight validates in a child
    except OSError as e:  # send_command raises the agent's `error: ...` reply
        reply = str(e)
    out(reply)
    if not reply.startswith("ok"):  # refused: nothing will restart, nothing to wait for
        return 1
    deadline, last = time.monotonic() + wait, "no answer yet"
    while time.monotonic() < deadline:
        time.sleep(poll)
        try:
            now = json.loads(send(path, "status", timeout=2))
        except (OSError, ValueError) as e:  # the socket is closed while the new one starts
            last = str(e) or type(e).__name__
            continue
        why = not_yet(before, now)
        if why is None:
            lost = lost_masters(before, now)
            out(outcome(before, now, time.monotonic() - asked))
            if lost:
                out(f"carp-sidecar: restart: no longer MASTER: {lost}; see the agent's log")
                return 1
            return 0
        last = why
    out(f"carp-sidecar: restart: no restarted agent answered within {wait:g} s ({last}); "
        "see the agent's log")
    return 1


def not_yet(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why ``now`` is not yet the restarted image's settled answer, or None once it is."""
    old, new = _agent(before), _agent(now)
    if new.get("pid") != old.get("pid"):
        return f"another process answers (pid {new.get('pid')}, not {old.get('pid')})"
    if new.get("started") == old.get("started"):
        return f"the agent (pid {new.get('pid')}) that was asked still answers"
    if not new.get("last_restart"):
        return "the new image has not resumed yet"
    starting = [_label(i) for i in now.get("instances", []) if i.get("state") == "INIT"]
    return f"still starting: {', '.join(starting)}" if starting else None


def lost_masters(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The instances MASTER before and not after (the restart moved them), with their state."""
    now = {_key(i): i.get("state") for i in after.get("instances", [])}
    return ", ".join(f"{_label(i)} is {now.get(_key(i), 'gone')}"
                     for i in before.get("instances", []) if i.get("state") == "MASTER"
                     and now.get(_key(i)) != "MASTER")


def _key(i: dict[str, Any]) -> tuple[Any, Any, bool]:
    """An instance of the agent's /status: its interface, VHID and family (a VRID may be an
    IPv4 and an IPv6 instance's)."""
    return (i.get("interface"), i.get("vhid"), bool(i.get("ipv6")))


def _label(i: dict[str, Any]) -> str:
    return f"{i.get('interface')} vhid {i.get('vhid')}" + " (IPv6)" * bool(i.get("ipv6"))


def outcome(before: dict[str, Any], after: dict[str, Any], waited: float) -> str:
    """``restarted in place in 0.42 s: version 1.4 -> 1.5; eth0 vhid 1 MASTER kept``."""
    last = _agent(after).get("last_restart") or {}
    seconds = last.get("seconds", waited)
    old = last.get("from_version") or _agent(before).get("version", "?")
    was = {_key(i): i.get("state") for i in before.get("instances", [])}
    states = []
    for i in after.get("instances", []):
        key, state = _key(i), i.get("state")
        kept = " kept" if was.get(key) == state else f" (was {was[key]})" if key in was else ""
        states.append(f"{_label(i)} {state}{kept}")
    how = "in place" if last.get("kind", "in_place") == "in_place" else str(last.get("kind"))
    if last.get("result") == "afresh":
        how += " (started afresh: nothing resumed)"
    return (f"restarted {how} in {float(seconds or waited):.2f} s: version {old} -> "
            f"{_agent(after).get('version', '?')}; " + ", ".join(states))


def _agent(doc: dict[str, Any]) -> dict[str, Any]:
    agent = doc.get("agent")
    return agent if isinstance(agent, dict) else {}
