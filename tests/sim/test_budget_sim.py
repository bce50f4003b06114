"""A volunteer relay with a tiny byte budget, in the simulator: it serves
until the budget is spent, then carries nothing, refuses new sessions, and its
announcement says so; the agents' tunnels go through the other relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import Capability
from wgrelay.relay.budget import parse_budget
from wgrelay.relay.config import RelayConfig
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import SimMesh, SimRelay

BUDGET = "30kB/day"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=11) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def _announced_left(relay: SimRelay, about: SimRelay) -> int | None:
    """What ``relay`` holds as ``about``'s announcement says of its budget."""
    core = relay.core
    assert core is not None
    raw = core.federation.directory.raw_announcement(about.key)
    if raw is None:
        return None
    info = decode_announcement(raw).info
    assert info.capabilities & Capability.BUDGET
    return info.budget_left_pct


def test_spent_relay_stops_its_sessions_says_so_and_agents_use_the_other(mesh: SimMesh) -> None:
    volunteer = mesh.add_relay(
        "volunteer",
        link=LinkSpec(delay_s=0.005),
        config=RelayConfig(budget=parse_budget(BUDGET)),
    )
    other = mesh.add_relay("other", link=LinkSpec(delay_s=0.040), bootstrap=[volunteer])
    a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
    mesh.connect(a, b)
    mesh.start([a, b])
    mesh.wait_connected(a, b, timeout_s=30)
    assert a.relay_for(b) == volunteer.key  # the near relay, while it has budget
    mesh.sim.run_until(lambda: _announced_left(other, volunteer) == 100, timeout_s=30)

    traffic = mesh.ping_every(a, b, interval_s=0.05, timeout_s=0.5)

    def spent() -> bool:
        st = volunteer.stats()
        return st is not None and st.budget_left == 0

    mesh.sim.run_until(spent, timeout_s=120)
    spent_at = mesh.sim.now()
    st = volunteer.stats()
    assert st is not None
    print(f"budget {BUDGET} spent after {spent_at:.1f} s: {st.budget_used} bytes counted")
    assert st.budget_bytes == 30_000
    # overshoot: at most a second of this traffic (the accounting tick)
    assert st.budget_used < 30_000 + 20 * 2 * 200

    # it carries nothing more, and tells the federation (and so the agents)
    mesh.sim.run_for(10.0)
    st = volunteer.stats()
    assert st is not None
    assert st.sessions_active == 0
    assert volunteer.core is not None
    own = decode_announcement(volunteer.core.announcement(mesh.sim.now()) or b"").info
    assert own.budget_left_pct == 0
    mesh.sim.run_until(lambda: _announced_left(other, volunteer) == 0, timeout_s=30)

    # the tunnel went on through the other relay
    mesh.sim.run_until(
        lambda: a.relay_for(b) == other.key and b.relay_for(a) == other.key, timeout_s=30
    )
    moved_at = mesh.sim.now()
    mesh.sim.run_for(5.0)
    late = [rtt for s, rtt in traffic.results if moved_at <= s <= moved_at + 4.0]
    assert late
    assert sum(rtt is not None for rtt in late) >= 0.95 * len(late)

    # a pair that starts now learns that the volunteer is spent and never
    # gets a session there (the volunteer refuses any that is asked for)
    used_then = st.budget_used
    c = mesh.add_peer("c", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
    d = mesh.add_peer("d", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
    mesh.connect(c, d)
    mesh.start([c, d])
    mesh.wait_connected(c, d, timeout_s=30)
    assert c.relay_for(d) == other.key == d.relay_for(c)
    known = c.registry.get(volunteer.key)
    assert known is not None
    assert known.budget_left_pct == 0
    mesh.sim.run_for(10.0)
    st = volunteer.stats()
    assert st is not None
    assert st.sessions_active == 0
    assert st.budget_used == used_then  # not a byte more
