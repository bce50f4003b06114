"""Failover in seconds: a relay that carries a tunnel dies, the tunnel moves.

Both agents keep a standby relay registered, and a link that carried traffic
probes its relay densely once it falls silent (``LinkConfig.carrier_*``), so a
dead relay is noticed in about 2 s and the switch costs one session request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wgrelay.relay.config import RelayConfig
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import SimMesh

FAILOVER_BOUND_S = 3.0


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=7) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def test_dead_carrying_relay_is_replaced_within_three_seconds(mesh: SimMesh) -> None:
    framed = RelayConfig()  # no session ports: through the agents' proxies
    first = mesh.add_relay("relay1", link=LinkSpec(delay_s=0.010), config=framed)
    second = mesh.add_relay("relay2", link=LinkSpec(delay_s=0.025), config=framed)
    a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    mesh.connect(a, b)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    assert a.relay_for(b) == first.key
    # both keep the other relay registered as their standby
    mesh.sim.run_until(lambda: second.holds(a) and second.holds(b), timeout_s=10)
    traffic = mesh.ping_every(a, b, interval_s=0.1, timeout_s=0.5)
    mesh.sim.run_for(5.0)
    killed_at = mesh.sim.now()
    first.kill()
    mesh.sim.run_for(20.0)
    assert a.relay_for(b) == second.key == b.relay_for(a)
    answered_after = [s for s, rtt in traffic.results if s >= killed_at and rtt is not None]
    assert answered_after
    back = answered_after[0] - killed_at
    assert back <= FAILOVER_BOUND_S, f"first answer {back:.2f} s after the relay died"
    print(f"first answered ping {back:.2f} s after the relay died")
    late = [rtt for s, rtt in traffic.results if s >= killed_at + FAILOVER_BOUND_S]
    assert late
    assert all(rtt is not None for rtt in late)


def test_in_port_mode_the_tunnel_moves_to_the_new_relays_port_within_three_seconds(
    mesh: SimMesh,
) -> None:
    """WireGuard's session is current when the relay dies, so its packets would
    not latch the new relay's ports until its next handshake: each agent
    restarts the peer, which handshakes through the new port at once."""
    ports = RelayConfig(port_range=(52000, 52099))
    first = mesh.add_relay("relay1", link=LinkSpec(delay_s=0.010), config=ports)
    second = mesh.add_relay("relay2", link=LinkSpec(delay_s=0.025), config=ports)
    a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.020))
    mesh.connect(a, b)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    mesh.sim.run_until(lambda: second.holds(a) and second.holds(b), timeout_s=10)
    traffic = mesh.ping_every(a, b, interval_s=0.1, timeout_s=0.5)
    mesh.sim.run_for(5.0)
    for me, other in ((a, b), (b, a)):
        assert me._agent().port_mode.describe(other.public)[0] == "port"
    killed_at = mesh.sim.now()
    first.kill()
    mesh.sim.run_for(20.0)
    answered_after = [s for s, rtt in traffic.results if s >= killed_at and rtt is not None]
    assert answered_after
    back = answered_after[0] - killed_at
    print(f"port mode: first answered ping {back:.2f} s after the relay died")
    assert back <= FAILOVER_BOUND_S
    for me, other in ((a, b), (b, a)):
        assert me.relay_for(other) == second.key
        assert me._agent().port_mode.describe(other.public)[0] == "port"
        ep = me.wg.read(me.wg.interface).peer(other.public).endpoint  # type: ignore[union-attr]
        assert ep is not None
        assert ep[0] == second.endpoint[0]
        assert 52000 <= ep[1] <= 52099
    late = [rtt for s, rtt in traffic.results if s >= killed_at + FAILOVER_BOUND_S]
    assert late
    assert all(rtt is not None for rtt in late)
