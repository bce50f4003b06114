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
from collections.abc import Callable, Iterable
from typing import Any

from wgrelay.client.events import (
    CreditReported,
    DiscoveryAnswered,
    LinkRegistered,
    LinkRejected,
    Place,
    PortNotLatched,
    PunchTold,
    RttMeasured,
    SessionEnded,
    SessionEstablished,
    SessionFailed,
)
from wgrelay.client.link_config import (
    MAX_CLOCK_CORRECTION_S,
    LinkConfig,
    LinkState,
    Role,
)
from wgrelay.client.link_core import LinkCore
from wgrelay.client.receipts import ReceiptSigner
from wgrelay.errors import RemoteProtocolError, StaleTimestamp
from wgrelay.keys import PublicKey
from wgrelay.proto.announce import decode_announcement
from wgrelay.proto.constants import (
    PUNCH_ENDPOINTS,
    QUERY_FLAG_WANT_RELAYS,
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
    check_skew,
    open_control,
    parse_control_header,
)
from wgrelay.proto.location import decode_location
from wgrelay.proto.messages import (
    Body,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    Ping,
    Pong,
    Punch,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionOffer,
)
from wgrelay.proto.receipts import CreditQuery, CreditReport, ReceiptBody, ReceiptRequest

log = logging.getLogger(__name__)

__all__ = ["LinkConfig", "LinkState", "RelayLink", "Role"]


class RelayLink(LinkCore):
    receipts: ReceiptSigner | None = None
    """Signs what relays ask us to acknowledge (client/receipts.py); None:
    requests go unanswered (a probe, a tool)."""

    def _receipts_end(self, sids: Iterable[bytes], now: float) -> None:
        """Sessions we no longer hold here, whoever ended them: what we vouch
        for them stops growing now (WireGuard's counters go on counting the
        peer's traffic on any path, direct or another relay's)."""
        if self.receipts is not None:
            for sid in sids:
                self.receipts.session_closed(self.relay_key, sid, now)

    def close_session(
        self, peer: PublicKey, now: float, reason: CloseReason = CloseReason.NORMAL
    ) -> None:
        sid = self.session_of.get(peer)
        super().close_session(peer, now, reason)
        if sid is not None:
            self._receipts_end((sid,), now)

    def _forgotten(self, now: float, why: str) -> None:
        sids = list(self.sessions)
        super()._forgotten(now, why)
        self._receipts_end(sids, now)

    def _lose(self, now: float, reason: str) -> None:
        sids = list(self.sessions)
        super()._lose(now, reason)
        self._receipts_end(sids, now)

    def _handler_table(self) -> dict[type[Body], Callable[[Any, float], None]]:
        return {
            Registered: self._on_registered,
            HeartbeatAck: self._on_heartbeat_ack,
            ConnectionResponse: self._on_connection_response,
            SessionOffer: self._on_session_offer,
            SessionClose: self._on_session_close,
            Punch: self._on_punch,
            Pong: self._on_pong,
            DiscoveryResponse: self._on_discovery_response,
            Error: self._on_error,
            ReceiptRequest: self._on_receipt_request,
            CreditReport: self._on_credit_report,
        }

    def connect(self, now: float) -> None:
        if self.state in (LinkState.REGISTERING, LinkState.REGISTERED):
            return
        self.state = LinkState.REGISTERING
        self.last_heard = now
        self._register(now)

    def ping(self, now: float) -> int:
        echo = int.from_bytes(self._rng(8), "big")
        self._start(Ping(echo), echo, now)
        return echo

    def ping_datagram(self, now: float) -> bytes:
        """A PING to send by another way than this link's own datagrams (the
        fallback's UDP probe while the link runs over a stream). Not a
        tracked request: its answer arriving over UDP is all the fallback
        needs, and as a request it was retransmitted over the stream and its
        PONG timed from the UDP send (RTT samples of 0.5 s and more)."""
        self._send(Ping(int.from_bytes(self._rng(8), "big")), now)
        return self._out.pop()

    def carrier_changed(self, now: float) -> None:
        """What carries this link changed (UDP <-> a stream): everything
        outstanding goes again now, and a registered link re-announces itself
        from its new address with a heartbeat."""
        for req in self._requests.values():
            req.next_send = min(req.next_send, now)
        if self.state == LinkState.REGISTERED:
            self._next_heartbeat = now
        self.handle_timer(now)

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

    def credit_query(self, member: PublicKey, now: float) -> int:
        """Ask the relay for ``member``'s credit balance (CreditReported)."""
        qid = self._new_id()
        self._start(CreditQuery(qid, member), qid, now)
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
        if self.state == LinkState.REGISTERED and isinstance(sent[0], Heartbeat):
            # registered, and the relay asks us to prove the address our
            # heartbeat came from: our NAT gave us a new mapping. WireGuard's
            # socket has most likely a new one too, which no session port is
            # latched to: say so now rather than after WireGuard's silence
            for peer, port in self.session_port.items():
                if port and peer in self.session_of:
                    self._events.append(PortNotLatched(peer))
        self._send(sent[0], now)

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
                    self.request_session(peer, now, self.via.get(peer))

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
            self._bind(peer, body.session_id, incoming=False, port=body.port)
        elif body.status == Status.TARGET_UNREACHABLE and now < self._rejoin_until:
            self._retry_at[peer] = now + self.config.rejoin_retry_s  # it may be on its way
        else:
            self.wanted.discard(peer)
            self._events.append(SessionFailed(peer, body.status))

    def _bind(self, peer: PublicKey, sid: bytes, incoming: bool, port: int) -> None:
        old = self.session_of.get(peer)
        if old == sid:
            return
        self.session_port[peer] = port
        if old is not None:
            self.sessions.pop(old, None)
        previous = self.sessions.get(sid)
        if previous is not None and previous != peer:
            # a confused relay reused the id: the other peer lost its session
            del self.session_of[previous]
            self.session_port.pop(previous, None)
            self._events.append(SessionEnded(previous, sid, CloseReason.REPLACED))
        self.sessions[sid] = peer
        self.session_of[peer] = sid
        self._events.append(SessionEstablished(peer, sid, incoming, port))

    def _on_session_offer(self, body: SessionOffer, now: float) -> None:
        accept = self._accept_offer(body.initiator)
        self._send(SessionAnswer(body.session_id, accept), now)
        if accept:
            self._bind(body.initiator, body.session_id, incoming=True, port=body.port)

    def _on_session_close(self, body: SessionClose, now: float) -> None:
        peer = self.sessions.pop(body.session_id, None)
        if peer is None:
            return
        if self.session_of.get(peer) == body.session_id:
            del self.session_of[peer]
            self.session_port.pop(peer, None)
        self._receipts_end((body.session_id,), now)
        self._events.append(SessionEnded(peer, body.session_id, body.reason))

    def _on_punch(self, body: Punch, now: float) -> None:
        peer = self.sessions.get(body.session_id)
        if peer is None or len(body.endpoints) != PUNCH_ENDPOINTS:
            # handled, and nothing to do (a session just closed, like a late
            # PONG): a message is either dropped by reason or handled, not both
            return
        mine, theirs = body.endpoints
        told = PunchTold(peer, body.nonce, body.go, mine, theirs, body.mine, body.peer)
        self._events.append(told)

    def _private_session(self, session_id: bytes) -> bool:
        """A private path's session (link_private.py)."""
        return False

    def _on_receipt_request(self, body: ReceiptRequest, now: float) -> None:
        signer = self.receipts
        if signer is not None and self._private_session(body.session_id):
            # never receipted (relay/credits.py does not ask): a receipt
            # names us and the session id and spreads to every relay, the
            # other relay of the path too, which holds that id for our peer
            signer.refused["private"] += 1
            return
        r = signer.answer(self.relay_key, body, int(self._wall(now) * 1000)) if signer else None
        if r is not None:  # (else handled: the signer counts why it signed nothing)
            self._send(ReceiptBody(r), now)

    def _on_credit_report(self, body: CreditReport, now: float) -> None:
        if self._finish(MsgType.CREDIT_QUERY, body.query_id) is not None:
            self._events.append(CreditReported(body))

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
        places = self._places(body, req.peer, int(self._wall(now) * 1000))
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

    def _places(
        self, body: DiscoveryResponse, peer: PublicKey | None, wall_ms: int
    ) -> tuple[Place, ...]:
        """Where the peer accepts sessions, each record checked: signed by
        the relay it names, for the peer we asked about, and current (a
        relay could otherwise hand out a record its home let lapse)."""
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
            if rec.expires_ms() <= wall_ms:
                self._drop("location_expired")
                continue
            if rec.issued_ms > wall_ms + MAX_CLOCK_SKEW_S * 1000:
                self._drop("location_future")
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
        elif code == ErrorCode.PORT_NOT_LATCHED:
            for peer, port in self.session_port.items():
                if port == body.value and peer in self.session_of:
                    self._events.append(PortNotLatched(peer))
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
