"""WireGuard's message layouts and mac1, for the simulated WireGuard.

Sizes, field order and mac1 are exactly WireGuard's (checked against
wireguard-go's ``device/noise-protocol.go`` and ``device/cookie.go``), so a
relay that inspects or verifies handshakes sees the same bytes from the
simulator as from a real peer. The cryptography is not: the simulator's
"encrypted" fields carry plaintext and all-zero tags. Sim-only shortcut: the
first 32 bytes of an initiation's ``encrypted_static`` are the initiator's
static public key in the clear, so the responder can tell who it is without
the Noise handshake. Nothing here is secret or secure; it only has the shape.

mac1 (shared with the relay: wgrelay.proto.wgmac; WireGuard paper, section 5.4.4)::

    mac1_key = BLAKE2s-256("mac1----" || receiver's static public key)
    mac1     = BLAKE2s-128 keyed with mac1_key, over the message up to mac1

An initiation's mac1 is keyed by the responder's public key, a response's by
the initiator's. mac2 is all zeros (no cookie: the simulator never sends
cookie replies).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wgrelay.errors import Malformed
from wgrelay.proto.wgmac import compute_mac1 as compute_mac1
from wgrelay.proto.wgmac import mac1_key as mac1_key  # re-exported for the simulator
from wgrelay.proto.wgmac import verify_mac1 as verify_mac1

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_LEN = 148
"""type u32 LE | sender u32 | ephemeral 32 | encrypted_static 48 |
encrypted_timestamp 28 | mac1 16 | mac2 16"""
RESPONSE_LEN = 92
"""type u32 LE | sender u32 | receiver u32 | ephemeral 32 | encrypted_nothing 16 |
mac1 16 | mac2 16"""
TRANSPORT_HEADER_LEN = 16
"""type u32 LE | receiver u32 | counter u64 LE, then the encrypted packet"""
AEAD_TAG_LEN = 16
KEEPALIVE_LEN = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN
"""A keepalive is a transport message with an empty packet: 32 bytes."""
MAC_LEN = 16
KEY_LEN = 32
TAI64N_LEN = 12

_INITIATION_STATIC_AT = 40  # after type, sender, ephemeral
_INITIATION_TIMESTAMP_AT = _INITIATION_STATIC_AT + KEY_LEN + AEAD_TAG_LEN  # 88
_MACS_LEN = 2 * MAC_LEN
_TAG = bytes(AEAD_TAG_LEN)
_MAC2 = bytes(MAC_LEN)

_HEADER = struct.Struct("<II")  # type, sender (initiation) / type, receiver (transport)
_RESPONSE_HEADER = struct.Struct("<III")  # type, sender, receiver
_TRANSPORT_HEADER = struct.Struct("<IIQ")  # type, receiver, counter
_TAI64N = struct.Struct(">QI")
_TAI64_EPOCH = 1 << 62


def tai64n(wall_s: float) -> bytes:
    """A TAI64N timestamp (what WireGuard puts in an initiation), big-endian."""
    seconds = int(wall_s)
    nanos = round((wall_s - seconds) * 1e9)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return _TAI64N.pack(_TAI64_EPOCH + seconds, nanos)


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    static_public: bytes
    timestamp: bytes


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes


def encode_initiation(
    sender: int, ephemeral: bytes, static_public: bytes, timestamp: bytes, key: bytes
) -> bytes:
    """An initiation to the peer whose ``mac1_key`` is ``key``."""
    body = b"".join(
        (
            _HEADER.pack(MESSAGE_INITIATION, sender),
            ephemeral,
            static_public,
            _TAG,
            timestamp,
            _TAG,
        )
    )
    return body + compute_mac1(key, body) + _MAC2


def decode_initiation(data: bytes) -> Initiation:
    if len(data) != INITIATION_LEN or data[0] != MESSAGE_INITIATION or any(data[1:4]):
        raise Malformed("not a handshake initiation")
    _, sender = _HEADER.unpack_from(data)
    s = _INITIATION_STATIC_AT
    t = _INITIATION_TIMESTAMP_AT
    return Initiation(sender, data[8:s], data[s : s + KEY_LEN], data[t : t + TAI64N_LEN])


def encode_response(sender: int, receiver: int, ephemeral: bytes, key: bytes) -> bytes:
    """A response to the initiator whose ``mac1_key`` is ``key``."""
    body = _RESPONSE_HEADER.pack(MESSAGE_RESPONSE, sender, receiver) + ephemeral + _TAG
    return body + compute_mac1(key, body) + _MAC2


def decode_response(data: bytes) -> Response:
    if len(data) != RESPONSE_LEN or data[0] != MESSAGE_RESPONSE or any(data[1:4]):
        raise Malformed("not a handshake response")
    _, sender, receiver = _RESPONSE_HEADER.unpack_from(data)
    return Response(sender, receiver, data[12:44])


def encode_transport(receiver: int, counter: int, packet: bytes) -> bytes:
    """A transport message carrying ``packet`` (already padded); empty: keepalive."""
    return _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver, counter) + packet + _TAG


def decode_transport(data: bytes) -> tuple[int, int, bytes]:
    """(receiver, counter, packet) of a transport message."""
    if len(data) < KEEPALIVE_LEN or data[0] != MESSAGE_TRANSPORT or any(data[1:4]):
        raise Malformed("not a transport message")
    _, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    return receiver, counter, data[TRANSPORT_HEADER_LEN:-AEAD_TAG_LEN]
