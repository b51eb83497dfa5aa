"""The one-machine demo (`carp-sidecar lab`, `make demo`) and the network-namespace topologies
the tests and benchmarks share. Nothing in the agent imports this package."""

from sidecar.lab.scenario import ADDRESSES, LAB_PASSWORD, VIP, Lab, agent_env, run_lab

__all__ = ["ADDRESSES", "LAB_PASSWORD", "VIP", "Lab", "agent_env", "run_lab"]
