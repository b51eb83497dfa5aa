"""The two pyroute2 names the agent uses, without pyroute2's package ``__init__``.

That ``__init__`` imports every protocol pyroute2 speaks (IPDB, NDB, nftables, WireGuard,
nl80211, IPVS, ...): about 6 MB of resident memory and 100 ms of start-up the agent never uses.
When nothing has imported pyroute2 yet, a bare package module stands in for it, so importing
``pyroute2.iproute.linux`` loads only rtnetlink and its dependencies. If pyroute2 is already
imported (a test, a host program embedding the agent), the real package is used as is; if
something in the same process later asks the bare module for a name it lacks (``from pyroute2
import NetNS``), the real ``__init__`` runs then, in place, and the name is there.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

if "pyroute2" not in sys.modules:
    _spec = importlib.util.find_spec("pyroute2")
    if _spec is not None and _spec.submodule_search_locations is not None:
        _bare = types.ModuleType("pyroute2")
        _bare.__path__ = list(_spec.submodule_search_locations)
        _bare.__spec__ = _spec
        _bare.__file__ = _spec.origin

        def _complete(name: str) -> object:
            if importlib.util.find_spec(f"pyroute2.{name}") is not None:
                return importlib.import_module(f"pyroute2.{name}")  # a submodule: just it
            del _bare.__dict__["__getattr__"]
            assert _spec is not None and _spec.loader is not None
            _spec.loader.exec_module(_bare)  # the real __init__, into this same module
            return getattr(_bare, name)

        _bare.__dict__["__getattr__"] = _complete
        sys.modules["pyroute2"] = _bare

from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["AsyncIPRoute", "NetlinkError"]
