"""An instance's replicated paths (CARP_SYNC_PATHS), attached by the agent: the replica
package (and watchfiles) is loaded on first use, never by an agent without a path."""

from __future__ import annotations

import logging
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from sidecar.net.netlink import Link
from sidecar.runtime import reaper
from sidecar.runtime.instance import Instance
from sidecar.runtime.startup import StartupError

if TYPE_CHECKING:
    from sidecar.runtime.agent import Agent

log = logging.getLogger("carp-sidecar")


async def attach(agent: Agent, instance: Instance, link: Link) -> None:
    """The instance's replicated paths; the replica package is loaded on first use."""
    s = instance.s
    if agent.config.sync_secret_file is None:  # a reload added the agent's first path
        log.error("vhid %d: CARP_SYNC_SECRET_FILE is read at start: restart the agent to "
                  "replicate %s", s.vhid, ", ".join(map(str, s.sync_paths)))
        return
    if agent.replication is None:
        from sidecar.replica.service import Replication
        try:
            agent.replication = Replication(agent.config, agent.registry, agent.spawn,
                                           reaper.spawn)
        except ValueError as e:  # the secret file's rule names the variable itself
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"CARP_SYNC_SECRET_FILE: {e.strerror or e}") from None
    networks = [a.network for a in await agent.nl.ipv4_addresses(link.index)
                if a.ip == instance.srcip]
    agent.replication.bind(s, instance.srcip)
    try:
        await agent.replication.start()
    except OSError as e:
        raise StartupError(f"CARP_SYNC_PORT: cannot listen on {instance.srcip} port "
                           f"{agent.config.sync_port}: {e.strerror or e}") from None
    network = networks[0] if networks else IPv4Network(f"{instance.srcip}/32")
    instance.replica = agent.replication.add(s, network, instance.set_sync_behind)


async def detach(agent: Agent, instance: Instance) -> None:
    """Its replication stops; nothing holds the instance back any more."""
    if instance.replica is not None and agent.replication is not None:
        instance.replica = None
        instance.set_sync_behind(False)
        await agent.replication.remove(instance.s.name)
