"""Rendezvous (highest-random-weight) hashing: which k relays hold a peer's location.

Every relay scores every (peer, relay) pair with a keyed hash and the k
relays with the highest scores hold the peer's location record. Anyone with
(almost) the same list of live relays computes (almost) the same k without
talking to anyone, and when a relay joins or leaves only the peers whose top k
included it move: about k/N of them, the minimum any scheme can do (the
one-hop DHT of Dynamo-style systems, without a ring to maintain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from wgrelay.keys import PublicKey

DEFAULT_REPLICAS = 3
_PERSON = b"wgrelay-hrw-v1"


def weight(peer: PublicKey, relay: PublicKey) -> int:
    """The score of ``relay`` for ``peer`` (the same on every machine)."""
    digest = hashlib.blake2b(peer.raw + relay.raw, digest_size=8, person=_PERSON[:16]).digest()
    return int.from_bytes(digest, "big")


def holders(
    peer: PublicKey, relays: Iterable[PublicKey], k: int = DEFAULT_REPLICAS
) -> list[PublicKey]:
    """The ``k`` relays that hold ``peer``'s location, best first."""
    return sorted(relays, key=lambda r: (weight(peer, r), r.raw), reverse=True)[:k]
