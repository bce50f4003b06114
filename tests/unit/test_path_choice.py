"""Choosing the whole path: relay scores, path costs, hysteresis, GeoIP priors.

The planner tests run federated ``RelayCore``s and ``RelayPlanner``s on the
fake network of test_plan.py, with an extra delay per (peer, relay) pair so
that the path through a peer's home is not the cheapest one.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.unit.test_plan import WALL0, Addr, World
from wgrelay.client.events import PeerRelayed
from wgrelay.client.link import LinkConfig
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.discovery.geoip import GeoPrior, great_circle_km, rtt_estimate_ms
from wgrelay.discovery.registry import KnownRelay, RelayRegistry
from wgrelay.discovery.selection import (
    FAILURE_PENALTY_MS,
    NEVER_MEASURED_RTT_MS,
    RelayHistory,
    Selector,
    relay_score,
    worth_switching,
)
from wgrelay.errors import ConfigError
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore


class PathWorld(World):
    """test_plan's network, with federated relays and per-pair delays."""

    def __init__(self) -> None:
        super().__init__()
        self.extra: dict[frozenset[Addr], float] = {}

    def relay(self, n: int, delay_s: float) -> tuple[PublicKey, Addr]:
        ident = RelayIdentity.generate()
        addr = (f"203.0.113.{n}", 51821)
        config = RelayConfig(heartbeat_interval_s=1, registration_ttl_s=3)
        core = RelayCore(
            ident,
            config,
            OpenPolicy(),
            now=self.now,
            wall=WALL0 + self.now,
            announce_endpoints=(addr,),
        )
        for other_addr, other in self.relays.items():
            core.add_bootstrap(other.identity.public, other_addr)
        self.relays[addr] = core
        self.delay[addr] = delay_s
        return ident.public, addr

    def _send(self, src: Addr, dst: Addr, data: bytes) -> None:
        relay = dst if dst in self.relays else src
        if relay in self.down:
            return
        delay = self.delay[relay] + self.extra.get(frozenset((src, dst)), 0.0)
        heapq.heappush(self._q, (self.now + delay, next(self._seq), src, dst, data))

    def slow(self, peer: RelayPlanner, relay: Addr, extra_one_way_s: float) -> None:
        self.extra[frozenset((self.addr_of(peer), relay))] = extra_one_way_s


def known(rtt_ms: float | None, failures: int = 0, load: int | None = None) -> KnownRelay:
    reg = RelayRegistry()
    r = reg.add_bootstrap(RelayIdentity.generate().public, ("203.0.113.9", 51821))
    if rtt_ms is not None:
        reg.record_rtt(r.key, rtt_ms)
    for _ in range(failures):
        reg.record_failure(r.key)
    got = reg.get(r.key)
    assert got is not None
    return got if load is None else _with_load(got, load)


def _with_load(r: KnownRelay, load: int) -> KnownRelay:
    from dataclasses import replace

    return replace(r, load_pct=load)


# ---------------------------------------------------------------- formulas


def test_score_and_path_cost_follow_the_documented_formula() -> None:
    r = known(40.0)
    assert relay_score(r) == pytest.approx(40.0)
    assert relay_score(known(None)) == NEVER_MEASURED_RTT_MS
    assert relay_score(known(None), prior=55.0) == 55.0
    assert relay_score(_with_load(r, 10)) == pytest.approx(60.0)
    sel = Selector(PrivateKey.generate().public_key())
    assert sel.path_cost(r, 25) == pytest.approx(65.0)
    assert sel.path_cost(r, None) == pytest.approx(40.0 + NEVER_MEASURED_RTT_MS)


def test_a_measurement_always_beats_the_prior() -> None:
    sel = Selector(PrivateKey.generate().public_key(), prior=lambda _r: 5.0)
    assert sel.score(known(80.0)) == pytest.approx(80.0)
    assert sel.score(known(None)) == 5.0


def test_unmeasured_relays_are_ordered_differently_by_different_agents() -> None:
    relays = [known(None) for _ in range(20)]
    orders = {
        tuple(r.key for r in Selector(PrivateKey.generate().public_key()).order(relays)[:3])
        for _ in range(10)
    }
    assert len(orders) >= 8  # agents spread over the relays they know equally little of
    me = Selector(PrivateKey.generate().public_key())
    assert me.order(relays) == me.order(list(reversed(relays)))  # but each is stable


def test_hysteresis_needs_a_clear_gain() -> None:
    assert not worth_switching(100.0, 90.0)  # 10 ms: not enough
    assert not worth_switching(400.0, 370.0)  # 30 ms but 7.5 %: not enough
    assert worth_switching(100.0, 70.0)
    assert worth_switching(400.0, 250.0)


# ---------------------------------------------------------------- GeoIP


@pytest.fixture
def geo_db(tmp_path: Path) -> Path:
    w = MMDBWriter(ip_version=4, database_type="GeoLite2-City")
    w.insert_network(
        IPSet(["198.51.100.0/24"]), {"location": {"latitude": 52.52, "longitude": 13.40}}
    )
    w.insert_network(
        IPSet(["203.0.113.0/25"]), {"location": {"latitude": 48.86, "longitude": 2.35}}
    )
    w.insert_network(
        IPSet(["203.0.113.128/25"]), {"location": {"latitude": 40.71, "longitude": -74.0}}
    )
    path = tmp_path / "city.mmdb"
    w.to_db_file(str(path))
    return path


def test_geoip_prior_ranks_near_relays_first(geo_db: Path) -> None:
    geo = GeoPrior(geo_db)
    try:
        paris = RelayRegistry().add_bootstrap(RelayIdentity.generate().public, ("203.0.113.5", 1))
        york = RelayRegistry().add_bootstrap(RelayIdentity.generate().public, ("203.0.113.200", 1))
        nowhere = RelayRegistry().add_bootstrap(RelayIdentity.generate().public, ("192.0.2.1", 1))
        assert geo(paris) is None  # our own address is not known yet
        geo.origin = "198.51.100.7"  # Berlin, as the home relay saw us
        near, far = geo(paris), geo(york)
        assert near is not None
        assert far is not None
        assert geo(nowhere) is None
        assert near == pytest.approx(rtt_estimate_ms((52.52, 13.40), (48.86, 2.35)))
        assert 10 < near < 20 < 80 < far < 120  # ~880 km and ~6,400 km
        sel = Selector(PrivateKey.generate().public_key(), prior=geo)
        assert [r.key for r in sel.order([york, nowhere, paris])] == [
            paris.key,
            york.key,
            nowhere.key,
        ]
    finally:
        geo.close()


def test_great_circle_distance() -> None:
    assert great_circle_km((0.0, 0.0), (0.0, 0.0)) == 0.0
    assert great_circle_km((52.52, 13.40), (48.86, 2.35)) == pytest.approx(878, rel=0.01)


def test_a_bad_geoip_database_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        GeoPrior(tmp_path / "missing.mmdb")
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database")
    with pytest.raises(ConfigError, match="not a MaxMind database"):
        GeoPrior(junk)


# ---------------------------------------------------------------- planners


def _peer(
    w: PathWorld,
    n: int,
    relays: list[tuple[PublicKey, Addr]],
    history: RelayHistory | None = None,
) -> RelayPlanner:
    reg = RelayRegistry()
    for key, addr in relays:
        reg.add_bootstrap(key, addr)
    addr = (f"198.51.100.{n}", 40000)
    p = RelayPlanner(
        PrivateKey.generate(),
        reg,
        now=w.now,
        wall=WALL0 + w.now,
        config=PlanConfig(),
        link_config=LinkConfig(lost_after_s=3.0),
        history=history,
    )
    w.planners[addr] = p
    w.events[addr] = []
    return p


Relay = tuple[PublicKey, Addr]


def _home_far_standby_near(
    failures: dict[tuple[PublicKey, PublicKey], int] | None = None,
) -> tuple[PathWorld, RelayPlanner, RelayPlanner, tuple[Relay, Relay, Relay]]:
    """B homes on r1 (20 ms from it) with r2 (30 ms) as standby; A is 200 ms
    from r1, 20 ms from r2 and homes on r3, which B never joined. Via B's
    home the path costs about 220 ms, via its standby about 50 ms. Returns
    once the federation has placed both of B's records at its holders (all
    three). ``failures``: A's connection cache, (peer, relay) -> failures."""
    w = PathWorld()
    r1, r2, r3 = w.relay(1, 0.005), w.relay(2, 0.005), w.relay(3, 0.002)
    every = [r1, r2, r3]
    lost = failures if failures is not None else {}
    a = _peer(w, 1, every, lambda peer, relay: lost.get((peer, relay), 0))
    b = _peer(w, 2, every)
    w.slow(b, r2[1], 0.010)
    w.slow(b, r3[1], 0.150)
    w.slow(a, r1[1], 0.095)
    w.slow(a, r2[1], 0.005)
    for p in (a, b):
        p.start(w.now)
    w.run_until(lambda: a.home == r3[0] and b.home == r1[0] and b.standby == r2[0], limit_s=30)
    bpub = b.private_key.public_key()
    w.run_until(
        lambda: all(len(r.federation.locations.held(bpub, w.now)) == 2 for r in w.relays.values())
    )
    return w, a, b, (r1, r2, r3)


def test_the_whole_path_beats_the_peers_home() -> None:
    w, a, b, (_, r2, _) = _home_far_standby_near()
    bpub = b.private_key.public_key()
    a.relay_peer(bpub, w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed)), limit_s=30)
    (ev,) = w.saw(a, PeerRelayed)
    assert ev.relay == r2[0], "the standby's path is cheaper than the home's"
    assert w.saw(b, PeerRelayed, relay=r2[0])


def test_relay_failures_for_a_peer_count_in_its_path_cost() -> None:
    """The connection cache's relay history: relayed sessions to B through
    r2 failed three times since one last worked, so A passes over the path
    that is otherwise cheapest (about 50 ms against 220 ms via B's home)."""
    failures: dict[tuple[PublicKey, PublicKey], int] = {}
    w, a, b, (r1, r2, _) = _home_far_standby_near(failures)
    bpub = b.private_key.public_key()
    assert a.selector.path_cost(known(20.0), 30.0, bpub) == 50.0  # no history: no penalty
    failures[(bpub, r2[0])] = 3
    r2_relay = a.registry.get(r2[0])
    assert r2_relay is not None
    plain = Selector(a.private_key.public_key()).path_cost(r2_relay, 30.0)
    assert a.selector.path_cost(r2_relay, 30.0, bpub) == plain + 3 * FAILURE_PENALTY_MS
    a.relay_peer(bpub, w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed)), limit_s=30)
    (ev,) = w.saw(a, PeerRelayed)
    assert ev.relay == r1[0], "r2 keeps failing for this peer: its home's path instead"


def test_a_relayed_peer_moves_only_to_a_clearly_cheaper_path() -> None:
    w = PathWorld()
    r1, r2 = w.relay(1, 0.005), w.relay(2, 0.005)
    a, b = _peer(w, 1, [r1, r2]), _peer(w, 2, [r1, r2])
    for p in (a, b):
        p.start(w.now)
    w.run_until(lambda: a.home is not None and b.home is not None and b.standby is not None)
    w.run_until(lambda: w.now > 5.0)
    a.relay_peer(b.private_key.public_key(), w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed)), limit_s=30)
    first = w.saw(a, PeerRelayed)[0].relay
    other = r2 if first == r1[0] else r1
    here = r1 if first == r1[0] else r2
    # a small change: nothing moves (hysteresis)
    w.slow(a, here[1], 0.004)
    w.run_until(lambda: w.now > 60.0, limit_s=120)
    assert [e.relay for e in w.saw(a, PeerRelayed)] == [first]
    # the path through the relay in use becomes 300 ms slower: the next
    # measurement moves it, once, and the old session is closed
    w.slow(a, here[1], 0.150)
    w.run_until(lambda: len(w.saw(a, PeerRelayed)) == 2, limit_s=60)
    assert w.saw(a, PeerRelayed)[1].relay == other[0]
    assert a.route_relay[b.private_key.public_key()] == other[0]
    old = a.link(here[0])
    assert old is not None
    assert b.private_key.public_key() not in old.session_of
    w.run_until(lambda: w.now > 200.0, limit_s=200)
    assert len(w.saw(a, PeerRelayed)) == 2  # and it does not flap back
