"""Stateless cookies: return-routability before any public-key work.

When the relay is under load it answers a control message from a sender it has
no cached keys for with a COOKIE_REPLY instead of doing the X25519 computation::

    0  type     u8   COOKIE_REPLY (0x31)
    1  version  u8
    2  echo     8B   the first 8 bytes of the request's nonce
    10 cookie   16B  BLAKE2b-128(key=secret, ip || port)

26 bytes, while the smallest control message is 83: the reply is always smaller
than what caused it, so the relay cannot be used as an amplifier. The relay keeps
no state per cookie; the secret rotates every ``COOKIE_ROTATION_S`` and cookies
of the previous secret are still accepted. The sender repeats its message with
the cookie in the envelope (flag COOKIE, inside the authenticated header). The
``echo`` lets the sender ignore cookie replies it did not ask for.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.errors import Malformed, Truncated, UnsupportedVersion
from wgrelay.proto.buffer import Endpoint
from wgrelay.proto.constants import COOKIE_ECHO_LEN, COOKIE_LEN, PROTOCOL_VERSION, MsgType

COOKIE_ROTATION_S = 120.0
COOKIE_REPLY_LEN = 2 + COOKIE_ECHO_LEN + COOKIE_LEN
_PORT = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class CookieReply:
    echo: bytes
    cookie: bytes


def encode_cookie_reply(echo: bytes, cookie: bytes) -> bytes:
    return bytes((MsgType.COOKIE_REPLY, PROTOCOL_VERSION)) + echo[:COOKIE_ECHO_LEN] + cookie


def decode_cookie_reply(data: bytes) -> CookieReply:
    if len(data) < COOKIE_REPLY_LEN:
        raise Truncated(f"cookie reply of {len(data)} bytes")
    if len(data) > COOKIE_REPLY_LEN:
        raise Malformed("cookie reply too long", "trailing_bytes")
    if data[0] != MsgType.COOKIE_REPLY:
        raise Malformed("not a cookie reply")
    if data[1] != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {data[1]}")
    return CookieReply(echo=bytes(data[2:10]), cookie=bytes(data[10:]))


def _mac(secret: bytes, addr: Endpoint) -> bytes:
    msg = addr[0].encode("ascii", "replace") + _PORT.pack(addr[1] & 0xFFFF)
    return hashlib.blake2b(msg, key=secret, digest_size=COOKIE_LEN).digest()


class CookieJar:
    """Makes and checks address-bound cookies; sans-I/O (time is passed in)."""

    def __init__(
        self,
        now: float,
        rng: Callable[[int], bytes] = os.urandom,
        rotation_s: float = COOKIE_ROTATION_S,
    ) -> None:
        self._random = rng
        self._rotation_s = rotation_s
        self._secret = rng(32)
        self._previous = rng(32)
        self._rotated_at = now

    def _maybe_rotate(self, now: float) -> None:
        if now - self._rotated_at >= self._rotation_s:
            self._previous = self._secret
            self._secret = self._random(32)
            self._rotated_at = now

    def make(self, addr: Endpoint, now: float) -> bytes:
        self._maybe_rotate(now)
        return _mac(self._secret, addr)

    def check(self, cookie: bytes, addr: Endpoint, now: float) -> bool:
        self._maybe_rotate(now)
        # constant-time comparisons: a timing leak would let an attacker forge cookies
        return hmac.compare_digest(cookie, _mac(self._secret, addr)) or hmac.compare_digest(
            cookie, _mac(self._previous, addr)
        )
