"""What the fuzzer knows about the wire (docs/PROTOCOL.md): drafts and field maps.

A *draft* is a datagram the fuzzer can take apart and build again. A control
draft keeps the plaintext (timestamp and body) next to the header fields and
the AEAD key, so a mutated body can be sealed again with a valid key: the
receiver's body decoders and handlers then see garbage that passed
authentication, which is where a fuzzer that only flips bits never gets.

``body_fields`` walks a body (or an announcement) along its layout and
returns the span and kind of every field it can find, so mutators can set a
length byte to its limit, an address family to 5 or a session id to a live
one, instead of flipping a random bit that the tag then catches. Relay-to-
relay bodies (0x40-0x49) are walked too, and signed LOCATION records
(``location_fields``) like announcements.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from wgrelay.keys import RelayIdentity
from wgrelay.proto.constants import (
    COOKIE_LEN,
    DIGEST_BUCKETS,
    KEY_LEN,
    LOCATION_FLAG_STANDBY,
    LOCATION_RECORD_LEN,
    MAX_DETAIL_LEN,
    MAX_REGION_LEN,
    NONCE_LEN,
    PROTOCOL_VERSION,
    QUERY_FLAG_LOCATE_PEER,
    RESPONSE_FLAG_ALTERNATE,
    RESPONSE_FLAG_LOCATED,
    RESPONSE_FLAG_RECORD,
    RTT_UNKNOWN,
    SESSION_ID_LEN,
    SIGNATURE_LEN,
    TAG_LEN,
    TIMESTAMP_LEN,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.envelope import FLAG_COOKIE
from wgrelay.proto.federation import DIGEST_HASH_LEN

HEADER_LEN = 3 + KEY_LEN + NONCE_LEN  # 59
COOKIE_END = HEADER_LEN + COOKIE_LEN  # 75
MIN_CONTROL = HEADER_LEN + TAG_LEN + TIMESTAMP_LEN  # 83
U64_MASK = (1 << 64) - 1

# Where a control datagram's fields start and end: truncations and splices
# cut here (type | version | flags | sender | nonce | cookie | ciphertext).
CONTROL_BOUNDARIES = (0, 1, 2, 3, 3 + KEY_LEN, HEADER_LEN, COOKIE_END, MIN_CONTROL - 1, MIN_CONTROL)
DATA_BOUNDARIES = (0, 1, 2, 10, 11, 41, 42)


def aead_seal(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    return bytes(sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def aead_open(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes | None:
    try:
        return bytes(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
    except nacl.exceptions.CryptoError:
        return None


@dataclass(slots=True)
class ControlDraft:
    """A control datagram before sealing. Every header byte is free (the
    header is the associated data, so a changed type or flag byte still
    authenticates when sealed again)."""

    msg_type: int
    flags: int
    sender: bytes
    nonce: bytes
    cookie: bytes | None
    ts: int
    body: bytes
    key: bytes | None
    """The AEAD key of the sending direction; None: a forger's ciphertext."""
    version: int = PROTOCOL_VERSION

    def header(self) -> bytes:
        head = bytes((self.msg_type & 0xFF, self.version & 0xFF, self.flags & 0xFF))
        return head + self.sender + self.nonce + (self.cookie or b"")

    def build(self) -> bytes:
        ad = self.header()
        plaintext = (self.ts & U64_MASK).to_bytes(TIMESTAMP_LEN, "big") + self.body
        if self.key is None:
            garbage = hashlib.shake_128(ad + plaintext).digest(len(plaintext) + TAG_LEN)
            return ad + garbage
        return ad + aead_seal(plaintext, ad, self.nonce, self.key)

    def copy(self) -> ControlDraft:
        return ControlDraft(
            self.msg_type,
            self.flags,
            self.sender,
            self.nonce,
            self.cookie,
            self.ts,
            self.body,
            self.key,
            self.version,
        )


@dataclass(slots=True)
class DataDraft:
    flags: int
    sid: bytes
    payload: bytes

    def build(self) -> bytes:
        return bytes((MsgType.DATA, self.flags & 0xFF)) + self.sid + self.payload

    def copy(self) -> DataDraft:
        return DataDraft(self.flags, self.sid, self.payload)


@dataclass(slots=True)
class RawDraft:
    data: bytes

    def build(self) -> bytes:
        return self.data

    def copy(self) -> RawDraft:
        return RawDraft(self.data)


Draft = ControlDraft | DataDraft | RawDraft


def open_draft(
    data: bytes, keys: dict[bytes, bytes], alt: dict[bytes, bytes] | None = None
) -> Draft:
    """Take a datagram apart; ``keys`` maps a sender key to the AEAD key of its
    direction (``alt``: another to try, a relay's answers on the channels it
    serves). A control datagram that does not open stays raw."""
    if data[:1] == bytes((MsgType.DATA,)) and len(data) >= 10:
        return DataDraft(data[1], bytes(data[2:10]), bytes(data[10:]))
    if len(data) >= MIN_CONTROL:
        flags = data[2]
        off = COOKIE_END if flags & FLAG_COOKIE else HEADER_LEN
        sender = bytes(data[3 : 3 + KEY_LEN])
        for key in (keys.get(sender), (alt or {}).get(sender)):
            if key is None or len(data) < off + TAG_LEN + TIMESTAMP_LEN:
                continue
            nonce = bytes(data[3 + KEY_LEN : HEADER_LEN])
            plaintext = aead_open(bytes(data[off:]), bytes(data[:off]), nonce, key)
            if plaintext is not None:
                return ControlDraft(
                    msg_type=data[0],
                    flags=flags,
                    sender=sender,
                    nonce=nonce,
                    cookie=bytes(data[HEADER_LEN:COOKIE_END]) if off == COOKIE_END else None,
                    ts=int.from_bytes(plaintext[:TIMESTAMP_LEN], "big"),
                    body=plaintext[TIMESTAMP_LEN:],
                    key=key,
                    version=data[1],
                )
    return RawDraft(bytes(data))


# ---------------------------------------------------------------- field maps


@dataclass(frozen=True, slots=True)
class Field:
    off: int
    size: int
    kind: str
    """u8 u16 u32 u64 ms rtt flags type pct bool enum key sid strlen str family
    ip port count annlen ann loc hash sig (ms: a wall clock in milliseconds;
    rtt: a round trip in ms, 0xFFFF unknown)"""
    limit: int = 0
    """strlen: the longest string allowed; enum: the first invalid value."""


class _Walker:
    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end
        self.fields: list[Field] = []
        self.short = False

    def take(self, kind: str, size: int, limit: int = 0) -> int | None:
        """The field's value for sizes up to 8 (else its offset); None when short."""
        if self.short or self.pos + size > self.end:
            self.short = True
            return None
        off = self.pos
        self.fields.append(Field(off, size, kind, limit))
        self.pos += size
        if size <= 8:
            return int.from_bytes(self.data[off : off + size], "big")
        return off

    def str8(self, max_len: int) -> None:
        n = self.take("strlen", 1, max_len)
        if n:
            self.take("str", n)

    def endpoint(self) -> None:
        family = self.take("family", 1)
        if family == 4:
            self.take("ip", 4)
        elif family == 6:
            self.take("ip", 16)
        else:
            self.short = True
            return
        self.take("port", 2)

    def blobs(self, kind: str) -> None:
        """n u8 | n x (len u16 | blob): announcements in gossip and replies."""
        n = self.take("count", 1)
        for _ in range(n or 0):
            size = self.take("annlen", 2)
            if size is None:
                break
            self.take(kind, size)

    def versions(self) -> None:
        """n u8 | n x (relay key 32B | issued_ms u64)."""
        n = self.take("count", 1)
        for _ in range(n or 0):
            self.take("key", KEY_LEN)
            self.take("ms", 8)


_ENUM_END = {
    "status": len(Status),
    "close": len(CloseReason),
    "error": max(ErrorCode) + 1,
    "hb": len(HeartbeatStatus),
}


def body_fields(msg_type: int, body: bytes) -> list[Field]:
    """The fields of a control body of type ``msg_type``, as far as it goes."""
    w = _Walker(body)
    t = msg_type
    if t == MsgType.REGISTER:
        w.take("flags", 1)  # accept incoming, standby, unlisted
        w.take("u16", 2)  # keepalive_s
        w.take("rtt", 2)
    elif t == MsgType.REGISTERED:
        w.take("u16", 2)
        w.take("u16", 2)
        w.take("u64", 8)
        w.endpoint()
    elif t == MsgType.HEARTBEAT:
        w.take("u32", 4)
        w.take("rtt", 2)
    elif t == MsgType.HEARTBEAT_ACK:
        w.take("u32", 4)
        w.take("enum", 1, _ENUM_END["hb"])
        w.take("u64", 8)
    elif t == MsgType.CONNECTION_REQUEST:
        w.take("u32", 4)
        w.take("key", KEY_LEN)
        if w.pos < w.end:  # (optional: the via flag and its relay)
            w.take("u8", 1)
            w.take("key", KEY_LEN)
    elif t == MsgType.CONNECTION_RESPONSE:
        w.take("u32", 4)
        w.take("enum", 1, _ENUM_END["status"])
        w.take("sid", SESSION_ID_LEN)
        w.take("u16", 2)
        w.take("u32", 4)
    elif t == MsgType.SESSION_OFFER:
        w.take("sid", SESSION_ID_LEN)
        w.take("key", KEY_LEN)
    elif t == MsgType.SESSION_ANSWER:
        w.take("sid", SESSION_ID_LEN)
        w.take("bool", 1)
    elif t == MsgType.SESSION_CLOSE:
        w.take("sid", SESSION_ID_LEN)
        w.take("enum", 1, _ENUM_END["close"])
    elif t == MsgType.SESSION_HOLD:
        w.take("sid", SESSION_ID_LEN)
        w.take("u8", 1)
    elif t == MsgType.PUNCH:
        w.take("sid", SESSION_ID_LEN)
        w.take("u32", 4)
        w.take("flags", 1)
        n = w.take("count", 1)
        for _ in range(min(n or 0, 2)):
            w.endpoint()
    elif t == MsgType.ERROR:
        w.take("enum", 1, _ENUM_END["error"])
        w.take("type", 1)
        w.take("u64", 8)
        w.str8(MAX_DETAIL_LEN)
    elif t == MsgType.PING:
        w.take("u64", 8)
    elif t == MsgType.PONG:
        w.take("u64", 8)
        w.take("pct", 1)
    elif t == MsgType.DISCOVERY_QUERY:
        w.take("u32", 4)
        flags = w.take("flags", 1)
        w.take("u8", 1)
        w.take("u32", 4)
        w.str8(MAX_REGION_LEN)
        w.take("u16", 2)  # page
        if flags is not None and flags & QUERY_FLAG_LOCATE_PEER:
            w.take("key", KEY_LEN)
    elif t == MsgType.DISCOVERY_RESPONSE:
        w.take("u32", 4)
        flags = w.take("flags", 1)
        if flags is not None and flags & RESPONSE_FLAG_LOCATED:
            w.take("key", KEY_LEN)
            w.endpoint()
        if flags is not None and flags & RESPONSE_FLAG_RECORD:
            w.take("loc", LOCATION_RECORD_LEN)
        if flags is not None and flags & RESPONSE_FLAG_ALTERNATE:
            w.take("key", KEY_LEN)  # the alternate's relay
            w.endpoint()
            w.take("loc", LOCATION_RECORD_LEN)
        w.blobs("ann")
    elif t in (MsgType.GOSSIP, MsgType.PULL_REPLY):
        w.blobs("ann")
        if t == MsgType.GOSSIP:
            w.versions()  # dead notices
    elif t in (MsgType.GOSSIP_ACK, MsgType.LOCATION_ACK):
        w.take("u8", 1)
    elif t == MsgType.DIGEST:
        for _ in range(DIGEST_BUCKETS):
            w.take("u16", 2)
            w.take("hash", DIGEST_HASH_LEN)
    elif t == MsgType.DIGEST_REPLY:
        w.take("bool", 1)
        w.take("u16", 2)  # the buckets that differ, a bit each
        w.versions()
    elif t == MsgType.PULL:
        n = w.take("count", 1)
        for _ in range(n or 0):
            w.take("key", KEY_LEN)
    elif t == MsgType.LOCATION_STORE:
        n = w.take("count", 1)
        for _ in range(n or 0):
            w.take("loc", LOCATION_RECORD_LEN)
    elif t == MsgType.LEG_OPEN:
        w.take("sid", SESSION_ID_LEN)
        w.take("key", KEY_LEN)
        w.take("key", KEY_LEN)
        w.take("u8", 1)
    elif t == MsgType.LEG_ANSWER:
        w.take("sid", SESSION_ID_LEN)
        w.take("enum", 1, _ENUM_END["status"])
    elif t == MsgType.LEG_CLOSE:
        w.take("sid", SESSION_ID_LEN)
        w.take("enum", 1, _ENUM_END["close"])
    elif t in (MsgType.PROBE_REQUEST, MsgType.PROBE_ANSWER):
        w.take("key", KEY_LEN)
        w.take("u64", 8)
        if t == MsgType.PROBE_ANSWER:
            w.take("bool", 1)
    return w.fields


def announcement_fields(data: bytes) -> list[Field]:
    """The fields of a signed announcement (type 0x30), signature last."""
    w = _Walker(data, 0, max(0, len(data) - SIGNATURE_LEN))
    w.take("type", 1)
    w.take("u8", 1)
    w.take("key", KEY_LEN)
    w.take("u8", 1)
    w.take("u32", 4)
    w.take("pct", 1)
    w.take("u32", 4)
    w.str8(MAX_REGION_LEN)
    n = w.take("count", 1)
    for _ in range(min(n or 0, 16)):
        w.endpoint()
    w.take("ms", 8)
    w.take("u32", 4)
    fields = w.fields
    if len(data) >= SIGNATURE_LEN:
        fields.append(Field(len(data) - SIGNATURE_LEN, SIGNATURE_LEN, "sig"))
    return fields


LOCATION_SIGNED = LOCATION_RECORD_LEN - SIGNATURE_LEN  # 81
"""Bytes of a LOCATION record the signature covers (proto/location.py)."""
LOCATION_HOME = slice(34, 66)
"""Where a LOCATION record names its home relay (the signer)."""


def signed_location(
    peer: bytes,
    signer: RelayIdentity,
    issued_ms: int,
    ttl_s: int,
    *,
    standby: bool = False,
    rtt_ms: int = RTT_UNKNOWN,
    flags: int | None = None,
) -> bytes:
    """A LOCATION record built by hand along proto/location.py's layout and
    signed by ``signer`` (named in it as the home relay), so what
    ``encode_location`` refuses can be signed too: a ttl out of range, a
    clock past 2^64, flag bits nobody defined (``flags`` overrides
    ``standby``)."""
    if flags is None:
        flags = LOCATION_FLAG_STANDBY if standby else 0
    signed = bytes((MsgType.LOCATION, PROTOCOL_VERSION)) + peer + signer.public.raw
    signed += (issued_ms & U64_MASK).to_bytes(8, "big") + (ttl_s & 0xFFFFFFFF).to_bytes(4, "big")
    signed += bytes((flags & 0xFF,)) + (rtt_ms & 0xFFFF).to_bytes(2, "big")
    assert len(signed) == LOCATION_SIGNED
    return signed + signer.sign(signed)


def location_fields(data: bytes) -> list[Field]:
    """The fields of a signed LOCATION record (type 0x32), signature last."""
    w = _Walker(data, 0, max(0, len(data) - SIGNATURE_LEN))
    w.take("type", 1)
    w.take("u8", 1)
    w.take("key", KEY_LEN)  # the peer
    w.take("key", KEY_LEN)  # its home relay
    w.take("ms", 8)
    w.take("u32", 4)  # ttl_s
    w.take("flags", 1)  # bit 0 standby
    w.take("rtt", 2)
    fields = w.fields
    if len(data) >= SIGNATURE_LEN:
        fields.append(Field(len(data) - SIGNATURE_LEN, SIGNATURE_LEN, "sig"))
    return fields


def boundaries(fields: list[Field], end: int) -> list[int]:
    """Every offset where a field starts or ends."""
    cuts = {0, end}
    for f in fields:
        cuts.add(f.off)
        cuts.add(f.off + f.size)
    return sorted(c for c in cuts if c <= end)
