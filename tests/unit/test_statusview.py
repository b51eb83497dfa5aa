"""`carp-sidecar status`'s text for the replicated paths: the `sync` object of /status
(docs/sync.md, "Seen and alerted") as lines, and nothing at all without it."""

from __future__ import annotations

from typing import Any

from sidecar.tools.statusview import render

NOW = 1_800_000_000.0
BACKUP: dict[str, Any] = {"vhid": 1, "interface": "eth0", "state": "BACKUP",
                          "vips": ["172.16.0.1/16"]}


def _path(**kw: Any) -> dict[str, Any]:
    return {"name": "www", "path": "/srv/www", "role": "replica", "lag_seconds": 0.0,
            "caught_up": True, "last_success": NOW - 3, "generation": 42,
            "synced_generation": 42, **kw}


def _sync(**kw: Any) -> dict[str, Any]:
    return {"epoch": 7, "fresh": True, "held_back": None, "took_over_with_lag": 0.0,
            "paths": [_path()], **kw}


def _lines(doc: dict[str, Any]) -> list[str]:
    return render(doc, now=NOW).splitlines()


def test_an_instance_without_sync_shows_no_sync_line() -> None:
    assert not any("sync" in ln or "path " in ln for ln in _lines(BACKUP))
    assert not any("sync" in ln for ln in _lines({**BACKUP, "sync": None}))


def test_a_fresh_backup_shows_its_epoch_and_each_path_matching() -> None:
    lines = _lines({**BACKUP, "sync": _sync()})
    assert "  sync:         epoch 7, fresh" in lines
    www = next(ln for ln in lines if ln.startswith("  path www:"))
    assert www.startswith("  path www:     /srv/www: matches the master, generation 42 of 42, "
                          "last pull 20")
    assert www.endswith("(3 s ago)")
    assert not any(ln.startswith("  took over:") for ln in lines)


def test_a_held_back_backup_shows_why_and_its_lag_per_path() -> None:
    sync = _sync(fresh=False, held_back="sync_behind",
                 paths=[_path(lag_seconds=12.4, synced_generation=41),
                        _path(name="sessions", path="/var/lib/php/sessions", lag_seconds=None,
                              caught_up=False, last_success=None, synced_generation=0)])
    lines = _lines({**BACKUP, "sync": sync})
    assert "  sync:         epoch 7, NOT FRESH, held back (sync_behind: will not preempt)" in lines
    assert any(ln.startswith("  path www:     /srv/www: lag 12.4 s, generation 41 of 42")
               for ln in lines)
    assert ("  path sessions: /var/lib/php/sessions: first catch-up not done, generation 0 "
            "of 42, last pull never") in lines


def test_a_master_shows_its_paths_served_and_the_lag_it_took_over_with() -> None:
    master = {**BACKUP, "state": "MASTER"}
    sync = _sync(took_over_with_lag=0.42, paths=[_path(role="source", generation=50)])
    lines = _lines({**master, "sync": sync})
    assert "  took over:    with a lag of 0.42 s" in lines
    assert "  path www:     /srv/www: served, generation 50" in lines
    lines = _lines({**master, "sync": _sync(took_over_with_lag=None)})
    assert "  took over:    before its first catch-up" in lines


def test_missing_keys_do_not_break_the_table() -> None:
    lines = _lines({**BACKUP, "sync": {"epoch": 3, "paths": [{"name": "1"}]}})
    assert "  sync:         epoch 3, NOT FRESH" in lines
    assert any(ln.startswith("  path 1:") for ln in lines)
