"""Stateless cookies: proof that a sender receives at its address.

The relay answers with a COOKIE_REPLY instead of doing what was asked when it
first needs that proof (return routability, as QUIC's address validation):

* before any public-key work for an unknown sender while under load;
* before binding a peer's registration (and with it its sessions) to an
  address, on the first REGISTER and whenever a peer shows up from a new one;
* instead of any reply that would be larger than the request, while the
  sender's address is not proven.

Layout::

    0  type     u8   COOKIE_REPLY (0x31)
    1  version  u8
    2  echo     8B   the first 8 bytes of the request's nonce
    10 cookie   16B  BLAKE2b-128(key=secret, sender_key || ip || port)

26 bytes, while the smallest control message is 83: the reply is always smaller
than what caused it, so the relay cannot be used as an amplifier. The cookie is
bound to the sender's key and address, so it proves only what it should: that
the holder of that key receives there. The relay keeps no state per cookie; the
secret rotates every ``COOKIE_ROTATION_S`` and cookies of the previous secret are
still accepted. The sender repeats its message with the cookie in the envelope
(flag COOKIE, inside the authenticated header, so it cannot be moved to another
message or key). The ``echo`` lets the sender ignore cookie replies it did not
ask for.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.endpoint import Endpoint
from wgrelay.errors import Malformed, Truncated, UnsupportedVersion
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


def cookie_mac(secret: bytes, sender: bytes, addr: Endpoint) -> bytes:
    """BLAKE2b-128 keyed with the secret over sender key, ASCII IP and u16 port."""
    msg = sender + addr[0].encode("ascii", "replace") + _PORT.pack(addr[1] & 0xFFFF)
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

    def make(self, sender: bytes, addr: Endpoint, now: float) -> bytes:
        self._maybe_rotate(now)
        return cookie_mac(self._secret, sender, addr)

    def check(self, cookie: bytes, sender: bytes, addr: Endpoint, now: float) -> bool:
        self._maybe_rotate(now)
        # constant-time comparisons: a timing leak would let an attacker forge cookies
        return hmac.compare_digest(cookie, cookie_mac(self._secret, sender, addr)) or (
            hmac.compare_digest(cookie, cookie_mac(self._previous, sender, addr))
        )
