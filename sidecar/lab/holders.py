"""Who holds the lab's VIP, read with pyroute2 in each node's namespace, and a sampler that
records it over time in a thread: what the fault tests and `make chaos` judge ("never two
holders for longer than ...")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.lab.scenario import Lab


def vip_holders(lab: Lab) -> list[str]:
    """Nodes whose eth0 carries the VIP."""
    from pyroute2 import NetNS

    from sidecar.lab.scenario import VIP

    holders = []
    for name in ("a", "b"):
        with NetNS(lab.topo[name].ns) as ns:
            if VIP in [a.get("IFA_ADDRESS") for a in ns.get_addr(family=2)]:
                holders.append(name)
    return holders


class HolderSampler:
    """(monotonic time, number of holders) every ``interval`` s, in a thread; a context
    manager, or start()/stop()."""

    def __init__(self, lab: Lab, interval: float = 0.05) -> None:
        self.lab, self.interval = lab, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> HolderSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), len(vip_holders(self.lab))))
            self._stop.wait(self.interval)

    def longest(self, holders: int, excused: Callable[[float], bool] = lambda t: False) -> float:
        """The longest run of samples with exactly ``holders`` holders (s), leaving out the
        samples taken at excused times (a frozen or killed master's window)."""
        worst, since = 0.0, None
        for t, n in self.samples:
            if n == holders and not excused(t):
                since = t if since is None else since
                worst = max(worst, t - since)
            else:
                since = None
        return worst
