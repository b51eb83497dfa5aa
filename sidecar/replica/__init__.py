"""Replicated paths: the state of the service follows the VIP (docs/sync.md).

The MASTER of a VHID serves its paths with rsync and says when they change; every BACKUP pulls
them. Only the agent imports this package, and only when a path is configured
(``CARP_SYNC_PATHS``): without one, nothing here runs or costs anything.
"""
