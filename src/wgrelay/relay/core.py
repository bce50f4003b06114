"""The relay node's protocol core (the seed's RelayService / RelayNode), sans-I/O.

Theory of operation
-------------------
The core never touches a socket or a clock. The asyncio shell (server.py) feeds
it every received datagram with ``receive(data, addr, now)``, calls
``handle_timer(now)`` when ``next_timer()`` falls due, and sends whatever
``datagrams_to_send()`` returns. Data frames take a shorter road:
``forward_data(data, addr, now)`` returns where the frame goes (or None), and
the shell sends the same bytes there.

Peers register (REGISTER, then HEARTBEAT every ``heartbeat_interval_s``); a
registration that misses heartbeats for ``registration_ttl_s`` expires. Peer A
asks for a session to B (CONNECTION_REQUEST); the relay checks that both keys are
allowed, the quotas, and that B is registered and accepts incoming sessions,
then offers the session to B (SESSION_OFFER, retransmitted until B answers or
``offer_timeout_s``); B's answer decides the CONNECTION_RESPONSE to A. There is at
most one session per pair of peers: a second request for the same pair (a
retransmit, or B asking for A at the same time) joins the existing one, so two
agents that decide to relay at the same moment end up on one session.

Data frames are forwarded only between the two registered addresses of an
established session; a frame with a known session id from any other address is
counted as spoofed and dropped, and never moves the session. Only an
authenticated REGISTER or HEARTBEAT from a new address moves a peer (NAT
rebinding), and with it every session it is part of.

Abuse resistance: an unauthenticated datagram creates no state (the per-IP rate
table is fixed-size) and is never answered with more bytes than it had. Under
load - more than ``handshakes_before_cookies`` public-key operations in the last
second - a sender whose keys are not cached gets a 26-byte cookie reply and no
public-key work is done until it comes back with the cookie.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.buffer import endpoint_str
from wgrelay.proto.constants import (
    DATA_HEADER_LEN,
    NONCE_LEN,
    QUERY_FLAG_WANT_RELAYS,
    REGISTER_FLAG_ACCEPT_INCOMING,
    SESSION_ID_LEN,
    Capability,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.cookie import CookieJar, encode_cookie_reply
from wgrelay.proto.data import MAX_DATA_FRAME
from wgrelay.proto.envelope import (
    ChannelKeys,
    ControlHeader,
    ReplayWindow,
    Timestamper,
    check_skew,
    derive_server_keys,
    open_control,
    parse_control_header,
    seal_control,
)
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    PeerLocation,
    Ping,
    Pong,
    Register,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionOffer,
)
from wgrelay.relay.access import AccessPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.limits import KeyedRateLimiter, TokenBucket, WindowCounter
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

Addr = tuple[Any, ...]
"""A socket address exactly as recvfrom returned it (2-tuple IPv4, 4-tuple IPv6)."""

ANNOUNCEMENT_TTL_S = 600
ANNOUNCEMENT_RESIGN_S = 60.0


@dataclass(slots=True)
class _KeyState:
    """Per-sender crypto state: derived keys, replay window, control rate."""

    keys: ChannelKeys
    replay: ReplayWindow
    limiter: TokenBucket
    last_limit_reply: float = -1e9


@dataclass(slots=True)
class _Registration:
    key: bytes
    addr: Addr
    ks: _KeyState
    expires: float
    accept_incoming: bool = True
    sessions: set[bytes] = field(default_factory=set)


class _Session:
    """A relayed connection between peers A (initiator) and B (target)."""

    __slots__ = (
        "a_addr",
        "a_key",
        "ab",
        "b_addr",
        "b_key",
        "ba",
        "bytes",
        "created",
        "last_active",
        "last_packets",
        "offer_deadline",
        "offer_next",
        "packets",
        "sid",
        "waiters",
    )

    def __init__(
        self, sid: bytes, a_key: bytes, b_key: bytes, a_addr: Addr, b_addr: Addr, now: float
    ) -> None:
        self.sid = sid
        self.a_key = a_key
        self.b_key = b_key
        self.a_addr = a_addr
        self.b_addr = b_addr
        self.created = now
        self.last_active = now
        self.packets = 0
        self.bytes = 0
        self.last_packets = 0
        self.ab: TokenBucket | None = None
        self.ba: TokenBucket | None = None
        self.waiters: dict[bytes, int] = {}  # key -> request_id awaiting a response
        self.offer_next = 0.0
        self.offer_deadline = 0.0

    def other(self, key: bytes) -> bytes:
        return self.b_key if key == self.a_key else self.a_key


def _pair(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    return (a, b) if a < b else (b, a)


class RelayCore:
    def __init__(
        self,
        identity: RelayIdentity,
        config: RelayConfig,
        policy: AccessPolicy,
        now: float,
        wall: Callable[[], float],
        rng: Callable[[int], bytes] = os.urandom,
        region: str = "",
        announce_endpoints: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.identity = identity
        self.config = config
        self.policy = policy
        self._wall = wall
        self._rng = rng
        self.region = region
        self.announce_endpoints = announce_endpoints
        self._x_pub = identity.x25519_public
        self._x_priv = identity.x25519_private
        self._ts = Timestamper()
        self._cookies = CookieJar(now, rng=rng)
        self._handshakes = WindowCounter()
        self._ip_limiter: KeyedRateLimiter[str] = KeyedRateLimiter(
            config.control_rate_per_ip, config.control_burst_per_ip, config.rate_table_size
        )
        self._key_cache: OrderedDict[bytes, _KeyState] = OrderedDict()
        self._regs: dict[bytes, _Registration] = {}
        self.sessions: dict[bytes, _Session] = {}
        """Established sessions by id: the data path's only lookup."""
        self._pending: dict[bytes, _Session] = {}
        self._by_pair: dict[tuple[bytes, bytes], _Session] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._next_housekeeping = now + config.housekeeping_interval_s
        self._closed_packets = 0
        self._closed_bytes = 0
        self._shutting_down = False
        self._announcement: tuple[RelayNodeInfo, float, bytes] | None = None
        self.stats = RelayStats()
        self._drops = self.stats.drops
        self._handlers: dict[MsgType, Callable[[_KeyState, bytes, Any, Addr, float], None]] = {
            MsgType.REGISTER: self._handle_register,
            MsgType.HEARTBEAT: self._handle_heartbeat,
            MsgType.CONNECTION_REQUEST: self._handle_connection_request,
            MsgType.SESSION_ANSWER: self._handle_session_answer,
            MsgType.SESSION_CLOSE: self._handle_session_close,
            MsgType.PING: self._handle_ping,
            MsgType.DISCOVERY_QUERY: self._handle_discovery_query,
        }

    # ------------------------------------------------------------ inputs

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Any datagram. Data frames are forwarded through the output queue."""
        if data and data[0] == MsgType.DATA:
            dst = self.forward_data(data, addr, now)
            if dst is not None:
                self._out.append((data, dst))
            return
        self.receive_control(data, addr, now)

    def forward_data(self, data: bytes, addr: Addr, now: float) -> Addr | None:
        """The data path: where to send this frame, or None (dropped and counted)."""
        n = len(data)
        s = self.sessions.get(data[2:DATA_HEADER_LEN])
        if s is None:
            self._drops[
                DropReason.TRUNCATED
                if n < DATA_HEADER_LEN
                else DropReason.SESSION_NOT_READY
                if data[2:DATA_HEADER_LEN] in self._pending
                else DropReason.UNKNOWN_SESSION
            ] += 1
            return None
        if addr == s.a_addr:
            dst = s.b_addr
            bucket = s.ab
        elif addr == s.b_addr:
            dst = s.a_addr
            bucket = s.ba
        else:
            self._drops[DropReason.SPOOFED_SOURCE] += 1
            return None
        if n > MAX_DATA_FRAME:
            self._drops[DropReason.OVERSIZE] += 1
            return None
        if bucket is not None and not bucket.take(n, now):
            self._drops[DropReason.BANDWIDTH] += 1
            return None
        s.packets += 1
        s.bytes += n
        return dst

    def receive_control(self, data: bytes, addr: Addr, now: float) -> None:
        self.stats.control_received += 1
        try:
            hdr = parse_control_header(data)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            return
        if not self._ip_limiter.allow(addr[0], now):
            self._drops[DropReason.RATE_LIMITED_IP] += 1
            return
        sender = hdr.sender.raw
        reg = self._regs.get(sender)
        if reg is not None:
            ks: _KeyState | None = reg.ks
        else:
            ks = self._key_cache.get(sender)
            if ks is not None:
                self._key_cache.move_to_end(sender)  # least recently used goes first
        if ks is not None:
            keys = ks.keys
        else:
            fresh = self._handshake_keys(hdr, data, addr, now)
            if fresh is None:
                return
            keys = fresh
        try:
            ts, body = open_control(data, hdr, keys)
            check_skew(ts, self._wall())
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            return
        if not self.policy.allows(sender):
            self._drops[DropReason.NOT_ALLOWED] += 1
            self._reply_not_allowed(hdr, body, keys, addr, len(data))
            return
        if ks is None:
            ks = _KeyState(
                keys=keys,
                replay=ReplayWindow(),
                limiter=TokenBucket(
                    self.config.control_rate_per_key, self.config.control_burst_per_key, now
                ),
            )
            self._cache_keys(sender, ks)
        try:
            ks.replay.accept(ts)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            return
        if not ks.limiter.take(1.0, now):
            self._drops[DropReason.RATE_LIMITED_KEY] += 1
            self.stats.quota_hits["control_rate"] += 1
            if now - ks.last_limit_reply >= 1.0:  # tell it, but not once per message
                ks.last_limit_reply = now
                self._send(
                    Error(ErrorCode.RESOURCE_LIMIT, hdr.msg_type, "control rate limit"), ks, addr
                )
            return
        handler = self._handlers.get(hdr.msg_type)
        if handler is None:  # a server-to-client type sent to us
            self._drops[DropReason.UNEXPECTED] += 1
            return
        handler(ks, sender, body, addr, now)

    def _handshake_keys(
        self, hdr: ControlHeader, data: bytes, addr: Addr, now: float
    ) -> ChannelKeys | None:
        """Derive keys for an unknown sender, demanding a cookie first under load."""
        if self._handshakes.value(now) >= self.config.handshakes_before_cookies:
            ep = (addr[0], addr[1])
            if hdr.cookie is None or not self._cookies.check(hdr.cookie, ep, now):
                # no cookie, or one for another address (the sender's NAT moved
                # it) or an old secret: a fresh one, like WireGuard, so an honest
                # sender recovers at once; still 26 bytes, still no state
                self._drops[
                    DropReason.NEEDS_COOKIE if hdr.cookie is None else DropReason.BAD_COOKIE
                ] += 1
                cookie = self._cookies.make(ep, now)
                self._send_unauthenticated(
                    encode_cookie_reply(hdr.nonce[:8], cookie), addr, len(data)
                )
                self.stats.cookies_sent += 1
                return None
            self.stats.cookies_accepted += 1
        self._handshakes.add(now)
        self.stats.handshakes += 1
        try:
            return derive_server_keys(self._x_pub, self._x_priv, hdr.sender.raw)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            return None

    def _cache_keys(self, key: bytes, ks: _KeyState) -> None:
        cache = self._key_cache
        if len(cache) >= self.config.key_cache_size:
            cache.popitem(last=False)
        cache[key] = ks

    # ------------------------------------------------------------ handlers

    def _handle_register(
        self, ks: _KeyState, key: bytes, body: Register, addr: Addr, now: float
    ) -> None:
        reg = self._regs.get(key)
        if reg is None:
            if len(self._regs) >= self.config.max_registrations:
                self.stats.quota_hits["registrations"] += 1
                self._send(Error(ErrorCode.RESOURCE_LIMIT, body.TYPE, "relay is full"), ks, addr)
                return
            reg = _Registration(key=key, addr=addr, ks=ks, expires=0.0)
            self._regs[key] = reg
            self._key_cache.pop(key, None)
            log.info("peer %s registered from %s", PublicKey(key).short(), endpoint_str(addr))
        elif reg.addr != addr:
            self._rebind(reg, addr)
        reg.accept_incoming = bool(body.flags & REGISTER_FLAG_ACCEPT_INCOMING)
        reg.expires = now + self.config.registration_ttl_s
        self._send(
            Registered(
                ttl_s=self.config.registration_ttl_s,
                heartbeat_s=self.config.heartbeat_interval_s,
                observed=(addr[0], addr[1]),
            ),
            ks,
            addr,
        )

    def _handle_heartbeat(
        self, ks: _KeyState, key: bytes, body: Heartbeat, addr: Addr, now: float
    ) -> None:
        reg = self._regs.get(key)
        if reg is None:
            self._send(HeartbeatAck(body.seq, HeartbeatStatus.NOT_REGISTERED), ks, addr)
            return
        if reg.addr != addr:
            self._rebind(reg, addr)
        reg.expires = now + self.config.registration_ttl_s
        self._send(HeartbeatAck(body.seq, HeartbeatStatus.OK), ks, addr)

    def _rebind(self, reg: _Registration, addr: Addr) -> None:
        """The peer's NAT gave it a new address: move it and its sessions."""
        log.info(
            "peer %s moved from %s to %s",
            PublicKey(reg.key).short(),
            endpoint_str(reg.addr),
            endpoint_str(addr),
        )
        reg.addr = addr
        for sid in reg.sessions:
            s = self._find(sid)
            if s is None:
                continue
            if s.a_key == reg.key:
                s.a_addr = addr
            else:
                s.b_addr = addr

    def _handle_connection_request(
        self, ks: _KeyState, key: bytes, body: ConnectionRequest, addr: Addr, now: float
    ) -> None:
        rid = body.request_id
        target = body.target.raw

        def respond(status: Status, sid: bytes = bytes(SESSION_ID_LEN)) -> None:
            self._send(self._response(rid, status, sid), ks, addr)

        reg = self._regs.get(key)
        if reg is None:
            self._send(Error(ErrorCode.NOT_REGISTERED, body.TYPE, "register first"), ks, addr)
            return
        if self._shutting_down:
            respond(Status.ERROR)
            return
        if target == key:
            respond(Status.ERROR)
            return
        if not self.policy.allows(target):
            respond(Status.AUTH_FAILED)
            return
        s = self._by_pair.get(_pair(key, target))
        if s is not None:
            if s.sid in self.sessions:
                respond(Status.SUCCESS, s.sid)
            elif key == s.b_key:
                # B asks for A while A's offer to B is outstanding: both want it
                s.waiters[key] = rid
                self._establish(s, now)
            else:
                s.waiters[key] = rid  # a retransmitted request: answer when B does
            return
        treg = self._regs.get(target)
        if treg is None or not treg.accept_incoming:
            respond(Status.TARGET_UNREACHABLE)
            return
        if len(self.sessions) + len(self._pending) >= self.config.max_connections:
            self.stats.quota_hits["max_connections"] += 1
            respond(Status.RESOURCE_LIMIT)
            return
        cap = self.config.max_sessions_per_peer
        if len(reg.sessions) >= cap or len(treg.sessions) >= cap:
            self.stats.quota_hits["sessions_per_peer"] += 1
            respond(Status.RESOURCE_LIMIT)
            return
        sid = self._new_session_id()
        s = _Session(sid, key, target, reg.addr, treg.addr, now)
        s.waiters[key] = rid
        s.offer_deadline = now + self.config.offer_timeout_s
        self._pending[sid] = s
        self._by_pair[_pair(key, target)] = s
        reg.sessions.add(sid)
        treg.sessions.add(sid)
        self._send_offer(s, treg, now)

    def _send_offer(self, s: _Session, treg: _Registration, now: float) -> None:
        s.offer_next = now + self.config.offer_retransmit_s
        self._send(SessionOffer(s.sid, PublicKey(s.a_key)), treg.ks, treg.addr)

    def _response(self, rid: int, status: Status, sid: bytes) -> ConnectionResponse:
        return ConnectionResponse(
            request_id=rid,
            status=status,
            session_id=sid,
            idle_timeout_s=self.config.session_idle_timeout_s,
            max_bandwidth_kbps=self.config.max_bandwidth_kbps,
        )

    def _new_session_id(self) -> bytes:
        while True:
            sid = self._rng(SESSION_ID_LEN)
            if sid not in self.sessions and sid not in self._pending:
                return sid

    def _establish(self, s: _Session, now: float) -> None:
        del self._pending[s.sid]
        self.sessions[s.sid] = s
        if self.config.max_bandwidth_kbps:
            rate = self.config.bandwidth_bytes_per_s
            burst = self.config.bandwidth_burst_bytes
            s.ab = TokenBucket(rate, burst, now)
            s.ba = TokenBucket(rate, burst, now)
        s.last_active = now
        self.stats.sessions_opened += 1
        log.info(
            "session %s open: %s <-> %s",
            s.sid.hex(),
            PublicKey(s.a_key).short(),
            PublicKey(s.b_key).short(),
        )
        self._answer_waiters(s, Status.SUCCESS)

    def _answer_waiters(self, s: _Session, status: Status) -> None:
        sid = s.sid if status == Status.SUCCESS else bytes(SESSION_ID_LEN)
        for wkey, rid in s.waiters.items():
            wreg = self._regs.get(wkey)
            if wreg is not None:
                self._send(self._response(rid, status, sid), wreg.ks, wreg.addr)
        s.waiters.clear()

    def _handle_session_answer(
        self, ks: _KeyState, key: bytes, body: SessionAnswer, addr: Addr, now: float
    ) -> None:
        s = self._pending.get(body.session_id)
        if s is None:
            est = self.sessions.get(body.session_id)
            if est is not None and key in (est.a_key, est.b_key):
                return  # a retransmitted answer; already done
            if body.accept:  # accepted too late: make sure the peer drops it
                self._send(SessionClose(body.session_id, CloseReason.NORMAL), ks, addr)
            self._drops[DropReason.UNKNOWN_SESSION] += 1
            return
        if key != s.b_key:
            self._drops[DropReason.UNEXPECTED] += 1
            return
        if body.accept:
            self._establish(s, now)
        else:
            log.info("session %s rejected by %s", s.sid.hex(), PublicKey(key).short())
            self._answer_waiters(s, Status.REJECTED)
            self._remove(s)

    def _handle_session_close(
        self, ks: _KeyState, key: bytes, body: SessionClose, addr: Addr, now: float
    ) -> None:
        s = self._find(body.session_id)
        if s is None or key not in (s.a_key, s.b_key):
            self._drops[DropReason.UNKNOWN_SESSION] += 1
            return
        if s.sid in self._pending:
            self._answer_waiters(s, Status.REJECTED)
        self._close(s, body.reason, notify={s.other(key)})

    def _handle_ping(self, ks: _KeyState, key: bytes, body: Ping, addr: Addr, now: float) -> None:
        self._send(Pong(body.echo_id, self.load_pct()), ks, addr)

    def _handle_discovery_query(
        self, ks: _KeyState, key: bytes, body: DiscoveryQuery, addr: Addr, now: float
    ) -> None:
        anns: tuple[bytes, ...] = ()
        if body.flags & QUERY_FLAG_WANT_RELAYS and body.max_results > 0:
            caps = self.capabilities()
            if caps & body.required_caps == body.required_caps and (
                not body.region or body.region == self.region
            ):
                own = self.announcement()
                anns = (own,) if own is not None else ()
        location = None
        if body.locate is not None and body.locate.raw in self._regs:
            location = PeerLocation(self.identity.public, self._location_endpoint(addr))
        self._send(DiscoveryResponse(body.query_id, anns, location), ks, addr)

    def _location_endpoint(self, addr: Addr) -> tuple[str, int]:
        if self.announce_endpoints:
            return self.announce_endpoints[0]
        # Not configured: the querier reached us, it knows where we are; say so
        # with the unspecified address of its family.
        return ("::", 0) if len(addr) == 4 else ("0.0.0.0", 0)

    # ------------------------------------------------------------ replies

    def _seal(self, body: Body, keys: ChannelKeys) -> bytes:
        return seal_control(
            body,
            sender=self._x_pub,
            keys=keys,
            timestamp_us=self._ts.next(self._wall()),
            nonce=self._rng(NONCE_LEN),
        )

    def _send(self, body: Body, ks: _KeyState, addr: Addr) -> None:
        self._out.append((self._seal(body, ks.keys), addr))
        self.stats.control_sent += 1

    def _send_unauthenticated(self, data: bytes, addr: Addr, request_len: int) -> None:
        """Reply to a sender we have not authenticated: never more bytes than it sent."""
        if len(data) > request_len:
            self._drops[DropReason.UNEXPECTED] += 1
            return
        ratio = len(data) / request_len
        if ratio > self.stats.largest_unauthenticated_reply_ratio:
            self.stats.largest_unauthenticated_reply_ratio = ratio
        self._out.append((data, addr))
        self.stats.control_sent += 1

    def _reply_not_allowed(
        self, hdr: ControlHeader, body: Body, keys: ChannelKeys, addr: Addr, request_len: int
    ) -> None:
        reply: Body
        if isinstance(body, ConnectionRequest):
            reply = self._response(body.request_id, Status.AUTH_FAILED, bytes(SESSION_ID_LEN))
        else:
            reply = Error(ErrorCode.AUTH_FAILED, hdr.msg_type)
        self._send_unauthenticated(self._seal(reply, keys), addr, request_len)

    # ------------------------------------------------------------ sessions

    def _remove(self, s: _Session) -> None:
        self._pending.pop(s.sid, None)
        if self.sessions.pop(s.sid, None) is not None:
            self.stats.sessions_closed += 1
            self._closed_packets += s.packets
            self._closed_bytes += s.bytes
        self._by_pair.pop(_pair(s.a_key, s.b_key), None)
        for k in (s.a_key, s.b_key):
            reg = self._regs.get(k)
            if reg is not None:
                reg.sessions.discard(s.sid)

    def _close(self, s: _Session, reason: CloseReason, notify: set[bytes]) -> None:
        log.info("session %s closed (%s)", s.sid.hex(), reason.name.lower())
        self._remove(s)
        for k in notify:
            reg = self._regs.get(k)
            if reg is not None:
                self._send(SessionClose(s.sid, reason), reg.ks, reg.addr)

    # ------------------------------------------------------------ timers

    def next_timer(self) -> float:
        return self._next_housekeeping

    def handle_timer(self, now: float) -> None:
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self.config.housekeeping_interval_s
        for reg in [r for r in self._regs.values() if r.expires <= now]:
            log.info("peer %s registration expired", PublicKey(reg.key).short())
            self._drop_registration(reg, Status.TARGET_UNREACHABLE)
        for s in list(self._pending.values()):
            if now >= s.offer_deadline:
                log.info("session %s: no answer from target", s.sid.hex())
                self._answer_waiters(s, Status.TARGET_UNREACHABLE)
                self._close(s, CloseReason.PEER_GONE, notify={s.b_key})
            elif now >= s.offer_next:
                treg = self._regs.get(s.b_key)
                if treg is not None:
                    self._send_offer(s, treg, now)
        idle = self.config.session_idle_timeout_s
        for s in list(self.sessions.values()):
            if s.packets != s.last_packets:
                s.last_packets = s.packets
                s.last_active = now
            elif now - s.last_active >= idle:
                self._close(s, CloseReason.IDLE, notify={s.a_key, s.b_key})

    def _drop_registration(self, reg: _Registration, pending_answer: Status) -> None:
        """Forget a peer: its sessions end (the other end is told, a requester
        still waiting gets ``pending_answer``)."""
        del self._regs[reg.key]
        # keep its keys and, above all, its replay window: a REGISTER captured
        # in the last minutes must not register it again from elsewhere
        self._cache_keys(reg.key, reg.ks)
        for sid in list(reg.sessions):
            s = self._find(sid)
            if s is not None:
                if sid in self._pending:
                    self._answer_waiters(s, pending_answer)
                self._close(s, CloseReason.PEER_GONE, notify={s.other(reg.key)})

    def _find(self, sid: bytes) -> _Session | None:
        """An established or pending session."""
        return self.sessions.get(sid) or self._pending.get(sid)

    def policy_changed(self) -> None:
        """Drop registrations and sessions of keys the policy no longer allows.

        Called by the shell after a policy refresh."""
        for reg in [r for r in self._regs.values() if not self.policy.allows(r.key)]:
            log.info("peer %s no longer allowed", PublicKey(reg.key).short())
            self._drop_registration(reg, Status.AUTH_FAILED)

    def shutdown(self) -> None:
        """Tell every session and registration that the relay is going away."""
        self._shutting_down = True
        for s in list(self._pending.values()):
            self._answer_waiters(s, Status.ERROR)
        for s in list(self.sessions.values()) + list(self._pending.values()):
            self._close(s, CloseReason.SHUTDOWN, notify={s.a_key, s.b_key})
        for reg in self._regs.values():
            self._send(Error(ErrorCode.SHUTTING_DOWN, 0, "relay shutting down"), reg.ks, reg.addr)

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out = self._out
        self._out = []
        return out

    # ------------------------------------------------------------ introspection

    def load_pct(self) -> int:
        return min(
            100, (len(self.sessions) + len(self._pending)) * 100 // self.config.max_connections
        )

    def capabilities(self) -> int:
        return int(Capability.UDP_RELAY | Capability.DISCOVERY)

    def node_info(self) -> RelayNodeInfo | None:
        if not self.announce_endpoints:
            return None
        return RelayNodeInfo(
            key=self.identity.public,
            endpoints=self.announce_endpoints,
            region=self.region,
            capabilities=self.capabilities(),
            load_pct=self.load_pct(),
            max_sessions=self.config.max_connections,
        )

    def announcement(self) -> bytes | None:
        """Our signed announcement, re-signed only when it changed or aged.

        Signing costs an Ed25519 operation; queries can come 20 a second per key.
        """
        info = self.node_info()
        if info is None:
            return None
        wall = self._wall()
        cached = self._announcement
        if cached is not None and cached[0] == info and wall - cached[1] < ANNOUNCEMENT_RESIGN_S:
            return cached[2]
        raw = encode_announcement(info, int(wall * 1000), ANNOUNCEMENT_TTL_S, self.identity)
        self._announcement = (info, wall, raw)
        return raw

    def is_registered(self, key: PublicKey) -> bool:
        return key.raw in self._regs

    def registered_addr(self, key: PublicKey) -> Addr | None:
        reg = self._regs.get(key.raw)
        return reg.addr if reg is not None else None

    def get_stats(self) -> RelayStats:
        st = self.stats
        st.registrations = len(self._regs)
        st.sessions_active = len(self.sessions)
        st.sessions_pending = len(self._pending)
        st.packets_forwarded = self._closed_packets + sum(s.packets for s in self.sessions.values())
        st.bytes_forwarded = self._closed_bytes + sum(s.bytes for s in self.sessions.values())
        return st
