"""The simulated WireGuard's protocol engine: receive, send, sessions, timers.

Theory of operation (wireguard-go's ``device/send.go``, ``receive.go`` and
``timers.go``, followed rule for rule; the cryptography is omitted):

* Packets for a peer are *staged*; with a usable session (younger than
  REJECT_AFTER_TIME) they go out at once, else a handshake initiation is sent.
  Keepalives are empty staged packets.
* Initiations are rate-limited to one per REKEY_TIMEOUT (5 s) per peer; an
  unanswered one is retried every REKEY_TIMEOUT, up to MAX_TIMER_HANDSHAKES
  retries, then the peer gives up and drops what was staged. New traffic (or a
  persistent keepalive) starts the count again.
* The responder answers to the *source address* of the initiation. Any
  authenticated packet from a peer (a valid initiation or response, a transport
  packet that passes the replay window) moves that peer's endpoint to the
  packet's source address: roaming.
* The initiator of a session rekeys when it sends on a session older than
  REKEY_AFTER_TIME (120 s), or receives on one older than 165 s. The responder
  starts using a new session once the initiator's first transport packet
  confirms it (the initiator sends a keepalive right after the response).
* Timers: passive keepalive KEEPALIVE_TIMEOUT (10 s) after receiving data if
  nothing was sent back; a new handshake if data was sent and nothing at all
  came back for 15 s; a persistent keepalive after ``keepalive`` seconds
  without any packet either way. ``set_keepalive`` going from 0 to non-zero
  sends a keepalive at once (what ``kick`` relies on).
* ``latest_handshake`` is virtual wall time; ``rx_bytes``/``tx_bytes`` count
  whole UDP payloads, handshakes included, as wireguard-go does.

wireguard-go adds up to 334 ms of random jitter to the retry and new-handshake
timers; ``rekey_jitter=True`` does too (from the seeded RNG). It is off by
default so tests can assert exact times.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import struct

from wgrelay.endpoint import Endpoint
from wgrelay.errors import RemoteProtocolError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.sim.loop import VirtualTimeLoop
from wgrelay.sim.socket import SimUdpTransport
from wgrelay.sim.wgpeer import (
    HANDSHAKE_INITIATION_RATE_S,
    INNER_PING,
    INNER_PONG,
    KEEPALIVE_TIMEOUT_S,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME_S,
    REKEY_AFTER_TIME_S,
    REKEY_TIMEOUT_JITTER_MAX_S,
    REKEY_TIMEOUT_S,
    Keypair,
    LazyTimer,
    Peer,
    make_inner,
    parse_inner,
)
from wgrelay.sim.wgwire import (
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    decode_initiation,
    decode_response,
    decode_transport,
    encode_initiation,
    encode_response,
    encode_transport,
    mac1_key,
    tai64n,
    verify_mac1,
)
from wgrelay.transport.base import Addr

_LAST_MINUTE_S = REJECT_AFTER_TIME_S - KEEPALIVE_TIMEOUT_S - REKEY_TIMEOUT_S
_INNER_LENGTH = struct.Struct(">H")


class WireGuardDevice:
    """The per-interface protocol state; ``SimWireGuard`` adds the host, the
    backend interface and the scenario API around it."""

    def __init__(
        self,
        loop: VirtualTimeLoop,
        rng: random.Random,
        private_key: PrivateKey,
        *,
        mtu: int,
        rekey_jitter: bool,
    ) -> None:
        self._loop = loop
        self._rng = rng
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self._mtu = mtu
        self._jitter = rekey_jitter
        self._own_mac1_key = mac1_key(self.public_key.raw)
        self._peers: dict[PublicKey, Peer] = {}
        self._by_static: dict[bytes, Peer] = {}
        self._keypairs: dict[int, Keypair] = {}
        """Our local index of every live session -> its keypair."""
        self._pending: dict[int, Peer] = {}
        """Our sender index of every unanswered initiation -> its peer."""
        self._pings: dict[int, tuple[asyncio.Future[float], float, Peer]] = {}
        self._ping_ids = itertools.count(1)
        self.drops: dict[str, int] = {}
        """Received datagrams dropped, by reason (``bad_mac1``, ``replayed``...)."""
        self._sock4: SimUdpTransport | None = None
        self._sock6: SimUdpTransport | None = None
        self._up = False

    # ------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if not data:
            self._count("empty")
            return
        kind = data[0]
        try:
            if kind == MESSAGE_TRANSPORT:
                self._handle_transport(data, addr)
            elif kind == MESSAGE_INITIATION:
                self._handle_initiation(data, addr)
            elif kind == MESSAGE_RESPONSE:
                self._handle_response(data, addr)
            else:
                self._count("unknown_type")
        except RemoteProtocolError as e:
            self._count(e.reason)

    def batch_done(self) -> None:
        pass

    def _handle_initiation(self, data: bytes, addr: Addr) -> None:
        msg = decode_initiation(data)
        if not verify_mac1(self._own_mac1_key, data):
            self._count("bad_mac1")
            return
        peer = self._by_static.get(msg.static_public)
        if peer is None:
            self._count("unknown_peer")
            return
        now = self._loop.time()
        if msg.timestamp <= peer.last_timestamp:
            self._count("replayed_initiation")
            return
        if now - peer.last_initiation_consumed <= HANDSHAKE_INITIATION_RATE_S:
            self._count("initiation_flood")
            return
        peer.last_timestamp = msg.timestamp
        peer.last_initiation_consumed = now
        self._traversal(peer, now)
        peer.new_handshake.delete()
        peer.endpoint = (addr[0], addr[1])
        peer.rx_bytes += len(data)
        self._send_response(peer, msg.sender, now)

    def _handle_response(self, data: bytes, addr: Addr) -> None:
        msg = decode_response(data)
        if not verify_mac1(self._own_mac1_key, data):
            self._count("bad_mac1")
            return
        peer = self._pending.pop(msg.receiver, None)
        if peer is None:
            self._count("unknown_index")
            return
        now = self._loop.time()
        peer.pending_index = None
        peer.endpoint = (addr[0], addr[1])
        peer.rx_bytes += len(data)
        self._traversal(peer, now)
        peer.new_handshake.delete()
        self._begin_session(peer, Keypair(peer, msg.receiver, msg.sender, now, True))
        self._handshake_complete(peer)
        self._send_keepalive(peer)

    def _handle_transport(self, data: bytes, addr: Addr) -> None:
        receiver, counter, packet = decode_transport(data)
        kp = self._keypairs.get(receiver)
        if kp is None:
            self._count("unknown_index")
            return
        now = self._loop.time()
        if now - kp.created >= REJECT_AFTER_TIME_S:
            self._count("expired_session")
            return
        if not kp.accept_counter(counter):
            self._count("replayed")
            return
        peer = kp.peer
        if kp is peer.next:  # the initiator's first packet confirms the session
            if peer.previous is not None:
                self._keypairs.pop(peer.previous.local_index, None)
            peer.previous, peer.current, peer.next = peer.current, kp, None
            self._handshake_complete(peer)
            self._send_staged(peer)
        peer.rx_bytes += len(data)
        peer.endpoint = addr if len(addr) == 2 else (addr[0], addr[1])
        self._keep_key_fresh_receiving(peer, now)
        self._traversal(peer, now)
        peer.new_handshake.delete()
        if not packet:
            peer.keepalives_received += 1
            return
        if peer.send_keepalive.pending:
            peer.need_another_keepalive = True
        else:
            peer.send_keepalive.mod(now + KEEPALIVE_TIMEOUT_S)
        self._deliver_inner(peer, packet, now)

    def _deliver_inner(self, peer: Peer, packet: bytes, now: float) -> None:
        parsed = parse_inner(packet)
        if parsed is None:
            self._count("bad_inner_packet")
            return
        kind, length, ping_id = parsed
        peer.app_packets_received += 1
        peer.app_bytes_received += length
        if kind == INNER_PING:
            self._send_inner(peer, make_inner(INNER_PONG, length, ping_id, self._mtu))
        elif kind == INNER_PONG:
            waiting = self._pings.get(ping_id)
            if waiting is not None and waiting[2] is peer and not waiting[0].done():
                waiting[0].set_result(now - waiting[1])

    def _count(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # ------------------------------------------------------------ sending

    def _send_inner(self, peer: Peer, packet: bytes) -> None:
        peer.stage(packet)
        self._send_staged(peer)

    def _send_keepalive(self, peer: Peer) -> None:
        if not peer.staged:
            peer.stage(b"")
        self._send_staged(peer)

    def _send_staged(self, peer: Peer) -> None:
        if not peer.staged or not self._up:
            return
        now = self._loop.time()
        kp = peer.session_usable(now)
        if kp is None:
            self._send_initiation(peer, retry=False)
            return
        data_sent = False
        while peer.staged:
            packet = peer.staged.popleft()
            message = encode_transport(kp.remote_index, kp.send_counter, packet)
            kp.send_counter += 1
            if not self._transmit(peer, message):
                continue
            if packet:
                data_sent = True
                peer.app_packets_sent += 1
                peer.app_bytes_sent += _INNER_LENGTH.unpack_from(packet, 2)[0]
            else:
                peer.keepalives_sent += 1
        self._traversal(peer, now)
        peer.send_keepalive.delete()
        if data_sent and not peer.new_handshake.pending:
            peer.new_handshake.mod(now + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S + self._jitter_s())
        self._keep_key_fresh_sending(peer, now)

    def _send_initiation(self, peer: Peer, *, retry: bool) -> None:
        if not retry:
            peer.handshake_attempts = 0
        now = self._loop.time()
        if peer.handshake_rate_limited(now):
            return
        peer.last_sent_handshake = now
        if peer.pending_index is not None:
            self._pending.pop(peer.pending_index, None)
        index = self._new_index()
        peer.pending_index = index
        self._pending[index] = peer
        message = encode_initiation(
            index,
            self._rng.randbytes(32),
            self.public_key.raw,
            tai64n(self._loop.wall()),
            peer.mac1_key,
        )
        self._traversal(peer, now)
        peer.send_keepalive.delete()
        if self._transmit(peer, message):
            peer.initiations_sent += 1
        peer.retransmit_handshake.mod(now + REKEY_TIMEOUT_S + self._jitter_s())

    def _send_response(self, peer: Peer, initiator_index: int, now: float) -> None:
        peer.last_sent_handshake = now
        index = self._new_index()
        message = encode_response(index, initiator_index, self._rng.randbytes(32), peer.mac1_key)
        self._begin_session(peer, Keypair(peer, index, initiator_index, now, False))
        self._traversal(peer, now)
        peer.send_keepalive.delete()
        if self._transmit(peer, message):
            peer.responses_sent += 1

    def _transmit(self, peer: Peer, message: bytes) -> bool:
        endpoint = peer.endpoint
        if endpoint is None or not self._up:
            return False
        sock = self._sock6 if ":" in endpoint[0] else self._sock4
        if sock is None or not sock.sendto(message, endpoint):
            return False
        peer.tx_bytes += len(message)
        return True

    # ------------------------------------------------------------ sessions and timers

    def _begin_session(self, peer: Peer, kp: Keypair) -> None:
        """wireguard-go's BeginSymmetricSession: rotate previous/current/next."""
        self._keypairs[kp.local_index] = kp
        stale: list[Keypair | None] = [peer.previous]
        if kp.is_initiator:
            if peer.next is not None:
                stale.append(peer.current)
                peer.previous, peer.next = peer.next, None
            else:
                peer.previous = peer.current
            peer.current = kp
        else:
            stale.append(peer.next)
            peer.next, peer.previous = kp, None
        for old in stale:
            if old is not None and self._keypairs.get(old.local_index) is old:
                del self._keypairs[old.local_index]

    def _handshake_complete(self, peer: Peer) -> None:
        peer.retransmit_handshake.delete()
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.latest_handshake = self._loop.wall()
        peer.handshakes_completed += 1

    def _keep_key_fresh_sending(self, peer: Peer, now: float) -> None:
        """The initiator of a session replaces it once it is REKEY_AFTER_TIME old."""
        kp = peer.current
        if kp is not None and kp.is_initiator and now - kp.created > REKEY_AFTER_TIME_S:
            self._send_initiation(peer, retry=False)

    def _keep_key_fresh_receiving(self, peer: Peer, now: float) -> None:
        """...or, if it only receives, shortly before it would expire."""
        if peer.sent_last_minute_handshake:
            return
        kp = peer.current
        if kp is not None and kp.is_initiator and now - kp.created > _LAST_MINUTE_S:
            peer.sent_last_minute_handshake = True
            self._send_initiation(peer, retry=False)

    def _traversal(self, peer: Peer, now: float) -> None:
        """Any authenticated packet sent or received pushes the persistent keepalive."""
        if peer.keepalive_s:
            peer.persistent_keepalive.mod(now + peer.keepalive_s)

    def _jitter_s(self) -> float:
        return self._rng.random() * REKEY_TIMEOUT_JITTER_MAX_S if self._jitter else 0.0

    def _expired_retransmit_handshake(self, peer: Peer) -> None:
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            peer.send_keepalive.delete()
            peer.staged_dropped += len(peer.staged)
            peer.staged.clear()
            return
        peer.handshake_attempts += 1
        self._send_initiation(peer, retry=True)

    def _expired_send_keepalive(self, peer: Peer) -> None:
        self._send_keepalive(peer)
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            peer.send_keepalive.mod(self._loop.time() + KEEPALIVE_TIMEOUT_S)

    def _expired_new_handshake(self, peer: Peer) -> None:
        self._send_initiation(peer, retry=False)

    def _expired_persistent_keepalive(self, peer: Peer) -> None:
        if peer.keepalive_s:
            self._send_keepalive(peer)

    # ------------------------------------------------------------ peers

    def _new_peer(
        self,
        key: PublicKey,
        endpoint: Endpoint | None,
        allowed_ips: tuple[str, ...],
        keepalive_s: int,
    ) -> Peer:
        peer = Peer(
            key,
            mac1_key(key.raw),
            endpoint,
            allowed_ips,
            keepalive_s,
            lambda callback: LazyTimer(self._loop, callback),
            (
                self._expired_retransmit_handshake,
                self._expired_send_keepalive,
                self._expired_new_handshake,
                self._expired_persistent_keepalive,
            ),
        )
        self._peers[key] = peer
        self._by_static[key.raw] = peer
        return peer

    def _new_index(self) -> int:
        while True:
            index = self._rng.getrandbits(32)
            if index and index not in self._keypairs and index not in self._pending:
                return index

    def _forget_sessions(self, peer: Peer) -> None:
        for timer in peer.timers():
            timer.stop()
        for kp in (peer.previous, peer.current, peer.next):
            if kp is not None:
                self._keypairs.pop(kp.local_index, None)
        if peer.pending_index is not None:
            self._pending.pop(peer.pending_index, None)
