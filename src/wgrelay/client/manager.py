"""RelayManager: the asyncio shell around ``RelayPlanner`` (the seed's manager.rs).

Every decision (home relay, locate, which relay for which peer, failover,
re-homing, measurement, idle relays) is the planner's (plan.py). This shell
only pumps: it owns one UDP socket per address family for *every* relay
(relays are told apart by address), hands control datagrams to the planner,
sends what it says, re-arms one timer, and turns the planner's events into
``on_event`` calls and ``routes`` updates.

The data path never reaches the planner: ``routes[peer]`` is (send, relay
address, 10-byte header), which the local proxies use directly, and a frame
from a relay is matched to its peer by relay address and session id
(``RelayPlanner.sessions_at``) and handed to ``on_data``.

The ``async`` methods (``start``, ``relay_peer``, ``locate``) are conveniences
for tests and tools that want to await one outcome: they wait for the same
events everyone else gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from wgrelay.client.events import (
    HomeChanged,
    PeerLocated,
    PeerRelayed,
    PeerRelayFailed,
    PeerRelayLost,
    PlanEvent,
    RelayCarrierChanged,
    RelayMeasured,
    RelaysLearned,
)
from wgrelay.client.fallback import (
    Carrier,
    Connect,
    Disconnect,
    FallbackAction,
    FallbackConfig,
    Moved,
    ProbeUdp,
    StreamFallback,
)
from wgrelay.client.link import LinkConfig
from wgrelay.client.plan import PlanConfig, RelayPlanner
from wgrelay.client.receipts import ReceiptSigner
from wgrelay.client.streams import RelayStreams, default_stream_ports
from wgrelay.discovery.reach import has_route
from wgrelay.discovery.registry import RelayRegistry
from wgrelay.discovery.selection import RelayHistory, RttPrior, relay_score
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import RelayUnavailable, WgRelayError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import DATA_HEADER_LEN, Capability, CloseReason, MsgType
from wgrelay.proto.data import data_header
from wgrelay.transport.base import Addr, DatagramTransport, Runtime
from wgrelay.transport.udp import AsyncioRuntime

log = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 2 * 1024 * 1024
_DATA = int(MsgType.DATA)
_ANSWERED = frozenset(
    int(t)
    for t in (
        MsgType.REGISTER,
        MsgType.HEARTBEAT,
        MsgType.CONNECTION_REQUEST,
        MsgType.PING,
        MsgType.DISCOVERY_QUERY,
    )
)
"""Requests a relay answers: only their silence says UDP does not get through."""
STREAM_COST_MS = 100.0
"""Added to a relay's score while our link to it runs over TCP/TLS: a path
over UDP is preferred (no head-of-line blocking, no TCP-in-TCP), and with
the planner's hysteresis (20 ms and 25 %) a session moves to a relay reached
over UDP when one serves the peer too."""

DataHandler = Callable[[PublicKey, bytes], None]
"""Called with the peer and the whole data frame (payload starts at byte 10)."""
SendTo = Callable[[bytes | memoryview, Addr], bool]
Route = tuple[SendTo, Endpoint, bytes]
"""How a proxy sends a peer's packet: ``send(header + packet, relay address)``."""

ManagerEvent = PlanEvent

__all__ = [
    "HomeChanged",
    "ManagerEvent",
    "PeerLocated",
    "PeerRelayFailed",
    "PeerRelayLost",
    "PeerRelayed",
    "RelayManager",
    "RelayMeasured",
    "RelaysLearned",
    "Route",
    "relay_score",
]


class RelayManager:
    def __init__(
        self,
        private_key: PrivateKey,
        registry: RelayRegistry,
        accept_peer: Callable[[PublicKey], bool],
        on_event: Callable[[ManagerEvent], None],
        on_data: DataHandler,
        link_config: LinkConfig | None = None,
        plan_config: PlanConfig | None = None,
        runtime: Runtime | None = None,
        prior: RttPrior | None = None,
        history: RelayHistory | None = None,
        fallback: FallbackConfig | None = None,
        proxy: tuple[str, int] | None = None,
        receipts: ReceiptSigner | None = None,
    ) -> None:
        self.runtime = runtime if runtime is not None else AsyncioRuntime()
        self.registry = registry
        self.public_key = private_key.public_key()
        self.planner = RelayPlanner(
            private_key,
            registry,
            now=self.runtime.now(),
            wall=self.runtime.wall(),
            accept_peer=accept_peer,
            config=plan_config,
            link_config=link_config,
            prior=prior,
            history=history,
            # a route lookup asks this host's kernel: right for real sockets,
            # meaningless for the simulator's addresses
            reachable=has_route if isinstance(self.runtime, AsyncioRuntime) else lambda _ep: True,
        )
        self._on_event = on_event
        self.planner.receipts = receipts  # signs what relays carried (credits)
        self._on_data = on_data
        self.routes: dict[PublicKey, Route] = {}
        """peer -> (send, relay address, data header): the data path's only lookup."""
        self._transports: dict[int, DatagramTransport] = {}
        self._open_transports()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = float("inf")
        self._waiters: list[
            tuple[Callable[[ManagerEvent], bool], asyncio.Future[ManagerEvent]]
        ] = []
        self._control_pending = False
        self._pumping = False
        self._closed = False
        self.frames_dropped = 0
        self.fallback = StreamFallback(fallback)
        """UDP blocked: relays over TCP or TLS (fallback.py)."""
        self.streams = RelayStreams(
            self.runtime,
            on_connected=self._stream_connected,
            on_frame=self._receive,
            on_frames_done=self.batch_done,
            on_closed=self._stream_closed,
            ports=self._stream_ports,
            proxy=proxy,
        )
        self._udp_heard: set[Endpoint] = set()
        # selection prefers relays reached over UDP (issue 13): one reached
        # only over a stream costs more in home choice and whole-path costs
        self.planner.selector.extra_cost = self._stream_cost

    def _open_transports(self) -> None:
        self._transports[4] = self.runtime.open_udp(
            "0.0.0.0", 0, self, buffer_bytes=SOCKET_BUFFER_BYTES
        )
        try:
            self._transports[6] = self.runtime.open_udp(
                "::", 0, self, buffer_bytes=SOCKET_BUFFER_BYTES
            )
        except OSError as e:  # a host without IPv6 still reaches IPv4 relays
            log.debug("no IPv6 socket for relays: %s", e)

    def _transport_for(self, addr: Endpoint) -> DatagramTransport | None:
        return self._transports.get(6 if ":" in addr[0] else 4)

    # ------------------------------------------------------------ views

    @property
    def home(self) -> PublicKey | None:
        return self.planner.home

    @property
    def standby(self) -> PublicKey | None:
        return self.planner.standby

    @property
    def route_relay(self) -> dict[PublicKey, PublicKey]:
        return self.planner.route_relay

    def carrier(self, relay: PublicKey) -> Carrier:
        """What carries our link to ``relay``: UDP, or a TCP/TLS stream."""
        addr = self.planner.relay_addr(relay)
        return self.fallback.carrier(addr) if addr is not None else Carrier.UDP

    def local_port(self, family: int = 4) -> int:
        return int(self._transports[family].local_address[1])

    # ------------------------------------------------------------ API

    def begin(self) -> None:
        """Start choosing a home relay (answered by HomeChanged)."""
        self.planner.start(self.runtime.now())
        self._pump()

    def request_relay(self, peer: PublicKey) -> None:
        """Give ``peer`` a relayed path (answered by PeerRelayed or PeerRelayFailed)."""
        self.planner.relay_peer(peer, self.runtime.now())
        self._pump()

    def close_connection(self, peer: PublicKey, reason: CloseReason = CloseReason.NORMAL) -> None:
        self.routes.pop(peer, None)
        self.planner.drop_peer(peer, self.runtime.now(), reason)
        self._pump()

    def hold_relay(self, peer: PublicKey, hold_s: int) -> None:
        """Port mode: the relay carrying ``peer`` delivers nothing to our
        session port for ``hold_s`` seconds (0: resume)."""
        relay = self.planner.route_relay.get(peer)
        lk = self.planner.link(relay) if relay is not None else None
        if lk is not None:
            lk.hold_session(peer, hold_s, self.runtime.now())
            self._pump()

    def punch(self, peer: PublicKey, nonce: int) -> bool:
        """Port mode: ask the relay carrying ``peer`` for a coordinated
        direct try (False: no session there to ask about)."""
        relay = self.planner.route_relay.get(peer)
        lk = self.planner.link(relay) if relay is not None else None
        if lk is None or not lk.punch(peer, nonce, self.runtime.now()):
            return False
        self._pump()
        return True

    def send_packet(self, peer: PublicKey, packet: bytes) -> bool:
        route = self.routes.get(peer)
        if route is None:
            return False
        self.note_sent(peer)
        return route[0](route[2] + packet, route[1])

    def note_sent(self, peer: PublicKey, at: float | None = None) -> None:
        """Traffic for ``peer`` went out through its relay (``at``, default
        now): the link now expects something back, and probes the relay if
        nothing comes."""
        relay = self.planner.route_relay.get(peer)
        link = self.planner.link(relay) if relay is not None else None
        if link is not None and link.note_sent(self.runtime.now() if at is None else at):
            self._arm_timer()  # the carrier probe may now be due before any other timer

    def note_heard(self, peer: PublicKey, at: float) -> None:
        """Traffic from ``peer`` came in through its relay without passing us
        (port mode: the relay sends to WireGuard itself) at ``at`` or later:
        the relay was alive then."""
        relay = self.planner.route_relay.get(peer)
        lk = self.planner.link(relay) if relay is not None else None
        if lk is not None and at > lk.data_heard:
            lk.data_heard = at

    async def start(self, timeout: float = 30.0) -> PublicKey | None:
        """``begin`` and wait for the first home (None if none was reachable)."""
        fut = self._expect(lambda e: isinstance(e, HomeChanged))
        self.begin()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await fut
        return self.home

    async def relay_peer(self, peer: PublicKey, timeout: float = 60.0) -> PublicKey:
        """``request_relay`` and wait: the relay that carries ``peer`` now."""
        fut = self._expect(
            lambda e: isinstance(e, PeerRelayed | PeerRelayFailed) and e.peer == peer
        )
        self.request_relay(peer)
        async with asyncio.timeout(timeout):
            ev = await fut
        if not isinstance(ev, PeerRelayed):
            raise RelayUnavailable(ev.error if isinstance(ev, PeerRelayFailed) else str(ev))
        return ev.relay

    async def locate(self, peer: PublicKey, timeout: float = 10.0) -> PublicKey | None:
        """Where is ``peer`` registered (None: no relay we asked knows)."""
        fut = self._expect(lambda e: isinstance(e, PeerLocated) and e.peer == peer)
        self.planner.locate(peer, self.runtime.now())
        self._pump()
        async with asyncio.timeout(timeout):
            ev = await fut
        return ev.relay if isinstance(ev, PeerLocated) else None

    async def close(self) -> None:
        if self._closed:
            return
        self.planner.shutdown(self.runtime.now())
        self._flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(RelayUnavailable("relay manager closed"))
        for t in self._transports.values():
            t.close()
        self.streams.close_all()
        self.routes.clear()

    # ------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        src = (addr[0], addr[1])
        if self._receive(src, data):
            # UDP reaches us from that relay (told to the fallback once per
            # batch): only a message that authenticated, or a frame of one of
            # our sessions, counts; a spoofed datagram must not move a link
            # off its stream
            self._udp_heard.add(src)

    def _receive(self, src: Endpoint, data: bytes) -> bool:
        """A datagram, or a frame from a stream, from the relay at ``src``;
        True if it was the relay's (authenticated, or of a session of ours)."""
        if data and data[0] == _DATA:
            link = self.planner.link_at(src)
            peer = link.sessions.get(data[2:DATA_HEADER_LEN]) if link is not None else None
            if peer is None or link is None:
                self.frames_dropped += 1
                return False
            link.data_heard = self.runtime.now()  # the relay is alive
            self._on_data(peer, data)
            return True
        now = self.runtime.now()
        link = self.planner.link_at(src)
        heard = link.last_heard if link is not None else None
        if self.planner.receive(src, data, now):
            self._control_pending = True
            # the link sets last_heard for what opened under the relay's key
            # (unchanged within one tick: counted by the next one)
            return link is not None and link.last_heard != heard
        self.frames_dropped += 1  # not from a relay of ours
        return False

    def batch_done(self) -> None:
        if self._udp_heard:
            if self.fallback.heard_udp(self._udp_heard, self.runtime.now()):
                self._control_pending = True
            self._udp_heard.clear()
        if self._control_pending:
            self._control_pending = False
            self._pump()

    # ------------------------------------------------------------ pump

    def _flush(self) -> None:
        fallback = self.fallback
        now = self.runtime.now()
        while True:
            for addr, data in self.planner.datagrams_to_send():
                if fallback.carrier(addr) != Carrier.UDP:
                    self.streams.send(addr, data)
                    continue
                t = self._transport_for(addr)
                if t is not None:
                    t.sendto(data, addr)
                    if data[0] in _ANSWERED:
                        fallback.sent_udp(addr, now)
            actions = fallback.actions()
            if not actions:
                return
            # (a move makes the link resend: round again for its datagrams)
            self._fallback_actions(actions, now)

    def _fallback_actions(self, actions: list[FallbackAction], now: float) -> None:
        for action in actions:
            if isinstance(action, Connect):
                self.streams.connect(action.addr, action.carrier, action.timeout_s)
            elif isinstance(action, Disconnect):
                self.streams.close(action.addr)
            elif isinstance(action, ProbeUdp):
                self._probe_udp(action.addr, now)
            elif isinstance(action, Moved):
                self._moved(action.addr, action.carrier, now)

    def _probe_udp(self, addr: Endpoint, now: float) -> None:
        """One PING to a stream-carried relay over UDP: an answer over UDP
        (``batch_done``) means UDP works again."""
        link = self.planner.link_at(addr)
        t = self._transport_for(addr)
        if link is not None and t is not None:
            t.sendto(link.ping_datagram(now), addr)

    def _moved(self, addr: Endpoint, carrier: Carrier, now: float) -> None:
        """The link to ``addr`` changed carrier: its sessions' data follow,
        and it resends what is outstanding (and re-announces its address)."""
        log.info("relay at %s: now over %s", endpoint_str(addr), carrier.upper())
        send = self._sender(addr)
        if send is not None:
            for peer, route in list(self.routes.items()):
                if route[1] == addr:
                    self.routes[peer] = (send, addr, route[2])
        link = self.planner.link_at(addr)
        if link is not None:
            link.carrier_changed(now)
        relay = self._relay_at(addr)
        if relay is not None:
            try:  # (the agent moves its peers off session ports, or may again)
                self._on_event(RelayCarrierChanged(relay, str(carrier)))
            except Exception:  # a listener's bug must not stop the relays
                log.exception("relay event handler failed on RelayCarrierChanged")

    def _relay_at(self, addr: Endpoint) -> PublicKey | None:
        for key in self.planner.links():
            if self.planner.relay_addr(key) == addr:
                return key
        return None

    def _stream_cost(self, relay: PublicKey) -> float:
        return STREAM_COST_MS if self.carrier(relay) != Carrier.UDP else 0.0

    def _stream_ports(self, addr: Endpoint) -> tuple[int, int]:
        """Where the relay at ``addr`` takes streams: as it announces, else the
        defaults (TCP on its UDP port's number, TLS on 443)."""
        key = self._relay_at(addr)
        known = self.registry.get(key) if key is not None else None
        if known is not None and known.announcement is not None:
            try:
                info = decode_announcement(known.announcement).info
            except WgRelayError:
                return default_stream_ports(addr)
            if info.capabilities & Capability.UDP_RELAY:  # it says, so believe it
                return info.tcp_port, info.tls_port
        return default_stream_ports(addr)

    def _sender(self, addr: Endpoint) -> SendTo | None:
        if self.fallback.carrier(addr) != Carrier.UDP:
            return self.streams.sender(addr)
        t = self._transport_for(addr)
        return t.sendto if t is not None else None

    def _stream_connected(self, addr: Endpoint, carrier: Carrier) -> None:
        self.fallback.connected(addr, carrier, self.runtime.now())
        self._pump()

    def _stream_closed(self, addr: Endpoint, carrier: Carrier, error: str | None) -> None:
        if error is not None:
            log.info("%s to relay at %s: %s", carrier.upper(), endpoint_str(addr), error)
        self.fallback.closed(addr, carrier, self.runtime.now(), error)
        self._pump()

    def _pump(self) -> None:
        if self._closed:
            return
        if self._pumping:
            # an event handler called back into us (e.g. closing a session):
            # the outer pump drains whatever that produced, in order
            return
        self._pumping = True
        try:
            self._flush()
            while (ev := self.planner.next_event()) is not None:
                if isinstance(ev, PeerRelayed) and ev.port and self.carrier(ev.relay) != "udp":
                    # WireGuard's UDP cannot reach the relay's session port:
                    # its packets go through our proxy and the stream (framed)
                    ev = replace(ev, port=0)
                self._apply(ev)
                for pred, fut in list(self._waiters):
                    if not fut.done() and pred(ev):
                        fut.set_result(ev)
                self._waiters = [(p, f) for p, f in self._waiters if not f.done()]
                try:
                    self._on_event(ev)
                except Exception:  # a listener's bug must not stop the relays
                    log.exception("relay event handler failed on %s", type(ev).__name__)
                self._flush()
        finally:
            self._pumping = False
            self._arm_timer()

    def _apply(self, ev: ManagerEvent) -> None:
        """Keep the data path's routes in step with the planner."""
        if isinstance(ev, PeerRelayed):
            addr = self.planner.relay_addr(ev.relay)
            send = self._sender(addr) if addr is not None else None
            if addr is not None and send is not None:
                self.routes[ev.peer] = (send, addr, data_header(ev.session_id))
        elif isinstance(ev, PeerRelayLost):
            self.routes.pop(ev.peer, None)

    def _arm_timer(self) -> None:
        when = min(self.planner.next_timer(), self.fallback.next_timer())
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
            self._timer = None
        if when == float("inf"):
            self._timer_when = when
            return
        self._timer_when = when
        self._timer = self.runtime.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = float("inf")
        now = self.runtime.now()
        self.planner.sync_wall(now, self.runtime.wall())
        self.planner.handle_timer(now)
        self.fallback.handle_timer(now)
        self._pump()

    def _expect(self, pred: Callable[[ManagerEvent], bool]) -> asyncio.Future[ManagerEvent]:
        fut: asyncio.Future[ManagerEvent] = self.runtime.loop.create_future()
        self._waiters.append((pred, fut))
        return fut
