"""The machinery of one relay link: state, sealing and sending, requests and
their retransmission, timers, the carrier watch (link.py has the theory of
operation and the message handlers)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from wgrelay.client.carrier import CarrierVerdict, CarrierWatch
from wgrelay.client.events import (
    LinkEvent,
    LinkLost,
    PingTimedOut,
    QueryFailed,
    SessionEnded,
    SessionFailed,
)
from wgrelay.client.link_config import (
    _ROLE_FLAGS,
    LinkConfig,
    LinkCounters,
    LinkState,
    Request,
    Role,
)
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PrivateKey, PublicKey, relay_x25519_public
from wgrelay.proto.constants import (
    NONCE_LEN,
    REGISTER_FLAG_ACCEPT_INCOMING,
    RTT_UNKNOWN,
    CloseReason,
    MsgType,
    Status,
)
from wgrelay.proto.envelope import (
    ReplayWindow,
    Timestamper,
    derive_client_keys,
    seal_control,
)
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    Heartbeat,
    Ping,
    Punch,
    Register,
    SessionClose,
    SessionHold,
)

log = logging.getLogger(__name__)


class LinkCore:
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
        self._requests: dict[tuple[MsgType, int], Request] = {}
        self._next_id = int.from_bytes(rng(4), "big") & 0x7FFFFFFF
        self._out: list[bytes] = []
        self._events: list[LinkEvent] = []
        self.sessions: dict[bytes, PublicKey] = {}
        """Established sessions by id (the data path looks frames up here)."""
        self.session_of: dict[PublicKey, bytes] = {}
        self.session_port: dict[PublicKey, int] = {}
        """The relay's session port for our side of each peer's session (port
        mode; 0 or absent: framed only), as long as the session lasts."""
        self.wanted: set[PublicKey] = set()
        """Peers we asked sessions for; re-requested after the relay forgets us."""
        self.via: dict[PublicKey, PublicKey] = {}
        """Wanted peers asked for through another relay (multi-hop), and which."""
        self.counters = LinkCounters()
        self._handlers = self._handler_table()

    def _handler_table(self) -> dict[type[Body], Callable[[Any, float], None]]:
        """The handler of each body the relay may send us (RelayLink's)."""
        return {}

    def sync_wall(self, now: float, wall: float) -> None:
        """Follow the wall clock (NTP steps) without reading it ourselves."""
        self._wall_offset = wall - now

    def _wall(self, now: float) -> float:
        """Our wall clock, corrected to the relay's if it told us we are off."""
        return now + self._wall_offset + self.clock_offset_s

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

    def request_session(self, peer: PublicKey, now: float, via: PublicKey | None = None) -> int:
        """Ask the relay for a session to ``peer``; answered by an event.
        ``via``: through that relay too (multi-hop: ``peer`` is registered
        there, and we cannot reach it)."""
        self.wanted.add(peer)
        if via is None:
            self.via.pop(peer, None)
        else:
            self.via[peer] = via
        for key, req in list(self._requests.items()):
            if isinstance(req.body, ConnectionRequest) and req.peer == peer:
                if req.body.via == via:
                    return req.body.request_id
                del self._requests[key]  # asked another way now
        rid = self._new_id()
        self._start(ConnectionRequest(rid, peer, via), rid, now, peer=peer)
        return rid

    def close_session(
        self, peer: PublicKey, now: float, reason: CloseReason = CloseReason.NORMAL
    ) -> None:
        """Close our session to ``peer``. NORMAL tells the other end we are done
        with the relay (we went direct); REPLACED that we want a new session."""
        self.wanted.discard(peer)
        self.via.pop(peer, None)
        self._retry_at.pop(peer, None)
        for key in [
            k for k, r in self._requests.items()
            if r.peer == peer and k[0] == MsgType.CONNECTION_REQUEST
        ]:  # fmt: skip
            del self._requests[key]
        sid = self.session_of.pop(peer, None)
        self.session_port.pop(peer, None)
        if sid is not None:
            self.sessions.pop(sid, None)
            self._send(SessionClose(sid, reason), now)

    def hold_session(self, peer: PublicKey, hold_s: int, now: float) -> None:
        """Port mode: ask the relay to deliver nothing to our session port
        for ``hold_s`` seconds (0: resume). Not retransmitted: a lost hold
        costs one direct try, a lost resume ends with the hold's time."""
        sid = self.session_of.get(peer)
        if sid is not None:
            self._send(SessionHold(sid, hold_s), now)

    def punch(self, peer: PublicKey, nonce: int, now: float) -> bool:
        """Port mode: ask the relay to start a coordinated direct try with
        ``peer`` (both sides hear PUNCH with GO). Not retransmitted: a lost
        one is one try not made; the agent tries again after its backoff."""
        sid = self.session_of.get(peer)
        if sid is None:
            return False
        self._send(Punch(sid, nonce), now)
        return True

    def forget_wanted(self, peer: PublicKey) -> None:
        """Stop asking for ``peer`` here (it is carried elsewhere now)."""
        self.wanted.discard(peer)
        self.via.pop(peer, None)
        self._retry_at.pop(peer, None)

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
        self._requests[(body.TYPE, ident)] = Request(
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

    def _drop(self, reason: str) -> None:
        self.counters.drops[reason] = self.counters.drops.get(reason, 0) + 1

    def _finish(self, t: MsgType, ident: int) -> Request | None:
        return self._requests.pop((t, ident), None)

    def _end_all_sessions(self, reason: CloseReason) -> None:
        for sid, peer in list(self.sessions.items()):
            self._events.append(SessionEnded(peer, sid, reason))
        self.sessions.clear()
        self.session_of.clear()
        self.session_port.clear()

    def _forgotten(self, now: float, why: str) -> None:
        """The relay lost our registration: its sessions are gone too."""
        log.info("relay %s: %s; registering again", self.relay_key.short(), why)
        self._end_all_sessions(CloseReason.PEER_GONE)
        self.state = LinkState.REGISTERING
        self._register(now)

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
                    self.request_session(peer, now, self.via.get(peer))
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

    def _expire(self, t: MsgType, req: Request) -> None:
        if t == MsgType.CONNECTION_REQUEST and req.peer is not None:
            self.wanted.discard(req.peer)
            self._events.append(SessionFailed(req.peer, Status.ERROR))
        elif t == MsgType.DISCOVERY_QUERY:
            self._events.append(QueryFailed(req.body.query_id, req.peer))  # type: ignore[attr-defined]
        elif t == MsgType.PING:
            self._events.append(PingTimedOut(req.body.echo_id))  # type: ignore[attr-defined]
        # a heartbeat that times out is covered by the lost_after_s rule
