"""The planner's links: one ``RelayLink`` per relay it talks to, by key and by
address, and the relays it may use (plan.py has the theory of operation)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from wgrelay.client.events import (
    Place,
    PlanEvent,
)
from wgrelay.client.link import LinkConfig, RelayLink, Role
from wgrelay.client.link_legs import LegsLink
from wgrelay.client.link_private import PrivateLink
from wgrelay.client.plan_state import Attempt, Homing, LinkSlot, PlanConfig
from wgrelay.client.receipts import ReceiptSigner
from wgrelay.discovery.registry import KnownRelay, RelayRegistry
from wgrelay.discovery.selection import RelayHistory, RttPrior, Selector
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import InvalidKey
from wgrelay.keys import PrivateKey, PublicKey, relay_x25519_public
from wgrelay.proto.constants import Capability

log = logging.getLogger(__name__)


class PlanLink(LegsLink, PrivateLink):
    """The planner's links: private requests (link_private.py) and the home's
    legs and their RTTs (link_legs.py) on top of RelayLink."""


class LinkPool:
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
        history: RelayHistory | None = None,
        reachable: Callable[[Endpoint], bool] = lambda _ep: True,
    ) -> None:
        self.private_key = private_key
        self._reachable = reachable
        """Whether this host can send to an endpoint at all (discovery/reach.py
        for real): an announced endpoint of a family we have no route for is
        skipped instead of costing a connect timeout."""
        self.registry = registry
        self.config = config or PlanConfig()
        self.link_config = link_config or LinkConfig()
        self._accept_peer = accept_peer
        self._rng = rng
        self.selector = Selector(private_key.public_key(), prior, history)
        self._places: dict[PublicKey, tuple[Place, ...]] = {}
        """Where each peer we located accepts sessions (for re-evaluation)."""
        self._moved_at: dict[PublicKey, float] = {}
        self._wall_offset = wall - now
        self._links: dict[PublicKey, LinkSlot] = {}
        self._by_addr: dict[Endpoint, PublicKey] = {}
        self._bad_keys: set[PublicKey] = set()
        self._good_keys: set[PublicKey] = set()
        self.receipts: ReceiptSigner | None = None
        """Answers the relays' receipt requests on every link (client/receipts.py)."""
        self.home: PublicKey | None = None
        self.standby: PublicKey | None = None
        """The next-best relay, registered too (REGISTER_FLAG_STANDBY) so
        that losing the home costs one REGISTER, not a search."""
        self._homing: Homing | None = None
        self._rehome_at = float("inf")
        self._rehome_failures = 0
        self._attempts: dict[PublicKey, Attempt] = {}
        self.route_relay: dict[PublicKey, PublicKey] = {}
        """peer -> the relay whose session carries it."""
        self._route_incoming: dict[PublicKey, tuple[bool, float]] = {}
        """Whether the peer opened the session ``route_relay`` names, and when
        it came up."""
        self._next_measure = float("inf")
        self._next_announcements = float("inf")
        self._events: list[PlanEvent] = []
        self._started = False
        self._closed = False

    def _wall_ms(self, now: float) -> int:
        return int((now + self._wall_offset) * 1000)

    def sync_wall(self, now: float, wall: float) -> None:
        self._wall_offset = wall - now
        for lk in self._links.values():
            lk.link.sync_wall(now, wall)

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
        if key in self._good_keys:
            return True
        try:
            relay_x25519_public(key)  # (a point conversion: 8 % of an agent's CPU, uncached)
        except InvalidKey:
            log.warning("relay key %s is not a relay (Ed25519) key; ignoring it", key)
            self._bad_keys.add(key)
            return False
        self._good_keys.add(key)
        return True

    def _link(self, key: PublicKey, now: float) -> RelayLink | None:
        lk = self._links.get(key)
        if lk is not None:
            return lk.link
        relay = self.registry.get(key)
        if relay is None or not self._usable(key):
            return None
        link = PlanLink(
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
        link.receipts = self.receipts
        addr = self._first_endpoint(relay)
        self._links[key] = LinkSlot(link, addr, now)
        self._by_addr[addr] = key
        return link

    def _routed_endpoints(self, relay: KnownRelay) -> list[Endpoint]:
        """The relay's endpoints in its order, those we have a route for; all of
        them if none (a route may appear: better knock than give up)."""
        eps = [(e[0], e[1]) for e in relay.endpoints]
        return [e for e in eps if self._reachable(e)] or eps

    def _first_endpoint(self, relay: KnownRelay) -> Endpoint:
        return self._routed_endpoints(relay)[0]

    def _next_endpoint(self, key: PublicKey) -> None:
        """A relay that does not answer at one of its announced endpoints is
        tried at the next one (IPv6 and IPv4, several addresses) from then on,
        round the list; endpoints we have no route for are passed over."""
        lk = self._links.get(key)
        relay = self.registry.get(key)
        if lk is None or relay is None or len(relay.endpoints) < 2:
            return
        eps = self._routed_endpoints(relay)
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

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        out: list[tuple[Endpoint, bytes]] = []
        for lk in self._links.values():
            out.extend((lk.addr, data) for data in lk.link.datagrams_to_send())
        return out

    def _touch(self, key: PublicKey, now: float) -> None:
        lk = self._links.get(key)
        if lk is not None:
            lk.idle_since = now

    def _carried(self, key: PublicKey) -> tuple[PublicKey, ...]:
        return tuple(p for p, r in self.route_relay.items() if r == key)

    def _drop_link(self, key: PublicKey) -> None:
        lk = self._links.pop(key, None)
        if lk is not None:
            self._by_addr.pop(lk.addr, None)
