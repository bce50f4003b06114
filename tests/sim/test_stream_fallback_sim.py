"""The agent's TCP/TLS fallback on the simulator: the production relay and agent,
simulated NATs that drop UDP (or let only TCP 443 out), virtual time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wgrelay.client.fallback import Carrier
from wgrelay.sim import NatKind, Simulation
from wgrelay.sim.mesh import SimMesh, SimPeer
from wgrelay.sim.nat import NAT_PRESETS
from wgrelay.sim.natmatrix import PEER_LINK, RELAY_LINK


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=3) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def _pair(mesh: SimMesh, kind_a: NatKind, kind_b: NatKind) -> tuple[SimPeer, SimPeer]:
    a = mesh.add_peer("a", behind=kind_a, link=PEER_LINK)
    b = mesh.add_peer("b", behind=kind_b, link=PEER_LINK)
    mesh.connect(a, b)
    return a, b


def _carrier(peer: SimPeer, relay_key: object) -> Carrier:
    agent = peer.agent
    assert agent is not None
    return agent.manager.carrier(relay_key)  # type: ignore[arg-type]


def test_udp_blocked_mid_session_moves_to_tcp_and_back_when_udp_returns(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = _pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    assert _carrier(a, relay.key) == Carrier.UDP
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(10.0)

    nat = a.host.nat
    assert nat is not None
    udp_ok = nat.behavior
    nat.reconfigure(NAT_PRESETS[NatKind.UDP_BLOCKED])  # the network starts dropping UDP
    blocked_at = mesh.sim.now()
    mesh.sim.run_until(lambda: _carrier(a, relay.key) == Carrier.TCP, timeout_s=30)
    moved = mesh.sim.now() - blocked_at
    mesh.sim.run_until(lambda: mesh.connected(a, b), timeout_s=30)
    mesh.sim.run_for(20.0)
    # the tunnel runs over the stream: the last pings are all answered
    recent = [rtt for s, rtt in traffic.results if s >= mesh.sim.now() - 10.0]
    assert recent
    assert all(rtt is not None for rtt in recent)
    assert a.agent is not None
    assert a.agent.core.udp_blocked  # no direct tries meanwhile
    # (virtual time) the tunnel came back over the stream within seconds: the
    # port-mode peers went framed when their link moved (23 s before that)
    outage = [(s, e) for s, e in traffic.outages() if e >= blocked_at]
    assert outage
    assert outage[0][1] - blocked_at <= 5.0, outage

    nat.reconfigure(udp_ok)  # UDP gets through again
    opened_at = mesh.sim.now()
    mesh.sim.run_until(lambda: _carrier(a, relay.key) == Carrier.UDP, timeout_s=90)
    back = mesh.sim.now() - opened_at
    mesh.sim.run_for(15.0)
    recent = [rtt for s, rtt in traffic.results if s >= mesh.sim.now() - 10.0]
    assert all(rtt is not None for rtt in recent)
    stats = relay.stats()
    assert stats is not None
    assert stats.streams_open == 0  # the stream closed after the grace
    print(f"on TCP {moved:.1f} s after UDP was blocked; back on UDP {back:.1f} s after it opened")


def test_https_only_network_reaches_the_relay_over_tls(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = _pair(mesh, NatKind.TCP_443_ONLY, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=15)
    assert _carrier(a, relay.key) == Carrier.TLS
    assert _carrier(b, relay.key) == Carrier.UDP
    assert a.agent is not None
    errors = a.agent.manager.fallback.last_error(relay.endpoint)
    assert errors is None  # cleared when TLS came up


def test_a_dead_relay_does_not_move_the_failover_onto_tcp(mesh: SimMesh) -> None:
    """A dead relay is as silent over UDP as a blocked network; its stream
    fails too, and the relay taking over answers over UDP: nothing goes
    over TCP."""
    first = mesh.add_relay("relay1", link=RELAY_LINK)
    second = mesh.add_relay("relay2", link=RELAY_LINK)
    a, b = _pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    carrier = first if a.relay_for(b) == first.key else second
    carrier.kill()
    other = second if carrier is first else first
    mesh.sim.run_until(lambda: a.relay_for(b) == other.key and mesh.connected(a, b), timeout_s=60)
    mesh.sim.run_for(10.0)
    for p in (a, b):
        assert p.agent is not None
        assert not p.agent.manager.fallback.udp_blocked
        assert _carrier(p, other.key) == Carrier.UDP
