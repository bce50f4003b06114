"""Federation at scale: 200 federated relays, 1,000 agents that know one or two of them.

Not a test: it reports the figures of docs/PERFORMANCE.md section 6 ("Federation
at scale"). Everything that runs is the shipped code (``SimMesh``: production
``Agent`` and ``RelayCore``/``RelayServer``); only WireGuard and the network are
simulated, with the trace off. tests/sim/test_federation_scale.py runs a
smaller copy of the same scenario (this module's ``run``) and asserts on it.

Set-up: relay ``i`` starts with one or two bootstrap relays among the ones
before it (a random tree: no relay is given the whole list), 5 to 45 ms away.
Each agent is given one or two random relays, never all: it homes on one and
learns the rest from it. Peers are WireGuard peers of those at ring distance
1, 7 and 31; NATs cycle through none, full cone, restricted cone,
port-restricted cone and symmetric (twice), so pairs of the last two kinds
need a relay.

Phases and figures:

1. relays only: virtual time until every relay knows every other (converged);
2. agents start: time until every pair is connected; what each registration
   and each lookup cost (below);
3. a steady window: relay-to-relay messages per relay per minute by type,
   gossip rounds and what each sends, record refreshes, the state per relay;
4. 20 % of the relays killed at once, those carrying the most sessions: time
   until every surviving relay has declared them dead, until every pair that
   went through one is connected again through live relays (pinged pairs:
   until a ping is answered), until every peer's home record is at its k
   holders among the survivors; what lookups cost meanwhile.

How lookups are counted (messages, not assumptions): an agent's lookup starts
when its planner starts locating a peer (``PeerPaths._locating``); every
DISCOVERY_QUERY naming that peer that its relay links then send (first sends,
retransmissions, repeats after a cookie, the widening round) counts against
it, and so does every DISCOVERY_QUERY a relay sends a holder while handling
that agent's query (each relay's receive path is tapped to know whose query
it is handling; a relay's lookup for a peer already being looked up joins it
and sends nothing). Requests only: answers are not counted.

    .venv/bin/python bench/federation_scale.py                    # 200 x 1,000
    .venv/bin/python bench/federation_scale.py --relays 36 --peers 120 --window 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgrelay.client.link_core import LinkCore
from wgrelay.client.plan_peers import PeerPaths
from wgrelay.client.plan_state import Attempt
from wgrelay.discovery.rendezvous import holders
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey
from wgrelay.mesh.agent import PathKind
from wgrelay.proto.constants import MsgType
from wgrelay.proto.envelope import parse_control_header
from wgrelay.proto.messages import Body, DiscoveryQuery
from wgrelay.relay.federation import Federation
from wgrelay.sim import LinkSpec, Simulation
from wgrelay.sim.mesh import SimMesh, SimPeer, SimRelay, Traffic
from wgrelay.sim.socket import SimUdpTransport
from wgrelay.transport.base import Addr, DatagramReceiver

# the peers, their NATs and pairs, and the relays' limits of the 1,000 x 200
# benchmark (docs/PERFORMANCE.md section 5), so the two compare
from sim_scale import CLOSED, RELAY_CONFIG, RING_OFFSETS, index, kind_of  # isort: skip

KILL_FRACTION = 0.2
POLL_S = 0.25
PLACEMENT_POLL_S = 1.0
_SHM = "/dev/shm"  # noqa: S108 (TemporaryDirectory makes a private directory there)
SCRATCH = _SHM if os.access(_SHM, os.W_OK) else None
START, STEADY, AFTER_KILL = "start", "steady", "after_kill"


@dataclass(frozen=True, slots=True)
class Params:
    relays: int = 200
    peers: int = 1000
    seed: int = 1
    window_s: float = 60.0
    """The steady window the per-minute figures are taken over."""
    settle_s: float = 10.0
    """After every pair connected, before the window."""
    warm_s: float = 5.0
    """Every pair through the relays to be killed is pinged every second from
    this long before the kill on: sessions carry traffic (which is what has
    a dead relay noticed in about 2 s; an idle link notices in 9 s), and a
    pair has recovered when a ping sent after the kill is answered."""
    recovery_timeout_s: float = 60.0


def type_name(t: int) -> str:
    return MsgType(t).name if t in MsgType._value2member_map_ else str(t)


# ---------------------------------------------------------------- lookups


@dataclass(slots=True)
class Lookup:
    """One agent's search for one peer and the request messages it cost."""

    agent: bytes
    peer: bytes
    started: float
    phase: str
    agent_requests: int = 0
    relay_requests: int = 0
    relays_asked: set[bytes] = field(default_factory=set)
    asked_dead: bool = False
    """Whether the agent asked a relay that was down (killed) at the time."""

    @property
    def requests(self) -> int:
        return self.agent_requests + self.relay_requests


class LookupLog:
    """Follows every lookup to the request messages it costs.

    ``install`` hooks two methods of the agent's relay client (the planner
    starting a lookup, a link sending a message) while the context lasts;
    ``tap_relay`` hooks one relay's location book (a query to a holder);
    ``RelayTap`` says whose query the relay is handling.
    """

    def __init__(self) -> None:
        self.lookups: list[Lookup] = []
        self.phase = START
        self._current: dict[tuple[bytes, bytes], Lookup] = {}
        self.handling: bytes | None = None
        """The agent whose DISCOVERY_QUERY a relay is handling right now."""
        self.unattributed = 0
        """Queries sent that belong to no lookup (stays 0 unless this log is wrong)."""
        self.dead: set[bytes] = set()
        """Keys of the relays that are down."""

    def of(self, phase: str) -> list[Lookup]:
        return [lk for lk in self.lookups if lk.phase == phase]

    def begin(self, agent: bytes, peer: bytes, now: float) -> None:
        lk = Lookup(agent, peer, now, self.phase)
        self.lookups.append(lk)
        self._current[(agent, peer)] = lk

    def agent_sent(self, agent: bytes, peer: bytes, relay: bytes) -> None:
        lk = self._current.get((agent, peer))
        if lk is None:
            self.unattributed += 1
            return
        lk.agent_requests += 1
        lk.relays_asked.add(relay)
        lk.asked_dead |= relay in self.dead

    def relay_sent(self, peer: bytes) -> None:
        lk = self._current.get((self.handling, peer)) if self.handling is not None else None
        if lk is None:
            self.unattributed += 1
            return
        lk.relay_requests += 1

    @contextmanager
    def install(self) -> Iterator[LookupLog]:
        log_ = self
        locating = PeerPaths._locating
        send = LinkCore._send

        def _locating(planner: PeerPaths, peer: PublicKey, now: float) -> Attempt:
            log_.begin(planner.private_key.public_key().raw, peer.raw, now)
            return locating(planner, peer, now)

        def _send(link: LinkCore, body: Body, now: float) -> None:
            if isinstance(body, DiscoveryQuery) and body.locate is not None:
                log_.agent_sent(link._pub, body.locate.raw, link.relay_key.raw)
            send(link, body, now)

        PeerPaths._locating = _locating  # type: ignore[method-assign,assignment]
        LinkCore._send = _send  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            PeerPaths._locating = locating  # type: ignore[method-assign]
            LinkCore._send = send  # type: ignore[method-assign]

    def tap_relay(self, fed: Federation) -> None:
        book = fed.locations
        send = book._send

        def _send(key: PublicKey, body: Body, now: float) -> bool:
            sent = send(key, body, now)
            if sent and isinstance(body, DiscoveryQuery) and body.locate is not None:
                self.relay_sent(body.locate.raw)
            return sent

        book._send = _send


def lookup_figures(lookups: Sequence[Lookup], k: int) -> dict[str, Any]:
    costs = Counter(lk.requests for lk in lookups)
    return {
        "lookups": len(lookups),
        "max_requests": max(costs, default=0),
        "over_k_plus_1": sum(n for c, n in costs.items() if c > k + 1),
        "mean_requests": round(statistics.fmean(costs.elements()), 2) if lookups else 0,
        "requests": {str(c): n for c, n in sorted(costs.items())},
        "of_which_agent": {
            str(c): n for c, n in sorted(Counter(lk.agent_requests for lk in lookups).items())
        },
        "of_which_relays": {
            str(c): n for c, n in sorted(Counter(lk.relay_requests for lk in lookups).items())
        },
    }


# ---------------------------------------------------------------- relay taps


class RelayTap:
    """A relay's receive path: counts control datagrams by sender kind and
    type, and tells the lookup log whose DISCOVERY_QUERY is being handled."""

    def __init__(self, inner: DatagramReceiver, relay_addrs: set[str], lookups: LookupLog) -> None:
        self.inner = inner
        self.relay_addrs = relay_addrs
        self.lookups = lookups
        self.from_relays: Counter[int] = Counter()
        self.from_agents: Counter[int] = Counter()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        t = data[0] if data else -1
        if t == MsgType.DATA:
            self.inner.datagram_received(data, addr)
            return
        if addr[0] in self.relay_addrs:
            self.from_relays[t] += 1
            self.inner.datagram_received(data, addr)
            return
        self.from_agents[t] += 1
        if t != MsgType.DISCOVERY_QUERY:
            self.inner.datagram_received(data, addr)
            return
        try:
            self.lookups.handling = parse_control_header(data).sender.raw
        except RemoteProtocolError:
            self.lookups.handling = None
        try:
            self.inner.datagram_received(data, addr)
        finally:
            self.lookups.handling = None

    def batch_done(self) -> None:
        self.inner.batch_done()


@dataclass(slots=True)
class Costs:
    """What registrations, record refreshes and gossip rounds sent, per call,
    by phase."""

    phase: str = START
    registration_stores: dict[str, list[int]] = field(default_factory=dict)
    """LOCATION_STOREs sent per record placed for a (re)registration."""
    refresh_stores: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """(records re-placed, LOCATION_STOREs sent) per periodic refresh."""
    gossip_rounds: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """(announcements and notices pushed, GOSSIPs sent) per gossip round."""


def tap_costs(fed: Federation, costs: Costs) -> None:
    book = fed.locations
    registered = book.registered
    place_all = book.place_all
    flush = fed._flush_gossip

    def sent(what: str) -> int:
        return fed.counters.get(f"sent_{what}", 0)

    def _registered(peer: PublicKey, now: float, standby: bool, rtt_ms: int) -> None:
        before = sent("LocationStore")
        registered(peer, now, standby, rtt_ms)
        costs.registration_stores.setdefault(costs.phase, []).append(sent("LocationStore") - before)

    def _place_all(now: float) -> None:
        before = sent("LocationStore")
        n = len(book._own)
        place_all(now)
        if n:
            costs.refresh_stores.setdefault(costs.phase, []).append(
                (n, sent("LocationStore") - before)
            )

    def _flush(now: float) -> None:
        pushed = len(fed._push) + len(fed._dead_notices)
        before = sent("Gossip")
        flush(now)
        costs.gossip_rounds.setdefault(costs.phase, []).append((pushed, sent("Gossip") - before))

    book.registered = _registered  # type: ignore[method-assign]
    book.place_all = _place_all  # type: ignore[method-assign]
    fed._flush_gossip = _flush  # type: ignore[method-assign]


def fed_of(relay: SimRelay) -> Federation:
    assert relay.core is not None
    return relay.core.federation


# ---------------------------------------------------------------- the scenario


def needs_relay(a: SimPeer, b: SimPeer) -> bool:
    return kind_of(index(a)) in CLOSED and kind_of(index(b)) in CLOSED


@dataclass(slots=True)
class Scenario:
    sim: Simulation
    mesh: SimMesh
    relays: list[SimRelay]
    peers: list[SimPeer]
    pairs: list[tuple[SimPeer, SimPeer]]
    taps: dict[str, RelayTap]
    lookups: LookupLog
    costs: Costs


def build(
    sim: Simulation, state: Path, n_relays: int, n_peers: int, lookups: LookupLog
) -> Scenario:
    mesh = SimMesh(sim, state, relay_config=RELAY_CONFIG)
    rng = sim.network.derive_rng("bench/federation")
    distance = list(range(n_relays))
    rng.shuffle(distance)
    relays: list[SimRelay] = []
    for i in range(n_relays):
        # one or two bootstrap relays among the earlier ones: a random tree
        boot = rng.sample(relays, min(len(relays), 1 + i % 2))
        delay_s = 0.005 + 0.040 * distance[i] / n_relays
        link = LinkSpec(delay_s=delay_s, jitter_s=0.002)
        relays.append(mesh.add_relay(f"r{i}", link=link, bootstrap=boot))
    peers = [
        mesh.add_peer(
            f"p{i}",
            behind=kind_of(i),
            link=LinkSpec(delay_s=0.005 + 0.001 * (i % 40)),
            relays=rng.sample(relays, 1 + i % 2),
        )
        for i in range(n_peers)
    ]
    pairs = [(peers[i], peers[(i + d) % n_peers]) for i in range(n_peers) for d in RING_OFFSETS]
    for a, b in pairs:
        mesh.connect(a, b)
    addrs = {r.host.address for r in relays}
    taps: dict[str, RelayTap] = {}
    costs = Costs()
    for r in relays:
        assert r.server is not None
        for t in r.server.transports:
            if isinstance(t, SimUdpTransport):
                t.receiver = taps[r.name] = RelayTap(t.receiver, addrs, lookups)
        lookups.tap_relay(fed_of(r))
        tap_costs(fed_of(r), costs)
    return Scenario(sim, mesh, relays, peers, pairs, taps, lookups, costs)


def knows_all(relays: Sequence[SimRelay]) -> bool:
    """Every relay of ``relays`` holds every other as live, and no other relay."""
    want = {r.key for r in relays}
    return all(set(fed_of(r).directory.live()) == want for r in relays)


def homes(relays: Sequence[SimRelay]) -> dict[bytes, SimRelay]:
    """Each peer's home, as the relays say (the relay that places its home record)."""
    out: dict[bytes, SimRelay] = {}
    for r in relays:
        for key, own in fed_of(r).locations._own.items():
            if not own.standby:
                out[key.raw] = r
    return out


class Placement:
    """Is every peer's home record at its k holders over a fixed set of relays?"""

    def __init__(self, relays: Sequence[SimRelay], peers: Sequence[SimPeer], k: int) -> None:
        self.relays = relays
        self.peers = peers
        by_key = {r.key: r for r in relays}
        live = list(by_key)
        self.holders = {
            p.public.raw: [by_key[h] for h in holders(p.public, live, k)] for p in peers
        }

    def count(self, now: float) -> tuple[int, int]:
        """(peers whose home record is at all their holders, peers with a home)."""
        home_of = homes(self.relays)
        ok = 0
        for p in self.peers:
            home = home_of.get(p.public.raw)
            if home is not None and all(
                any(
                    f.home == home.key and not f.standby
                    for f in fed_of(h).locations.held(p.public, now)
                )
                for h in self.holders[p.public.raw]
            ):
                ok += 1
        return ok, sum(1 for p in self.peers if p.public.raw in home_of)

    def complete(self, now: float) -> bool:
        ok, _ = self.count(now)
        return ok == len(self.peers)


def through(a: SimPeer, b: SimPeer, relays: set[PublicKey]) -> bool:
    """Whether either side of the pair sends through one of ``relays``."""
    return a.relay_for(b) in relays or b.relay_for(a) in relays


def recovered(mesh: SimMesh, a: SimPeer, b: SimPeer) -> bool:
    """Connected, and each side direct or relayed through a relay that is up."""
    if not mesh.connected(a, b):
        return False
    for x, y in ((a, b), (b, a)):
        key = x.relay_for(y)
        if key is not None:
            relay = mesh.relay_by_key(key)
            if relay is None or not relay.alive:
                return False
    return True


def summary(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {
        "mean": round(statistics.fmean(s), digits),
        "median": round(statistics.median(s), digits),
        "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))], digits),
        "max": round(s[-1], digits),
    }


def run_until(sim: Simulation, check: Callable[[], bool], timeout_s: float) -> float | None:
    try:
        return sim.run_until(check, timeout_s=timeout_s, poll_s=POLL_S)
    except TimeoutError:
        return None


def wait_pairs(
    sim: Simulation, pairs: Sequence[tuple[SimPeer, SimPeer]], ok: Any, timeout_s: float
) -> dict[tuple[str, str], float]:
    """When each pair first satisfied ``ok`` (pairs that never did are missing)."""
    done: dict[tuple[str, str], float] = {}
    waiting = list(pairs)

    def check() -> bool:
        nonlocal waiting
        now = sim.now()
        still = []
        for a, b in waiting:
            if ok(a, b):
                done[(a.name, b.name)] = now
            else:
                still.append((a, b))
        waiting = still
        return not waiting

    run_until(sim, check, timeout_s)
    return done


@dataclass(slots=True)
class Recovery:
    """When each thing was whole again after the kill (seconds after it)."""

    dead_declared_s: float | None = None
    records_placed_s: float | None = None
    pairs: dict[tuple[str, str], float] = field(default_factory=dict)
    """Pairs through a killed relay: when both agents were connected again
    through live relays (or direct), as they say."""
    answered: dict[tuple[str, str], float] = field(default_factory=dict)
    """The same pairs: when the first ping sent after the kill was sent that
    was answered (every second, so to the second)."""
    held: list[tuple[str, str]] = field(default_factory=list)
    """Pairs still unanswered at the end with a proxy that holds the relay's
    frames (a direct probe's hold that was never released)."""

    def done(self, n_hit: int) -> bool:
        return (
            self.dead_declared_s is not None
            and self.records_placed_s is not None
            and len(self.pairs) == len(self.answered) == n_hit
        )


def first_answer(traffic: Traffic, since: float) -> float | None:
    """When the first ping sent at or after ``since`` that was answered was sent."""
    return min((s for s, rtt in traffic.results if s >= since and rtt is not None), default=None)


def held_proxy(a: SimPeer, b: SimPeer) -> bool:
    """Whether ``a``'s proxy for ``b`` drops what the relay forwards (a hold)."""
    assert a.agent is not None
    proxy = a.agent.proxies._proxies.get(b.public)
    return proxy is not None and proxy.hold


def watch_recovery(
    sc: Scenario,
    survivors: Sequence[SimRelay],
    hit: Sequence[tuple[SimPeer, SimPeer]],
    traffic: dict[tuple[str, str], Traffic],
    placement: Placement,
    kill_at: float,
    timeout_s: float,
) -> Recovery:
    """Poll from the kill until the survivors declared the dead relays dead,
    every pair that went through them recovered (by its agents' word and by
    an answered ping) and every record is placed."""
    rec = Recovery()
    waiting = list(hit)
    next_placement = kill_at

    def check() -> bool:
        nonlocal waiting, next_placement
        now = sc.sim.now()
        after = round(now - kill_at, 2)
        if rec.dead_declared_s is None and knows_all(survivors):
            rec.dead_declared_s = after
        still = []
        for a, b in waiting:
            pair = (a.name, b.name)
            if pair not in rec.pairs and recovered(sc.mesh, a, b):
                rec.pairs[pair] = after
            if pair not in rec.answered:
                sent = first_answer(traffic[pair], kill_at)
                if sent is not None:
                    rec.answered[pair] = round(sent - kill_at, 2)
            if pair not in rec.pairs or pair not in rec.answered:
                still.append((a, b))
        waiting = still
        if rec.records_placed_s is None and now >= next_placement:
            next_placement = now + PLACEMENT_POLL_S
            if placement.complete(now):
                rec.records_placed_s = after
        return rec.done(len(hit))

    run_until(sc.sim, check, timeout_s)
    rec.held = [
        (a.name, b.name)
        for a, b in waiting
        if (a.name, b.name) not in rec.answered and (held_proxy(a, b) or held_proxy(b, a))
    ]
    return rec


def per_min(counts: Counter[int] | Counter[str], per: float) -> dict[str, float]:
    return {
        (type_name(t) if isinstance(t, int) else t): round(n / per, 1)
        for t, n in counts.most_common()
    }


@dataclass(slots=True)
class Run:
    figures: dict[str, Any]
    lookups: LookupLog
    costs: Costs
    recovery: Recovery | None = None
    hit: list[tuple[str, str]] = field(default_factory=list)
    """Pairs that went through a killed relay."""


def run(p: Params, say: Callable[[str], None] = lambda _msg: None) -> Run:
    out: dict[str, Any] = {"relays": p.relays, "peers": p.peers, "seed": p.seed}
    lookups = LookupLog()
    c0 = time.process_time()
    with (
        tempfile.TemporaryDirectory(prefix="wgrelay-fed-", dir=SCRATCH) as tmp,
        Simulation(seed=p.seed, trace=False) as sim,
        lookups.install(),
    ):
        sc = build(sim, Path(tmp), p.relays, p.peers, lookups)
        result = Run(out, lookups, sc.costs)
        k = fed_of(sc.relays[0]).config.replicas
        out["replicas"] = k

        # 1. the federation alone
        t = run_until(sim, lambda: knows_all(sc.relays), timeout_s=600.0)
        out["federation_converged_at_s"] = t
        out["cpu_s_relays_alone"] = round(time.process_time() - c0, 1)
        say(f"  federation of {p.relays} converged at {t} s (virtual)")

        # 2. agents
        t0 = sim.now()
        sc.mesh.start()
        out["pairs"] = len(sc.pairs)
        out["pairs_needing_relay"] = sum(1 for a, b in sc.pairs if needs_relay(a, b))
        done = wait_pairs(sim, sc.pairs, sc.mesh.connected, timeout_s=300.0)
        out["all_connected_after_s"] = (
            round(max(done.values()) - t0, 2) if len(done) == len(sc.pairs) else None
        )
        out["pairs_not_connected"] = len(sc.pairs) - len(done)
        say(f"  {len(done)}/{len(sc.pairs)} pairs connected, last {out['all_connected_after_s']} s")
        paths = Counter((a.path(b) or PathKind.PROBING).value for a, b in sc.pairs)
        out["paths"] = dict(sorted(paths.items()))
        out["lookups_at_start"] = lookup_figures(lookups.of(START), k)
        regs = sc.costs.registration_stores.get(START, [])
        out["stores_per_registration_at_start"] = dict(sorted(Counter(regs).items()))

        # 3. steady window
        sim.run_for(p.settle_s)
        lookups.phase = sc.costs.phase = STEADY
        before = {r.name: dict(fed_of(r).counters) for r in sc.relays}
        control0 = {r.name: r.control_messages for r in sc.relays}
        for tap in sc.taps.values():
            tap.from_relays.clear()
            tap.from_agents.clear()
        w0 = sim.now()
        sim.run_for(p.window_s)
        minutes = (sim.now() - w0) / 60.0
        per_relay = p.relays * minutes
        sent: Counter[str] = Counter()
        for r in sc.relays:
            for name, n in fed_of(r).counters.items():
                if name.startswith("sent_"):
                    sent[name[5:]] += n - before[r.name].get(name, 0)
        from_relays: Counter[int] = Counter()
        from_agents: Counter[int] = Counter()
        for tap in sc.taps.values():
            from_relays.update(tap.from_relays)
            from_agents.update(tap.from_agents)
        out["window_s"] = p.window_s
        out["relay_requests_sent_per_relay_per_min"] = per_min(sent, per_relay)
        out["received_from_relays_per_relay_per_min"] = per_min(from_relays, per_relay)
        out["received_from_relays_total_per_relay_per_min"] = round(
            sum(from_relays.values()) / per_relay, 1
        )
        out["received_from_agents_per_relay_per_min"] = per_min(from_agents, per_relay)
        rates = [(r.control_messages - control0[r.name]) / minutes for r in sc.relays]
        out["control_messages_per_relay_per_min"] = summary(rates, 0)
        rounds = sc.costs.gossip_rounds.get(STEADY, [])
        out["gossip"] = {
            "rounds_per_relay_per_min": round(len(rounds) / per_relay, 1),
            "items_per_round": summary([n for n, _ in rounds], 2),
            "messages_per_round": summary([m for _, m in rounds], 2),
        }
        refresh = sc.costs.refresh_stores.get(STEADY, [])
        out["record_refresh"] = {
            "refreshes_per_relay_per_min": round(len(refresh) / per_relay, 2),
            "stores_per_record": round(
                sum(m for _, m in refresh) / max(1, sum(n for n, _ in refresh)), 2
            ),
        }
        out["lookups_in_window"] = lookup_figures(lookups.of(STEADY), k)
        state = {
            "relays_known": [len(fed_of(r).directory) for r in sc.relays],
            "location_records_held": [fed_of(r).record_count() for r in sc.relays],
            "own_records": [len(fed_of(r).locations._own) for r in sc.relays],
            "registrations": [s.registrations for r in sc.relays if (s := r.stats()) is not None],
            "sessions": [s.sessions_active for r in sc.relays if (s := r.stats()) is not None],
        }
        out["state_per_relay"] = {name: summary(v) for name, v in state.items()}
        ok, with_home = Placement(sc.relays, sc.peers, k).count(sim.now())
        out["records_placed_before_kill"] = f"{ok}/{with_home} of {p.peers}"
        say(f"  steady window done; records placed {ok}/{with_home}")

        # 4. kill 20 % at once, those carrying the most sessions
        n_kill = max(1, round(KILL_FRACTION * p.relays))

        def load(r: SimRelay) -> tuple[int, int]:
            s = r.stats()
            return (s.sessions_active, s.registrations) if s is not None else (0, 0)

        killed = sorted(sc.relays, key=load, reverse=True)[:n_kill]
        dead_keys = {r.key for r in killed}
        hit = [(a, b) for a, b in sc.pairs if sc.mesh.connected(a, b) and through(a, b, dead_keys)]
        traffic = {(a.name, b.name): sc.mesh.ping_every(a, b, 1.0, 1.0) for a, b in hit}
        sim.run_for(p.warm_s)
        lookups.phase = sc.costs.phase = AFTER_KILL
        out["killed"] = n_kill
        out["killed_carrying_sessions"] = sum(1 for r in killed if load(r)[0] > 0)
        out["relays_carrying_sessions"] = sum(1 for r in sc.relays if load(r)[0] > 0)
        out["relayed_pairs"] = sum(1 for a, b in sc.pairs if a.path(b) is PathKind.RELAYED)
        out["connected_pairs_through_killed"] = len(hit)
        result.hit = [(a.name, b.name) for a, b in hit]
        survivors = [r for r in sc.relays if r.key not in dead_keys]
        placement = Placement(survivors, sc.peers, k)
        lookups.dead = {key.raw for key in dead_keys}
        kill_at = sim.now()
        for r in killed:
            r.kill()
        say(f"  killed {n_kill} relays at {kill_at:.1f} s; {len(hit)} pairs through them")
        rec = watch_recovery(sc, survivors, hit, traffic, placement, kill_at, p.recovery_timeout_s)
        result.recovery = rec
        out["recovery_timeout_s"] = p.recovery_timeout_s
        out["dead_declared_everywhere_after_s"] = rec.dead_declared_s
        for what, times in (("agents_say", rec.pairs), ("ping_answered", rec.answered)):
            back = list(times.values())
            out[f"pairs_recovered_{what}"] = f"{len(back)}/{len(hit)}"
            out[f"pair_recovery_{what}_s"] = summary(back, 2)
        out["pairs_never_answering_with_a_held_proxy"] = len(rec.held)
        out["records_replaced_after_s"] = rec.records_placed_s
        ok, with_home = placement.count(sim.now())
        out["records_placed_after_kill"] = f"{ok}/{with_home} of {p.peers}"
        out["pairs_connected_at_end"] = sum(1 for a, b in sc.pairs if recovered(sc.mesh, a, b))
        regs = sc.costs.registration_stores.get(AFTER_KILL, [])
        out["stores_per_registration_after_kill"] = dict(sorted(Counter(regs).items()))
        since = lookups.of(AFTER_KILL)
        out["lookups_after_kill"] = lookup_figures(since, k)
        out["lookups_after_kill_asking_live_relays_only"] = lookup_figures(
            [lk for lk in since if not lk.asked_dead], k
        )
        out["lookups_after_kill_asking_a_dead_relay"] = lookup_figures(
            [lk for lk in since if lk.asked_dead], k
        )
        out["unattributed_queries"] = lookups.unattributed
        out["virtual_s"] = round(sim.now(), 1)
        out["loop_errors"] = len(sim.loop_errors)
    out["cpu_s"] = round(time.process_time() - c0, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Params()
    ap.add_argument("--relays", type=int, default=d.relays)
    ap.add_argument("--peers", type=int, default=d.peers)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--window", type=float, default=d.window_s, help="steady window, virtual s")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # agents warn about every relay they cannot reach
    print(f"federation: {args.relays} relays, {args.peers} agents (seed {args.seed})", flush=True)
    params = Params(relays=args.relays, peers=args.peers, seed=args.seed, window_s=args.window)
    result = run(params, say=lambda msg: print(msg, flush=True)).figures
    result["python"] = sys.version.split()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
