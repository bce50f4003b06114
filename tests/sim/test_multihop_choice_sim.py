"""Whole-path choice over two relays, on the simulator.

A is near relay 1 (5 ms one way), B near relay 2 (5 ms), relays 1 and 2 are
joined by a fast route (10 ms); relay 3 is 80 ms from everyone, and each
peer is 200 ms from the other's relay. Direct is impossible (symmetric
NATs letting UDP out only to the relays). Each agent homes at its near
relay and keeps relay 3 as standby, so B is found at relay 2 and relay 3.

Costs the agent computes (RTTs, ms): through relay 3, 160 + 160 = 320;
through relay 2 alone, 400 + 10 = 410; through relays 1 and 2,
10 + 20 + 10 + 10 (the second relay's extra) = 50. So the tunnel goes
A-R1-R2-B; when the route between relays 1 and 2 gets slow (300 ms one
way: 10 + 600 + 10 + 10 = 630) it moves to relay 3, once; and when
relay 1 does not list relay 2 for legs, no two-relay path is ever tried.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from wgrelay.client.plan import RelayPlanner
from wgrelay.mesh.daemon import status_path
from wgrelay.mesh.status import render_status
from wgrelay.sim import LinkSpec, Simulation
from wgrelay.sim.mesh import INTERFACE, SimMesh, SimPeer, SimRelay
from wgrelay.sim.nat import Dependence, NatBehavior

_APDM = Dependence.ADDRESS_AND_PORT_DEPENDENT
_ACCESS = LinkSpec(delay_s=0.0005)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=5) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def _only_relays(*relays: SimRelay) -> NatBehavior:
    """A symmetric NAT letting UDP out to the relays only: never direct."""
    return NatBehavior(
        mapping=_APDM,
        filtering=_APDM,
        port_preservation=False,
        tcp_blocked=True,
        udp_only_to=frozenset(r.host.address for r in relays),
    )


def _legs(relay: SimRelay, *others: SimRelay) -> None:
    """``start-relay --leg-relay``: the relays this one runs legs with."""
    relay.config = replace(relay.config, leg_relays=frozenset(o.key.raw for o in others))
    if relay.core is not None:
        relay.core.reconfigure(config=relay.config)


def _world(
    mesh: SimMesh, *, r1_r2_legs: bool = True
) -> tuple[SimRelay, SimRelay, SimRelay, SimPeer, SimPeer]:
    r1 = mesh.add_relay("relay1", link=_ACCESS)
    r2 = mesh.add_relay("relay2", link=_ACCESS, bootstrap=[r1])
    r3 = mesh.add_relay("relay3", link=_ACCESS, bootstrap=[r1])
    if r1_r2_legs:
        _legs(r1, r2, r3)
        _legs(r2, r1, r3)
    else:  # both run legs, but not with each other
        _legs(r1, r3)
        _legs(r2, r3)
    _legs(r3, r1, r2)
    nat = _only_relays(r1, r2, r3)
    a = mesh.add_peer("a", behind=nat, link=_ACCESS, relays=[r1, r2, r3])
    b = mesh.add_peer("b", behind=nat, link=_ACCESS, relays=[r1, r2, r3])
    delay = mesh.sim.set_route_delay
    delay([a.host], [r1.host], 0.005)
    delay([b.host], [r2.host], 0.005)
    delay([r1.host], [r2.host], 0.010)
    delay([a.host, b.host, r1.host, r2.host], [r3.host], 0.080)
    delay([a.host], [r2.host], 0.200)
    delay([b.host], [r1.host], 0.200)
    mesh.connect(a, b)
    # relays run before agents start (they measured each other by then)
    mesh.sim.run_for(10.0)
    mesh.start()
    return r1, r2, r3, a, b


def _planner(p: SimPeer) -> RelayPlanner:
    assert p.agent is not None
    return p.agent.manager.planner


def _initiator(a: SimPeer, b: SimPeer) -> tuple[SimPeer, SimPeer]:
    """The agent that asks for the relayed path (the smaller key), and the other."""
    return (a, b) if a.public.raw < b.public.raw else (b, a)


def _status_peer(p: SimPeer, other: SimPeer) -> dict[str, object]:
    doc = json.loads(status_path(p.state_dir, INTERFACE).read_text())
    return next(x for x in doc["peers"] if x["public_key"] == str(other.public))


def _median_rtt_ms(results: list[tuple[float, float | None]], since: float) -> float:
    rtts = [rtt * 1000 for t, rtt in results if t >= since and rtt is not None]
    assert len(rtts) >= 5, results
    return statistics.median(rtts)


def test_two_near_relays_beat_one_far_and_the_path_moves_once_when_their_route_slows(
    mesh: SimMesh,
) -> None:
    r1, r2, r3, a, b = _world(mesh)
    asker, other = _initiator(a, b)
    near = {a.name: r1, b.name: r2}
    took = mesh.wait_connected(a, b, timeout_s=60)
    mesh.sim.run_until(lambda: _planner(asker).exit_relay(other.public) is not None, timeout_s=60)
    # the asker's session is at its home, which goes through the other's home
    assert asker.relay_for(other) == near[asker.name].key
    assert _planner(asker).exit_relay(other.public) == near[other.name].key
    assert other.relay_for(asker) == near[other.name].key
    s1, s2 = r1.stats(), r2.stats()
    assert s1 is not None
    assert s2 is not None
    assert s1.legs["open_entry"] + s1.legs["open_exit"] == 1, s1.legs
    assert s2.legs["open_entry"] + s2.legs["open_exit"] == 1, s2.legs
    # the status names both relays (the agent writes it when it changes)
    mesh.sim.run_until(lambda: _status_peer(asker, other)["exit_relay"] is not None, timeout_s=10)
    st = _status_peer(asker, other)
    assert (st["relay"], st["exit_relay"]) == (str(near[asker.name].key), str(near[other.name].key))
    doc = json.loads(status_path(asker.state_dir, INTERFACE).read_text())
    text = render_status({"interfaces": [{**doc, "agent_running": True}]})
    assert f"relays {str(st['relay'])[:8]}.. > {str(st['exit_relay'])[:8]}.." in text

    traffic = mesh.ping_every(a, b, interval_s=1.0, timeout_s=2.0)
    watch = mesh.watch([(a, b)], interval_s=0.5)
    relays_seen: list[tuple[float, object, object]] = []

    async def sample() -> None:
        while True:
            now = (asker.relay_for(other), _planner(asker).exit_relay(other.public))
            if not relays_seen or relays_seen[-1][1:] != now:
                relays_seen.append((mesh.sim.now(), *now))
            await asyncio.sleep(0.5)

    mesh.sim.spawn(sample(), name="relay sampler")
    start = mesh.sim.now()
    mesh.sim.run_for(30.0)
    two_relays_ms = _median_rtt_ms(traffic.results, start)
    # A-R1 5, R1-R2 10, R2-B 5 one way (+ access links): 40 ms and a little
    assert 40 < two_relays_ms < 50, two_relays_ms

    # the route between relays 1 and 2 gets slow: the relays see it in their
    # pings, the home tells the asker, which moves to relay 3, once
    slow_at = mesh.sim.now()
    mesh.sim.set_route_delay([r1.host], [r2.host], 0.300)
    mesh.sim.run_until(lambda: asker.relay_for(other) == r3.key, timeout_s=120)
    moved_after = mesh.sim.now() - slow_at
    assert _planner(asker).exit_relay(other.public) is None
    mesh.sim.run_until(lambda: other.relay_for(asker) == r3.key, timeout_s=30)
    settled = mesh.sim.now()
    mesh.sim.run_for(300.0)
    for p, q in ((a, b), (b, a)):
        assert p.relay_for(q) == r3.key
    one_relay_ms = _median_rtt_ms(traffic.results, settled + 5)
    # 80 + 80 one way, both ways
    assert 320 < one_relay_ms < 335, one_relay_ms
    assert two_relays_ms < one_relay_ms / 6
    # never back and forth: two relays, then relay 3, and the path never went down
    paths = [(entry, exit_) for _, entry, exit_ in relays_seen]
    assert paths == [(near[asker.name].key, near[other.name].key), (r3.key, None)], relays_seen
    assert watch.count(since=slow_at) == 0, watch.changes
    lost = sum(1 for t, rtt in traffic.results if rtt is None)
    assert lost <= 2, traffic.results  # (at most the pings in flight as the path moved)
    print(
        f"tunnel up at {took:.1f} s over relays 1 and 2; ping median {two_relays_ms:.1f} ms; "
        f"route slowed: moved to relay 3 after {moved_after:.1f} s; "
        f"ping median {one_relay_ms:.1f} ms; {lost} of {len(traffic.results)} pings lost; "
        "no other move in 300 s"
    )


def test_no_two_relay_path_between_relays_that_do_not_run_legs_with_each_other(
    mesh: SimMesh,
) -> None:
    """Relay 1 carries legs to relay 3 only: the asker weighs A-R1-R3-B
    (10 + 160 + 160 + 10 = 340, more than relay 3 alone) and never A-R1-R2-B,
    however fast that route; no relay ever opens or refuses a leg."""
    r1, r2, r3, a, b = _world(mesh, r1_r2_legs=False)
    asker, other = _initiator(a, b)
    mesh.wait_connected(a, b, timeout_s=60)
    mesh.sim.run_for(120.0)
    assert asker.relay_for(other) == r3.key
    assert other.relay_for(asker) == r3.key
    assert _planner(asker).exit_relay(other.public) is None
    # the home told the asker about relay 3 only
    home = _planner(asker).link(r1.key if asker is a else r2.key)
    assert home is not None
    assert set(getattr(home, "leg_rtts", {})) == {r3.key}
    for r in (r1, r2, r3):
        assert r.core is not None
        assert r.core.federation.counters.get("sent_LegOpen", 0) == 0, r.name
        st = r.stats()
        assert st is not None
        assert not any(v for k, v in st.legs.items() if k.startswith("refused")), st.legs


def test_same_seed_same_choice(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        with Simulation(seed=5) as sim:
            mesh = SimMesh(sim, tmp_path / str(i))
            _, _, _, a, b = _world(mesh)
            took = mesh.wait_connected(a, b, timeout_s=60)
            sim.run_for(20.0)
            runs.append((took, a.relay_for(b), b.relay_for(a), sim.trace_digest()))
    assert runs[0] == runs[1]
