"""The seed's section 6.3 scenarios (and more) on the simulator, with the production cores.

Every scenario builds a ``SimMesh``: production ``RelayCore``/``RelayServer``
relays and production agents (``wgrelay.mesh.daemon.Agent`` over
``AgentCore`` and the relay client) beside simulated WireGuard interfaces, on a
seeded virtual-time network. Times are virtual seconds; each run is exactly
repeatable, so the bounds below are where today's agent lands, with room for
tuning but not for a behaviour change.

Tunnels under test carry traffic (a ping a second, ``ping_every``): the agents
judge a path by what WireGuard receives, and an idle tunnel misleads them
today (the two ``xfail`` tests at the end pin that down).
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import wgrelay
from wgrelay.client.manager import RelayManager
from wgrelay.mesh.agent import AgentConfig, AgentCore, PathKind
from wgrelay.mesh.daemon import Agent
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import RelayServer
from wgrelay.sim import LinkSpec, NatKind, Simulation, SimWireGuard
from wgrelay.sim.mesh import SimMesh, SimPeer
from wgrelay.sim.natmatrix import expected_direct
from wgrelay.sim.socket import SimRuntime

RELAY_LINK = LinkSpec(delay_s=0.010)
PEER_LINK = LinkSpec(delay_s=0.020)
TEN_MINUTES_S = 600.0


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[SimMesh]:
    with Simulation(seed=1) as sim:
        yield SimMesh(sim, tmp_path)
        assert not sim.loop_errors


def pair(mesh: SimMesh, kind_a: NatKind, kind_b: NatKind) -> tuple[SimPeer, SimPeer]:
    a = mesh.add_peer("a", behind=kind_a, link=PEER_LINK)
    b = mesh.add_peer("b", behind=kind_b, link=PEER_LINK)
    mesh.connect(a, b)
    return a, b


# ---------------------------------------------------------------- paths


def test_symmetric_pair_is_relayed_and_ping_works(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    t = mesh.wait_connected(a, b, timeout_s=30)
    # relay first: the first look at WireGuard, the relay session, WireGuard's
    # first handshake through it (issue: relayed in under a second)
    assert t <= 1.0
    assert a.path(b) is PathKind.RELAYED
    assert b.path(a) is PathKind.RELAYED
    assert a.relay_for(b) == relay.key == b.relay_for(a)
    rtt = mesh.sim.run(a.ping(b))
    # a 20 ms -> relay 10 ms + 10 ms -> b 20 ms, and back
    assert rtt == pytest.approx(0.120, abs=1e-9)
    assert relay.packets_forwarded > 0


def test_cone_pair_is_relayed_at_once_then_direct_and_the_relay_carries_nothing_more(
    mesh: SimMesh,
) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.FULL_CONE, NatKind.FULL_CONE)
    mesh.start()
    t = mesh.wait_connected(a, b, timeout_s=30)
    assert t <= 1.0  # relay first
    moved = mesh.sim.run_until(
        lambda: a.path(b) is PathKind.DIRECT and b.path(a) is PathKind.DIRECT, timeout_s=10
    )
    assert moved <= 5.0  # the first coordinated try, 2 s after relaying
    mesh.sim.run_for(1.0)  # the relay hears the session close
    stats = relay.stats()
    assert stats is not None
    assert stats.sessions_active == 0
    forwarded = relay.packets_forwarded
    watch = mesh.watch([(a, b)])
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(TEN_MINUTES_S)
    assert watch.changes == []
    assert traffic.lost == 0
    assert traffic.answered >= 599
    assert traffic.results[0][1] == pytest.approx(0.080, abs=1e-9)  # 20 ms each way, twice
    assert relay.packets_forwarded == forwarded
    # the relay still holds both agents: registered there, just in case
    assert relay.holds(a)
    assert relay.holds(b)


@pytest.mark.parametrize("loss", [0.05, 0.10, 0.20])
def test_lossy_relay_keeps_the_session_without_thrashing(mesh: SimMesh, loss: float) -> None:
    relay = mesh.add_relay("relay", link=LinkSpec(delay_s=0.010, loss=loss))
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    t = mesh.wait_connected(a, b, timeout_s=60)
    # port mode latches on a WireGuard handshake through the lossy relay (four
    # lossy crossings a try, a try per 5 s): 20.9 s at 20 % loss, 20 s framed
    assert t <= 22.0
    watch = mesh.watch([(a, b)])
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(TEN_MINUTES_S)
    assert a.path(b) is PathKind.RELAYED
    assert b.path(a) is PathKind.RELAYED
    # at most one new session in ten minutes (relayed -> pending -> relayed, each side)
    assert watch.count() <= 4, watch.changes
    stats = relay.stats()
    assert stats is not None
    assert stats.sessions_opened <= 2
    # a ping crosses the lossy link four times: (1 - loss) ** 4 get through
    expected = (1 - loss) ** 4
    assert traffic.answered / len(traffic.results) >= expected - 0.12


def test_the_nearest_relay_becomes_home_and_carries_the_session(mesh: SimMesh) -> None:
    far = mesh.add_relay("relay200", link=LinkSpec(delay_s=0.200))
    mid = mesh.add_relay("relay50", link=LinkSpec(delay_s=0.050))
    near = mesh.add_relay("relay10", link=LinkSpec(delay_s=0.010))
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    t = mesh.wait_connected(a, b, timeout_s=30)
    assert t <= 8.0
    mesh.sim.run_for(2.0)
    assert a.home() == near.key
    assert b.home() == near.key
    assert a.relay_for(b) == near.key == b.relay_for(a)
    mesh.ping_every(a, b)
    mesh.sim.run_for(60.0)
    assert near.packets_forwarded > 100
    assert far.packets_forwarded == 0
    assert mid.packets_forwarded == 0


# ---------------------------------------------------------------- failures


def test_relay_killed_fails_over_to_another(mesh: SimMesh) -> None:
    first = mesh.add_relay("relay1", link=RELAY_LINK)
    second = mesh.add_relay("relay2", link=LinkSpec(delay_s=0.025))
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    assert a.relay_for(b) == first.key
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(20.0)
    killed_at = mesh.sim.now()
    first.kill()
    mesh.sim.run_for(60.0)
    assert a.relay_for(b) == second.key == b.relay_for(a)
    outage = [(s, e) for s, e in traffic.outages() if s >= killed_at]
    assert outage, "pings through a dead relay cannot have been answered"
    start, end = outage[0]
    # the link declares the relay lost after 9 s of silence; a new session
    # and WireGuard's next packet follow within a few seconds
    assert start - killed_at <= 1.0
    assert end - killed_at < 20.0
    # (later outages are the agents' direct retries, test_direct_retry_costs_no_outage)
    last = [rtt for s, rtt in traffic.results if s >= mesh.sim.now() - 10.0]
    assert last
    assert all(rtt is not None for rtt in last)


def test_only_relay_restarts_and_the_tunnel_comes_back(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(10.0)
    relay.kill()
    mesh.sim.run_for(30.0)
    assert relay.stats() is None
    relay.restart()  # a new process: same key and port, no memory of anyone
    restarted_at = mesh.sim.now()
    back = mesh.sim.run_until(
        lambda: mesh.connected(a, b) and relay.holds(a) and relay.holds(b), timeout_s=60
    )
    assert back - restarted_at <= 10.0
    mesh.sim.run_for(20.0)
    assert relay.incarnations == 2
    stats = relay.stats()
    assert stats is not None
    assert stats.sessions_active == 1
    late = [rtt for s, rtt in traffic.results if s >= mesh.sim.now() - 10.0]
    assert late
    assert all(rtt is not None for rtt in late)


def test_partition_heals_and_the_tunnel_recovers(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(10.0)
    cut = mesh.partition([a], [b, relay])
    mesh.sim.run_for(60.0)
    assert a.path(b) is not PathKind.DIRECT
    cut.heal()
    healed_at = mesh.sim.now()
    t = mesh.sim.run_until(lambda: mesh.connected(a, b), timeout_s=60)
    assert t - healed_at <= 20.0
    mesh.sim.run_for(30.0)
    assert a.path(b) is PathKind.RELAYED
    assert b.path(a) is PathKind.RELAYED
    late = [rtt for s, rtt in traffic.results if s >= t + 5.0]
    assert late
    assert all(rtt is not None for rtt in late)


def test_home_relay_dies_while_another_carries_the_session(tmp_path: Path) -> None:
    with Simulation(seed=1) as sim:
        # no direct retries (two symmetric NATs never connect directly, and each
        # retry costs 3 s of pings: test_direct_retry_costs_no_outage)
        mesh = SimMesh(sim, tmp_path, agent_config=AgentConfig(probe_back_s=900.0))
        _home_relay_dies(mesh)


def _home_relay_dies(mesh: SimMesh) -> None:
    home_a = mesh.add_relay("home-a", link=LinkSpec(delay_s=0.005))
    home_b = mesh.add_relay("home-b", link=LinkSpec(delay_s=0.030))
    # b only knows home-b, so a must find b there and the session lives there
    a = mesh.add_peer("a", behind=NatKind.SYMMETRIC, link=PEER_LINK, relays=[home_a, home_b])
    b = mesh.add_peer("b", behind=NatKind.SYMMETRIC, link=PEER_LINK, relays=[home_b])
    mesh.connect(a, b)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    mesh.sim.run_for(2.0)
    assert a.home() == home_a.key
    assert b.home() == home_b.key
    assert a.relay_for(b) == home_b.key
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(20.0)
    stats = home_b.stats()
    assert stats is not None
    opened = stats.sessions_opened
    killed_at = mesh.sim.now()
    home_a.kill()
    mesh.sim.run_for(40.0)
    assert a.home() == home_b.key  # a moved home
    assert a.relay_for(b) == home_b.key  # and the session never moved
    assert stats.sessions_opened == opened
    around = [rtt for s, rtt in traffic.results if killed_at - 1 <= s <= killed_at + 39]
    assert len(around) >= 39
    assert all(rtt is not None for rtt in around)


# ---------------------------------------------------------------- scale


def _needs_relay(x: NatKind, y: NatKind) -> bool:
    """Pairs no direct path can connect, hole punching included (see
    docs/NAT_MATRIX.md)."""
    return not expected_direct(x, y)


def test_hundred_peers_twenty_relays_every_pair_connects(tmp_path: Path) -> None:
    kinds = [
        NatKind.SYMMETRIC,
        NatKind.FULL_CONE,
        NatKind.SYMMETRIC,
        NatKind.PORT_RESTRICTED_CONE,
        NatKind.RESTRICTED_CONE,
        NatKind.NONE,
        NatKind.SYMMETRIC,
    ]
    with Simulation(seed=3, trace=False) as sim:
        mesh = SimMesh(sim, tmp_path)
        relays = [
            mesh.add_relay(f"r{i}", link=LinkSpec(delay_s=0.010, jitter_s=0.004)) for i in range(20)
        ]
        peers = [
            mesh.add_peer(
                f"p{i}",
                behind=kinds[i % len(kinds)],
                link=LinkSpec(delay_s=0.005 + 0.001 * (i % 30)),
            )
            for i in range(100)
        ]
        # each peer has a handful of WireGuard peers: its ring neighbours at 1 and 3
        pairs = [(peers[i], peers[(i + d) % 100]) for i in range(100) for d in (1, 3)]
        for a, b in pairs:
            mesh.connect(a, b)
        mesh.start()
        done = mesh.wait_all_connected(pairs, timeout_s=60)
        assert max(done.values()) <= 15.0
        mesh.sim.run_for(10.0)  # relayed first; the pairs that can go direct move
        relayed = [(a, b) for a, b in pairs if _needs_relay(kind(a), kind(b))]
        assert len(relayed) >= 20
        for a, b in relayed:
            assert a.path(b) is PathKind.RELAYED
            assert b.path(a) is PathKind.RELAYED
            assert a.relay_for(b) == b.relay_for(a)
        for a, b in pairs:
            if not _needs_relay(kind(a), kind(b)):
                assert a.path(b) is PathKind.DIRECT, (a, b, kind(a), kind(b))
                assert b.path(a) is PathKind.DIRECT, (a, b, kind(a), kind(b))
        carriers = Counter(a.relay_for(b) for a, b in relayed)
        assert len(carriers) >= 2  # homes spread over the equally near relays
        assert sum(r.packets_forwarded for r in relays) > 0
        assert not sim.loop_errors


def kind(p: SimPeer) -> NatKind:
    nat = p.host.nat
    if nat is None:
        return NatKind.NONE
    return next(k for k in NatKind if k.behavior == nat.behavior)


# ---------------------------------------------------------------- the harness itself


def _run_for_digest(tmp_path: Path, seed: int) -> str:
    with Simulation(seed=seed) as sim:
        mesh = SimMesh(sim, tmp_path)
        mesh.add_relay("relay", link=LinkSpec(delay_s=0.010, jitter_s=0.003, loss=0.02))
        a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.PORT_RESTRICTED_CONE)
        mesh.start()
        mesh.wait_connected(a, b, timeout_s=30)
        mesh.ping_every(a, b)
        sim.run_for(60.0)
        assert len(sim.trace) > 500  # (port mode: no proxy hops to trace)
        return sim.trace_digest()


def test_same_seed_same_trace(tmp_path: Path) -> None:
    first = _run_for_digest(tmp_path / "1", seed=5)
    again = _run_for_digest(tmp_path / "2", seed=5)
    other = _run_for_digest(tmp_path / "3", seed=6)
    assert first == again
    assert other != first


def test_scenarios_run_the_production_classes(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    assert type(relay.core) is RelayCore
    assert type(relay.server) is RelayServer
    for p in (a, b):
        assert type(p.agent) is Agent
        assert p.agent is not None
        assert type(p.agent.core) is AgentCore
        assert type(p.agent.manager) is RelayManager
        # only WireGuard and the network are simulated
        assert type(p.agent.backend) is SimWireGuard
        assert type(p.agent.runtime) is SimRuntime


def test_no_production_module_imports_the_simulator() -> None:
    """No simulator-only branch: production code cannot even name the simulator."""
    root = Path(wgrelay.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("sim", "demo") or rel.name == "cli.py":
            continue  # the simulator, its demo, and the command that starts the demo
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [f"{rel}: {n}" for n in names if n.startswith("wgrelay.sim")]
    assert offenders == []


# ---------------------------------------------------------------- known agent problems


def test_idle_direct_tunnel_stays_direct(mesh: SimMesh) -> None:
    mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.FULL_CONE, NatKind.FULL_CONE)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    mesh.sim.run_until(
        lambda: a.path(b) is PathKind.DIRECT and b.path(a) is PathKind.DIRECT, timeout_s=10
    )
    watch = mesh.watch([(a, b)])
    mesh.sim.run_for(TEN_MINUTES_S)
    assert watch.changes == []


def test_idle_relayed_tunnel_keeps_its_session(mesh: SimMesh) -> None:
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    mesh.sim.run_for(TEN_MINUTES_S)
    stats = relay.stats()
    assert stats is not None
    assert stats.sessions_opened == 1


@pytest.mark.parametrize(
    ("kind_a", "kind_b", "tries"),
    [
        # both map per destination (the relay tells both): no try at all in
        # ten minutes (the configured endpoints get one every 15 min: a port
        # forward could open one)
        (NatKind.SYMMETRIC, NatKind.SYMMETRIC, 0),
        # a try towards the mapping cannot work (the port-restricted box lets
        # in only what it sent to, the symmetric one sends from a new port),
        # and the agents cannot tell: the same schedule
        (NatKind.PORT_RESTRICTED_CONE, NatKind.SYMMETRIC, 4),
    ],
)
def test_direct_tries_while_relayed_cost_at_most_one_percent(
    mesh: SimMesh, kind_a: NatKind, kind_b: NatKind, tries: int
) -> None:
    """Issue: upgrades without outages. Ten minutes of pings over a relayed
    pair whose direct path never works: each failed try holds the relay's
    frames for 0.8 s (upgrade_probe_s), so it costs at most one ping."""
    relay = mesh.add_relay("relay", link=RELAY_LINK)
    a, b = pair(mesh, kind_a, kind_b)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    traffic = mesh.ping_every(a, b)
    mesh.sim.run_for(TEN_MINUTES_S)
    assert a.path(b) is PathKind.RELAYED
    assert b.path(a) is PathKind.RELAYED
    assert traffic.lost <= 0.01 * len(traffic.results), traffic.outages()
    assert traffic.longest_outage_s() <= 1.0 + 1e-9, traffic.outages()  # one ping
    stats = relay.stats()
    assert stats is not None
    assert stats.punches == tries
    assert stats.sessions_opened == 1


# ---------------------------------------------------------------- port mode


def test_port_mode_symmetric_pair_talks_to_the_relay_port_without_the_proxy(
    mesh: SimMesh,
) -> None:
    """The relay gives each side a session port; each simulated WireGuard sends
    its own packets there (mac1-verified handshakes latch the ports) and the
    relay forwards them unchanged: nothing passes the agents' proxies."""
    relay = mesh.add_relay("relay", link=RELAY_LINK, config=RelayConfig(port_range=(52000, 52099)))
    a, b = pair(mesh, NatKind.SYMMETRIC, NatKind.SYMMETRIC)
    mesh.start()
    mesh.wait_connected(a, b, timeout_s=30)
    mesh.sim.run_for(10.0)
    for me, other in ((a, b), (b, a)):
        assert me.path(other) is PathKind.RELAYED
        ep = me.wg.read(me.wg.interface).peer(other.public).endpoint  # type: ignore[union-attr]
        assert ep is not None
        assert ep[0] == relay.endpoint[0]
        assert 52000 <= ep[1] <= 52099
        agent = me._agent()
        assert agent.port_mode.describe(other.public)[0] == "port"
        counters = agent.proxies.counters(other.public)
        assert counters is not None
        assert counters.to_relay_packets == 0
    rtt = mesh.sim.run(a.ping(b))
    assert rtt == pytest.approx(0.120, abs=1e-9)  # the same path, without the proxies
    stats = relay.stats()
    assert stats is not None
    assert stats.port_latches == 2
    assert stats.port_sessions_offloaded == 1
