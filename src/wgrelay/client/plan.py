"""Which relay carries which peer: the client's planning core (sans-I/O).

Theory of operation
-------------------
``RelayPlanner`` is everything an agent decides about relays: it owns one
``RelayLink`` per relay it talks to, chooses the **home relay** (where we stay
registered with "accept incoming sessions", so peers that cannot reach us
directly find us there), finds where a peer is registered, tries relays for a
peer in order, fails over, re-homes, measures, and forgets relays it no longer
needs. It never touches a socket or a clock, in the style of aioquic:

* inputs: ``start``, ``relay_peer``, ``drop_peer``, ``locate`` (API calls),
  ``receive(addr, data, now)`` (a control datagram from a relay's address),
  ``handle_timer(now)``;
* outputs: ``datagrams_to_send()`` as ``(relay address, bytes)``,
  ``next_event()`` (one channel for every outcome: ``PeerRelayed``,
  ``PeerRelayLost``, ``PeerRelayFailed``, ``HomeChanged``, ``PeerLocated``,
  ``RelayMeasured``, ``RelaysLearned``), and ``next_timer()``.

All links share the shell's one socket: a relay is told apart by its address,
a data frame by the relay it came from and its session id (``sessions_at``).

Home relay. At start the best ``measure_count`` known relays by score are
pinged (at most ``measure_timeout_s``); then the planner registers at the best
one that answers, trying the next on refusal or silence (``connect_timeout_s``).
When the home link is lost or refused, the same happens again; with no relay
reachable it tries again every ``rehome_retry_s``. Once home, the relay is
asked for announcements, which update the registry.

Relaying a peer. ``relay_peer`` first asks the best ``locate_fanout`` relays
where the peer is registered (``locate_timeout_s``, first answer wins), then
tries, in order, the relay that holds the peer, our home, and every other
usable relay by score: register there if needed, then ask for a session
(``session_timeout_s`` per step). The first session wins (``PeerRelayed``); if
every relay fails, ``PeerRelayFailed`` says why, and the agent's backoff
decides when to ask again. A session the peer opens towards us arrives as
``PeerRelayed(incoming=True)``.

Score (lower is better), documented in docs/ARCHITECTURE.md::

    score = rtt_ms (1000 if never measured) + 250 * failures + 2 * load_pct

Relays that carry sessions are pinged every ``measure_interval_s``
(``RelayMeasured``: RTT or a loss, for the connection cache). A link that is
not home and has carried no session nor attempt for ``link_idle_s`` is shut
down: the relay expires our registration there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from wgrelay.client.events import (
    DiscoveryAnswered,
    HomeChanged,
    LinkEvent,
    LinkLost,
    LinkRegistered,
    LinkRejected,
    PeerLocated,
    PeerRelayed,
    PeerRelayFailed,
    PeerRelayLost,
    PingTimedOut,
    Place,
    PlanEvent,
    QueryFailed,
    RelayMeasured,
    RelaysLearned,
    RttMeasured,
    SessionEnded,
    SessionEstablished,
    SessionFailed,
)
from wgrelay.client.link import LinkConfig, LinkState, RelayLink, Role
from wgrelay.discovery.registry import KnownRelay, RelayRegistry
from wgrelay.discovery.selection import SWITCH_HOLD_S, RttPrior, Selector, worth_switching
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import InvalidKey
from wgrelay.keys import PrivateKey, PublicKey, relay_x25519_public
from wgrelay.proto.constants import Capability, CloseReason

log = logging.getLogger(__name__)

MAX_PAGES = 100
"""Of the relay list: 600 relays; a federation bigger than that is sampled."""


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """Every timer and fan-out of the planner, in one place."""

    measure_count: int = 8
    """Relays pinged before choosing a home (the best by score)."""
    measure_timeout_s: float = 2.0
    connect_timeout_s: float = 6.0
    """Registering at a relay (cookie round trip included)."""
    session_timeout_s: float = 6.0
    locate_fanout: int = 2
    """Relays asked where a peer is when we have no home yet (else only the home)."""
    locate_timeout_s: float = 2.0
    located_relay_ttl_s: float = 600.0
    locate_widen: int = 8
    """Relays asked when the home does not know where a peer is."""
    rehome_retry_s: float = 5.0
    rehome_retry_max_s: float = 60.0
    retry_jitter: float = 0.2
    """Backoff delays vary by this fraction either way."""
    measure_interval_s: float = 15.0
    announcements_interval_s: float = 300.0
    link_idle_s: float = 60.0
    standby: bool = True
    """Keep a second relay registered, so losing the home costs one REGISTER."""


# ---------------------------------------------------------------- internal state


class _Phase(Enum):
    LOCATING = "locating"
    CONNECTING = "connecting"


@dataclass(slots=True)
class _Attempt:
    """One ``relay_peer`` in progress."""

    peer: PublicKey
    phase: _Phase
    deadline: float
    queries: dict[PublicKey, int] = field(default_factory=dict)
    located: PublicKey | None = None
    candidates: list[PublicKey] = field(default_factory=list)
    current: PublicKey | None = None
    tried: set[PublicKey] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    report_located: bool = False
    """Only locate (``locate()``): report where, do not connect."""
    asked: set[PublicKey] = field(default_factory=set)
    widened: bool = False
    """The home did not know: other relays were asked too (relays that do
    not federate, or a peer whose records are not placed yet)."""
    places: tuple[Place, ...] = ()
    moving: bool = False
    """A relayed peer moving to a cheaper path: a failure keeps the old one."""


@dataclass(slots=True)
class _Homing:
    """Choosing a home relay: measure, then register at the best."""

    measuring: set[PublicKey]
    measure_deadline: float
    trying: PublicKey | None = None
    deadline: float = 0.0
    tried: set[PublicKey] = field(default_factory=set)


@dataclass(slots=True)
class _Link:
    link: RelayLink
    addr: Endpoint
    idle_since: float


class RelayPlanner:
    def __init__(
        self,
        private_key: PrivateKey,
        registry: RelayRegistry,
        now: float,
        wall: float,
        accept_peer: Callable[[PublicKey], bool] = lambda _peer: True,
        config: PlanConfig | None = None,
        link_config: LinkConfig | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        prior: RttPrior | None = None,
    ) -> None:
        self.private_key = private_key
        self.registry = registry
        self.config = config or PlanConfig()
        self.link_config = link_config or LinkConfig()
        self._accept_peer = accept_peer
        self._rng = rng
        self.selector = Selector(private_key.public_key(), prior)
        self._places: dict[PublicKey, tuple[Place, ...]] = {}
        """Where each peer we located accepts sessions (for re-evaluation)."""
        self._moved_at: dict[PublicKey, float] = {}
        self._wall_offset = wall - now
        self._links: dict[PublicKey, _Link] = {}
        self._by_addr: dict[Endpoint, PublicKey] = {}
        self._bad_keys: set[PublicKey] = set()
        self.home: PublicKey | None = None
        self.standby: PublicKey | None = None
        """The next-best relay, registered too (REGISTER_FLAG_STANDBY) so
        that losing the home costs one REGISTER, not a search."""
        self._homing: _Homing | None = None
        self._rehome_at = float("inf")
        self._rehome_failures = 0
        self._attempts: dict[PublicKey, _Attempt] = {}
        self.route_relay: dict[PublicKey, PublicKey] = {}
        """peer -> the relay whose session carries it."""
        self._next_measure = float("inf")
        self._next_announcements = float("inf")
        self._events: list[PlanEvent] = []
        self._started = False
        self._closed = False

    # ------------------------------------------------------------ clock

    def _wall_ms(self, now: float) -> int:
        return int((now + self._wall_offset) * 1000)

    def sync_wall(self, now: float, wall: float) -> None:
        self._wall_offset = wall - now
        for lk in self._links.values():
            lk.link.sync_wall(now, wall)

    # ------------------------------------------------------------ relays and links

    def available(self, now: float) -> list[KnownRelay]:
        """Known, usable relays, best score first."""
        relays = self.registry.get_available_relays(self._wall_ms(now))
        return self.selector.order(r for r in relays if self._usable(r.key))

    def _usable(self, key: PublicKey) -> bool:
        """A relay key must be a valid Ed25519 point (we derive its X25519 key),
        and a relay that announced its capabilities must relay UDP."""
        if key in self._bad_keys:
            return False
        relay = self.registry.get(key)
        announced = relay is not None and relay.issued_ms is not None
        if announced and relay is not None and not relay.capabilities & Capability.UDP_RELAY:
            return False
        try:
            relay_x25519_public(key)
        except InvalidKey:
            log.warning("relay key %s is not a relay (Ed25519) key; ignoring it", key)
            self._bad_keys.add(key)
            return False
        return True

    def _link(self, key: PublicKey, now: float) -> RelayLink | None:
        lk = self._links.get(key)
        if lk is not None:
            return lk.link
        relay = self.registry.get(key)
        if relay is None or not self._usable(key):
            return None
        link = RelayLink(
            self.private_key,
            key,
            self.link_config,
            now=now,
            wall=now + self._wall_offset,
            accept_offer=self._accept_peer,
            rng=self._rng,
        )
        # only the home places a location record for us: other relays (the
        # standby, a peer's home we reach it through) must not draw lookups
        link.role = Role.HOME if key == self.home else Role.UNLISTED
        addr = (relay.endpoint[0], relay.endpoint[1])
        self._links[key] = _Link(link, addr, now)
        self._by_addr[addr] = key
        return link

    def _next_endpoint(self, key: PublicKey) -> None:
        """A relay that does not answer at one of its announced endpoints is
        tried at the next one (IPv6 and IPv4, several addresses) from then on."""
        lk = self._links.get(key)
        relay = self.registry.get(key)
        if lk is None or relay is None or len(relay.endpoints) < 2:
            return
        eps = [(e[0], e[1]) for e in relay.endpoints]
        nxt = eps[(eps.index(lk.addr) + 1) % len(eps)] if lk.addr in eps else eps[0]
        if nxt != lk.addr and nxt not in self._by_addr:
            log.info("relay %s: trying %s", key.short(), endpoint_str(nxt))
            self._by_addr.pop(lk.addr, None)
            lk.addr = nxt
            self._by_addr[nxt] = key

    def link(self, key: PublicKey) -> RelayLink | None:
        lk = self._links.get(key)
        return lk.link if lk is not None else None

    def link_at(self, addr: Endpoint) -> RelayLink | None:
        """The data path's lookup: the link of the relay at ``addr`` (its
        ``sessions`` map a frame's session id to the peer)."""
        key = self._by_addr.get(addr)
        return self._links[key].link if key is not None else None

    def relay_addr(self, relay: PublicKey) -> Endpoint | None:
        lk = self._links.get(relay)
        return lk.addr if lk is not None else None

    def links(self) -> dict[PublicKey, RelayLink]:
        return {k: lk.link for k, lk in self._links.items()}

    # ------------------------------------------------------------ API

    def start(self, now: float) -> None:
        """Measure the known relays and choose a home among them."""
        self._started = True
        self._choose_home(now)

    def relay_peer(self, peer: PublicKey, now: float) -> None:
        """Give ``peer`` a relayed path; answered by PeerRelayed or PeerRelayFailed."""
        current = self._attempts.get(peer)
        if current is not None and not current.report_located:
            current.moving = False  # the agent waits for an answer now
            return
        relay = self.route_relay.get(peer)
        if relay is not None:
            lk = self._links.get(relay)
            if lk is not None and peer in lk.link.session_of:
                sid = lk.link.session_of[peer]
                self._events.append(PeerRelayed(peer, relay, False, sid))
                return
        attempt = self._locating(peer, now)
        self._attempts[peer] = attempt
        if not attempt.queries:
            self._connect_next(attempt, now)

    def locate(self, peer: PublicKey, now: float) -> None:
        """Where is ``peer`` registered? Answered by PeerLocated."""
        if peer in self._attempts:
            return
        attempt = self._locating(peer, now)
        attempt.report_located = True
        self._attempts[peer] = attempt
        if not attempt.queries:
            self._finish_locate(attempt, now)

    def drop_peer(
        self, peer: PublicKey, now: float, reason: CloseReason = CloseReason.NORMAL
    ) -> None:
        """Close ``peer``'s relay session (NORMAL: we went direct; REPLACED:
        we want a new one) and forget any attempt for it."""
        self._attempts.pop(peer, None)
        self._places.pop(peer, None)
        self._moved_at.pop(peer, None)
        relay = self.route_relay.pop(peer, None)
        for key, lk in self._links.items():
            lk.link.wanted.discard(peer)
            if key == relay or peer in lk.link.session_of:
                lk.link.close_session(peer, now, reason)

    def shutdown(self, now: float) -> None:
        """Close every session and stop every link (the relays expire us)."""
        self._closed = True
        for lk in self._links.values():
            lk.link.shutdown(now)
        self._attempts.clear()
        self.route_relay.clear()
        self._homing = None
        self.standby = None
        self._rehome_at = self._next_measure = self._next_announcements = float("inf")

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        out: list[tuple[Endpoint, bytes]] = []
        for lk in self._links.values():
            out.extend((lk.addr, data) for data in lk.link.datagrams_to_send())
        return out

    def next_event(self) -> PlanEvent | None:
        return self._events.pop(0) if self._events else None

    def next_timer(self) -> float:
        t = min(self._rehome_at, self._next_measure, self._next_announcements)
        if self._homing is not None:
            t = min(t, self._homing.measure_deadline if self._homing.measuring else t)
            if self._homing.trying is not None:
                t = min(t, self._homing.deadline)
        for a in self._attempts.values():
            t = min(t, a.deadline)
        for lk in self._links.values():
            t = min(t, lk.link.next_timer())
            if self._idle_candidate(lk):
                t = min(t, lk.idle_since + self.config.link_idle_s)
        return t

    # ------------------------------------------------------------ inputs

    def receive(self, addr: Endpoint, data: bytes, now: float) -> bool:
        """A control datagram from ``addr``; False if no relay of ours is there."""
        key = self._by_addr.get(addr)
        if key is None:
            return False
        link = self._links[key].link
        link.receive(data, now)
        self._drain(key, link, now)
        return True

    def handle_timer(self, now: float) -> None:
        for key, lk in list(self._links.items()):
            lk.link.handle_timer(now)
            self._drain(key, lk.link, now)
        if now >= self._rehome_at:
            self._rehome_at = float("inf")
            self._choose_home(now)
        homing = self._homing
        if homing is not None:
            if homing.measuring and now >= homing.measure_deadline:
                homing.measuring.clear()
                self._register_next_home(now)
            elif homing.trying is not None and now >= homing.deadline:
                self._home_failed(homing.trying, "no answer", now)
        for attempt in list(self._attempts.values()):
            if now >= attempt.deadline:
                self._attempt_timed_out(attempt, now)
        if now >= self._next_measure:
            self._measure(now)
        if now >= self._next_announcements:
            self._ask_announcements(now)
        self._retire_idle_links(now)

    # ------------------------------------------------------------ link events

    def _drain(self, key: PublicKey, link: RelayLink, now: float) -> None:
        while (ev := link.next_event()) is not None:
            self._on_link_event(key, link, ev, now)

    def _on_link_event(self, key: PublicKey, link: RelayLink, ev: LinkEvent, now: float) -> None:
        if isinstance(ev, SessionEstablished):
            old = self.route_relay.get(ev.peer)
            self.route_relay[ev.peer] = key
            self.registry.record_success(key)
            for other, lk in self._links.items():
                if other != key and ev.peer not in lk.link.session_of:
                    lk.link.forget_wanted(ev.peer)  # a lost link must not ask again
            attempt = self._attempts.get(ev.peer)
            if attempt is not None and not attempt.report_located:
                del self._attempts[ev.peer]
                if attempt.moving and old is not None and old != key:
                    self._leave_old_path(ev.peer, old, now)
            self._touch(key, now)
            self._events.append(PeerRelayed(ev.peer, key, ev.incoming, ev.session_id))
        elif isinstance(ev, SessionFailed):
            attempt = self._attempts.get(ev.peer)
            if attempt is not None and attempt.current == key:
                attempt.errors.append(f"{key.short()}: {ev.status.name}")
                self._connect_next(attempt, now)
        elif isinstance(ev, SessionEnded):
            if self.route_relay.get(ev.peer) == key:
                del self.route_relay[ev.peer]
                self._events.append(PeerRelayLost(ev.peer, key, ev.reason.name.lower()))
        elif isinstance(ev, LinkRegistered):
            self._on_registered(key, link, now)
        elif isinstance(ev, LinkLost | LinkRejected):
            self._on_link_down(key, ev, now)
        elif isinstance(ev, RttMeasured):
            self.registry.record_rtt(key, ev.rtt_s * 1000)
            self.registry.record_load(key, ev.load_pct)
            self._on_pong(key, ev, now)
        elif isinstance(ev, DiscoveryAnswered):
            self._on_discovery(key, ev, now)
        elif isinstance(ev, QueryFailed):
            self._on_query_failed(key, ev, now)
        elif isinstance(ev, PingTimedOut):
            carried = self._carried(key)
            if carried:  # a loss, for the connection cache
                self._events.append(RelayMeasured(key, None, carried))

    def _on_registered(self, key: PublicKey, link: RelayLink, now: float) -> None:
        self._touch(key, now)
        homing = self._homing
        if homing is not None and homing.trying == key:
            self._homing = None
            self.registry.record_success(key)
            self._set_home(key, now)
        for attempt in list(self._attempts.values()):
            if attempt.current == key and attempt.phase is _Phase.CONNECTING:
                link.request_session(attempt.peer, now)
                attempt.deadline = now + self.config.session_timeout_s

    def _on_link_down(self, key: PublicKey, ev: LinkLost | LinkRejected, now: float) -> None:
        self.registry.record_failure(key)
        why = ev.reason
        if isinstance(ev, LinkLost):
            self._next_endpoint(key)  # it keeps knocking: at the next address
        homing = self._homing
        if homing is not None and homing.trying == key:
            self._home_failed(key, why, now)
        if key == self.standby:
            self.standby = None
        if key == self.home and not self._closed:
            if not self._promote_standby(now):
                log.warning("home relay %s down (%s); choosing another", key.short(), why)
                self._set_home(None, now)
                self._choose_home(now)
        elif key != self.home and self.standby is None:
            self._choose_standby(now)
        for attempt in list(self._attempts.values()):
            if attempt.current == key:
                attempt.errors.append(f"{key.short()}: {why}")
                self._connect_next(attempt, now)
        if isinstance(ev, LinkRejected):
            self._drop_link(key)

    # ------------------------------------------------------------ home

    def _choose_home(self, now: float) -> None:
        if self._closed or self._homing is not None:
            return
        relays = self.available(now)
        if not relays:
            log.warning("no relay known: add one with add-bootstrap-relay or --relay")
            self._set_home(None, now)
            self._rehome_at = now + self._rehome_backoff()
            return
        measure = relays[: self.config.measure_count]
        homing = _Homing(measuring=set(), measure_deadline=now + self.config.measure_timeout_s)
        self._homing = homing
        for relay in measure:
            link = self._link(relay.key, now)
            if link is None:
                continue
            link.ping(now)
            homing.measuring.add(relay.key)
        if not homing.measuring:
            self._register_next_home(now)

    def _on_pong(self, key: PublicKey, ev: RttMeasured, now: float) -> None:
        homing = self._homing
        if homing is not None and key in homing.measuring:
            homing.measuring.discard(key)
            if not homing.measuring:
                self._register_next_home(now)
        carried = self._carried(key)
        if carried:
            self._events.append(RelayMeasured(key, ev.rtt_s, carried))

    def _register_next_home(self, now: float) -> None:
        homing = self._homing
        if homing is None:
            return
        for relay in self.available(now):
            if relay.key in homing.tried:
                continue
            link = self._link(relay.key, now)
            if link is None:
                continue
            homing.tried.add(relay.key)
            homing.trying = relay.key
            homing.deadline = now + self.config.connect_timeout_s
            if link.state == LinkState.REGISTERED:
                self._homing = None
                self._set_home(relay.key, now)
            else:
                link.set_role(Role.HOME, now)
                link.connect(now)
            return
        self._homing = None
        self._set_home(None, now)
        log.warning("no home relay reachable; retrying in %.0f s", self.config.rehome_retry_s)
        self._rehome_at = now + self._rehome_backoff()

    def _promote_standby(self, now: float) -> bool:
        """The home is down: the standby, already registered, takes over."""
        key = self.standby
        link = self.link(key) if key is not None else None
        if key is None or link is None or link.state != LinkState.REGISTERED:
            return False
        log.warning(
            "home relay %s down; standby %s takes over",
            self.home.short() if self.home else "?",
            key.short(),
        )
        self.standby = None
        self._set_home(key, now)
        return True

    def _choose_standby(self, now: float) -> None:
        """Register at the best relay that is not home, for failover."""
        if self._closed or self.home is None or not self.config.standby:
            return
        for relay in self.available(now):
            if relay.key == self.home:
                continue
            link = self._link(relay.key, now)
            if link is None or link.state in (LinkState.LOST, LinkState.REJECTED):
                continue
            self.standby = relay.key
            log.info("standby relay %s", relay.key.short())
            link.set_role(Role.STANDBY, now)
            link.connect(now)
            self._touch(relay.key, now)
            return

    def _rehome_backoff(self) -> float:
        """Exponential with jitter, so a mesh restarting at once does not
        stampede its bootstrap relays in step (the seed's risk table)."""
        c = self.config
        delay: float = min(c.rehome_retry_s * 2.0**self._rehome_failures, c.rehome_retry_max_s)
        self._rehome_failures += 1
        jitter = int.from_bytes(self._rng(2), "big") / 65535.0  # 0..1
        return delay * (1.0 - c.retry_jitter + 2 * c.retry_jitter * jitter)

    def _home_failed(self, key: PublicKey, why: str, now: float) -> None:
        log.info("relay %s unusable as home: %s", key.short(), why)
        self.registry.record_failure(key)
        if why == "no answer":
            self._next_endpoint(key)
        link = self.link(key)
        if link is not None:
            link.set_role(Role.UNLISTED, now)
        homing = self._homing
        if homing is not None:
            homing.trying = None
            self._register_next_home(now)

    def _set_home(self, key: PublicKey | None, now: float) -> None:
        if key is not None:
            self._rehome_failures = 0
        if key == self.home:
            return
        old = self.link(self.home) if self.home is not None else None
        if old is not None:
            old.set_role(Role.UNLISTED, now)  # lookups no longer lead there
        self.home = key
        if key is not None:
            home = self.link(key)
            if home is not None:
                home.set_role(Role.HOME, now)  # the relay signs our record as home
            relay = self.registry.get(key)
            where = endpoint_str(relay.endpoint) if relay else "?"
            log.info("home relay %s at %s", key.short(), where)
            self._touch(key, now)
            self._ask_announcements(now)
            if self.standby in (None, key):
                self.standby = None
                self._choose_standby(now)
            if self._next_measure == float("inf"):
                self._next_measure = now + self.config.measure_interval_s
        self._events.append(HomeChanged(key))

    def _ask_announcements(self, now: float, page: int = 0) -> None:
        """The relays our home knows, page by page (``DiscoveryAnswered.more``)."""
        if page == 0:
            self._next_announcements = now + self.config.announcements_interval_s
        if self.home is None:
            return
        link = self.link(self.home)
        if link is not None and link.state == LinkState.REGISTERED:
            link.query(now, want_relays=True, page=page)

    # ------------------------------------------------------------ relaying a peer

    def _locating(self, peer: PublicKey, now: float) -> _Attempt:
        """Ask our home where ``peer`` is (it asks the peer's holders for us:
        one request however many relays there are); without a home, the best
        ``locate_fanout`` relays."""
        attempt = _Attempt(peer, _Phase.LOCATING, now + self.config.locate_timeout_s)
        home = self.link(self.home) if self.home is not None else None
        if home is not None and home.state == LinkState.REGISTERED:
            targets = [home.relay_key]
        else:
            targets = [r.key for r in self.available(now)[: self.config.locate_fanout]]
        self._ask_where(attempt, targets, now)
        return attempt

    def _ask_where(self, attempt: _Attempt, targets: list[PublicKey], now: float) -> None:
        for key in targets:
            link = self._link(key, now)
            if link is not None and link.state != LinkState.REJECTED and key not in attempt.asked:
                attempt.asked.add(key)
                attempt.queries[key] = link.query(now, locate=attempt.peer, want_relays=False)

    def _widen(self, attempt: _Attempt, now: float) -> bool:
        """Ask the best other relays once; True if any was asked."""
        if attempt.widened:
            return False
        attempt.widened = True
        others = [r.key for r in self.available(now) if r.key not in attempt.asked]
        self._ask_where(attempt, others[: self.config.locate_widen], now)
        attempt.deadline = now + self.config.locate_timeout_s
        return bool(attempt.queries)

    def _on_discovery(self, key: PublicKey, ev: DiscoveryAnswered, now: float) -> None:
        learned = tuple(a.info.key for a in ev.announcements if self.registry.register_relay(a))
        if learned:
            self._events.append(RelaysLearned(learned))
            if self.standby is None:
                self._choose_standby(now)  # a home's first answer names the others
        if ev.asked_for is None and ev.more and key == self.home and ev.page < MAX_PAGES:
            self._ask_announcements(now, ev.page + 1)
        peer = ev.asked_for
        attempt = self._attempts.get(peer) if peer is not None else None
        if attempt is None or attempt.phase is not _Phase.LOCATING:
            return
        if attempt.queries.get(key) != ev.query_id:
            return
        del attempt.queries[key]
        places = tuple(p for p in ev.places if self._known_place(p, now))
        if places:
            self._places[attempt.peer] = places
            attempt.places = places
            attempt.located = places[0].location.relay
            attempt.queries.clear()
        if not attempt.queries:
            self._located(attempt, now)

    def _known_place(self, place: Place, now: float) -> bool:
        """A place is usable once its relay is in the registry (learned from
        the answer when it was not: its record is signed by it)."""
        key, endpoint = place.location.relay, place.location.endpoint
        if self.registry.get(key) is None:
            host, port = endpoint
            if port and host not in ("0.0.0.0", "::"):  # (a relay that announces nothing)
                expires = self._wall_ms(now) + int(self.config.located_relay_ttl_s * 1000)
                self.registry.learn_endpoint(key, endpoint, expires)
        return self.registry.get(key) is not None and self._usable(key)

    def _on_query_failed(self, key: PublicKey, ev: QueryFailed, now: float) -> None:
        peer = ev.asked_for
        attempt = self._attempts.get(peer) if peer is not None else None
        if attempt is None or attempt.queries.get(key) != ev.query_id:
            return
        del attempt.queries[key]
        if not attempt.queries:
            self._located(attempt, now)

    def _located(self, attempt: _Attempt, now: float) -> None:
        if attempt.located is None and self._widen(attempt, now):
            return  # wait for the wider round
        if attempt.report_located:
            self._finish_locate(attempt, now)
        else:
            self._connect_next(attempt, now)

    def _finish_locate(self, attempt: _Attempt, now: float) -> None:
        self._attempts.pop(attempt.peer, None)
        self._events.append(PeerLocated(attempt.peer, attempt.located))

    def _path_costs(self, places: tuple[Place, ...]) -> list[tuple[float, PublicKey]]:
        """Each place's whole-path cost (ours to the relay, the peer's from it)."""
        out = []
        for p in places:
            relay = self.registry.get(p.location.relay)
            if relay is not None:
                out.append((self.selector.path_cost(relay, p.peer_rtt_ms), relay.key))
        return sorted(out, key=lambda c: c[0])

    def _candidates(self, attempt: _Attempt, now: float) -> list[PublicKey]:
        """Where the peer is, cheapest whole path first; our home; then every
        other usable relay by score."""
        out: list[PublicKey] = [key for _, key in self._path_costs(attempt.places)]
        for key in (attempt.located, self.home):
            if key is not None and key not in out and self.registry.get(key) is not None:
                out.append(key)
        out += [r.key for r in self.available(now) if r.key not in out]
        # a relay whose link was just lost (dead, or unreachable) is the last
        # resort, not the first: the located relay may be the one that died
        lost = [k for k in out if (lk := self._links.get(k)) and lk.link.state == LinkState.LOST]
        return [k for k in out if k not in lost] + lost

    def _connect_next(self, attempt: _Attempt, now: float) -> None:
        if attempt.phase is _Phase.LOCATING:
            attempt.phase = _Phase.CONNECTING
            attempt.queries.clear()
            attempt.candidates = self._candidates(attempt, now)
        while attempt.candidates:
            key = attempt.candidates.pop(0)
            if key in attempt.tried:
                continue
            link = self._link(key, now)
            if link is None or link.state == LinkState.REJECTED:
                continue
            attempt.tried.add(key)
            attempt.current = key
            self._touch(key, now)
            if link.state == LinkState.REGISTERED:
                link.request_session(attempt.peer, now)
                attempt.deadline = now + self.config.session_timeout_s
            else:
                link.connect(now)
                attempt.deadline = now + self.config.connect_timeout_s
            return
        self._attempts.pop(attempt.peer, None)
        if attempt.moving:
            log.info("peer %s stays where it is: %s", attempt.peer.short(), attempt.errors)
            return
        errors = "; ".join(attempt.errors) if attempt.errors else "no relay known"
        self._events.append(
            PeerRelayFailed(attempt.peer, f"no relay could reach {attempt.peer.short()} ({errors})")
        )

    def _attempt_timed_out(self, attempt: _Attempt, now: float) -> None:
        if attempt.phase is _Phase.LOCATING:
            attempt.queries.clear()
            self._located(attempt, now)
            return
        key = attempt.current
        if key is not None:
            attempt.errors.append(f"{key.short()}: no answer")
            link = self.link(key)
            if link is not None and self.route_relay.get(attempt.peer) != key:
                link.close_session(attempt.peer, now)  # stop asking there
        self._connect_next(attempt, now)

    # ------------------------------------------------------------ measuring, idling

    def _measure(self, now: float) -> None:
        self._next_measure = now + self.config.measure_interval_s
        if self.standby is None:
            self._choose_standby(now)  # the last one was lost, or none was known
        for peer, relay in list(self.route_relay.items()):
            self._reconsider(peer, relay, now)
        for key in dict.fromkeys(self.route_relay.values()):  # ordered, deduplicated
            link = self.link(key)
            if link is not None:
                link.ping(now)

    def _reconsider(self, peer: PublicKey, relay: PublicKey, now: float) -> None:
        """Move a relayed peer to a clearly cheaper path (selection.py's
        hysteresis), at most once per SWITCH_HOLD_S."""
        places = self._places.get(peer, ())
        if peer in self._attempts or now - self._moved_at.get(peer, -1e18) < SWITCH_HOLD_S:
            return
        costs = self._path_costs(places)
        current = next((c for c, key in costs if key == relay), None)
        if not costs or current is None or costs[0][1] == relay:
            return
        best, to = costs[0]
        if not worth_switching(current, best):
            return
        log.info(
            "peer %s: path via %s costs %.0f ms, via %s %.0f ms: moving",
            peer.short(),
            relay.short(),
            current,
            to.short(),
            best,
        )
        self._moved_at[peer] = now
        attempt = _Attempt(peer, _Phase.CONNECTING, now, places=places, moving=True)
        attempt.candidates = [to]
        attempt.tried.add(relay)
        self._attempts[peer] = attempt
        self._connect_next(attempt, now)

    def _leave_old_path(self, peer: PublicKey, old: PublicKey, now: float) -> None:
        link = self.link(old)
        if link is not None:
            link.close_session(peer, now, CloseReason.REPLACED)

    def _carried(self, key: PublicKey) -> tuple[PublicKey, ...]:
        return tuple(p for p, r in self.route_relay.items() if r == key)

    def _touch(self, key: PublicKey, now: float) -> None:
        lk = self._links.get(key)
        if lk is not None:
            lk.idle_since = now

    def _idle_candidate(self, lk: _Link) -> bool:
        link = lk.link
        key = link.relay_key
        return not (
            key in (self.home, self.standby)
            or link.session_of
            or link.wanted
            or (self._homing is not None and self._homing.trying == key)
            or any(key in (a.current, *a.queries) for a in self._attempts.values())
        )

    def _retire_idle_links(self, now: float) -> None:
        for key, lk in list(self._links.items()):
            if self._idle_candidate(lk) and now >= lk.idle_since + self.config.link_idle_s:
                log.info("relay %s no longer needed; leaving it", key.short())
                lk.link.shutdown(now)  # it holds no session: nothing to send
                self._drop_link(key)

    def _drop_link(self, key: PublicKey) -> None:
        lk = self._links.pop(key, None)
        if lk is not None:
            self._by_addr.pop(lk.addr, None)
