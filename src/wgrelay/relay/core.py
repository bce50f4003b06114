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
from collections.abc import Callable
from typing import Any

from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    CONTROL_TYPES,
    DATA_HEADER_LEN,
    MIN_WIREGUARD_PACKET,
    QUERY_FLAG_WANT_RELAYS,
    RELAY_TO_RELAY,
    ErrorCode,
    MsgType,
)
from wgrelay.proto.cookie import decode_cookie_reply
from wgrelay.proto.data import MAX_DATA_FRAME
from wgrelay.proto.envelope import FLAG_FROM_SERVER, parse_control_header
from wgrelay.proto.federation import Gossip, GossipAck, ProbeRequest
from wgrelay.proto.leg_rtts import LegRttQuery
from wgrelay.proto.messages import (
    Body,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    PeerLocation,
    Ping,
    Pong,
    parse_mapping_probe,
)
from wgrelay.relay.admission import Addr, Inbound
from wgrelay.relay.credits import CreditsCore
from wgrelay.relay.locations import Found
from wgrelay.relay.private_legs import PrivateLegsCore
from wgrelay.relay.sessions import Session
from wgrelay.relay.stats import DropReason

log = logging.getLogger(__name__)

MIN_DATA_FRAME = DATA_HEADER_LEN + MIN_WIREGUARD_PACKET
_MAPPING_PROBE = bytes((MsgType.MAPPING_PROBE,))

log = logging.getLogger(__name__)
__all__ = ["Addr", "RelayCore"]


class RelayCore(CreditsCore, PrivateLegsCore):
    def _handler_table(self) -> dict[MsgType, Callable[[Inbound, Any], None]]:
        return {
            MsgType.REGISTER: self._handle_register,
            MsgType.HEARTBEAT: self._handle_heartbeat,
            MsgType.CONNECTION_REQUEST: self._handle_connection_request,
            MsgType.SESSION_ANSWER: self._handle_session_answer,
            MsgType.SESSION_CLOSE: self._handle_session_close,
            MsgType.SESSION_HOLD: self._handle_session_hold,
            MsgType.PUNCH: self._handle_punch,
            MsgType.PING: self._handle_ping,
            MsgType.DISCOVERY_QUERY: self._handle_discovery_query,
            MsgType.LEG_RTT_QUERY: self._handle_leg_rtt_query,
            **dict.fromkeys(RELAY_TO_RELAY, self._handle_relay_message),
            # multi-hop (legs.py): relay-to-relay, but about sessions
            MsgType.LEG_OPEN: self._handle_leg_open,
            MsgType.LEG_ANSWER: self._handle_leg_answer,
            MsgType.LEG_CLOSE: self._handle_leg_close,
            # private paths (private_legs.py)
            MsgType.CONNECTION_REQUEST_SEALED: self._handle_connection_request_sealed,
            MsgType.LEG_OPEN_SEALED: self._handle_leg_open_sealed,
        }

    def _maybe_ask(self, s: Session, key: bytes, now: float, final: bool) -> None:
        # A private session is never receipted: a receipt names its signer
        # and the session id, and spreads to every relay taking credits,
        # the other relay of the path too, which holds the same id for the
        # peer it must not learn (private_legs.py)
        if s.sid not in self.sealed:
            super()._maybe_ask(s, key, now, final)

    def _private_session(self, sid: bytes) -> bool:
        return sid in self.sealed

    # ------------------------------------------------------------ inputs

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Any datagram. Data frames are forwarded through the output queue."""
        if data and data[0] == MsgType.DATA:
            dst = self.forward_data(data, addr, now)
            if dst is not None:
                self._out.append((data, dst))
            return
        self.receive_control(data, addr, now)

    def _mapping_probe(self, data: bytes, addr: Addr, now: float) -> None:
        """Never answered (nothing to reflect); what it shows goes to both
        sides of the session in a PUNCH without GO."""
        self.stats.control_received += 1
        sid = parse_mapping_probe(data)
        if sid is None:
            self._drops[DropReason.MALFORMED] += 1
            return
        if self.ports is None or not self.ports.probed(sid, addr):
            self._drops[DropReason.MAPPING_PROBE_UNMATCHED] += 1
            return
        self.port_notices(now)

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
        from_a = addr == s.a_addr
        if from_a:
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
        pp = s.ports
        if (
            pp is not None
            and self.ports is not None
            and self.ports.framed_from(pp, from_a, data, now)
        ):
            return None  # the other side is in port mode: it leaves that side's port
        return dst

    def forward_port(
        self, port: int, data: bytes, addr: Addr, now: float
    ) -> tuple[int, Addr] | None:
        """A datagram on session port ``port``: (from port, to) when it goes
        straight on, else None (dropped and counted, or queued for
        ``port_output``; see ports.py)."""
        ports = self.ports
        if ports is None:
            return None
        res = ports.forward(port, data, addr, now, self.config.packet_overhead_bytes)
        if ports.notices or ports.mapped:
            self.port_notices(now)
        return res

    def port_notices(self, now: float) -> None:
        """Tell sides whose WireGuard reaches their port from an unlatched
        source (sealed, to the registered address, rate-limited per side),
        and both sides of sessions whose WireGuard mappings became known."""
        ports = self.ports
        if ports is None:
            return
        if ports.mapped:
            self.tell_mappings(now)
        for sid, key, port in ports.notices:
            reg = self.table.regs.get(key)
            if reg is not None and sid in self.sessions:
                notice = Error(ErrorCode.PORT_NOT_LATCHED, MsgType.DATA, "send a handshake", port)
                self._send(notice, reg, now)
        ports.notices.clear()

    def port_output(self) -> list[tuple[int, bytes | memoryview, Addr]]:
        """Datagrams port mode queued: (from port, data, to); port 0: the main socket."""
        ports = self.ports
        if ports is None or not ports.out:
            return []
        out = ports.out[:]
        ports.out.clear()
        return out

    def kernel_counts(self, path_id: int, counts: tuple[int, int, int, int, int]) -> None:
        """The kernel offload's counters for a path: its traffic counts as the
        session's (metrics, and activity for the idle timeout)."""
        ports = self.ports
        entry = ports.by_port.get(path_id) if ports is not None else None
        if ports is None or entry is None:
            return
        packets, nbytes, dropped = ports.kernel_counts(path_id, counts)
        s = entry[0].session
        s.packets += packets
        s.bytes += nbytes
        self._drops[DropReason.BANDWIDTH] += dropped  # the kernel's limit dropped them

    def receive_control(self, data: bytes, addr: Addr, now: float) -> None:
        inb: Inbound | None = None
        try:
            if data[:1] == _MAPPING_PROBE:
                self._mapping_probe(data, addr, now)
                return
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

    # ------------------------------------------------------------ ping and discovery

    def _handle_ping(self, inb: Inbound, body: Ping) -> None:
        if inb.member and (m := self.federation.directory.by_x25519(inb.key)) is not None:
            self.federation.heard_from(m.key, inb.now)  # a relay probing us lives
        self._reply(inb, Pong(body.echo_id, self.load_pct()))

    def _handle_leg_rtt_query(self, inb: Inbound, body: LegRttQuery) -> None:
        """The relays we would open a leg to now, and our RTT to each: the
        agent weighs A-us-R2-B against paths over one relay (relay_rtts.py)."""
        if self._requester(inb, body.TYPE) is None:
            return
        legs = [
            k
            for raw in self.config.leg_relays
            if raw != self.identity.public.raw and self._relay_addr(k := PublicKey(raw)) is not None
        ]
        self._reply(inb, self.federation.rtts.reply(body.query_id, legs, inb.now))

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
        if m is None and isinstance(body, Gossip):
            # a relay may introduce itself, from an address it proves first
            # (its announcement will have us send there); its own
            # announcement only: the rest we hear once we know it
            if self._deferred_needs_proof(inb):
                return
            if fed.introduced_by(inb.key, body.announcements, inb.now):
                self._reply(inb, GossipAck(1))
                return
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
