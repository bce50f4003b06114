"""A WireGuard mesh of production relays and agents on a ``Simulation``.

``SimMesh`` is the scenario harness the simulation tests, the NAT matrix, the
simulated demo and the scale benchmark share. It builds nothing of its own: a
relay is the production ``RelayCore`` behind the production ``RelayServer``, a
peer is the production ``Agent`` (``wgrelay.mesh.daemon``, so ``AgentCore``
and the relay client stack under it) driving a ``SimWireGuard``. Each is given
its simulated host's ``runtime()``, exactly as the daemons are given the real
one, so whatever a scenario shows is what the shipped code does.

Determinism: every key and every random stream of the relay cores comes from
the simulation's seed, derived from the component's *name* (so adding a host
does not shift every other host's keys). What the production classes draw
from ``os.urandom`` themselves (nonces, request ids of the relay client,
which has no ``rng`` parameter) never changes a packet's size or timing, and
the trace records sizes and times, not payloads: equal seeds give equal traces.

A typical scenario::

    with Simulation(seed=1) as sim:
        mesh = SimMesh(sim, state_dir)
        relay = mesh.add_relay("relay", link=LinkSpec(delay_s=0.010))
        a = mesh.add_peer("a", behind=NatKind.SYMMETRIC)
        b = mesh.add_peer("b", behind=NatKind.SYMMETRIC)
        mesh.connect(a, b)
        mesh.start()
        t = mesh.wait_connected(a, b, timeout_s=60)
        assert a.path(b) is PathKind.RELAYED

Paths are read from the agents (``agent.core.peers[key].kind``); relay traffic
from each relay core's statistics; the home relay from the status file the
agent writes for ``wgrelay status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wgrelay.client.link import LinkConfig
from wgrelay.client.plan import PlanConfig
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, clamp
from wgrelay.mesh.agent import AgentConfig, PathKind
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.daemon import Agent, AgentOptions, status_path
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import DEFAULT_PORT_RANGE, RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.server import BindAddress, RelayServer
from wgrelay.relay.stats import RelayStats
from wgrelay.sim.engine import Partition
from wgrelay.sim.link import LinkSpec
from wgrelay.sim.nat import Endpoint, NatBehavior, NatKind
from wgrelay.sim.network import Simulation
from wgrelay.sim.topology import Host
from wgrelay.sim.wireguard import DEFAULT_LISTEN_PORT, SimWireGuard

log = logging.getLogger(__name__)

RELAY_PORT = 51821
INTERFACE = "wg0"
SETTLED = (PathKind.DIRECT, PathKind.RELAYED)
"""Paths an agent stays on; the others are on the way to one of these."""


@dataclass(frozen=True, slots=True)
class RelayCounts:
    """What a relay did, summed over its incarnations."""

    packets_forwarded: int = 0
    control_received: int = 0
    control_sent: int = 0

    @classmethod
    def of(cls, stats: RelayStats) -> RelayCounts:
        return cls(stats.packets_forwarded, stats.control_received, stats.control_sent)

    def __add__(self, other: RelayCounts) -> RelayCounts:
        return RelayCounts(
            self.packets_forwarded + other.packets_forwarded,
            self.control_received + other.control_received,
            self.control_sent + other.control_sent,
        )

    @property
    def control_messages(self) -> int:
        return self.control_received + self.control_sent


class SimRelay:
    """A production relay on its own host; ``kill``/``restart`` power-cycle it.

    A restart is a new process: a new ``RelayCore`` (new epoch, no
    registrations, no sessions) with the same identity and port.
    """

    def __init__(
        self, sim: Simulation, name: str, host: Host, config: RelayConfig, port: int
    ) -> None:
        self.sim = sim
        self.name = name
        self.host = host
        self.config = config
        self.port = port
        self.identity = RelayIdentity.from_seed(
            sim.network.derive_rng(f"mesh/relay/{name}").randbytes(32)
        )
        self.incarnations = 0
        self.bootstrap: list[SimRelay] = []
        """Relays it contacts first (``start-relay --bootstrap``), kept across restarts."""
        self.core: RelayCore | None = None
        self.server: RelayServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._past = RelayCounts()
        host.on_power(self._stop, self._start)
        self._start()

    def __repr__(self) -> str:
        return f"<SimRelay {self.name} {self.host.address}:{self.port}>"

    @property
    def key(self) -> PublicKey:
        return self.identity.public

    @property
    def endpoint(self) -> Endpoint:
        return (self.host.address, self.port)

    @property
    def alive(self) -> bool:
        return self.host.is_up

    def kill(self) -> None:
        """Power the relay's host off: every socket, registration and session is gone."""
        self.host.crash()

    def restart(self) -> None:
        """Power it on again: a fresh relay process on the same key and port."""
        self.host.restore()

    def _start(self) -> None:
        rt = self.host.runtime()
        rng = self.sim.network.derive_rng(f"mesh/relay/{self.name}/run/{self.incarnations}")
        self.incarnations += 1
        self.core = RelayCore(
            self.identity,
            self.config,
            OpenPolicy(),
            now=rt.now(),
            wall=rt.wall(),
            rng=rng.randbytes,
            announce_endpoints=(self.endpoint,),
        )
        for other in self.bootstrap:
            self.core.add_bootstrap(other.key, other.endpoint)
        self.server = RelayServer(
            self.core, rt, [BindAddress("0.0.0.0", self.port)], policy_refresh_s=0
        )
        self.server.open()
        # TCP on the UDP port's number and TLS on 443, as start-relay with a
        # certificate does (the simulator's TLS needs none: the context only
        # marks the listener as TLS)
        streams = [("tcp", BindAddress("0.0.0.0", self.port)), ("tls", BindAddress("0.0.0.0", 443))]
        self.sim.spawn(
            self.server.open_streams(streams, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)),
            name=f"relay {self.name} streams",
        )
        self._task = self.sim.spawn(self.server.serve(), name=f"relay {self.name}")

    def _stop(self) -> None:
        if self.core is not None:
            self._past = self._past + RelayCounts.of(self.core.get_stats())
        if self._task is not None:
            self._task.cancel()  # its sockets are already closed: nothing leaves
        self._task = None
        self.core = None
        self.server = None

    def stats(self) -> RelayStats | None:
        """The running core's statistics (None while the host is down)."""
        return self.core.get_stats() if self.core is not None else None

    def counts(self) -> RelayCounts:
        """Data frames forwarded and control messages, over every incarnation."""
        if self.core is None:
            return self._past
        return self._past + RelayCounts.of(self.core.get_stats())

    @property
    def packets_forwarded(self) -> int:
        return self.counts().packets_forwarded

    @property
    def control_messages(self) -> int:
        return self.counts().control_messages

    def holds(self, peer: SimPeer) -> bool:
        """Whether ``peer`` is registered here now."""
        return self.core is not None and self.core.is_registered(peer.public)


class SimPeer:
    """A host with a simulated WireGuard interface and, once started, the production agent."""

    def __init__(
        self, sim: Simulation, name: str, host: Host, state_dir: Path, listen_port: int
    ) -> None:
        self.sim = sim
        self.name = name
        self.host = host
        self.state_dir = state_dir
        self.private_key = PrivateKey(
            clamp(sim.network.derive_rng(f"mesh/peer/{name}").randbytes(32))
        )
        self.public = self.private_key.public_key()
        self.wg = SimWireGuard(host, INTERFACE, self.private_key, listen_port)
        self.registry = RelayRegistry()
        self.plan_config = PlanConfig()
        """The agent's planner settings (``--private``: ``PlanConfig.private``)."""
        self.agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SimPeer {self.name} {self.public.short()}>"

    @property
    def endpoint(self) -> Endpoint:
        """Where the others' WireGuard configuration points for this peer:
        its public address (its NAT box's, if any) and its listen port."""
        nat = self.host.nat
        ip = nat.public_ip if nat is not None else self.host.address
        return (ip, self.wg.listen_port)

    @property
    def started(self) -> bool:
        return self.agent is not None

    def _agent(self) -> Agent:
        if self.agent is None:
            raise RuntimeError(f"the agent of {self.name} has not been started")
        return self.agent

    def path(self, other: SimPeer) -> PathKind | None:
        """What this peer's agent says the path to ``other`` is (None: not known yet)."""
        p = self._agent().core.peers.get(other.public)
        return p.kind if p is not None else None

    def relay_for(self, other: SimPeer) -> PublicKey | None:
        """The relay carrying the path to ``other``, while it is relayed."""
        p = self._agent().core.peers.get(other.public)
        return p.relay if p is not None and p.kind is PathKind.RELAYED else None

    def tunnel_up(self, other: SimPeer) -> bool:
        """Whether WireGuard holds a usable session with ``other``."""
        return self.wg.has_session(other.public)

    async def ping(self, other: SimPeer, timeout_s: float = 5.0) -> float | None:
        """Round-trip time of one ping through the tunnel; None if it went unanswered."""
        return await self.wg.ping(other.public, timeout_s=timeout_s)

    def home(self) -> PublicKey | None:
        """The home relay, as the agent last wrote it for ``wgrelay status``."""
        try:
            doc = json.loads(status_path(self.state_dir, INTERFACE).read_text())
        except (OSError, ValueError):
            return None
        home = doc.get("home_relay")
        return PublicKey.from_base64(home) if isinstance(home, str) else None


@dataclass(frozen=True, slots=True)
class PathChange:
    time: float
    peer: str
    other: str
    old: PathKind | None
    new: PathKind | None


@dataclass(slots=True)
class PathWatch:
    """Samples the path of some ordered pairs every ``interval_s`` and keeps the changes."""

    pairs: list[tuple[SimPeer, SimPeer]]
    interval_s: float
    changes: list[PathChange] = field(default_factory=list)
    _last: dict[tuple[str, str], PathKind | None] = field(default_factory=dict)

    def sample(self, now: float) -> None:
        for a, b in self.pairs:
            kind = a.path(b) if a.started else None
            k = (a.name, b.name)
            if k not in self._last:
                self._last[k] = kind
            elif self._last[k] != kind:
                self.changes.append(PathChange(now, a.name, b.name, self._last[k], kind))
                self._last[k] = kind

    def count(self, since: float = 0.0) -> int:
        return sum(1 for c in self.changes if c.time >= since)


@dataclass(slots=True)
class Traffic:
    """Pings from one peer to another every ``interval_s``: each result, and the outages."""

    interval_s: float
    results: list[tuple[float, float | None]] = field(default_factory=list)
    """(virtual time sent, round-trip time or None when unanswered)."""

    @property
    def answered(self) -> int:
        return sum(1 for _, rtt in self.results if rtt is not None)

    @property
    def lost(self) -> int:
        return sum(1 for _, rtt in self.results if rtt is None)

    def outages(self) -> list[tuple[float, float]]:
        """(first unanswered ping, next answered one) for every run of losses;
        a run still going at the end has the time of the last ping sent."""
        out: list[tuple[float, float]] = []
        start: float | None = None
        for t, rtt in sorted(self.results):
            if rtt is None and start is None:
                start = t
            elif rtt is not None and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, max(t for t, _ in self.results)))
        return out

    def longest_outage_s(self) -> float:
        return max((end - start for start, end in self.outages()), default=0.0)


class SimMesh:
    """Relays and peers on one simulation, wired like a real deployment."""

    def __init__(
        self,
        sim: Simulation,
        state_dir: Path,
        *,
        agent_config: AgentConfig | None = None,
        link_config: LinkConfig | None = None,
        relay_config: RelayConfig | None = None,
    ) -> None:
        self.sim = sim
        self.state_dir = state_dir
        self.agent_config = agent_config or AgentConfig()
        self.link_config = link_config or LinkConfig()
        self.relay_config = relay_config or RelayConfig(port_range=DEFAULT_PORT_RANGE)
        self.relays: dict[str, SimRelay] = {}
        self.peers: dict[str, SimPeer] = {}
        self._bootstrap: dict[str, list[SimRelay] | None] = {}

    # ------------------------------------------------------------ building

    def add_relay(
        self,
        name: str,
        *,
        link: LinkSpec = LinkSpec(),  # noqa: B008 (frozen)
        config: RelayConfig | None = None,
        port: int = RELAY_PORT,
        bootstrap: Sequence[SimRelay] = (),
    ) -> SimRelay:
        """A relay on the internet, listening (and serving) at once; with
        ``bootstrap``, it joins the federation through those relays."""
        host = self.sim.add_host(name, link=link)
        relay = SimRelay(self.sim, name, host, config or self.relay_config, port)
        relay.bootstrap = list(bootstrap)
        for other in relay.bootstrap:
            if relay.core is not None:
                relay.core.add_bootstrap(other.key, other.endpoint)
        self.relays[name] = relay
        return relay

    def add_peer(
        self,
        name: str,
        *,
        behind: NatKind | NatBehavior = NatKind.NONE,
        link: LinkSpec = LinkSpec(),  # noqa: B008
        nat_link: LinkSpec = LinkSpec(),  # noqa: B008
        relays: Sequence[SimRelay] | None = None,
        listen_port: int = DEFAULT_LISTEN_PORT,
    ) -> SimPeer:
        """A peer (its agent starts with ``start``); ``relays`` are its bootstrap
        relays, every relay of the mesh at start time by default."""
        host = self.sim.add_host(name, behind=behind, link=link, nat_link=nat_link)
        state = self.state_dir / name
        state.mkdir(mode=0o700, parents=True, exist_ok=False)
        peer = SimPeer(self.sim, name, host, state, listen_port)
        self.peers[name] = peer
        self._bootstrap[name] = list(relays) if relays is not None else None
        return peer

    def connect(self, a: SimPeer, b: SimPeer, *, keepalive: int | None = None) -> None:
        """Make ``a`` and ``b`` WireGuard peers of each other, each configured
        with the other's public endpoint (as an operator would write it)."""
        a.wg.add_peer(b.public, endpoint=b.endpoint, keepalive=keepalive)
        b.wg.add_peer(a.public, endpoint=a.endpoint, keepalive=keepalive)

    def start(self, peers: Iterable[SimPeer] | None = None) -> None:
        """Start the agent of every given peer (default: all) not running yet."""
        for peer in list(peers) if peers is not None else list(self.peers.values()):
            if peer.agent is not None:
                continue
            chosen = self._bootstrap[peer.name]
            for relay in chosen if chosen is not None else self.relays.values():
                peer.registry.add_bootstrap(relay.key, relay.endpoint)
            opts = AgentOptions(
                interface=INTERFACE,
                state_dir=peer.state_dir,
                config=self.agent_config,
                link_config=self.link_config,
                plan_config=peer.plan_config,
            )
            peer.agent = Agent(
                opts,
                peer.wg,
                peer.wg.read(INTERFACE),
                peer.registry,
                None,
                ConnectionCache(None),
                runtime=peer.host.runtime(),
            )
            peer._task = self.sim.spawn(peer.agent.run(), name=f"agent {peer.name}")

    # ------------------------------------------------------------ the world

    def partition(
        self, a: Iterable[SimPeer | SimRelay], b: Iterable[SimPeer | SimRelay]
    ) -> Partition:
        return self.sim.partition((x.host for x in a), (x.host for x in b))

    def relay_by_key(self, key: PublicKey | None) -> SimRelay | None:
        return next((r for r in self.relays.values() if r.key == key), None)

    # ------------------------------------------------------------ waiting and reading

    def connected(self, a: SimPeer, b: SimPeer) -> bool:
        """Both WireGuards hold a session and both agents settled on a path."""
        return a.tunnel_up(b) and b.tunnel_up(a) and a.path(b) in SETTLED and b.path(a) in SETTLED

    def wait_connected(self, a: SimPeer, b: SimPeer, *, timeout_s: float) -> float:
        """Run until ``connected(a, b)``; the virtual time it first held."""
        return self.sim.run_until(lambda: self.connected(a, b), timeout_s=timeout_s)

    def wait_all_connected(
        self, pairs: Sequence[tuple[SimPeer, SimPeer]], *, timeout_s: float, poll_s: float = 0.25
    ) -> dict[tuple[str, str], float]:
        """Run until every pair is connected; when each first was.

        ``TimeoutError`` names the pairs still down."""
        done: dict[tuple[str, str], float] = {}
        waiting = list(pairs)

        def check() -> bool:
            nonlocal waiting
            now = self.sim.now()
            still = []
            for a, b in waiting:
                if self.connected(a, b):
                    done[(a.name, b.name)] = now
                else:
                    still.append((a, b))
            waiting = still
            return not waiting

        try:
            self.sim.run_until(check, timeout_s=timeout_s, poll_s=poll_s)
        except TimeoutError:
            names = ", ".join(f"{a.name}-{b.name}" for a, b in waiting[:10])
            raise TimeoutError(f"{len(waiting)} pair(s) not connected: {names}") from None
        return done

    def ping_every(
        self, a: SimPeer, b: SimPeer, interval_s: float = 1.0, timeout_s: float = 1.0
    ) -> Traffic:
        """Ping ``b`` from ``a`` every ``interval_s`` (an active tunnel) until the end."""
        traffic = Traffic(interval_s)

        async def one(sent: float) -> None:
            traffic.results.append((sent, await a.ping(b, timeout_s)))

        async def run() -> None:
            pending: set[asyncio.Task[None]] = set()
            while True:
                task = asyncio.create_task(one(self.sim.now()))
                pending.add(task)
                task.add_done_callback(pending.discard)
                await asyncio.sleep(interval_s)

        self.sim.spawn(run(), name=f"ping {a.name}->{b.name}")
        return traffic

    def watch(self, pairs: Sequence[tuple[SimPeer, SimPeer]], interval_s: float = 0.1) -> PathWatch:
        """Record every path change of ``pairs`` (both directions) from now on."""
        both = [*pairs, *((b, a) for a, b in pairs)]
        w = PathWatch(both, interval_s)

        async def run() -> None:
            while True:
                w.sample(self.sim.now())
                await asyncio.sleep(interval_s)

        self.sim.spawn(run(), name="path watch")
        return w

    def on_change(
        self,
        pairs: Sequence[tuple[SimPeer, SimPeer]],
        callback: Callable[[PathChange], None],
        interval_s: float = 0.05,
    ) -> PathWatch:
        """Like ``watch``, calling ``callback`` with each change as it is seen."""
        w = PathWatch(list(pairs), interval_s)

        async def run() -> None:
            seen = 0
            while True:
                w.sample(self.sim.now())
                for c in w.changes[seen:]:
                    callback(c)
                seen = len(w.changes)
                await asyncio.sleep(interval_s)

        self.sim.spawn(run(), name="path callback")
        return w
