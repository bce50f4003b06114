"""A deterministic in-process network simulator on virtual time.

Production shells (relay server, relay client, agent) run on it unchanged: a
simulated host's ``runtime()`` implements ``wgrelay.transport.base.Runtime``
on one asyncio loop whose clock jumps from event to event. Links add delay,
jitter, loss, duplication, reordering and bandwidth limits; NAT boxes follow
RFC 4787; ``SimWireGuard`` stands in for WireGuard itself. The same seed and
program give the same run, event for event (``Simulation.trace_digest``).

Example: two peers behind NATs punch a WireGuard tunnel; a relay host waits for
the production relay (``RelayServer(relay.runtime(), ...)``)::

    from wgrelay.keys import PrivateKey
    from wgrelay.sim import LinkSpec, NatKind, Simulation, SimWireGuard

    with Simulation(seed=7) as sim:
        relay = sim.add_host("relay", link=LinkSpec(delay_s=0.010))
        a = sim.add_host("a", behind=NatKind.FULL_CONE, link=LinkSpec(delay_s=0.030))
        b = sim.add_host("b", behind=NatKind.RESTRICTED_CONE, link=LinkSpec(delay_s=0.005))
        ka, kb = PrivateKey.generate(), PrivateKey.generate()
        wa, wb = SimWireGuard(a, "wg0", ka), SimWireGuard(b, "wg0", kb)
        assert a.nat is not None and b.nat is not None
        wa.add_peer(kb.public_key(), endpoint=(b.nat.public_ip, 51820), keepalive=25)
        wb.add_peer(ka.public_key(), endpoint=(a.nat.public_ip, 51820), keepalive=25)
        t = sim.run_until(lambda: wa.has_session(kb.public_key()), timeout_s=30)
        rtt = sim.run(wa.ping(kb.public_key()))
        print(f"tunnel up at t={t:.2f}s, rtt {rtt}, trace {sim.trace_digest()[:12]}")

Modules: ``loop`` (the virtual-time loop), ``link`` (LinkSpec, per-direction
pipes), ``nat`` (RFC 4787 tables and presets), ``topology`` (realms, hosts, NAT
boxes), ``engine`` (moving datagrams), ``socket`` (the transport seam),
``network`` (``Simulation``), ``trace``, ``wgwire``/``wgpeer``/``wireguard``
(the WireGuard stand-in).
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
from wgrelay.sim.wgpeer import PeerStats
from wgrelay.sim.wireguard import SimWireGuard

__all__ = [
    "EPOCH_S",
    "Dependence",
    "Host",
    "LinkSpec",
    "Nat",
    "NatBehavior",
    "NatKind",
    "Partition",
    "PeerStats",
    "SimRuntime",
    "SimUdpTransport",
    "SimWireGuard",
    "Simulation",
    "SimulationDeadlock",
    "SimulationError",
    "TraceRecord",
    "VirtualTimeLoop",
]
