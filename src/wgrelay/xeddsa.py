"""XEdDSA: Ed25519-compatible signatures made with a WireGuard (X25519) key.

A mesh member is its WireGuard public key, a Montgomery u-coordinate. To let
it sign usage receipts and operator claims without a second key to manage,
we use Signal's XEdDSA (https://signal.org/docs/specifications/xeddsa/):

* The signer turns its X25519 private scalar ``k`` (clamped, as WireGuard
  keeps it) into an Edwards key pair: ``E = kB``; the public key ``A`` is
  ``E`` with its sign bit forced to 0, and the private scalar ``a`` is ``k``
  or ``-k`` (whichever gives that ``A``).
* The signature is an ordinary Ed25519 signature ``R || s`` under ``A``,
  with a nonce ``r = hash1(a || M || Z) mod q`` from 64 random bytes ``Z``
  (so a bad RNG alone does not leak ``a``, and a known ``Z`` does not either).
* A verifier that knows only the u-coordinate computes ``A``'s encoding:
  ``y = (u - 1) / (u + 1) mod p`` with sign bit 0, and runs plain Ed25519
  verification (libsodium's ``crypto_sign_open``, which also
  refuses small-order keys and non-canonical ``s``).

Only the field inversion for ``u -> y`` is done in Python integers (public
data, no secret involved); every operation on secrets goes through
libsodium: the base-point multiplication, scalar reduction, negation,
multiplication and addition.
"""

from __future__ import annotations

import functools
import hashlib
import os

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing

from wgrelay.errors import InvalidKey

P = 2**255 - 19
"""The field prime of Curve25519 / Ed25519."""
SIGNATURE_LEN = 64
RANDOM_LEN = 64
_HASH1_PREFIX = b"\xfe" + b"\xff" * 31
"""hash_1's domain prefix: 2^256 - 1 - 1, 32 bytes little endian (the spec's
``hash_i(X) = hash(2^b - 1 - i || X)`` with b = 256, i = 1)."""


def _reduce(h64: bytes) -> bytes:
    return bytes(sodium.crypto_core_ed25519_scalar_reduce(h64))


@functools.lru_cache(maxsize=4096)
def edwards_public(u: bytes) -> bytes:
    """The Ed25519 public key (sign bit 0) that XEdDSA pairs with the X25519
    public key ``u``. ``InvalidKey`` for a u with no such point (u = -1 mod p,
    or not canonical). Cached: the inversion is over half of a verification
    (90 of 160 us), and a relay verifies its mesh's few keys again and again."""
    if len(u) != 32:
        raise InvalidKey("X25519 public keys are 32 bytes")
    # The spec's verify refuses u >= p before anything else, the top bit
    # included. Masking it (as X25519 does) made u and u + 2^255 two keys
    # of one signer: its signatures verified under both, and the ledger
    # counts them apart (use run up under one, the other's balance clean)
    n = int.from_bytes(u, "little")
    if n >= P or n + 1 == P:
        raise InvalidKey("not a usable X25519 public key")
    y = (n - 1) * pow(n + 1, P - 2, P) % P
    return y.to_bytes(32, "little")  # bit 255 (the sign) is 0: y < p < 2^255


def _key_pair(k: bytes) -> tuple[bytes, bytes]:
    """(A, a) for the X25519 private key ``k``: the spec's calculate_key_pair."""
    scalar = bytearray(k)
    scalar[0] &= 248  # the clamping X25519 applies to k (wg keys have it already)
    scalar[31] = (scalar[31] & 127) | 64
    e = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(bytes(scalar)))
    reduced = _reduce(bytes(scalar) + bytes(32))
    if e[31] & 0x80:  # E's sign bit is set: A = -E, whose scalar is -k
        a = bytes(sodium.crypto_core_ed25519_scalar_negate(reduced))
        public = e[:31] + bytes((e[31] & 0x7F,))
    else:
        a = reduced
        public = e
    return public, a


def sign(private_key: bytes, message: bytes, random: bytes | None = None) -> bytes:
    """A 64-byte XEdDSA signature of ``message`` with the X25519 private key.

    ``random`` (64 bytes) is for test vectors only; by default it is fresh."""
    if len(private_key) != 32:
        raise InvalidKey("X25519 private keys are 32 bytes")
    z = os.urandom(RANDOM_LEN) if random is None else random
    if len(z) != RANDOM_LEN:
        raise ValueError("XEdDSA takes 64 random bytes")
    public, a = _key_pair(private_key)
    r = _reduce(hashlib.sha512(_HASH1_PREFIX + a + message + z).digest())
    big_r = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(r))
    h = _reduce(hashlib.sha512(big_r + public + message).digest())
    s = bytes(sodium.crypto_core_ed25519_scalar_add(r, sodium.crypto_core_ed25519_scalar_mul(h, a)))
    return big_r + s


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is an XEdDSA signature of ``message`` by the
    holder of the X25519 public key (plain Ed25519 verification under the
    converted key; never raises)."""
    if len(signature) != SIGNATURE_LEN:
        return False
    try:
        a = edwards_public(public_key)
    except InvalidKey:
        return False
    try:
        # crypto_sign_open: libsodium's Ed25519 verification (what
        # crypto_sign_verify_detached runs), on signature || message
        nacl.signing.VerifyKey(a).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True
