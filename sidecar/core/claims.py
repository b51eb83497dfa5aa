"""Other hosts' ARP and neighbour advertisements for our VIPs, by a session's rules
(sidecar.core.session): while MASTER, an answer to our stale-holder probe comes from a host that
still has the VIP configured; any other announcement from another MAC is a claim. Either way
ours is re-announced (the machine limits how often). Pure."""

from __future__ import annotations

from sidecar.core.machine import Action, Machine, State
from sidecar.core.outputs import ClaimSeen, Output, StaleHolder
from sidecar.core.peers import ArpClaims, PeerTable, StaleHolders

PROBE_ANSWER_WINDOW = 1.0  # s: an NA this soon after our NS probe answers it
STALE_LOG_BACKOFF = 60.0  # s between reports of one stale holder


class VipClaims:
    """The ARP and NA side of :class:`~sidecar.core.session.Session` (its base: the tables live
    here, the machine's actions go through the session's ``_after``)."""

    machine: Machine
    peers: PeerTable

    def __init__(self, capacity: int, advert_interval: float) -> None:
        self.arp_claims = ArpClaims(capacity, advert_interval)
        self._stale = StaleHolders(capacity, STALE_LOG_BACKOFF)
        self._probed_at = -1e9

    def _after(self, now: float, actions: list[Action]) -> list[Output]:
        raise NotImplementedError  # the session's: what follows from the machine's actions

    def arp(self, now: float, mac: bytes, probe_reply: bool = False) -> list[Output]:
        """An ARP for one of our IPv4 VIPs from another MAC; ``probe_reply``: an answer to
        our probe, from a host that has the VIP configured."""
        if self.machine.state is not State.MASTER:
            return []
        return self._stale_holder(now, mac) if probe_reply else self._claimed(now, "arp", mac)

    def na(self, now: float, mac: bytes) -> list[Output]:
        """A neighbour advertisement for one of our IPv6 VIPs from another MAC: just after our
        NS probe, the answer of a host that has it; otherwise another node announcing it."""
        if self.machine.state is not State.MASTER:
            return []
        if now - self._probed_at < PROBE_ANSWER_WINDOW:
            return self._stale_holder(now, mac)
        return self._claimed(now, "na", mac)

    def probed(self, now: float) -> None:
        """The probes of :class:`SendProbe` went out."""
        self._probed_at = now

    def _claimed(self, now: float, kind: str, mac: bytes) -> list[Output]:
        actions = self.machine.reannounce(now) if self.arp_claims.claimed(now, mac) else []
        return [ClaimSeen(kind, mac, bool(actions)), *self._after(now, actions)]

    def _stale_holder(self, now: float, mac: bytes) -> list[Output]:
        """A host still has our VIP configured (a killed agent's, typically: SIGKILL and the
        OOM killer leave no down path), unless another master speaks: then it is handing over
        (see StaleHolders). Reported once per back-off; ours is re-announced either way."""
        out = [] if self.peers.advertising(now) else [StaleHolder(mac, self._stale.seen(now, mac))]
        return out + self._after(now, self.machine.reannounce(now))

    def stale_holders(self, now: float) -> list[bytes]:
        return self._stale.current(now)
