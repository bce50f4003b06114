"""The encrypted, authenticated envelope around every control message.

Layout (offsets in bytes; all integers big endian)::

    0    type        u8    MsgType (0x20..0x2F)
    1    version     u8    PROTOCOL_VERSION
    2    flags       u8    bit0 COOKIE: a cookie follows the nonce
                           bit1 FROM_SERVER: sent by the server side of the channel
                           other bits must be zero
    3    sender      32B   sender's X25519 public key
    35   nonce       24B   random
    59   [cookie     16B]  only when COOKIE is set
    ..   ciphertext        XChaCha20-Poly1305(plaintext), 16-byte tag, AD = bytes 0..here
    plaintext = timestamp_us u64 | body

Keys come from libsodium's ``crypto_kx`` between the two static X25519 keys:
``BLAKE2b-512(X25519(sk, pk) || client_pk || server_pk)`` split into one key per
direction. Only the holders of the two private keys can derive them, so a valid
tag authenticates both ends (the peer's WireGuard key and the relay's key) and
separate directions stop reflection. The whole header is associated data, so the
type, the flags and the cookie cannot be changed in flight.

Replay protection: ``timestamp_us`` is the sender's wall clock in microseconds,
made strictly increasing per sender (``Timestamper``). The receiver rejects a
timestamp further than ``MAX_CLOCK_SKEW_S`` from its own clock (``StaleTimestamp``)
and keeps per sender a ``ReplayWindow`` of the newest values it accepted
(``Replayed``). Clocks alone would allow replays inside the skew; the window alone
would forget across restarts; together a replay needs both a restart and the
skew window (see docs/SECURITY.md).
"""

from __future__ import annotations

import bisect
import struct
from array import array
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from wgrelay.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    Malformed,
    Oversize,
    Replayed,
    StaleTimestamp,
    Truncated,
    UnknownType,
    UnsupportedVersion,
)
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    BOTH_DIRECTIONS,
    CONTROL_TYPES,
    COOKIE_LEN,
    KEY_LEN,
    MAX_CONTROL_SIZE,
    NONCE_LEN,
    PROTOCOL_VERSION,
    SERVER_TO_CLIENT,
    TAG_LEN,
    TIMESTAMP_LEN,
    MsgType,
)
from wgrelay.proto.messages import Body, RelayMessage, decode_body, encode_body

FLAG_COOKIE = 0x01
FLAG_FROM_SERVER = 0x02
_KNOWN_FLAGS = FLAG_COOKIE | FLAG_FROM_SERVER

HEADER_LEN = 3 + KEY_LEN + NONCE_LEN  # 59
MIN_CONTROL_SIZE = HEADER_LEN + TAG_LEN + TIMESTAMP_LEN  # 83

MAX_CLOCK_SKEW_S = 120.0
REPLAY_WINDOW_SIZE = 16

_TS = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """One direction-separated key pair of a control channel."""

    rx: bytes
    tx: bytes
    from_server: bool
    """True when we are the server side (our messages carry FROM_SERVER)."""


def derive_client_keys(client_pk: bytes, client_sk: bytes, server_pk: bytes) -> ChannelKeys:
    try:
        rx, tx = sodium.crypto_kx_client_session_keys(client_pk, client_sk, server_pk)
    except nacl.exceptions.CryptoError:
        raise AuthenticationFailed("key exchange failed (weak public key)") from None
    return ChannelKeys(rx=rx, tx=tx, from_server=False)


def derive_server_keys(server_pk: bytes, server_sk: bytes, client_pk: bytes) -> ChannelKeys:
    try:
        rx, tx = sodium.crypto_kx_server_session_keys(server_pk, server_sk, client_pk)
    except nacl.exceptions.CryptoError:
        raise AuthenticationFailed("key exchange failed (weak public key)") from None
    return ChannelKeys(rx=rx, tx=tx, from_server=True)


@dataclass(frozen=True, slots=True)
class ControlHeader:
    """The cleartext part of a control datagram, checked without any crypto."""

    msg_type: MsgType
    flags: int
    sender: PublicKey
    nonce: bytes
    cookie: bytes | None
    ciphertext_offset: int

    @property
    def from_server(self) -> bool:
        return bool(self.flags & FLAG_FROM_SERVER)


def parse_control_header(data: bytes) -> ControlHeader:
    """Cheap structural checks (type, version, size, flags) before any crypto."""
    n = len(data)
    if n < 2:
        raise Truncated("shorter than type + version")
    t = data[0]
    if t not in CONTROL_TYPES:
        raise UnknownType(f"not a control type: {t:#04x}")
    if data[1] != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {data[1]} (we speak {PROTOCOL_VERSION})")
    if n > MAX_CONTROL_SIZE:
        raise Oversize(f"{n} bytes > {MAX_CONTROL_SIZE}")
    if n < MIN_CONTROL_SIZE:
        raise Truncated(f"{n} bytes < {MIN_CONTROL_SIZE}")
    flags = data[2]
    if flags & ~_KNOWN_FLAGS:
        raise Malformed(f"unknown flags {flags:#04x}")
    msg_type = MsgType(t)
    if bool(flags & FLAG_FROM_SERVER) != (msg_type in SERVER_TO_CLIENT) and (
        msg_type not in BOTH_DIRECTIONS
    ):
        raise Malformed(f"{msg_type.name} sent in the wrong direction", "wrong_direction")
    off = HEADER_LEN
    cookie = None
    if flags & FLAG_COOKIE:
        if n < MIN_CONTROL_SIZE + COOKIE_LEN:
            raise Truncated("cookie flag set but no room for it")
        cookie = bytes(data[off : off + COOKIE_LEN])
        off += COOKIE_LEN
    return ControlHeader(
        msg_type=msg_type,
        flags=flags,
        sender=PublicKey(bytes(data[3 : 3 + KEY_LEN])),
        nonce=bytes(data[3 + KEY_LEN : HEADER_LEN]),
        cookie=cookie,
        ciphertext_offset=off,
    )


def seal_control(
    body: Body,
    *,
    sender: bytes,
    keys: ChannelKeys,
    timestamp_us: int,
    nonce: bytes,
    cookie: bytes | None = None,
) -> bytes:
    """Encode and encrypt one control message."""
    if len(nonce) != NONCE_LEN:
        raise LocalProtocolError("nonce must be 24 bytes")
    if len(sender) != KEY_LEN:
        raise LocalProtocolError("sender key must be 32 bytes")
    flags = FLAG_FROM_SERVER if keys.from_server else 0
    header = bytearray((body.TYPE, PROTOCOL_VERSION, 0))
    header += sender
    header += nonce
    if cookie is not None:
        if len(cookie) != COOKIE_LEN:
            raise LocalProtocolError("cookie must be 16 bytes")
        flags |= FLAG_COOKIE
        header += cookie
    header[2] = flags
    ad = bytes(header)
    plaintext = _TS.pack(timestamp_us) + encode_body(body)
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, keys.tx)
    out = ad + ct
    if len(out) > MAX_CONTROL_SIZE:
        raise LocalProtocolError(f"{body.TYPE.name} of {len(out)} bytes exceeds the cap")
    return out


def open_control(data: bytes, header: ControlHeader, keys: ChannelKeys) -> tuple[int, RelayMessage]:
    """Decrypt and decode; returns (timestamp_us, body). Raises on any tampering."""
    if header.from_server == keys.from_server:
        raise AuthenticationFailed("message claims our own side of the channel")
    off = header.ciphertext_offset
    try:
        plaintext = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(data[off:]), bytes(data[:off]), header.nonce, keys.rx
        )
    except nacl.exceptions.CryptoError:
        raise AuthenticationFailed("control message failed authentication") from None
    (ts,) = _TS.unpack_from(plaintext)
    return int(ts), decode_body(header.msg_type, plaintext[TIMESTAMP_LEN:])


class Timestamper:
    """Strictly increasing microsecond timestamps from a (possibly stepping) clock.

    Two corrections come from the other end of a channel, both authenticated:
    ``raise_floor`` (it already accepted a newer timestamp from us, e.g. before
    we restarted with a clock that then stepped back) and ``offset_s`` (our
    clock is further from its clock than the skew window allows).
    """

    __slots__ = ("_last", "offset_s")

    def __init__(self) -> None:
        self._last = 0
        self.offset_s = 0.0

    def next(self, wall_s: float) -> int:
        ts = max(int((wall_s + self.offset_s) * 1_000_000), self._last + 1)
        self._last = ts
        return ts

    def raise_floor(self, ts_us: int) -> None:
        """Every later timestamp will be above ``ts_us``."""
        self._last = max(self._last, ts_us)

    def reset(self) -> None:
        """Follow the clock (with ``offset_s``) again, even below earlier values:
        only when the other end said our timestamps are too far ahead."""
        self._last = 0


class ReplayWindow:
    """Accepts each timestamp at most once, in about 0.3 KB per sender.

    Remembers the newest timestamp accepted and the ``depth`` accepted just
    below it (a sorted array of u64), so control messages may arrive out of
    order by up to ``depth`` messages. Anything at or below ``floor`` (the
    largest value pushed out of the array) is refused. The previous version
    kept a set and a heap of 128 Python ints, ~14 KB per sender: at the
    relay's configured limits that was ~430 MB; this is ~10 MB.
    """

    __slots__ = ("_recent", "depth", "floor", "newest")

    def __init__(self, depth: int = REPLAY_WINDOW_SIZE) -> None:
        self.depth = depth
        self.newest = 0
        self.floor = 0
        self._recent = array("Q")

    def check(self, ts: int) -> None:
        """Raise ``Replayed`` if ``ts`` was seen or is too old; does not record it."""
        if ts > self.newest:
            return
        if ts == self.newest or ts <= self.floor or ts in self._recent:
            raise Replayed(f"timestamp {ts} already seen or older than the window")

    def reset(self, floor: int) -> None:
        """Forget every value and refuse anything up to ``floor``.

        For a window whose values lie further in the future than the clock
        check lets any message be (the receiver's clock stepped back): nothing
        could ever be accepted again. Refusing everything up to the receiver's
        own clock keeps every message sent before safe from replay."""
        self.newest = floor
        self.floor = floor
        del self._recent[:]

    def accept(self, ts: int) -> None:
        self.check(ts)
        below = ts
        if ts > self.newest:
            below, self.newest = self.newest, ts
        if below > self.floor:
            recent = self._recent
            recent.insert(bisect.bisect_left(recent, below), below)
            if len(recent) > self.depth:
                self.floor = recent.pop(0)


def check_skew(ts_us: int, wall_s: float, max_skew_s: float = MAX_CLOCK_SKEW_S) -> None:
    if abs(ts_us / 1_000_000 - wall_s) > max_skew_s:
        raise StaleTimestamp(f"timestamp off by {ts_us / 1_000_000 - wall_s:+.0f} s")
