"""RelayPlanner's rules with real relay cores in memory, on a fake clock.

A tiny in-memory network moves datagrams between planners and ``RelayCore``s
with a one-way delay per relay; time jumps to the next delivery or timer, so
every deadline below is exact.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import TypeVar

from wgrelay.client.events import (
    HomeChanged,
    PeerLocated,
    PeerRelayed,
    PeerRelayFailed,
    PeerRelayLost,
    PlanEvent,
    RelayMeasured,
)
from wgrelay.client.link import LinkConfig
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.discovery.rendezvous import DEFAULT_REPLICAS, holders
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.constants import MsgType
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore

WALL0 = 1_700_000_000.0
Addr = tuple[str, int]
E = TypeVar("E", bound=PlanEvent)


class World:
    def __init__(self) -> None:
        self.now = 0.0
        self.relays: dict[Addr, RelayCore] = {}
        self.delay: dict[Addr, float] = {}
        self.down: set[Addr] = set()
        self.planners: dict[Addr, RelayPlanner] = {}
        self.events: dict[Addr, list[PlanEvent]] = {}
        self._q: list[tuple[float, int, Addr, Addr, bytes]] = []
        self._seq = itertools.count()

    def relay(self, n: int, delay_s: float) -> tuple[PublicKey, Addr]:
        ident = RelayIdentity.generate()
        addr = (f"203.0.113.{n}", 51821)
        config = RelayConfig(heartbeat_interval_s=1, registration_ttl_s=3)
        self.relays[addr] = RelayCore(
            ident, config, OpenPolicy(), now=self.now, wall=WALL0 + self.now
        )
        self.delay[addr] = delay_s
        return ident.public, addr

    def peer(self, n: int, relays: list[tuple[PublicKey, Addr]], **cfg: float) -> RelayPlanner:
        reg = RelayRegistry()
        for key, addr in relays:
            reg.add_bootstrap(key, addr)
        addr = (f"198.51.100.{n}", 40000)
        planner = RelayPlanner(
            PrivateKey.generate(),
            reg,
            now=self.now,
            wall=WALL0 + self.now,
            config=PlanConfig(**cfg),  # type: ignore[arg-type]
            link_config=LinkConfig(lost_after_s=3.0),
        )
        self.planners[addr] = planner
        self.events[addr] = []
        return planner

    def addr_of(self, p: RelayPlanner) -> Addr:
        return next(a for a, q in self.planners.items() if q is p)

    def _send(self, src: Addr, dst: Addr, data: bytes) -> None:
        relay = dst if dst in self.relays else src
        if relay in self.down:
            return
        heapq.heappush(self._q, (self.now + self.delay[relay], next(self._seq), src, dst, data))

    def _flush(self) -> None:
        for addr, p in self.planners.items():
            for dst, data in p.datagrams_to_send():
                self._send(addr, dst, data)
            while (ev := p.next_event()) is not None:
                self.events[addr].append(ev)
        for addr, r in self.relays.items():
            for data, dst in r.datagrams_to_send():
                self._send(addr, dst, data)

    def step(self) -> bool:
        self._flush()
        timers = [p.next_timer() for p in self.planners.values()]
        timers += [r.next_timer() for a, r in self.relays.items() if a not in self.down]
        t = min([*timers, self._q[0][0] if self._q else float("inf")])
        if t == float("inf"):
            return False
        self.now = max(self.now, t)
        while self._q and self._q[0][0] <= self.now:
            _, _, src, dst, data = heapq.heappop(self._q)
            if dst in self.relays and dst not in self.down:
                self.relays[dst].receive(data, src, self.now)
            elif dst in self.planners:
                self.planners[dst].receive(src, data, self.now)
        for p in self.planners.values():
            p.handle_timer(self.now)
        for a, r in self.relays.items():
            if a not in self.down:
                r.handle_timer(self.now)
        self._flush()
        return True

    def run_until(self, cond: Callable[[], bool], limit_s: float = 120.0) -> float:
        end = self.now + limit_s
        while not cond():
            assert self.now < end, "condition never held"
            assert self.step(), "nothing left to happen"
        return self.now

    def saw(self, p: RelayPlanner, kind: type[E], **match: object) -> list[E]:
        return [
            e
            for e in self.events[self.addr_of(p)]
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())
        ]


def test_the_fastest_relay_becomes_home() -> None:
    w = World()
    slow, fast, mid = w.relay(1, 0.100), w.relay(2, 0.005), w.relay(3, 0.025)
    p = w.peer(1, [slow, fast, mid])
    p.start(w.now)
    w.run_until(lambda: p.home is not None)
    assert p.home == fast[0]
    assert w.saw(p, HomeChanged) == [HomeChanged(fast[0])]
    # pings in parallel: all three answered within the slowest round trip
    assert p.registry.get(slow[0]).rtt_ms is not None  # type: ignore[union-attr]


def test_a_peer_is_relayed_where_it_is_registered_and_both_ends_hear_of_it() -> None:
    w = World()
    r1, r2 = w.relay(1, 0.010), w.relay(2, 0.020)
    a = w.peer(1, [r1, r2])
    b = w.peer(2, [r2])  # b only knows r2: that is its home
    a.start(w.now)
    b.start(w.now)
    w.run_until(lambda: a.home is not None and b.home is not None)
    assert (a.home, b.home) == (r1[0], r2[0])
    a.relay_peer(b.private_key.public_key(), w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed) and w.saw(b, PeerRelayed)))
    (ev,) = w.saw(a, PeerRelayed)
    assert ev.relay == r2[0]  # located at b's home, not a's
    assert not ev.incoming
    assert w.saw(b, PeerRelayed)[0].incoming


def test_a_peer_nobody_knows_fails_after_every_relay_was_tried() -> None:
    w = World()
    r1, r2 = w.relay(1, 0.010), w.relay(2, 0.010)
    a = w.peer(1, [r1, r2])
    a.start(w.now)
    w.run_until(lambda: a.home is not None)
    stranger = PrivateKey.generate().public_key()
    a.relay_peer(stranger, w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayFailed)))
    (ev,) = w.saw(a, PeerRelayFailed)
    assert "TARGET_UNREACHABLE" in ev.error
    assert ev.error.count(":") >= 2  # both relays named


def test_locate_answers_where_and_nowhere() -> None:
    w = World()
    r1 = w.relay(1, 0.010)
    a, b = w.peer(1, [r1]), w.peer(2, [r1])
    a.start(w.now)
    b.start(w.now)
    w.run_until(lambda: a.home is not None and b.home is not None)
    a.locate(b.private_key.public_key(), w.now)
    nobody = PrivateKey.generate().public_key()
    a.locate(nobody, w.now)
    w.run_until(lambda: len(w.saw(a, PeerLocated)) == 2)
    found = {e.peer: e.relay for e in w.saw(a, PeerLocated)}
    assert found == {b.private_key.public_key(): r1[0], nobody: None}


def test_the_home_relay_dying_fails_over_and_the_session_is_reported_lost() -> None:
    w = World()
    r1, r2 = w.relay(1, 0.005), w.relay(2, 0.050)
    a, b = w.peer(1, [r1, r2]), w.peer(2, [r1, r2])
    for p in (a, b):
        p.start(w.now)
    w.run_until(lambda: a.home == r1[0] and b.home == r1[0])
    a.relay_peer(b.private_key.public_key(), w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed) and w.saw(b, PeerRelayed)))
    died = w.now
    w.down.add(r1[1])
    w.run_until(lambda: a.home == r2[0])
    # the link declares r1 lost after lost_after_s of silence (3 s here)
    assert w.saw(a, PeerRelayLost, relay=r1[0])
    assert w.now - died < 3.0 + 2.0 + 1.0  # lost, measure (2 s at most), register
    a.relay_peer(b.private_key.public_key(), w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed, relay=r2[0])))


def test_carrying_relays_are_measured_and_idle_ones_left() -> None:
    w = World()
    r1, r2 = w.relay(1, 0.010), w.relay(2, 0.010)
    # (no standby: that one is kept on purpose, test_failover.py)
    a = w.peer(1, [r1, r2], measure_interval_s=15.0, link_idle_s=60.0, standby=False)
    b = w.peer(2, [r1])
    for p in (a, b):
        p.start(w.now)
    w.run_until(lambda: a.home is not None and b.home is not None)
    a.relay_peer(b.private_key.public_key(), w.now)
    w.run_until(lambda: bool(w.saw(a, PeerRelayed) and w.saw(b, PeerRelayed)))
    w.run_until(lambda: bool(w.saw(a, RelayMeasured)), limit_s=20)
    m = w.saw(a, RelayMeasured)[0]
    assert m.peers == (b.private_key.public_key(),)
    assert m.rtt_s is not None
    # a's links: its home and the relay carrying b; any other is dropped when idle
    other = r2[0] if a.home == r1[0] else r1[0]
    if other in a.links() and other not in a.route_relay.values():
        w.run_until(lambda: other not in a.links(), limit_s=90)
    assert set(a.links()) == {a.home, *a.route_relay.values()}


def test_a_lookup_the_home_leaves_unanswered_asks_the_peers_holders() -> None:
    """The home died unnoticed: after its lookup times out the agent asks
    the peer's k holders itself (rendezvous over the relays it knows, as the
    federation places records), not the next 8 relays by score."""
    w = World()
    relays = [w.relay(n, 0.010) for n in range(1, 8)]
    a = w.peer(1, relays)
    a.start(w.now)
    w.run_until(lambda: a.home is not None)
    home = next(addr for key, addr in relays if key == a.home)
    asked: list[PublicKey] = []
    send = w._send

    def record(src: Addr, dst: Addr, data: bytes) -> None:
        if src == w.addr_of(a) and data[0] == MsgType.DISCOVERY_QUERY:
            asked.append(next(key for key, addr in relays if addr == dst))
        send(src, dst, data)

    w._send = record  # type: ignore[method-assign]
    w.down.add(home)
    peer = PrivateKey.generate().public_key()
    a.locate(peer, w.now)
    w.run_until(lambda: bool(w.saw(a, PeerLocated)))
    known = [r.key for r in a.registry.all()]
    want = set(holders(peer, known, DEFAULT_REPLICAS)) - {a.home}
    assert set(asked) - {a.home} == want
