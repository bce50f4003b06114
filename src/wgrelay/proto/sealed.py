"""Private paths (``wgrelay up --private``): the sealed request and its bodies.

Protocol flow
-------------
Peer A wants a session to peer B through two relays, its entry relay R1 and
B's relay R2, such that R1 never learns B and R2 never learns A::

    A  -> R1  CONNECTION_REQUEST_SEALED(request_id, R2, sealed_to_R2)
    R1 -> R2  LEG_OPEN_SEALED(session, hops, sealed_to_R2)        (R1's channel)
    R2 -> B   SESSION_OFFER_SEALED(session, port, sealed_to_B)
    B  -> R2  SESSION_ANSWER(session, accept)                     (as ever)
    R2 -> R1  LEG_ANSWER(session, status)                         (as ever)
    R1 -> A   CONNECTION_RESPONSE(request_id, ...)                (as ever)

The two sealed boxes are libsodium's ``crypto_box_seal`` (an ephemeral
X25519 key per box, XSalsa20-Poly1305): anyone may seal to a public key,
only its owner opens, and a box says nothing about who sealed it. Nested::

    sealed_to_R2 = seal(X25519 of R2's Ed25519 key,
                        version u8 | issued_ms u64 | target B 32B | sealed_to_B)
    sealed_to_B  = seal(B's WireGuard public key,
                        version u8 | issued_ms u64 | initiator A 32B | exit relay R2 32B)

Both boxes have one fixed size (``EXIT_SEALED_LEN``, ``PEER_SEALED_LEN``),
so their length tells nothing either. ``sealed_to_B`` names the exit relay:
B accepts it only from the relay it names, so no other relay can offer B a
box it was given. ``issued_ms`` is A's wall clock: R2 refuses a box outside
``SEALED_WINDOW_S`` of its clock or seen before (``SealedReplays``), and so
does B's agent for its box. What a replay can and cannot do is in
docs/SECURITY.md (private paths).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Self

import nacl.bindings as sodium
import nacl.exceptions

from wgrelay.errors import InvalidKey, LocalProtocolError, Malformed, RemoteProtocolError
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, relay_x25519_public
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import KEY_LEN, MAX_PATH_RELAYS, SESSION_ID_LEN, MsgType

SEALED_VERSION = 1
SEAL_OVERHEAD = 48
"""crypto_box_seal: the ephemeral public key (32) and the Poly1305 tag (16)."""
PEER_PLAIN_LEN = 1 + 8 + KEY_LEN + KEY_LEN
PEER_SEALED_LEN = PEER_PLAIN_LEN + SEAL_OVERHEAD  # 121
EXIT_PLAIN_LEN = 1 + 8 + KEY_LEN + PEER_SEALED_LEN
EXIT_SEALED_LEN = EXIT_PLAIN_LEN + SEAL_OVERHEAD  # 210

SEALED_WINDOW_S = 120.0
"""A box is taken this long either side of the opener's clock: A's clock may
be off (the envelope takes the same skew), and the request may be retried."""
MAX_REMEMBERED = 4096
"""Boxes an opener remembers (within the window) to refuse a second copy."""


class Undecryptable(RemoteProtocolError):
    """Not a box sealed to us (another key, tampered, or garbage)."""

    reason = "undecryptable"


def _digest(box: bytes) -> bytes:
    return hashlib.blake2b(box, digest_size=16).digest()


# ---------------------------------------------------------------- the boxes


@dataclass(frozen=True, slots=True)
class PeerSealed:
    """What the target reads: who asks, through which relay, when."""

    initiator: PublicKey
    exit_relay: PublicKey
    issued_ms: int
    digest: bytes
    """Of the box (to refuse a second copy)."""


@dataclass(frozen=True, slots=True)
class ExitSealed:
    """What the exit relay reads: whom to offer the session, and B's box."""

    target: PublicKey
    peer_box: bytes
    issued_ms: int
    digest: bytes


def _seal(plain: bytes, public: bytes, ephemeral_seed: bytes | None) -> bytes:
    """crypto_box_seal; with ``ephemeral_seed``, the same box built from a
    given ephemeral key (nonce = BLAKE2b-192(epk || pk), as libsodium does):
    only for reproducible test vectors, never on the wire."""
    try:
        if ephemeral_seed is None:
            return bytes(sodium.crypto_box_seal(plain, public))
        epk, esk = sodium.crypto_box_seed_keypair(ephemeral_seed)
        nonce = hashlib.blake2b(epk + public, digest_size=24).digest()
        return bytes(epk) + bytes(sodium.crypto_box(plain, nonce, public, esk))
    except nacl.exceptions.CryptoError:
        # the zero key and the other low-order points: no shared secret
        raise InvalidKey("cannot seal to that key (not a usable X25519 public key)") from None


def seal_for_peer(
    target: PublicKey,
    initiator: PublicKey,
    exit_relay: PublicKey,
    issued_ms: int,
    ephemeral_seed: bytes | None = None,
) -> bytes:
    """The box only ``target`` (its WireGuard key is X25519) opens."""
    w = Writer()
    w.push_u8(SEALED_VERSION)
    w.push_u64(issued_ms)
    w.push_bytes(initiator.raw, KEY_LEN)
    w.push_bytes(exit_relay.raw, KEY_LEN)
    return _seal(w.getvalue(), target.raw, ephemeral_seed)


def seal_for_exit(
    exit_relay: PublicKey,
    target: PublicKey,
    peer_box: bytes,
    issued_ms: int,
    ephemeral_seed: bytes | None = None,
) -> bytes:
    """The box only ``exit_relay`` (the X25519 form of its identity) opens."""
    if len(peer_box) != PEER_SEALED_LEN:
        raise LocalProtocolError(f"the target's box is {PEER_SEALED_LEN} bytes")
    w = Writer()
    w.push_u8(SEALED_VERSION)
    w.push_u64(issued_ms)
    w.push_bytes(target.raw, KEY_LEN)
    w.push_bytes(peer_box)
    return _seal(w.getvalue(), relay_x25519_public(exit_relay), ephemeral_seed)


def seal_request(
    initiator: PublicKey, target: PublicKey, exit_relay: PublicKey, issued_ms: int
) -> bytes:
    """Both boxes, nested: what A's agent sends its entry relay. InvalidKey
    if the target or the exit relay has no usable key to seal to."""
    inner = seal_for_peer(target, initiator, exit_relay, issued_ms)
    return seal_for_exit(exit_relay, target, inner, issued_ms)


def _open(box: bytes, public: bytes, private: bytes, size: int) -> Buffer:
    if len(box) != size:
        raise Malformed(f"a sealed box here is {size} bytes, not {len(box)}")
    try:
        plain = sodium.crypto_box_seal_open(box, public, private)
    except nacl.exceptions.CryptoError:
        raise Undecryptable("not sealed to us") from None
    b = Buffer(plain)
    version = b.pull_u8()
    if version != SEALED_VERSION:
        raise Malformed(f"sealed box version {version}")
    return b


def open_for_peer(box: bytes, private_key: PrivateKey) -> PeerSealed:
    pub = private_key.public_key().raw
    b = _open(box, pub, private_key.raw, PEER_SEALED_LEN)
    issued_ms = b.pull_u64()
    initiator = PublicKey(b.pull_bytes(KEY_LEN))
    exit_relay = PublicKey(b.pull_bytes(KEY_LEN))
    b.expect_end()
    return PeerSealed(initiator, exit_relay, issued_ms, _digest(box))


def open_for_exit(box: bytes, identity: RelayIdentity) -> ExitSealed:
    b = _open(box, identity.x25519_public, identity.x25519_private, EXIT_SEALED_LEN)
    issued_ms = b.pull_u64()
    target = PublicKey(b.pull_bytes(KEY_LEN))
    peer_box = b.pull_bytes(PEER_SEALED_LEN)
    b.expect_end()
    return ExitSealed(target, peer_box, issued_ms, _digest(box))


class SealedReplays:
    """Boxes opened within the window, to refuse a second copy (sans-I/O).

    A box is fresh while ``issued_ms`` lies within ``SEALED_WINDOW_S`` of
    our wall clock; a fresh box is remembered until its window ends, so a
    copy is refused for as long as it could be taken at all. At most
    ``MAX_REMEMBERED`` are held: when every one is still in its window, the
    oldest is forgotten (a copy of it could then pass once, within its
    window); expired ones always go first."""

    def __init__(self, window_s: float = SEALED_WINDOW_S, size: int = MAX_REMEMBERED) -> None:
        self.window_ms = int(window_s * 1000)
        self.size = size
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def check(self, digest: bytes, issued_ms: int, wall_ms: int) -> str | None:
        """None if new and fresh (now remembered), else why not: stale, replayed."""
        seen = self._seen
        while seen:  # (cheap: the oldest entries usually expire first)
            first, until = next(iter(seen.items()))
            if until > wall_ms:
                break
            del seen[first]
        if abs(wall_ms - issued_ms) > self.window_ms:
            return "stale"
        if digest in seen:
            return "replayed"
        if len(seen) >= self.size:
            # entries expire by their box's date, not in arrival order: drop
            # every expired one before one still in its window
            for d in [d for d, until in seen.items() if until <= wall_ms]:
                del seen[d]
            while len(seen) >= self.size:
                seen.popitem(last=False)
        seen[digest] = issued_ms + self.window_ms
        return None

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------- bodies


def _check_sid(sid: bytes) -> None:
    if len(sid) != SESSION_ID_LEN:
        raise LocalProtocolError("session ids are 8 bytes")


def _check_box(box: bytes, size: int) -> None:
    if len(box) != size:
        raise LocalProtocolError(f"this sealed box is {size} bytes")


@dataclass(frozen=True, slots=True)
class ConnectionRequestSealed(Body):
    """A asks its entry relay for a session to a peer it does not name,
    through ``exit_relay``: ``request_id u32 | exit relay 32B | sealed 210B``.
    Answered by CONNECTION_RESPONSE with the same ``request_id``."""

    TYPE: ClassVar[MsgType] = MsgType.CONNECTION_REQUEST_SEALED
    request_id: int
    exit_relay: PublicKey
    sealed: bytes

    def encode_body(self, w: Writer) -> None:
        _check_box(self.sealed, EXIT_SEALED_LEN)
        w.push_u32(self.request_id)
        w.push_bytes(self.exit_relay.raw, KEY_LEN)
        w.push_bytes(self.sealed)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        rid = b.pull_u32()
        relay = PublicKey(b.pull_bytes(KEY_LEN))
        return cls(rid, relay, b.pull_bytes(EXIT_SEALED_LEN))


@dataclass(frozen=True, slots=True)
class LegOpenSealed(Body):
    """The entry relay asks the exit relay to carry ``session_id`` to the
    target in the box: ``session 8B | hops u8 | sealed 210B``. Answered by
    LEG_ANSWER; the initiator is named to nobody but the target."""

    TYPE: ClassVar[MsgType] = MsgType.LEG_OPEN_SEALED
    session_id: bytes
    sealed: bytes
    hops: int = 2

    def encode_body(self, w: Writer) -> None:
        _check_sid(self.session_id)
        _check_box(self.sealed, EXIT_SEALED_LEN)
        if not 2 <= self.hops <= MAX_PATH_RELAYS:
            raise LocalProtocolError(f"a leg's path has 2 to {MAX_PATH_RELAYS} relays")
        w.push_bytes(self.session_id)
        w.push_u8(self.hops)
        w.push_bytes(self.sealed)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        hops = b.pull_u8()
        if not 2 <= hops <= MAX_PATH_RELAYS:
            raise Malformed(f"hops must be 2 to {MAX_PATH_RELAYS}, got {hops}")
        return cls(sid, b.pull_bytes(EXIT_SEALED_LEN), hops)


@dataclass(frozen=True, slots=True)
class SessionOfferSealed(Body):
    """The exit relay offers the target a session from someone in the box:
    ``session 8B | port u16 | sealed 121B``. Answered by SESSION_ANSWER."""

    TYPE: ClassVar[MsgType] = MsgType.SESSION_OFFER_SEALED
    session_id: bytes
    sealed: bytes
    port: int = 0
    """The relay port for the target's WireGuard in port mode (0: framed only)."""

    def encode_body(self, w: Writer) -> None:
        _check_sid(self.session_id)
        _check_box(self.sealed, PEER_SEALED_LEN)
        w.push_bytes(self.session_id)
        w.push_u16(self.port)
        w.push_bytes(self.sealed)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        port = b.pull_u16()
        return cls(sid, b.pull_bytes(PEER_SEALED_LEN), port)


SEALED_BODIES: tuple[type[Body], ...] = (
    ConnectionRequestSealed,
    LegOpenSealed,
    SessionOfferSealed,
)
