"""The client side of one relay (the seed's RelayConnection), sans-I/O.

Theory of operation
-------------------
A ``RelayLink`` is our relationship with one relay: a registration kept alive by
heartbeats, the sessions we hold there, and the requests in flight. The asyncio
layer feeds it every control datagram from the relay (``receive``), calls
``handle_timer`` at ``next_timer()``, sends ``datagrams_to_send()`` to the relay's
address and drains ``next_event()``. Data frames never pass through here: the
layer looks their session id up in ``sessions``.

Every request (REGISTER, HEARTBEAT, CONNECTION_REQUEST, PING, DISCOVERY_QUERY) is
retransmitted, freshly sealed each time (a byte-identical resend would be
rejected as a replay), until answered or until its deadline. The relay's
handlers are idempotent, so a retransmission whose first copy did arrive is
harmless.

States::

    IDLE --connect--> REGISTERING --REGISTERED--> REGISTERED
    REGISTERED --HEARTBEAT_ACK(not registered) / NOT_REGISTERED error--> REGISTERING
    any --nothing heard for lost_after_s--> LOST (keeps registering, with backoff)
    any --AUTH_FAILED error--> REJECTED (stops)

When a relay restarts it answers our next heartbeat with "not registered", or
(if something re-registered us meanwhile, such as a replayed REGISTER) with a
new ``epoch``: either way the link registers again and re-requests every
session it had asked for (the set ``wanted``), so sessions come back without
the caller doing anything. Sessions the other side initiated come back when
that side re-requests them.

The relay proves nothing to us by answering at its address, but we prove to it
that we receive at ours: its first answer to a REGISTER (and to anything whose
reply would be larger than our request, while our address is new to it) is a
26-byte cookie reply, and we repeat the message with the cookie. A relay that
says our clock is off (STALE_TIMESTAMP) or that it has seen newer timestamps
from us (REPLAYED, e.g. we restarted after our clock stepped back) tells us its
figure in the authenticated error, and we correct our timestamps for that
relay instead of staying locked out.

Time: ``now`` (monotonic) is passed into every call; the wall clock for
timestamps is derived from it with an offset the shell keeps in step
(``sync_wall``), so the link never reads a clock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from wgrelay.client.carrier import CarrierVerdict, CarrierWatch
from wgrelay.client.events import (
    DiscoveryAnswered,
    LinkEvent,
    LinkLost,
    LinkRegistered,
    LinkRejected,
    PingTimedOut,
    Place,
    QueryFailed,
    RttMeasured,
    SessionEnded,
    SessionEstablished,
    SessionFailed,
)
from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError, StaleTimestamp
from wgrelay.keys import PrivateKey, PublicKey, relay_x25519_public
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import (
    NONCE_LEN,
    QUERY_FLAG_WANT_RELAYS,
    REGISTER_FLAG_ACCEPT_INCOMING,
    REGISTER_FLAG_STANDBY,
    REGISTER_FLAG_UNLISTED,
    RTT_UNKNOWN,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.cookie import decode_cookie_reply
from wgrelay.proto.envelope import (
    MAX_CLOCK_SKEW_S,
    ReplayWindow,
    Timestamper,
    check_skew,
    derive_client_keys,
    open_control,
    parse_control_header,
    seal_control,
)
from wgrelay.proto.location import decode_location
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    Ping,
    Pong,
    Register,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionOffer,
)

log = logging.getLogger(__name__)

MAX_CLOCK_CORRECTION_S = 366 * 86400.0
"""A relay that says our clock is off by more than a year is wrong (or
hostile): its figure is not followed."""


class Role(Enum):
    """How the relay publishes our registration (REGISTER flags)."""

    HOME = "home"
    """Lookups lead here first."""
    STANDBY = "standby"
    """Ready for failover: lookups offer it after the home."""
    UNLISTED = "unlisted"
    """Registered only to reach a peer here: no record."""


_ROLE_FLAGS = {
    Role.HOME: 0,
    Role.STANDBY: REGISTER_FLAG_STANDBY,
    Role.UNLISTED: REGISTER_FLAG_UNLISTED,
}


class LinkState(Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    LOST = "lost"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class LinkConfig:
    request_timeout_s: float = 8.0
    retransmit_initial_s: float = 0.5
    retransmit_max_s: float = 2.0
    default_heartbeat_s: float = 5.0
    lost_after_s: float = 9.0
    """Nothing authenticated heard from the relay for this long: the relay is lost."""
    carrier_probe_s: float = 0.5
    """A relay we sent our peers' traffic through, and that has been silent
    since for this long, is pinged..."""
    carrier_probe_interval_s: float = 0.25
    """...then at this interval (dense: a lossy path must not lose them all)..."""
    carrier_lost_after_s: float = 2.0
    """...and declared lost once silent this long with ``carrier_probes``
    probes unanswered: failover in seconds where traffic flows, while a link
    whose traffic is answered, or an idle one, costs no more than its
    heartbeats. At 20 % loss each way, all of 6 probes are lost with
    probability 0.36^6 = 0.2 %."""
    carrier_probes: int = 6
    rejoin_window_s: float = 15.0
    """After the relay forgot us (it restarted, or we lost it), a session we
    re-request whose peer is not back yet is asked for again every
    ``rejoin_retry_s`` for this long: the peer is re-registering too."""
    rejoin_retry_s: float = 1.0
    reregister_backoff_max_s: float = 8.0
    cookie_lifetime_s: float = 100.0
    accept_incoming: bool = True


@dataclass(slots=True)
class _Request:
    body: Body
    deadline: float
    next_send: float
    interval: float
    sent_at: float
    peer: PublicKey | None = None


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    received: int = 0
    retransmits: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class RelayLink:
    def __init__(
        self,
        private_key: PrivateKey,
        relay_key: PublicKey,
        config: LinkConfig,
        now: float,
        wall: float,
        accept_offer: Callable[[PublicKey], bool] = lambda _peer: True,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.relay_key = relay_key
        self.config = config
        self._wall_offset = wall - now
        self._rng = rng
        self._accept_offer = accept_offer
        self._pub = private_key.public_key().raw
        self._keys = derive_client_keys(self._pub, private_key.raw, relay_x25519_public(relay_key))
        self._relay_x = relay_x25519_public(relay_key)
        self._ts = Timestamper()
        self._replay = ReplayWindow()
        self.state = LinkState.IDLE
        self.heartbeat_s = config.default_heartbeat_s
        self.observed: Endpoint | None = None
        self.epoch: int | None = None
        """The relay's start epoch from REGISTERED; a change means it restarted."""
        self.clock_offset_s = 0.0
        """The relay's clock minus ours, once it told us ours is off (else 0)."""
        self.last_heard = now
        """When the relay last sent us an authenticated control message."""
        self.data_heard = float("-inf")
        """When a data frame of one of our sessions last came from the relay:
        the shell sets it (the data path never reaches the link). A relay
        that forwards our peers' packets is alive, whatever control messages
        a lossy path drops."""
        self.rtt_s: float | None = None
        self.relay_load_pct: int | None = None
        self.role = Role.HOME
        """How the relay lists us; the planner makes only its home HOME."""
        c = config
        self.carrier = CarrierWatch(
            c.carrier_probe_s, c.carrier_probe_interval_s, c.carrier_lost_after_s, c.carrier_probes
        )
        self._rejoin_until = float("-inf")
        self._retry_at: dict[PublicKey, float] = {}
        self._next_heartbeat = float("inf")
        self._hb_seq = 0
        self._register_backoff = config.retransmit_initial_s
        self._cookie: tuple[bytes, float] | None = None
        self._recent_nonces: dict[bytes, tuple[Body, float]] = {}
        self._requests: dict[tuple[MsgType, int], _Request] = {}
        self._next_id = int.from_bytes(rng(4), "big") & 0x7FFFFFFF
        self._out: list[bytes] = []
        self._events: list[LinkEvent] = []
        self.sessions: dict[bytes, PublicKey] = {}
        """Established sessions by id (the data path looks frames up here)."""
        self.session_of: dict[PublicKey, bytes] = {}
        self.wanted: set[PublicKey] = set()
        """Peers we asked sessions for; re-requested after the relay forgets us."""
        self.counters = _Counters()
        self._handlers: dict[type[Body], Callable[[Any, float], None]] = {
            Registered: self._on_registered,
            HeartbeatAck: self._on_heartbeat_ack,
            ConnectionResponse: self._on_connection_response,
            SessionOffer: self._on_session_offer,
            SessionClose: self._on_session_close,
            Pong: self._on_pong,
            DiscoveryResponse: self._on_discovery_response,
            Error: self._on_error,
        }

    # ------------------------------------------------------------ clock

    def sync_wall(self, now: float, wall: float) -> None:
        """Follow the wall clock (NTP steps) without reading it ourselves."""
        self._wall_offset = wall - now

    def _wall(self, now: float) -> float:
        """Our wall clock, corrected to the relay's if it told us we are off."""
        return now + self._wall_offset + self.clock_offset_s

    # ------------------------------------------------------------ API

    def connect(self, now: float) -> None:
        if self.state in (LinkState.REGISTERING, LinkState.REGISTERED):
            return
        self.state = LinkState.REGISTERING
        self.last_heard = now
        self._register(now)

    def set_role(self, role: Role, now: float) -> None:
        """Change how the relay lists us; a registered link tells it at once
        (a standby promoted to home has its record re-signed as home)."""
        if role == self.role:
            return
        self.role = role
        if self.state == LinkState.REGISTERED:
            self._register(now)

    def rtt_ms(self) -> int:
        """Our smoothed RTT to the relay, for REGISTER and HEARTBEAT."""
        if self.rtt_s is None:
            return RTT_UNKNOWN
        return min(round(self.rtt_s * 1000), RTT_UNKNOWN - 1)

    def _rtt_sample(self, sample: float) -> None:
        # smoothed like TCP's SRTT (RFC 6298): one slow answer does not move
        # the path choice much
        self.rtt_s = sample if self.rtt_s is None else 0.875 * self.rtt_s + 0.125 * sample

    def request_session(self, peer: PublicKey, now: float) -> int:
        """Ask the relay for a session to ``peer``; answered by an event."""
        self.wanted.add(peer)
        for (t, _), req in self._requests.items():
            if t == MsgType.CONNECTION_REQUEST and req.peer == peer:
                return req.body.request_id  # type: ignore[attr-defined, no-any-return]
        rid = self._new_id()
        self._start(ConnectionRequest(rid, peer), rid, now, peer=peer)
        return rid

    def close_session(
        self, peer: PublicKey, now: float, reason: CloseReason = CloseReason.NORMAL
    ) -> None:
        """Close our session to ``peer``. NORMAL tells the other end we are done
        with the relay (we went direct); REPLACED that we want a new session."""
        self.wanted.discard(peer)
        self._retry_at.pop(peer, None)
        for key in [
            k for k, r in self._requests.items()
            if r.peer == peer and k[0] == MsgType.CONNECTION_REQUEST
        ]:  # fmt: skip
            del self._requests[key]
        sid = self.session_of.pop(peer, None)
        if sid is not None:
            self.sessions.pop(sid, None)
            self._send(SessionClose(sid, reason), now)

    def forget_wanted(self, peer: PublicKey) -> None:
        """Stop asking for ``peer`` here (it is carried elsewhere now)."""
        self.wanted.discard(peer)
        self._retry_at.pop(peer, None)

    def ping(self, now: float) -> int:
        echo = int.from_bytes(self._rng(8), "big")
        self._start(Ping(echo), echo, now)
        return echo

    def query(
        self,
        now: float,
        locate: PublicKey | None = None,
        want_relays: bool = True,
        region: str = "",
        page: int = 0,
    ) -> int:
        qid = self._new_id()
        body = DiscoveryQuery(
            query_id=qid,
            flags=QUERY_FLAG_WANT_RELAYS if want_relays else 0,
            max_results=6,
            region=region,
            locate=locate,
            page=page,
        )
        self._start(body, qid, now, peer=locate)
        return qid

    def heartbeat_now(self, now: float) -> None:
        """Send the next heartbeat at once (e.g. after our address may have changed)."""
        if self.state == LinkState.REGISTERED:
            self._next_heartbeat = now
            self.handle_timer(now)

    def shutdown(self, now: float) -> None:
        """Close every session we hold (the relay expires the registration)."""
        for peer in list(self.session_of):
            self.close_session(peer, now)
        self._requests.clear()
        self.wanted.clear()
        self._retry_at.clear()
        self.state = LinkState.IDLE
        self._next_heartbeat = float("inf")

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[bytes]:
        out = self._out
        self._out = []
        return out

    def next_event(self) -> LinkEvent | None:
        return self._events.pop(0) if self._events else None

    def alive_at(self) -> float:
        """The last sign of life from the relay (control or our sessions' data)."""
        return max(self.last_heard, self.data_heard)

    def next_timer(self) -> float:
        t = self._next_heartbeat
        for req in self._requests.values():
            t = min(t, req.next_send, req.deadline)
        if self.state in (LinkState.REGISTERED, LinkState.REGISTERING):
            t = min(t, self.alive_at() + self.config.lost_after_s)
        t = min(t, self._carrier_timer(), *self._retry_at.values())
        return t

    # ------------------------------------------------------------ carrier

    def note_sent(self, now: float) -> bool:
        """We sent a data frame through the relay (the shell tells us, at
        most once per batch: the data path never reaches the link). True
        when this starts a wait for an answer: ``next_timer()`` moved."""
        return self.carrier.note_sent(now, self.alive_at())

    def _carrying(self) -> bool:
        """Sessions here: the relay's death must be noticed in seconds when
        our traffic goes unanswered (client/carrier.py)."""
        return self.state == LinkState.REGISTERED and bool(self.session_of)

    def _carrier_timer(self) -> float:
        return self.carrier.next_timer(self.alive_at()) if self._carrying() else float("inf")

    def _carrier(self, now: float) -> None:
        if not self._carrying():
            return
        verdict = self.carrier.check(now, self.alive_at())
        if verdict is CarrierVerdict.LOST:
            since = self.carrier.sent_since
            self._lose(now, f"traffic unanswered for {now - since:.1f} s")
        elif verdict is CarrierVerdict.PROBE:
            # a bare ping, not a request: the answer only needs to arrive
            # (receive() notes the relay alive); retransmits would be probes
            self._send(Ping(int.from_bytes(self._rng(8), "big")), now)

    # ------------------------------------------------------------ sending

    def _new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return self._next_id

    def _send(self, body: Body, now: float) -> None:
        nonce = self._rng(NONCE_LEN)
        cookie = None
        if self._cookie is not None:
            if now - self._cookie[1] < self.config.cookie_lifetime_s:
                cookie = self._cookie[0]
            else:
                self._cookie = None
        self._out.append(
            seal_control(
                body,
                sender=self._pub,
                keys=self._keys,
                timestamp_us=self._ts.next(self._wall(now)),
                nonce=nonce,
                cookie=cookie,
            )
        )
        self.counters.sent += 1
        # remember what we sent, in case a cookie reply asks us to repeat it (a
        # relay that restarted under load asks even registered peers)
        self._recent_nonces[nonce[:8]] = (body, now)
        if len(self._recent_nonces) > 32:
            self._recent_nonces.pop(next(iter(self._recent_nonces)))

    def _start(self, body: Body, ident: int, now: float, peer: PublicKey | None = None) -> None:
        iv = self.config.retransmit_initial_s
        self._requests[(body.TYPE, ident)] = _Request(
            body=body,
            deadline=now + self.config.request_timeout_s,
            next_send=now + iv,
            interval=iv,
            sent_at=now,
            peer=peer,
        )
        self._send(body, now)

    def _register(self, now: float) -> None:
        flags = REGISTER_FLAG_ACCEPT_INCOMING if self.config.accept_incoming else 0
        flags |= _ROLE_FLAGS[self.role]
        body = Register(flags=flags, keepalive_s=int(self.heartbeat_s), rtt_ms=self.rtt_ms())
        self._requests.pop((MsgType.REGISTER, 0), None)
        self._start(body, 0, now)

    # ------------------------------------------------------------ receiving

    def receive(self, data: bytes, now: float) -> None:
        """A control datagram (or cookie reply) from the relay's address."""
        self.counters.received += 1
        if data[:1] == bytes((MsgType.COOKIE_REPLY,)):
            self._receive_cookie(data, now)
            return
        try:
            hdr = parse_control_header(data)
            if hdr.sender.raw != self._relay_x:
                self._drop("wrong_sender")
                return
            ts, body = open_control(data, hdr, self._keys)
            try:
                check_skew(ts, self._wall(now))
            except StaleTimestamp:
                # the one message we must read although its time is off ours:
                # the relay telling us our clock is off (authenticated, and
                # a replayed one is refused by the window; a stale copy only
                # sets an offset the next such error corrects)
                if not (isinstance(body, Error) and body.code == ErrorCode.STALE_TIMESTAMP):
                    raise
            self._replay.accept(ts)
        except RemoteProtocolError as e:
            self._drop(e.reason)
            return
        self.last_heard = now
        handler = self._handlers.get(type(body))
        if handler is None:
            self._drop("unexpected")
            return
        handler(body, now)

    def _drop(self, reason: str) -> None:
        self.counters.drops[reason] = self.counters.drops.get(reason, 0) + 1

    def _receive_cookie(self, data: bytes, now: float) -> None:
        try:
            reply = decode_cookie_reply(data)
        except RemoteProtocolError as e:
            self._drop(e.reason)
            return
        sent = self._recent_nonces.pop(reply.echo, None)
        if sent is None:
            self._drop("unsolicited_cookie")
            return
        self._cookie = (reply.cookie, now)
        for req in self._requests.values():
            if req.body is sent[0]:
                req.sent_at = now  # an RTT sample must not include the detour
        self._send(sent[0], now)

    def _finish(self, t: MsgType, ident: int) -> _Request | None:
        return self._requests.pop((t, ident), None)

    def _on_registered(self, body: Registered, now: float) -> None:
        if self._finish(MsgType.REGISTER, 0) is None and self.state == LinkState.REGISTERED:
            return  # duplicate
        was_lost = self.state != LinkState.REGISTERED
        rejoining = was_lost and self.epoch is not None  # registered here before
        self.state = LinkState.REGISTERED
        self.epoch = body.epoch
        self.observed = body.observed
        self.heartbeat_s = float(max(1, body.heartbeat_s))
        self._next_heartbeat = now + self.heartbeat_s
        self._register_backoff = self.config.retransmit_initial_s
        self._events.append(LinkRegistered(body.observed, body.heartbeat_s, body.epoch))
        if rejoining:
            self._rejoin_until = now + self.config.rejoin_window_s
        if was_lost:
            for peer in sorted(self.wanted, key=lambda k: k.raw):  # hash-free order
                if peer not in self.session_of:
                    self.request_session(peer, now)

    def _on_heartbeat_ack(self, body: HeartbeatAck, now: float) -> None:
        req = self._finish(MsgType.HEARTBEAT, body.seq)
        if req is None:
            return  # not an answer to a heartbeat in flight (a duplicate)
        if req.interval == self.config.retransmit_initial_s:
            self._rtt_sample(now - req.sent_at)  # never resent: unambiguous (Karn)
        if body.status == HeartbeatStatus.NOT_REGISTERED:
            self._forgotten(now, "relay no longer knows us (restarted?)")
        elif self.epoch is not None and body.epoch != self.epoch:
            # registered, but not by us: it restarted and something (a
            # replayed REGISTER) registered us again; our sessions are gone
            self._forgotten(now, "relay restarted (new epoch)")

    def _forgotten(self, now: float, why: str) -> None:
        """The relay lost our registration: its sessions are gone too."""
        log.info("relay %s: %s; registering again", self.relay_key.short(), why)
        self._end_all_sessions(CloseReason.PEER_GONE)
        self.state = LinkState.REGISTERING
        self._register(now)

    def _end_all_sessions(self, reason: CloseReason) -> None:
        for sid, peer in list(self.sessions.items()):
            self._events.append(SessionEnded(peer, sid, reason))
        self.sessions.clear()
        self.session_of.clear()

    def _on_connection_response(self, body: ConnectionResponse, now: float) -> None:
        req = self._finish(MsgType.CONNECTION_REQUEST, body.request_id)
        if req is None or req.peer is None:
            if body.status == Status.SUCCESS and body.session_id not in self.sessions:
                # a session we no longer want (we gave up or closed it): free it
                # at the relay now instead of leaving it to the idle timeout
                self._send(SessionClose(body.session_id, CloseReason.NORMAL), now)
            return
        peer = req.peer
        if body.status == Status.SUCCESS:
            self._bind(peer, body.session_id, incoming=False)
        elif body.status == Status.TARGET_UNREACHABLE and now < self._rejoin_until:
            self._retry_at[peer] = now + self.config.rejoin_retry_s  # it may be on its way
        else:
            self.wanted.discard(peer)
            self._events.append(SessionFailed(peer, body.status))

    def _bind(self, peer: PublicKey, sid: bytes, incoming: bool) -> None:
        old = self.session_of.get(peer)
        if old == sid:
            return
        if old is not None:
            self.sessions.pop(old, None)
        previous = self.sessions.get(sid)
        if previous is not None and previous != peer:
            # a confused relay reused the id: the other peer lost its session
            del self.session_of[previous]
            self._events.append(SessionEnded(previous, sid, CloseReason.REPLACED))
        self.sessions[sid] = peer
        self.session_of[peer] = sid
        self._events.append(SessionEstablished(peer, sid, incoming))

    def _on_session_offer(self, body: SessionOffer, now: float) -> None:
        accept = self._accept_offer(body.initiator)
        self._send(SessionAnswer(body.session_id, accept), now)
        if accept:
            self._bind(body.initiator, body.session_id, incoming=True)

    def _on_session_close(self, body: SessionClose, now: float) -> None:
        peer = self.sessions.pop(body.session_id, None)
        if peer is None:
            return
        if self.session_of.get(peer) == body.session_id:
            del self.session_of[peer]
        self._events.append(SessionEnded(peer, body.session_id, body.reason))

    def _on_pong(self, body: Pong, now: float) -> None:
        req = self._finish(MsgType.PING, body.echo_id)
        if req is None:
            return
        sample = now - req.sent_at
        self._rtt_sample(sample)
        self.relay_load_pct = body.load_pct
        self._events.append(RttMeasured(sample, body.load_pct))

    def _on_discovery_response(self, body: DiscoveryResponse, now: float) -> None:
        req = self._finish(MsgType.DISCOVERY_QUERY, body.query_id)
        if req is None:
            return
        anns = []
        for raw in body.announcements:
            try:
                anns.append(decode_announcement(raw))
            except RemoteProtocolError as e:
                self._drop(f"announcement_{e.reason}")
        page = req.body.page if isinstance(req.body, DiscoveryQuery) else 0
        places = self._places(body, req.peer)
        self._events.append(
            DiscoveryAnswered(
                body.query_id,
                places[0].location if places else None,
                tuple(anns),
                req.peer,
                body.more,
                page,
                places,
            )
        )

    def _places(self, body: DiscoveryResponse, peer: PublicKey | None) -> tuple[Place, ...]:
        """Where the peer accepts sessions, each record checked: signed by
        the relay it names, for the peer we asked about."""
        out: list[Place] = []
        for loc, raw in ((body.location, body.record), (body.alternate, body.alternate_record)):
            if loc is None or peer is None:
                continue
            if raw is None:
                out.append(Place(loc, None, False))  # "registered here", unsigned
                continue
            try:
                rec = decode_location(raw)
            except RemoteProtocolError as e:
                self._drop(f"location_{e.reason}")
                continue
            if rec.peer != peer or rec.home != loc.relay:
                self._drop("location_mismatch")
                continue
            rtt = None if rec.rtt_ms == RTT_UNKNOWN else rec.rtt_ms
            out.append(Place(loc, rtt, rec.standby))
        return tuple(out)

    def _on_error(self, body: Error, now: float) -> None:
        code = body.code
        if code == ErrorCode.AUTH_FAILED:
            log.warning("relay %s refuses our key", self.relay_key.short())
            self.state = LinkState.REJECTED
            self._requests.clear()
            self._next_heartbeat = float("inf")
            self._events.append(LinkRejected("relay does not allow our key"))
        elif code == ErrorCode.NOT_REGISTERED:
            if self.state != LinkState.REGISTERING:
                self._forgotten(now, "relay says we are not registered")
        elif code == ErrorCode.SHUTTING_DOWN:
            self._lose(now, "relay is shutting down")
        elif code == ErrorCode.STALE_TIMESTAMP:
            self._fix_clock(body, now)
        elif code == ErrorCode.REPLAYED:
            self._fix_floor(body, now)
        elif code == ErrorCode.RESOURCE_LIMIT:
            log.warning("relay %s: resource limit (%s)", self.relay_key.short(), body.detail)
            # back off the request it refers to instead of hammering the relay
            for (t, _), req in self._requests.items():
                if t == body.ref_type:
                    req.next_send = now + self.config.retransmit_max_s
        else:
            log.info("relay %s error %s: %s", self.relay_key.short(), code.name, body.detail)

    def _fix_clock(self, body: Error, now: float) -> None:
        """The relay says our clock is off by more than the skew window."""
        offset = body.value / 1_000_000 - (now + self._wall_offset)
        if abs(offset) > MAX_CLOCK_CORRECTION_S:
            log.warning(
                "relay %s claims a clock %.0f s from ours; not following it",
                self.relay_key.short(),
                offset,
            )
            return
        if abs(offset - self.clock_offset_s) < 1.0:
            return  # already corrected (a late duplicate)
        log.warning(
            "relay %s: our clock is %+.0f s off its clock; using its time for this relay",
            self.relay_key.short(),
            -offset,
        )
        self.clock_offset_s = offset
        # follow its clock back too: timestamps only ever increase, so without
        # this a relay whose clock stepped back would lock us out (stale)
        self._ts.reset()
        self._resend(body.ref_type, now)

    def _fix_floor(self, body: Error, now: float) -> None:
        """The relay accepted newer timestamps from us than we now send (we
        restarted after our clock stepped back): continue above them, as
        long as that stays within the skew window of the relay's clock."""
        if body.value / 1_000_000 - self._wall(now) > MAX_CLOCK_SKEW_S:
            log.warning("relay %s claims a timestamp far in our future", self.relay_key.short())
            return
        log.info("relay %s saw newer timestamps from us; moving ours past them",
                 self.relay_key.short())  # fmt: skip
        self._ts.raise_floor(body.value)
        self._resend(body.ref_type, now)

    def _resend(self, msg_type: int, now: float) -> None:
        """Send the requests of one type again now (after a correction)."""
        for (t, _), req in self._requests.items():
            if t == msg_type:
                req.sent_at = now
                self.counters.retransmits += 1
                self._send(req.body, now)

    # ------------------------------------------------------------ timers

    def _lose(self, now: float, reason: str) -> None:
        if self.state == LinkState.LOST:
            return
        log.info("relay %s lost: %s", self.relay_key.short(), reason)
        self.state = LinkState.LOST
        self._end_all_sessions(CloseReason.PEER_GONE)
        self._next_heartbeat = float("inf")
        self._events.append(LinkLost(reason))
        # keep knocking: the relay may come back (and 'wanted' is kept for then)
        self._register_backoff = self.config.retransmit_initial_s
        self._requests = {k: r for k, r in self._requests.items() if k[0] == MsgType.REGISTER}
        if not self._requests:
            self._register(now)

    def handle_timer(self, now: float) -> None:
        # the same sum as next_timer(): a difference could miss it by one ulp
        # and leave the timer due forever
        if self.state in (LinkState.REGISTERED, LinkState.REGISTERING) and (
            now >= self.alive_at() + self.config.lost_after_s
        ):
            self._lose(now, f"nothing heard for {now - self.alive_at():.1f} s")
        self._carrier(now)
        for peer, at in list(self._retry_at.items()):
            if now >= at:
                del self._retry_at[peer]
                if self.state == LinkState.REGISTERED and peer in self.wanted:
                    self.request_session(peer, now)
        if now >= self._next_heartbeat and self.state == LinkState.REGISTERED:
            self._hb_seq = (self._hb_seq + 1) & 0xFFFFFFFF
            self._start(Heartbeat(self._hb_seq, self.rtt_ms()), self._hb_seq, now)
            self._next_heartbeat = now + self.heartbeat_s
        for key, req in list(self._requests.items()):
            if key not in self._requests:
                continue
            if key[0] == MsgType.REGISTER:
                if now >= req.next_send:
                    # registration never gives up; it backs off instead
                    self._register_backoff = min(
                        self._register_backoff * 2, self.config.reregister_backoff_max_s
                    )
                    req.next_send = now + self._register_backoff
                    req.deadline = float("inf")
                    self.counters.retransmits += 1
                    self._send(req.body, now)
                continue
            if now >= req.deadline:
                del self._requests[key]
                self._expire(key[0], req)
            elif now >= req.next_send:
                req.interval = min(req.interval * 2, self.config.retransmit_max_s)
                req.next_send = now + req.interval
                self.counters.retransmits += 1
                self._send(req.body, now)

    def _expire(self, t: MsgType, req: _Request) -> None:
        if t == MsgType.CONNECTION_REQUEST and req.peer is not None:
            self.wanted.discard(req.peer)
            self._events.append(SessionFailed(req.peer, Status.ERROR))
        elif t == MsgType.DISCOVERY_QUERY:
            self._events.append(QueryFailed(req.body.query_id, req.peer))  # type: ignore[attr-defined]
        elif t == MsgType.PING:
            self._events.append(PingTimedOut(req.body.echo_id))  # type: ignore[attr-defined]
        # a heartbeat that times out is covered by the lost_after_s rule
