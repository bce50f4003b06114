"""The relay node's protocol core (the seed's RelayService / RelayNode), sans-I/O.

Theory of operation
-------------------
The core never touches a socket or a clock. The shell (server.py) feeds it
every received datagram with ``receive(data, addr, now)``, calls
``handle_timer(now)`` when ``next_timer()`` falls due, and sends whatever
``datagrams_to_send()`` returns. Data frames take a shorter road:
``forward_data(data, addr, now)`` returns where the frame goes (or None), and
the shell sends the same bytes there. ``now`` is monotonic; the wall clock
(timestamps, announcements) is derived from it with an offset the shell keeps
in step (``sync_wall``).

Control messages first pass ``Admission`` (admission.py: budgets, keys,
cookies, decryption, policy, clock and replay checks), then the handler for
their type runs. Registrations and sessions, and every quota on them, live in
``SessionTable`` (sessions.py).

Peers register (REGISTER, then HEARTBEAT every ``heartbeat_interval_s``); a
registration that misses heartbeats for ``registration_ttl_s`` expires. Peer A
asks for a session to B (CONNECTION_REQUEST); the relay checks that both keys are
allowed, the quotas, and that B is registered and accepts incoming sessions,
then offers the session to B (SESSION_OFFER, retransmitted until B answers or
``offer_timeout_s``); B's answer decides the CONNECTION_RESPONSE to A. There is at
most one session per pair of peers: a second request for the same pair (a
retransmit, or B asking for A at the same time) joins the existing one.

**Return routability.** The relay sends offers and data only to addresses
whose owner has proven it receives there: a peer is registered at an address,
or moved to a new one (NAT rebinding), only by an authenticated REGISTER or
HEARTBEAT that carries a cookie the relay sent to that very address and key
(the first attempt is answered with a 26-byte cookie reply, and the peer's link
repeats it with the cookie), and a move also needs a message newer than every
one accepted from that key before, so a delayed or replayed heartbeat cannot
move anything. Addresses the relay must never send to (its own, unspecified,
multicast, broadcast, port 0) are refused, and a session never joins an address
to itself. So the relay cannot be aimed at a third party, nor at itself.

Data frames are forwarded only between the two registered addresses of an
established session, only if they can be WireGuard messages, and within the
session's bandwidth budget (bytes plus a per-packet charge); a frame with a
known session id from any other address is counted as spoofed and dropped.

Each start of the relay has a random ``epoch``, sent in REGISTERED and every
HEARTBEAT_ACK: a peer that sees it change knows the relay restarted and forgot
its sessions, even if a replayed REGISTER re-created its registration.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from wgrelay.endpoint import endpoint_str
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo
from wgrelay.proto.constants import (
    CONTROL_TYPES,
    DATA_HEADER_LEN,
    MIN_WIREGUARD_PACKET,
    QUERY_FLAG_WANT_RELAYS,
    REGISTER_FLAG_ACCEPT_INCOMING,
    RELAY_TO_RELAY,
    RTT_UNKNOWN,
    SESSION_ID_LEN,
    Capability,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.cookie import decode_cookie_reply
from wgrelay.proto.data import MAX_DATA_FRAME
from wgrelay.proto.envelope import FLAG_FROM_SERVER, parse_control_header
from wgrelay.proto.federation import Gossip, ProbeRequest
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
from wgrelay.relay.addresses import OwnAddresses
from wgrelay.relay.admission import Addr, Admission, Inbound, KeyState
from wgrelay.relay.announcer import Announcer
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.federation import Federation, FederationConfig
from wgrelay.relay.locations import Found
from wgrelay.relay.sessions import (
    Listing,
    Refusal,
    Registration,
    Session,
    SessionTable,
    listing_of,
    pair_of,
)
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

MIN_DATA_FRAME = DATA_HEADER_LEN + MIN_WIREGUARD_PACKET
ERROR_LOG_INTERVAL_S = 60.0

_REFUSAL_DETAIL = {
    Refusal.RELAY_FULL: "relay is full",
    Refusal.SOURCE_FULL: "too many registrations from your address",
}

__all__ = ["Addr", "RelayCore"]


class RelayCore:
    def __init__(
        self,
        identity: RelayIdentity,
        config: RelayConfig,
        policy: AccessPolicy,
        now: float,
        wall: float,
        rng: Callable[[int], bytes] = os.urandom,
        region: str = "",
        announce_endpoints: tuple[tuple[str, int], ...] = (),
        federation: FederationConfig | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self.policy = policy
        self._rng = rng
        self.region = region
        self.announce_endpoints = announce_endpoints
        self._wall_offset = wall - now
        self.epoch = int.from_bytes(rng(8), "big")
        """Random per start; peers compare it to notice a restart."""
        self.stats = RelayStats()
        self._drops = self.stats.drops
        self._out: list[tuple[bytes, Addr]] = []
        self._admission = Admission(
            identity.x25519_public,
            identity.x25519_private,
            config,
            policy,
            self.stats,
            self._out,
            now,
            self._wall_at,
            rng,
        )
        self.table = SessionTable(config)
        self.federation = Federation(
            identity, federation or FederationConfig(), self._out, now, self._wall_at, rng
        )
        self.sessions = self.table.sessions
        """Established sessions by id: the data path's only lookup."""
        self._own = OwnAddresses(announce_endpoints)
        self._next_housekeeping = now + config.housekeeping_interval_s
        self._closed_packets = 0
        self._closed_bytes = 0
        self._shutting_down = False
        self._announcer = Announcer(identity)
        self._error_logged = -1e9
        self._handlers: dict[MsgType, Callable[[Inbound, Any], None]] = {
            MsgType.REGISTER: self._handle_register,
            MsgType.HEARTBEAT: self._handle_heartbeat,
            MsgType.CONNECTION_REQUEST: self._handle_connection_request,
            MsgType.SESSION_ANSWER: self._handle_session_answer,
            MsgType.SESSION_CLOSE: self._handle_session_close,
            MsgType.PING: self._handle_ping,
            MsgType.DISCOVERY_QUERY: self._handle_discovery_query,
            **dict.fromkeys(RELAY_TO_RELAY, self._handle_relay_message),
        }

    # ------------------------------------------------------------ clocks and addresses

    def _wall_at(self, now: float) -> float:
        return now + self._wall_offset

    def sync_wall(self, now: float, wall: float) -> None:
        """Follow the wall clock (NTP steps) without ever reading it ourselves."""
        self._wall_offset = wall - now

    def set_own_addresses(self, addresses: Iterable[Addr]) -> None:
        """The addresses the relay listens on: never a peer's address."""
        self._own.add(addresses)

    def usable_peer_address(self, addr: Addr) -> bool:
        """An address the relay may register a peer at (and so send to)."""
        return self._own.usable_peer_address(addr)

    # ------------------------------------------------------------ inputs

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Any datagram. Data frames are forwarded through the output queue."""
        if data and data[0] == MsgType.DATA:
            dst = self.forward_data(data, addr, now)
            if dst is not None:
                self._out.append((data, dst))
            return
        self.receive_control(data, addr, now)

    def _receive_as_client(self, data: bytes, now: float) -> bool:
        """Answers to what we asked other relays, and their cookie replies.

        True if ``data`` was one (handled or dropped by the federation)."""
        if len(data) < 3 or not (
            data[0] == MsgType.COOKIE_REPLY
            or (data[2] & FLAG_FROM_SERVER and data[0] in CONTROL_TYPES)
        ):
            return False
        self.stats.control_received += 1
        if data[0] == MsgType.COOKIE_REPLY:
            try:
                reply = decode_cookie_reply(data)
            except RemoteProtocolError as e:
                self._drops[e.reason] += 1
                return True
            if not self.federation.receive_cookie(reply, now):
                self._drops[DropReason.UNEXPECTED] += 1
            return True
        try:
            hdr = parse_control_header(data)
        except RemoteProtocolError as e:
            self._drops[e.reason] += 1
            return True
        if not self.federation.receive_answer(hdr, data, now):
            self._drops[DropReason.UNEXPECTED] += 1
        return True

    def forward_data(self, data: bytes, addr: Addr, now: float) -> Addr | None:
        """The data path: where to send this frame, or None (dropped and counted)."""
        n = len(data)
        s = self.sessions.get(data[2:DATA_HEADER_LEN])
        if s is None:
            self._drops[
                DropReason.TRUNCATED
                if n < DATA_HEADER_LEN
                else DropReason.SESSION_NOT_READY
                if data[2:DATA_HEADER_LEN] in self.table.pending
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
        # WireGuard messages are types 1-4 and at least a keepalive long;
        # anything else is not what a relay is for (and floods of tiny frames
        # would cost the most CPU per byte)
        if n < MIN_DATA_FRAME or not 1 <= data[DATA_HEADER_LEN] <= 4:
            self._drops[DropReason.NOT_WIREGUARD] += 1
            return None
        if bucket is not None and not bucket.take(n + self.config.packet_overhead_bytes, now):
            self._drops[DropReason.BANDWIDTH] += 1
            return None
        s.packets += 1
        s.bytes += n
        return dst

    def receive_control(self, data: bytes, addr: Addr, now: float) -> None:
        inb: Inbound | None = None
        try:
            if self._receive_as_client(data, now):
                return
            inb = self._admission.admit(data, addr, now, self._registered, self._relay_endpoints)
            if inb is None:
                return
            handler = self._handlers.get(inb.msg_type)
            if handler is None:  # a server-to-client type sent to us
                self._drops[DropReason.UNEXPECTED] += 1
                return
            handler(inb, inb.body)
        except Exception:  # a bug must cost one message, never the relay
            self._internal_error(now, "control message from %s", addr)
            if inb is not None and not inb.dropped:
                inb.dropped = True
                # the sender is authentic: tell it, so it does not wait for
                # an answer that will never come (at most once a second)
                with contextlib.suppress(Exception):
                    self._admission.notice(inb, Error(ErrorCode.INTERNAL, inb.msg_type))

    def _internal_error(self, now: float, what: str, *args: object) -> None:
        self._drops[DropReason.INTERNAL_ERROR] += 1
        if now - self._error_logged >= ERROR_LOG_INTERVAL_S:
            self._error_logged = now
            log.exception("internal error handling " + what + " (dropped)", *args)

    def _relay_endpoints(self, x25519: bytes) -> tuple[tuple[str, int], ...] | None:
        m = self.federation.directory.by_x25519(x25519)
        return m.announcement.info.endpoints if m is not None else None

    def _registered(self, key: bytes) -> tuple[KeyState, Addr] | None:
        reg = self.table.regs.get(key)
        return (reg.ks, reg.addr) if reg is not None else None

    # ------------------------------------------------------------ sending

    def _send(self, body: Body, reg: Registration, now: float) -> None:
        """To a registered (so proven) address."""
        self._out.append((self._admission.seal(body, reg.ks.keys, now), reg.addr))
        self.stats.control_sent += 1

    def _reply(self, inb: Inbound, body: Body) -> None:
        self._admission.reply(inb, body)

    # ------------------------------------------------------------ registration

    def _bind_check(self, inb: Inbound, reg: Registration | None) -> bool:
        """May ``inb`` bind its key to its source address (new or moved)?"""
        if not inb.proven:
            self._admission.challenge(inb)
            return False
        if not self.usable_peer_address(inb.addr):
            self._drop(inb, DropReason.BAD_ADDRESS)
            return False
        if reg is not None and not inb.newer:
            # a delayed or replayed message must not move the peer back; an
            # honest peer that restarted after its clock ran ahead is told the
            # figure to continue above (else it could not move until its old
            # registration expired)
            self._drop(inb, DropReason.STALE_REBIND)
            newest = inb.ks.replay.newest
            self._admission.notice(
                inb, Error(ErrorCode.REPLAYED, inb.msg_type, "not newer than before", newest)
            )
            return False
        return True

    def _drop(self, inb: Inbound, reason: DropReason) -> None:
        """Count a handled message as dropped, under this one reason."""
        self._drops[reason] += 1
        inb.dropped = True

    def _handle_register(self, inb: Inbound, body: Register) -> None:
        now = inb.now
        reg = self.table.regs.get(inb.key)
        if reg is None or reg.addr != inb.addr:
            if not self._bind_check(inb, reg):
                return
            if reg is None:
                refusal, victim = self.table.admit_registration(inb.addr)
                if refusal is not None:
                    self.stats.quota_hits[refusal.value] += 1
                    detail = _REFUSAL_DETAIL.get(refusal, "limit")
                    self._reply(inb, Error(ErrorCode.RESOURCE_LIMIT, body.TYPE, detail))
                    return
                if victim is not None:
                    self._evict(victim, now)
                ks = self._admission.forget_key(inb.key) or inb.ks
                reg = self.table.add(inb.key, inb.addr, ks, 0.0)
                log.info(
                    "peer %s registered from %s", PublicKey(inb.key).short(), endpoint_str(inb.addr)
                )
            else:
                self._move(reg, inb.addr, now)
        reg.accept_incoming = bool(body.flags & REGISTER_FLAG_ACCEPT_INCOMING)
        self._list(reg, listing_of(body.flags), body.rtt_ms, now)
        reg.expires = now + self.config.registration_ttl_s
        self._reply(
            inb,
            Registered(
                ttl_s=self.config.registration_ttl_s,
                heartbeat_s=self.config.heartbeat_interval_s,
                epoch=self.epoch,
                observed=(inb.addr[0], inb.addr[1]),
            ),
        )

    def _list(self, reg: Registration, listing: Listing, rtt_ms: int, now: float) -> None:
        """Publish (or withdraw) the registration's location record. A new
        record on a change of role: a standby promoted to home signs one
        newer than the dead home's, so lookups now lead here first."""
        if rtt_ms != RTT_UNKNOWN:
            reg.rtt_ms = rtt_ms
        if listing == reg.listing:
            self.federation.locations.reported_rtt(PublicKey(reg.key), reg.rtt_ms, now)
            return
        reg.listing = listing
        if listing is Listing.UNLISTED:
            self.federation.peer_gone(PublicKey(reg.key))
        else:
            standby = listing is Listing.STANDBY
            self.federation.peer_registered(PublicKey(reg.key), now, standby, reg.rtt_ms)

    def _handle_heartbeat(self, inb: Inbound, body: Heartbeat) -> None:
        reg = self.table.regs.get(inb.key)
        if reg is None:
            self._reply(inb, HeartbeatAck(body.seq, HeartbeatStatus.NOT_REGISTERED, self.epoch))
            return
        if reg.addr != inb.addr:
            if not self._bind_check(inb, reg):
                return
            self._move(reg, inb.addr, inb.now)
        reg.expires = inb.now + self.config.registration_ttl_s
        if body.rtt_ms != RTT_UNKNOWN and reg.listing is not None:
            reg.rtt_ms = body.rtt_ms
            self.federation.locations.reported_rtt(PublicKey(reg.key), body.rtt_ms, inb.now)
        self._reply(inb, HeartbeatAck(body.seq, HeartbeatStatus.OK, self.epoch))

    def _move(self, reg: Registration, addr: Addr, now: float) -> None:
        """The peer's NAT gave it a new (proven) address: move it and its sessions."""
        log.info(
            "peer %s moved from %s to %s",
            PublicKey(reg.key).short(),
            endpoint_str(reg.addr),
            endpoint_str(addr),
        )
        for s in self.table.move(reg, addr):
            self._close(s, CloseReason.PEER_GONE, {s.a_key, s.b_key}, now)

    def _evict(self, victim: Registration, now: float) -> None:
        log.info(
            "registration table full: evicting idle peer %s (%s)",
            PublicKey(victim.key).short(),
            victim.source,
        )
        self.stats.quota_hits["evicted"] += 1
        notice = Error(ErrorCode.RESOURCE_LIMIT, MsgType.REGISTER, "evicted: relay full")
        self._send(notice, victim, now)
        self._drop_registration(victim, Status.TARGET_UNREACHABLE, now)

    # ------------------------------------------------------------ sessions

    def _handle_connection_request(self, inb: Inbound, body: ConnectionRequest) -> None:
        now = inb.now
        rid = body.request_id
        key = inb.key
        target = body.target.raw

        def respond(status: Status, sid: bytes = bytes(SESSION_ID_LEN)) -> None:
            self._reply(inb, self._response(rid, status, sid))

        reg = self.table.regs.get(key)
        if reg is None:
            self._reply(inb, Error(ErrorCode.NOT_REGISTERED, body.TYPE, "register first"))
            return
        if self._shutting_down or target == key:
            respond(Status.ERROR)
            return
        if not self.policy.allows(target):
            respond(Status.AUTH_FAILED)
            return
        s = self.table.by_pair.get(pair_of(key, target))
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
        treg = self.table.regs.get(target)
        if treg is None or not treg.accept_incoming:
            respond(Status.TARGET_UNREACHABLE)
            return
        if treg.addr == reg.addr:
            # both behind one address: the relay cannot tell their packets apart
            self._drop(inb, DropReason.BAD_ADDRESS)
            respond(Status.ERROR)
            return
        refusal = self.table.admit_session(reg, treg)
        if refusal is not None:
            self.stats.quota_hits[refusal.value] += 1
            respond(Status.RESOURCE_LIMIT)
            return
        s = self.table.open(self._new_session_id(), reg, treg, now)
        s.waiters[key] = rid
        self._send_offer(s, treg, now)

    def _send_offer(self, s: Session, treg: Registration, now: float) -> None:
        s.offer_next = now + self.config.offer_retransmit_s
        self._send(SessionOffer(s.sid, PublicKey(s.a_key)), treg, now)

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
            if self.table.new_id_free(sid):
                return sid

    def _establish(self, s: Session, now: float) -> None:
        self.table.establish(s, now)
        self.stats.sessions_opened += 1
        log.info(
            "session %s open: %s <-> %s",
            s.sid.hex(),
            PublicKey(s.a_key).short(),
            PublicKey(s.b_key).short(),
        )
        self._answer_waiters(s, Status.SUCCESS, now)

    def _answer_waiters(self, s: Session, status: Status, now: float) -> None:
        sid = s.sid if status == Status.SUCCESS else bytes(SESSION_ID_LEN)
        for wkey, rid in s.waiters.items():
            wreg = self.table.regs.get(wkey)
            if wreg is not None:
                self._send(self._response(rid, status, sid), wreg, now)
        s.waiters.clear()

    def _handle_session_answer(self, inb: Inbound, body: SessionAnswer) -> None:
        s = self.table.pending.get(body.session_id)
        if s is None:
            est = self.sessions.get(body.session_id)
            if est is not None and inb.key in (est.a_key, est.b_key):
                return  # a retransmitted answer; already done
            self._drop(inb, DropReason.UNKNOWN_SESSION)
            if body.accept:  # accepted too late: make sure the peer drops it
                self._reply(inb, SessionClose(body.session_id, CloseReason.NORMAL))
            return
        if inb.key != s.b_key:
            self._drops[DropReason.UNEXPECTED] += 1
            return
        if body.accept:
            self._establish(s, inb.now)
        else:
            log.info("session %s rejected by %s", s.sid.hex(), PublicKey(inb.key).short())
            self._answer_waiters(s, Status.REJECTED, inb.now)
            self._remove(s)

    def _handle_session_close(self, inb: Inbound, body: SessionClose) -> None:
        s = self.table.find(body.session_id)
        if s is None or inb.key not in (s.a_key, s.b_key):
            self._drops[DropReason.UNKNOWN_SESSION] += 1
            return
        if s.sid in self.table.pending:
            self._answer_waiters(s, Status.REJECTED, inb.now)
        self._close(s, body.reason, {s.other(inb.key)}, inb.now)

    def _remove(self, s: Session) -> None:
        if self.table.remove(s):
            self.stats.sessions_closed += 1
            self._closed_packets += s.packets
            self._closed_bytes += s.bytes

    def _close(self, s: Session, reason: CloseReason, notify: set[bytes], now: float) -> None:
        log.info("session %s closed (%s)", s.sid.hex(), reason.name.lower())
        self._remove(s)
        for k in notify:
            reg = self.table.regs.get(k)
            if reg is not None:
                self._send(SessionClose(s.sid, reason), reg, now)

    # ------------------------------------------------------------ ping and discovery

    def _handle_ping(self, inb: Inbound, body: Ping) -> None:
        self._reply(inb, Pong(body.echo_id, self.load_pct()))

    def _handle_discovery_query(self, inb: Inbound, body: DiscoveryQuery) -> None:
        anns: tuple[bytes, ...] = ()
        more = False
        if body.flags & QUERY_FLAG_WANT_RELAYS and body.max_results > 0:
            self._refresh_own(inb.now)
            anns, more = self.federation.live_announcements(
                body.page, body.max_results, body.region, body.required_caps
            )
        peer = body.locate if inb.member else None
        if peer is None:
            self._reply(inb, DiscoveryResponse(body.query_id, anns, more=more))
            return

        def answer(found: Found) -> None:
            self._reply(inb, self._locate_answer(body, anns, more, peer, found, inb.addr))

        fed = self.federation
        reg = self.table.regs.get(peer.raw)
        if reg is not None and reg.accept_incoming:
            # registered here: the asker meets it here, no detour through the
            # record holders; our record first, then any other place we know
            answer(fed.local_location(peer, inb.now))
            return
        if reg is not None or fed.directory.by_x25519(inb.key) is not None:
            # what we know ourselves; a relay asking is never sent on (no loops)
            answer(fed.local_location(peer, inb.now))
            return
        if self._deferred_needs_proof(inb):
            return
        found = fed.locate(peer, inb.now, answer)
        if found:
            answer(found)

    def _deferred_needs_proof(self, inb: Inbound) -> bool:
        """A request answered later (a lookup, a probe on another's behalf)
        must come from a proven address: a cookie cannot replace an answer
        that leaves long after its request, so the sender proves it now."""
        if inb.proven:
            return False
        self._admission.challenge(inb)
        inb.dropped = True
        return True

    def _locate_answer(
        self,
        body: DiscoveryQuery,
        anns: tuple[bytes, ...],
        more: bool,
        peer: PublicKey,
        found: Found,
        addr: Addr,
    ) -> DiscoveryResponse:
        """The places ``peer`` accepts sessions, best first: signed records
        only, except "here" for a relay that announces no record."""
        signed = [f for f in found if f.record is not None][:2]
        if not signed:
            reg = self.table.regs.get(peer.raw)
            here = None
            if reg is not None and reg.accept_incoming:  # registered here, not announced
                here = PeerLocation(self.identity.public, self._location_endpoint(addr))
            return DiscoveryResponse(body.query_id, anns, here, None, more)
        first = signed[0]
        alt = signed[1] if len(signed) > 1 else None
        return DiscoveryResponse(
            body.query_id,
            anns,
            PeerLocation(first.home, first.endpoint),
            first.record,
            more,
            alternate=PeerLocation(alt.home, alt.endpoint) if alt is not None else None,
            alternate_record=alt.record if alt is not None else None,
        )

    def _handle_relay_message(self, inb: Inbound, body: Body) -> None:
        fed = self.federation
        m = fed.directory.by_x25519(inb.key)
        if m is None and isinstance(body, Gossip):  # a relay may introduce itself
            fed.introduced_by(inb.key, body.announcements, inb.now)
            m = fed.directory.by_x25519(inb.key)
        if m is None:
            self._drop(inb, DropReason.UNEXPECTED)  # only relays we know speak here
            return
        if isinstance(body, ProbeRequest) and self._deferred_needs_proof(inb):
            return
        fed.on_request(m.key, body, lambda reply: self._reply(inb, reply), inb.now)

    def _refresh_own(self, now: float) -> None:
        raw = self.announcement(now)
        if raw is not None:
            self.federation.set_own(raw)

    def add_bootstrap(self, key: PublicKey, endpoint: tuple[str, int]) -> None:
        """Another relay to contact first (``start-relay --bootstrap``)."""
        self.federation.add_bootstrap(key, endpoint)

    def _location_endpoint(self, addr: Addr) -> tuple[str, int]:
        if self.announce_endpoints:
            return self.announce_endpoints[0]
        # Not configured: the querier reached us, it knows where we are; say so
        # with the unspecified address of its family.
        return ("::", 0) if len(addr) == 4 else ("0.0.0.0", 0)

    # ------------------------------------------------------------ timers

    def next_timer(self) -> float:
        return min(self._next_housekeeping, self.federation.next_timer())

    def handle_timer(self, now: float) -> None:
        try:
            if now >= self.federation.next_timer():
                self.federation.handle_timer(now, self.announcement)
        except Exception:  # a bug must not stop gossip for good
            self._internal_error(now, "federation timer")
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self.config.housekeeping_interval_s
        try:
            self._housekeeping(now)
        except Exception:  # a bug must not stop expiry for good
            self._internal_error(now, "housekeeping")

    def _housekeeping(self, now: float) -> None:
        table = self.table
        for reg in [r for r in table.regs.values() if r.expires <= now]:
            log.info("peer %s registration expired", PublicKey(reg.key).short())
            self._drop_registration(reg, Status.TARGET_UNREACHABLE, now)
        for s in list(table.pending.values()):
            if now >= s.offer_deadline:
                log.info("session %s: no answer from target", s.sid.hex())
                self._answer_waiters(s, Status.TARGET_UNREACHABLE, now)
                self._close(s, CloseReason.PEER_GONE, {s.b_key}, now)
            elif now >= s.offer_next:
                treg = table.regs.get(s.b_key)
                if treg is not None:
                    self._send_offer(s, treg, now)
        idle = self.config.session_idle_timeout_s
        for s in list(self.sessions.values()):
            if s.packets != s.last_packets:
                s.last_packets = s.packets
                s.last_active = now
            elif now - s.last_active >= idle:
                self._close(s, CloseReason.IDLE, {s.a_key, s.b_key}, now)

    def _drop_registration(self, reg: Registration, pending_answer: Status, now: float) -> None:
        """Forget a peer: its sessions end (the other end is told, a requester
        still waiting gets ``pending_answer``)."""
        for sid in list(reg.sessions):
            s = self.table.find(sid)
            if s is not None:
                if sid in self.table.pending:
                    self._answer_waiters(s, pending_answer, now)
                self._close(s, CloseReason.PEER_GONE, {s.other(reg.key)}, now)
        self.table.remove_registration(reg)
        self._admission.remember_key(reg.key, reg.ks)
        self.federation.peer_gone(PublicKey(reg.key))

    def policy_changed(self, now: float) -> None:
        """Drop registrations and sessions of keys the policy no longer allows.

        Called by the shell after a policy refresh."""
        for reg in [r for r in self.table.regs.values() if not self.policy.allows(r.key)]:
            log.info("peer %s no longer allowed", PublicKey(reg.key).short())
            self._drop_registration(reg, Status.AUTH_FAILED, now)

    def shutdown(self, now: float) -> None:
        """Tell every session and registration that the relay is going away."""
        self._shutting_down = True
        table = self.table
        for s in list(table.pending.values()):
            self._answer_waiters(s, Status.ERROR, now)
        for s in list(self.sessions.values()) + list(table.pending.values()):
            self._close(s, CloseReason.SHUTDOWN, {s.a_key, s.b_key}, now)
        for reg in table.regs.values():
            self._send(Error(ErrorCode.SHUTTING_DOWN, 0, "relay shutting down"), reg, now)

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out = self._out[:]
        self._out.clear()  # the list is shared with Admission: keep the object
        return out

    # ------------------------------------------------------------ introspection

    def load_pct(self) -> int:
        busy = len(self.sessions) + len(self.table.pending)
        return min(100, busy * 100 // self.config.max_connections)

    def capabilities(self) -> int:
        return int(Capability.UDP_RELAY | Capability.DISCOVERY | Capability.GOSSIP)

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

    def announcement(self, now: float) -> bytes | None:
        """Our signed announcement (re-signed only when it changed or aged)."""
        info = self.node_info()
        return self._announcer.sign(info, self._wall_at(now)) if info is not None else None

    def is_registered(self, key: PublicKey) -> bool:
        return key.raw in self.table.regs

    def registered_addr(self, key: PublicKey) -> Addr | None:
        reg = self.table.regs.get(key.raw)
        return reg.addr if reg is not None else None

    def key_cache_size(self) -> int:
        return len(self._admission.key_cache)

    def get_stats(self) -> RelayStats:
        st = self.stats
        st.registrations = len(self.table.regs)
        st.sessions_active = len(self.sessions)
        st.sessions_pending = len(self.table.pending)
        st.packets_forwarded = self._closed_packets + sum(s.packets for s in self.sessions.values())
        st.bytes_forwarded = self._closed_bytes + sum(s.bytes for s in self.sessions.values())
        fed = self.federation
        st.relays_known = len(fed.directory)
        st.relays_live = len(fed.directory.live())
        st.location_records = fed.record_count()
        st.federation = dict(fed.counters)
        return st
