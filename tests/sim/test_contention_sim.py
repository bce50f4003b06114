"""Contributors and free riders loading one relay beyond its capacity, in
the simulator: the production RelayServer and RelayCore, production relay
clients on simulated hosts, virtual time (exact, fast, deterministic).

Free riders (balance 0) fill every slot first; contributors (100 GB relayed
for the mesh) then ask: each takes a free rider's slot until the free riders
hold their reserve (``--min-share`` of the slots), and the rest are refused.
Then every pair sends more than its share: the contributors' sessions get
the larger part of ``--capacity``, the free riders at least their floor. With
capacity to spare, every session gets its per-session cap as without credit.
``bench/contention.py`` prints the same scenario's figures.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from wgrelay.client.udp import RelayClient
from wgrelay.errors import RelayUnavailable
from wgrelay.keys import PrivateKey, RelayIdentity, clamp
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.contention import StaticCredits, reserve_slots
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.relay.stats import RelayStats
from wgrelay.sim import LinkSpec, NatKind, Simulation
from wgrelay.sim.mesh import SimMesh, SimPeer

PORT = 51821
CONTRIBUTOR_BALANCE = 100 * 1_000_000_000
PAYLOAD = b"\x04\x00\x00\x00" + bytes(996)  # a 1000-byte WireGuard data message
FRAME_BYTES = len(PAYLOAD) + 10  # with the relay's data header
CHARGE = 64  # the relay's per-packet charge against the rates


@dataclass(frozen=True, slots=True)
class Scenario:
    contributors: int = 8
    riders: int = 8
    max_connections: int = 8
    min_share: float = 0.25
    cap_kbps: int = 80
    """Per session and direction (``--max-bandwidth``)."""
    capacity: int = 240_000
    """``--capacity``, bytes per second (0: none)."""
    offered: float = 100_000.0
    """What each pair sends, bytes/s of frames, one direction."""
    settle_s: float = 3.0
    measure_s: float = 10.0
    seed: int = 5
    contributor_balance: int = CONTRIBUTOR_BALANCE


@dataclass(slots=True)
class ClassFigures:
    asked: int = 0
    admitted: int = 0
    """Sessions it holds once every pair has asked."""
    refused: int = 0
    displaced: int = 0
    rates: list[float] = field(default_factory=list)
    """Bytes/s each of its sessions delivered (frames), over the measurement."""

    @property
    def total(self) -> float:
        return sum(self.rates)


@dataclass(slots=True)
class Figures:
    contributors: ClassFigures
    riders: ClassFigures
    stats: RelayStats


@dataclass(slots=True)
class _Pair:
    a: RelayClient
    b: RelayClient
    b_key: PrivateKey
    received: int = 0
    sid: bytes | None = None


def run_scenario(sc: Scenario) -> Figures:
    config = RelayConfig(
        max_connections=sc.max_connections,
        max_bandwidth_kbps=sc.cap_kbps,
        capacity_bytes_per_s=sc.capacity,
        min_share=sc.min_share,
        max_sessions_per_source=10_000,
    )
    credits = StaticCredits()
    figs = Figures(ClassFigures(), ClassFigures(), RelayStats())
    with Simulation(seed=sc.seed, trace=False) as sim:
        relay_host = sim.add_host("relay", link=LinkSpec(delay_s=0.005))
        rt = relay_host.runtime()
        core = RelayCore(
            RelayIdentity.from_seed(sim.rng.randbytes(32)),
            config,
            OpenPolicy(),
            now=rt.now(),
            wall=rt.wall(),
            rng=sim.rng.randbytes,
        )
        core.contention.credits = credits
        server = RelayServer(core, rt, [BindAddress("0.0.0.0", PORT)], policy_refresh_s=0)
        server.open()
        sim.spawn(server.serve())
        endpoint = (relay_host.address, PORT)

        def key() -> PrivateKey:
            return PrivateKey(clamp(sim.rng.randbytes(32)))

        def make_pair(name: str, balance: int) -> _Pair:
            ka, kb = key(), key()
            credits.balances[ka.public_key().raw] = balance
            ha = sim.add_host(f"{name}a", link=LinkSpec(delay_s=0.010))
            hb = sim.add_host(f"{name}b", link=LinkSpec(delay_s=0.010))
            a = RelayClient(ka, core.identity.public, endpoint, runtime=ha.runtime())
            pair = _Pair(a, a, kb)

            def count(_peer: object, frame: bytes) -> None:
                pair.received += len(frame)

            pair.b = RelayClient(
                kb, core.identity.public, endpoint, runtime=hb.runtime(), on_data=count
            )
            return pair

        riders = [make_pair(f"r{i}", 0) for i in range(sc.riders)]
        contributors = [make_pair(f"c{i}", sc.contributor_balance) for i in range(sc.contributors)]

        async def ask(pair: _Pair, cls: ClassFigures) -> None:
            cls.asked += 1
            try:
                pair.sid = await pair.a.open_session(pair.b_key.public_key())
            except RelayUnavailable:
                cls.refused += 1

        async def send(pairs: list[_Pair], until: float) -> None:
            interval = len(PAYLOAD) / sc.offered
            while sim.now() < until:
                for p in pairs:
                    p.a.send(p.b_key.public_key(), PAYLOAD)
                await asyncio.sleep(interval)

        async def scenario() -> None:
            for p in riders + contributors:
                await p.a.wait_registered()
                await p.b.wait_registered()
            # free riders first (all the slots), then the contributors
            for p in riders:
                await ask(p, figs.riders)
                await asyncio.sleep(0.05)
            for p in contributors:
                await ask(p, figs.contributors)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the PREEMPTED notices arrive
            everyone = riders + contributors
            start = sim.now()
            await send(everyone, start + sc.settle_s)
            before = [p.received for p in everyone]
            await send(everyone, start + sc.settle_s + sc.measure_s)
            await asyncio.sleep(0.1)  # the last frames' one-way delay
            for cls, pairs in ((figs.riders, riders), (figs.contributors, contributors)):
                for p in pairs:
                    p_sid = p.a.link.session_of.get(p.b_key.public_key())
                    if p.sid is not None and p_sid is None:
                        cls.displaced += 1
                    if p_sid is not None:
                        cls.admitted += 1
                        got = p.received - before[everyone.index(p)]
                        cls.rates.append(got / sc.measure_s)
            figs.stats = core.get_stats()
            for p in everyone:
                await p.a.close()
                await p.b.close()

        sim.run(scenario())
        assert not sim.loop_errors
    return figs


def _payload_rate(charged: float) -> float:
    """Frame bytes per second that ``charged`` bytes/s of the rates let through."""
    return charged * FRAME_BYTES / (FRAME_BYTES + CHARGE)


def test_contributors_come_first_and_free_riders_keep_their_minimum() -> None:
    sc = Scenario()
    figs = run_scenario(sc)
    c, r = figs.contributors, figs.riders
    reserve = reserve_slots(sc.max_connections, sc.min_share)
    print(
        f"slots: contributors {c.admitted}/{c.asked} (refused {c.refused}), "
        f"free riders {r.admitted}/{r.asked} (displaced {r.displaced}); "
        f"bytes/s per session: contributors {[round(x) for x in c.rates]}, "
        f"free riders {[round(x) for x in r.rates]}"
    )
    # slots: free riders displaced down to their reserve, no further
    assert r.admitted == reserve == 2
    assert r.displaced == sc.riders - reserve
    assert c.admitted == sc.max_connections - reserve
    assert c.refused == sc.contributors - c.admitted
    cont = figs.stats.contention
    assert cont["displaced_higher_credit"] == sc.riders - reserve
    assert cont["refused_full"] == c.refused
    # bandwidth: the capacity holds and is shared by credit
    assert cont["contended"] == 1
    assert c.total + r.total <= _payload_rate(sc.capacity) * 1.02
    assert c.total + r.total >= _payload_rate(sc.capacity) * 0.9  # (and is used)
    assert min(c.rates) > 3 * max(r.rates)
    # ... and no free rider below its floor: min_share of the capacity split
    # among the flows (both directions of every session)
    floor = sc.min_share * sc.capacity / (2 * sc.max_connections)
    assert min(r.rates) >= 0.95 * _payload_rate(floor)


def test_with_capacity_to_spare_everyone_gets_the_cap() -> None:
    sc = Scenario(contributors=3, riders=3, capacity=2_000_000)
    figs = run_scenario(sc)
    c, r = figs.contributors, figs.riders
    print(f"bytes/s per session: contributors {c.rates}, free riders {r.rates}")
    assert c.admitted == r.admitted == 3
    assert c.displaced == r.displaced == c.refused == r.refused == 0
    assert figs.stats.contention["contended"] == 0
    for rate in c.rates + r.rates:  # the per-session cap, for everyone
        assert abs(rate - _payload_rate(sc.cap_kbps * 1000)) < 0.03 * rate


# ---------------------------------------------------------------- agents fail over


def test_displaced_free_riders_fail_over_to_another_relay(tmp_path: Path) -> None:
    """Production agents (simulated WireGuard, symmetric NATs): a near relay
    with two slots carries two free-rider pairs; a contributor pair takes the
    younger one's slot, whose agents hear PREEMPTED and move to the far relay;
    every tunnel keeps working."""
    with Simulation(seed=13) as sim:
        mesh = SimMesh(sim, tmp_path)
        near = mesh.add_relay(
            "near",
            link=LinkSpec(delay_s=0.005),
            config=RelayConfig(max_connections=2, min_share=0.5),  # reserve: 1 slot
        )
        far = mesh.add_relay("far", link=LinkSpec(delay_s=0.040), bootstrap=[near])

        def pair(name: str) -> tuple[SimPeer, SimPeer]:
            a = mesh.add_peer(f"{name}a", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
            b = mesh.add_peer(f"{name}b", behind=NatKind.SYMMETRIC, link=LinkSpec(delay_s=0.010))
            mesh.connect(a, b)
            return a, b

        f1, f2, c = pair("f1"), pair("f2"), pair("c")
        assert near.core is not None
        near.core.contention.credits = StaticCredits(
            {c[0].public.raw: CONTRIBUTOR_BALANCE, c[1].public.raw: CONTRIBUTOR_BALANCE}
        )
        for p in (f1, f2):
            mesh.start(p)
            mesh.wait_connected(*p, timeout_s=30)
            assert p[0].relay_for(p[1]) == near.key
            sim.run_for(1.0)  # (f2's session is the younger)
        mesh.start(c)
        mesh.wait_connected(*c, timeout_s=30)
        assert c[0].relay_for(c[1]) == near.key
        sim.run_until(lambda: f2[0].relay_for(f2[1]) == far.key, timeout_s=60)
        sim.run_for(5.0)
        assert f1[0].relay_for(f1[1]) == near.key  # the reserve: never displaced
        assert f2[0].relay_for(f2[1]) == f2[1].relay_for(f2[0]) == far.key
        st = near.stats()
        assert st is not None
        assert st.contention["displaced_higher_credit"] == 1
        for a, b in (f1, f2, c):
            rtt = sim.run(a.ping(b))
            assert rtt is not None, f"{a.name} cannot reach {b.name}"
        print(f"f2 moved to the far relay at {sim.now():.1f} s virtual")
