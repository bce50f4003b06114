"""A deterministic in-process network simulator on virtual time.

Production shells (relay server, relay client, agent) run on it unchanged: a
simulated host's ``runtime()`` implements ``wgrelay.transport.base.Runtime``
on one asyncio loop whose clock jumps from event to event. Links add delay,
jitter, loss, duplication, reordering and bandwidth limits; NAT boxes follow
RFC 4787; ``SimWireGuard`` stands in for WireGuard itself. The same seed and
program give the same run, event for event (``Simulation.trace_digest``).

Example: a client behind a NAT talks to a server on the internet::

    from wgrelay.sim import LinkSpec, NatKind, Simulation

    with Simulation(seed=7) as sim:
        server = sim.add_host("server", link=LinkSpec(delay_s=0.010))
        client = sim.add_host("client", behind=NatKind.SYMMETRIC)
        # production shells take server.runtime() / client.runtime()

Modules: ``loop`` (the virtual-time loop), ``link`` (LinkSpec, per-direction
pipes), ``nat`` (RFC 4787 tables and presets), ``topology`` (realms, hosts, NAT
boxes), ``engine`` (moving datagrams), ``socket`` (the transport seam),
``network`` (``Simulation``), ``trace``.
"""

from __future__ import annotations

from wgrelay.sim.engine import Partition
from wgrelay.sim.link import LinkSpec
from wgrelay.sim.loop import EPOCH_S, SimulationDeadlock, SimulationError, VirtualTimeLoop
from wgrelay.sim.nat import Dependence, NatBehavior, NatKind
from wgrelay.sim.network import Simulation
from wgrelay.sim.socket import SimRuntime, SimUdpTransport
from wgrelay.sim.topology import Host, Nat
from wgrelay.sim.trace import TraceRecord

__all__ = [
    "EPOCH_S",
    "Dependence",
    "Host",
    "LinkSpec",
    "Nat",
    "NatBehavior",
    "NatKind",
    "Partition",
    "SimRuntime",
    "SimUdpTransport",
    "Simulation",
    "SimulationDeadlock",
    "SimulationError",
    "TraceRecord",
    "VirtualTimeLoop",
]
