"""RelayManager: which relay carries which peer (the seed's manager.rs).

The manager keeps one ``RelayClient`` (one UDP socket, one ``RelayLink``) per
relay it uses. One of them is the **home relay**: we stay registered there with
"accept incoming sessions", so peers that cannot reach us directly find us
there. For a peer that needs relaying, ``relay_peer`` locates the peer's home
relay (DISCOVERY_QUERY with ``locate``, sent to the relays we know) and asks
that relay for a session; if that fails it tries our home and then every other
relay by score.

Selection score (lower is better), documented in docs/ARCHITECTURE.md::

    score = rtt_ms (1000 if never measured) + 250 * failures + 2 * load_pct

When the home relay is lost (no answer for ``lost_after_s``), its link ends all
its sessions; the manager picks the next relay by score as home and reports the
peers that lost their path, which the agent relays again (possibly through
another relay). The WireGuard session survives because the local proxy, and so
the peer's WireGuard endpoint, stays the same: only the relay behind it changes.

Data frames bypass the manager: ``routes[peer]`` is (client, 10-byte header)
and a client's ``on_data`` goes straight to the proxy table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from wgrelay.client.link import (
    DiscoveryAnswered,
    LinkConfig,
    LinkEvent,
    LinkLost,
    LinkRegistered,
    LinkRejected,
    LinkState,
    QueryFailed,
    RttMeasured,
    SessionEnded,
    SessionEstablished,
)
from wgrelay.client.udp import DataHandler, RelayClient
from wgrelay.discovery.registry import KnownRelay, RelayRegistry
from wgrelay.errors import InvalidKey, RelayUnavailable
from wgrelay.keys import PrivateKey, PublicKey, relay_x25519_public
from wgrelay.proto.buffer import endpoint_str
from wgrelay.proto.constants import CloseReason
from wgrelay.proto.data import data_header
from wgrelay.transport.base import Runtime
from wgrelay.transport.udp import AsyncioRuntime

log = logging.getLogger(__name__)

NEVER_MEASURED_RTT_MS = 1000.0
FAILURE_PENALTY_MS = 250.0
LOAD_WEIGHT_MS = 2.0
LOCATE_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 6.0
PING_TIMEOUT_S = 2.0
REHOME_RETRY_S = 5.0


def relay_score(relay: KnownRelay) -> float:
    rtt = relay.rtt_ms if relay.rtt_ms is not None else NEVER_MEASURED_RTT_MS
    return rtt + FAILURE_PENALTY_MS * relay.failures + LOAD_WEIGHT_MS * (relay.load_pct or 0)


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class PeerRelayed:
    peer: PublicKey
    relay: PublicKey
    incoming: bool


@dataclass(frozen=True, slots=True)
class PeerRelayLost:
    peer: PublicKey
    relay: PublicKey
    reason: str


@dataclass(frozen=True, slots=True)
class HomeChanged:
    relay: PublicKey | None


ManagerEvent = PeerRelayed | PeerRelayLost | HomeChanged


class RelayManager:
    def __init__(
        self,
        private_key: PrivateKey,
        registry: RelayRegistry,
        accept_peer: Callable[[PublicKey], bool],
        on_event: Callable[[ManagerEvent], None],
        on_data: DataHandler,
        link_config: LinkConfig | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.registry = registry
        self._accept_peer = accept_peer
        self._on_event = on_event
        self._on_data = on_data
        self._link_config = link_config or LinkConfig()
        self.runtime = runtime if runtime is not None else AsyncioRuntime()
        self.clients: dict[PublicKey, RelayClient] = {}
        self.home: PublicKey | None = None
        self.routes: dict[PublicKey, tuple[RelayClient, bytes]] = {}
        """peer -> (client, data header): the data path's only lookup."""
        self.route_relay: dict[PublicKey, PublicKey] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rehoming = False
        self._rehome_task: asyncio.Task[None] | None = None
        self._bad_keys: set[PublicKey] = set()
        self._closed = False

    # ------------------------------------------------------------ clients

    def _client(self, relay: KnownRelay) -> RelayClient:
        client = self.clients.get(relay.key)
        if client is None:
            key = relay.key

            def on_event(ev: LinkEvent) -> None:
                self._on_link_event(key, ev)

            client = RelayClient(
                self.private_key,
                relay.key,
                relay.endpoint,
                config=self._link_config,
                accept_offer=self._accept_peer,
                on_data=self._on_data,
                on_event=on_event,
                runtime=self.runtime,
            )
            self.clients[relay.key] = client
        return client

    def _now_ms(self) -> int:
        return int(self.runtime.wall() * 1000)

    def available(self) -> list[KnownRelay]:
        """Known, usable relays, best score first."""
        relays = self.registry.get_available_relays(self._now_ms())
        return sorted((r for r in relays if self._usable(r.key)), key=relay_score)

    def _usable(self, key: PublicKey) -> bool:
        """A relay key must be a valid Ed25519 point (we derive its X25519 key)."""
        if key in self._bad_keys:
            return False
        try:
            relay_x25519_public(key)
        except InvalidKey:
            log.warning("relay key %s is not a relay (Ed25519) key; ignoring it", key)
            self._bad_keys.add(key)
            return False
        return True

    # ------------------------------------------------------------ home relay

    async def start(self) -> None:
        """Measure the known relays, register at the best one, learn announcements."""
        await self._choose_home()
        await self.refresh_announcements()

    async def _measure(self, relays: list[KnownRelay]) -> None:
        async def one(relay: KnownRelay) -> None:
            try:
                await self._ping(self._client(relay))  # RttMeasured records the sample
            except (TimeoutError, RelayUnavailable):
                self.registry.record_failure(relay.key)

        await asyncio.gather(*(one(r) for r in relays))

    async def refresh_announcements(self) -> int:
        """Ask the relays we use for signed announcements; learn what they say.

        Each announcement is verified against the key inside it (decoding does
        that); a newer one replaces an older. Returns how many changed anything.
        """
        changed = 0
        for key in list(self.clients):
            client = self.clients[key]
            if client.link.state != LinkState.REGISTERED:
                continue
            qid = client.link.query(client.now(), want_relays=True)

            def answer(e: LinkEvent, q: int = qid) -> bool:
                return isinstance(e, DiscoveryAnswered | QueryFailed) and e.query_id == q

            fut = client.expect(answer)
            client.poke()
            try:
                async with asyncio.timeout(LOCATE_TIMEOUT_S):
                    ev = await fut
            except TimeoutError:
                continue
            if isinstance(ev, DiscoveryAnswered):
                changed += sum(self.registry.register_relay(a) for a in ev.announcements)
        return changed

    async def _ping(self, client: RelayClient) -> float:
        client.start(register=False)
        return await client.ping(timeout=PING_TIMEOUT_S)

    async def ping(self, relay_key: PublicKey) -> float:
        """RTT to a relay we hold a client for, in seconds (raises if unanswered)."""
        client = self.clients.get(relay_key)
        if client is None:
            raise RelayUnavailable(f"no client for relay {relay_key.short()}")
        return await self._ping(client)  # RttMeasured records the sample

    async def _choose_home(self) -> None:
        relays = self.available()
        if not relays:
            log.warning("no relay known: add one with add-bootstrap-relay or --relay")
            self._set_home(None)
            return
        await self._measure(relays)
        for relay in self.available():
            client = self._client(relay)
            try:
                await client.wait_registered(timeout=CONNECT_TIMEOUT_S)
            except RelayUnavailable as e:
                log.info("relay %s unusable as home: %s", relay.key.short(), e)
                self.registry.record_failure(relay.key)
                continue
            self.registry.record_success(relay.key)
            self._set_home(relay.key)
            return
        self._set_home(None)
        log.warning("no home relay reachable; retrying in %.0f s", REHOME_RETRY_S)
        self._schedule_rehome()

    def _set_home(self, key: PublicKey | None) -> None:
        if key == self.home:
            return
        self.home = key
        if key is not None:
            relay = self.registry.get(key)
            where = endpoint_str(relay.endpoint) if relay else "?"
            log.info("home relay %s at %s", key.short(), where)
        self._on_event(HomeChanged(key))

    def _schedule_rehome(self) -> None:
        """One pending retry at a time, for as long as we have no home."""
        if self._closed or (self._rehome_task is not None and not self._rehome_task.done()):
            return
        self._rehome_task = asyncio.create_task(self._rehome_later())
        self._tasks.add(self._rehome_task)
        self._rehome_task.add_done_callback(self._tasks.discard)

    async def _rehome_later(self) -> None:
        await asyncio.sleep(REHOME_RETRY_S)
        if self.home is None and not self._closed:
            await self._rehome()

    async def _rehome(self) -> None:
        if self._rehoming:
            return
        self._rehoming = True
        try:
            self._set_home(None)  # the old home is gone: do not offer it meanwhile
            await self._choose_home()
        finally:
            self._rehoming = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ link events

    def _on_link_event(self, relay_key: PublicKey, ev: LinkEvent) -> None:
        if isinstance(ev, SessionEstablished):
            client = self.clients[relay_key]
            self.routes[ev.peer] = (client, data_header(ev.session_id))
            self.route_relay[ev.peer] = relay_key
            self.registry.record_success(relay_key)
            self._on_event(PeerRelayed(ev.peer, relay_key, ev.incoming))
        elif isinstance(ev, SessionEnded):
            if self.route_relay.get(ev.peer) == relay_key:
                client, header = self.routes[ev.peer]
                if header[2:] == ev.session_id:
                    del self.routes[ev.peer]
                    del self.route_relay[ev.peer]
                    self._on_event(PeerRelayLost(ev.peer, relay_key, ev.reason.name.lower()))
        elif isinstance(ev, LinkLost):
            self.registry.record_failure(relay_key)
            if relay_key == self.home and not self._closed:
                log.warning(
                    "home relay %s lost (%s); choosing another", relay_key.short(), ev.reason
                )
                self._spawn(self._rehome())
        elif isinstance(ev, LinkRejected):
            self.registry.record_failure(relay_key)
            if relay_key == self.home and not self._closed:
                self._spawn(self._rehome())
        elif isinstance(ev, RttMeasured):
            self.registry.record_rtt(relay_key, ev.rtt_s * 1000)
        elif isinstance(ev, LinkRegistered | DiscoveryAnswered | QueryFailed):
            pass  # awaited by whoever asked

    # ------------------------------------------------------------ the seed's surface

    def needs_relay(self, peer: PublicKey, direct_failed: bool) -> bool:
        """Relay a peer when its direct attempts failed and it has no relay path yet."""
        return direct_failed and peer not in self.routes

    def select_relay(self, peer: PublicKey, located: PublicKey | None = None) -> KnownRelay | None:
        """The peer's own home relay if we know it, else our home, else the best."""
        for key in (located, self.home):
            if key is not None and self._usable(key):
                relay = self.registry.get(key)
                if relay is not None:
                    return relay
        relays = self.available()
        return relays[0] if relays else None

    async def locate(self, peer: PublicKey) -> PublicKey | None:
        """Ask the relays we know where ``peer`` is registered."""
        relays = self.available()[:8]

        async def ask(relay: KnownRelay) -> PublicKey | None:
            client = self._client(relay)
            client.start(register=False)
            qid = client.link.query(client.now(), locate=peer, want_relays=False)
            fut = client.expect(
                lambda e: isinstance(e, DiscoveryAnswered | QueryFailed) and e.query_id == qid
            )
            client.poke()
            try:
                async with asyncio.timeout(LOCATE_TIMEOUT_S):
                    ev = await fut
            except TimeoutError:
                return None
            if isinstance(ev, DiscoveryAnswered) and ev.located is not None:
                return ev.located.relay
            return None

        for found in await asyncio.gather(*(ask(r) for r in relays)):
            if found is not None and self.registry.get(found) is not None:
                return found
        return None

    async def connect_via_relay(self, peer: PublicKey, relay: KnownRelay) -> None:
        """Register at ``relay`` if needed and open a session to ``peer`` there."""
        client = self._client(relay)
        await client.wait_registered(timeout=CONNECT_TIMEOUT_S)
        await client.open_session(peer, timeout=CONNECT_TIMEOUT_S)

    async def relay_peer(self, peer: PublicKey) -> PublicKey:
        """Give ``peer`` a relayed path: its home relay, ours, then any. Returns the relay."""
        located = await self.locate(peer)
        tried: set[PublicKey] = set()
        first = self.select_relay(peer, located)
        candidates = ([first] if first else []) + self.available()
        errors = []
        for relay in candidates:
            if relay.key in tried:
                continue
            tried.add(relay.key)
            try:
                await self.connect_via_relay(peer, relay)
            except RelayUnavailable as e:
                errors.append(f"{relay.key.short()}: {e}")
                continue
            return relay.key
        raise RelayUnavailable(
            f"no relay could reach {peer.short()}"
            + (f" ({'; '.join(errors)})" if errors else " (no relay known)")
        )

    def send_packet(self, peer: PublicKey, packet: bytes) -> bool:
        route = self.routes.get(peer)
        if route is None:
            return False
        route[0].send_frame(route[1] + packet)
        return True

    def close_connection(self, peer: PublicKey, reason: CloseReason = CloseReason.NORMAL) -> None:
        relay_key = self.route_relay.pop(peer, None)
        self.routes.pop(peer, None)
        if relay_key is not None:
            client = self.clients.get(relay_key)
            if client is not None:
                client.close_session(peer, reason)
        for client in self.clients.values():
            client.link.wanted.discard(peer)

    def home_state(self) -> LinkState | None:
        if self.home is None:
            return None
        client = self.clients.get(self.home)
        return client.link.state if client else None

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in self.clients.values():
            await client.close()
        self.clients.clear()
        self.routes.clear()
