"""WireGuard's handshake message sizes and mac1, which a relay can check.

A relay in port mode latches a session port to a source only when that source
sends a WireGuard handshake message whose mac1 verifies under the *other*
peer's static public key (the relay knows both keys: they are the peers'
wgrelay identities). mac1 needs no secret, so this proves nothing about who
sent it; what it proves is that the sender holds a handshake addressed to this
session's peer, which together with the source IP check (the registration's
public IP) keeps strangers from latching. See docs/SECURITY.md, "Port mode".

mac1 (WireGuard paper, section 5.4.4)::

    mac1_key = BLAKE2s-256("mac1----" || receiver's static public key)
    mac1     = BLAKE2s-128 keyed with mac1_key, over the message up to mac1

An initiation's mac1 is keyed by the responder's public key, a response's by
the initiator's.
"""

from __future__ import annotations

import hashlib
import hmac

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
KEEPALIVE_LEN = 32
"""A transport message with an empty packet: the smallest WireGuard message."""
MAC_LEN = 16
MAC1_LABEL = b"mac1----"

HANDSHAKE_LEN = {MESSAGE_INITIATION: INITIATION_LEN, MESSAGE_RESPONSE: RESPONSE_LEN}


def mac1_key(static_public: bytes) -> bytes:
    """The key for mac1s of messages *to* the owner of ``static_public``."""
    return hashlib.blake2s(MAC1_LABEL + static_public).digest()


def compute_mac1(key: bytes, message_before_mac1: bytes) -> bytes:
    return hashlib.blake2s(message_before_mac1, digest_size=MAC_LEN, key=key).digest()


def verify_mac1(key: bytes, message: bytes) -> bool:
    """Whether a whole initiation or response carries a valid mac1 for ``key``."""
    end = len(message) - MAC_LEN
    start = end - MAC_LEN
    if start <= 0:
        return False
    return hmac.compare_digest(compute_mac1(key, message[:start]), message[start:end])


def mac1_of(message: bytes) -> bytes:
    """The mac1 field of a whole handshake message (its identity for replay checks)."""
    return message[-2 * MAC_LEN : -MAC_LEN]


def is_handshake(message: bytes) -> bool:
    """An initiation or response of the exact size, reserved bytes zero."""
    n = HANDSHAKE_LEN.get(message[0]) if message else None
    return n is not None and len(message) == n and not any(message[1:4])
