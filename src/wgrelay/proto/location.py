"""Location records: "peer P is registered at home relay H", signed by H.

Layout (145 bytes)::

    0   type       u8    LOCATION (0x32)
    1   version    u8
    2   peer       32B   the peer's WireGuard public key
    34  home       32B   the relay that holds the registration (the signer)
    66  issued_ms  u64   when H signed it (Unix ms); a newer record replaces older
    74  ttl_s      u32   how long it may be believed after issued_ms
    78  flags      u8    bit 0: a standby registration, not the peer's home
    79  rtt_ms     u16   the peer's round trip to H as it reported it (0xFFFF unknown)
    81  signature  64B   Ed25519 by ``home`` over bytes 0..80

An honest peer has two records at once: its home's and its standby's. Holders
keep the newest record of each signing relay, at most four per peer (a relay
lying about a peer cannot push the genuine ones out: relay/locations.py), and
a lookup offers the best two, so the asker weighs the whole path through each
(RTT to the relay plus ``rtt_ms``).

A home relay stores its registered peers' records at the k relays chosen by
rendezvous hashing of the peer key (discovery/rendezvous.py), so anyone finds a
peer by asking those k. The signature makes every record attributable to the
relay that claims the peer: a holder cannot forge one, and a relay lying about
holding a peer is named by its own signature (docs/SECURITY.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    Malformed,
    Truncated,
    UnknownType,
    UnsupportedVersion,
)
from wgrelay.keys import PublicKey, RelayIdentity, verify_signature
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import (
    KEY_LEN,
    LOCATION_FLAG_STANDBY,
    LOCATION_RECORD_LEN,
    PROTOCOL_VERSION,
    RTT_UNKNOWN,
    SIGNATURE_LEN,
    MsgType,
)

MAX_LOCATION_TTL_S = 600
"""Holders refuse records that claim to be good for longer."""


@dataclass(frozen=True, slots=True)
class LocationRecord:
    peer: PublicKey
    home: PublicKey
    issued_ms: int
    ttl_s: int
    raw: bytes
    """The exact signed bytes, stored and handed on unchanged."""
    standby: bool = False
    rtt_ms: int = RTT_UNKNOWN

    def expires_ms(self) -> int:
        return self.issued_ms + self.ttl_s * 1000


def encode_location(
    peer: PublicKey,
    issued_ms: int,
    ttl_s: int,
    identity: RelayIdentity,
    standby: bool = False,
    rtt_ms: int = RTT_UNKNOWN,
) -> bytes:
    if not 0 < ttl_s <= MAX_LOCATION_TTL_S:
        raise LocalProtocolError(f"location ttl 1..{MAX_LOCATION_TTL_S} s")
    w = Writer()
    w.push_u8(MsgType.LOCATION)
    w.push_u8(PROTOCOL_VERSION)
    w.push_bytes(peer.raw, KEY_LEN)
    w.push_bytes(identity.public.raw, KEY_LEN)
    w.push_u64(issued_ms)
    w.push_u32(ttl_s)
    w.push_u8(LOCATION_FLAG_STANDBY if standby else 0)
    w.push_u16(min(max(rtt_ms, 0), RTT_UNKNOWN))
    signed = w.getvalue()
    return signed + identity.sign(signed)


def decode_location(data: bytes) -> LocationRecord:
    """Parse and verify the signature; freshness is the holder's business."""
    if len(data) < 2:
        raise Truncated("location record too short")
    if data[0] != MsgType.LOCATION:
        raise UnknownType(f"not a location record: {data[0]:#04x}")
    if data[1] != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {data[1]}")
    if len(data) != LOCATION_RECORD_LEN:
        raise (Truncated if len(data) < LOCATION_RECORD_LEN else Malformed)(
            f"location record of {len(data)} bytes (not {LOCATION_RECORD_LEN})"
        )
    body_end = LOCATION_RECORD_LEN - SIGNATURE_LEN
    b = Buffer(data, 2, body_end)
    peer = PublicKey(b.pull_bytes(KEY_LEN))
    home = PublicKey(b.pull_bytes(KEY_LEN))
    issued_ms = b.pull_u64()
    ttl_s = b.pull_u32()
    flags = b.pull_u8()
    rtt_ms = b.pull_u16()
    if not 0 < ttl_s <= MAX_LOCATION_TTL_S:
        raise Malformed(f"location ttl {ttl_s} s")
    if flags & ~LOCATION_FLAG_STANDBY:
        raise Malformed(f"unknown location flags {flags:#04x}")
    if not verify_signature(home, bytes(data[:body_end]), bytes(data[body_end:])):
        raise AuthenticationFailed("location record signature does not verify")
    return LocationRecord(
        peer=peer,
        home=home,
        issued_ms=issued_ms,
        ttl_s=ttl_s,
        raw=bytes(data),
        standby=bool(flags & LOCATION_FLAG_STANDBY),
        rtt_ms=rtt_ms,
    )
