"""RelayDirectory: every relay a relay knows, and whether it is alive (sans-I/O).

Membership is the set of signed announcements (proto/announce.py). Only a
relay's own signature changes its entry: an announcement replaces the held one
only if it is newer (``issued_ms``); an older or equal one is a replay and
ignored; one dated in the future (beyond the clock-skew window) or already
expired is refused. An entry expires with its announcement unless a newer one
refreshes it (relays re-sign every minute), so a relay that is gone for good
disappears everywhere within its TTL.

Liveness is faster than expiry, SWIM-style: the federation pings one member a
second; a member that answers neither a direct ping nor the indirect probes
through others becomes SUSPECT, and DEAD after ``suspect_timeout_s``. Suspicion
and death are local opinions that gossip spreads as notices; a notice makes
the receiver probe the relay itself, never believe it blindly. A newer
announcement from the relay refutes any notice (its ``issued_ms`` is its
incarnation number). Dead entries are kept until their announcement expires,
so a replayed old announcement cannot resurrect them.

Anti-entropy compares digests: relay keys fall in 16 buckets (top four bits of
the first byte), and each bucket has a count and a hash over the sorted
``key || issued_ms`` of its non-dead members. Two relays exchange only the
buckets that differ.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from wgrelay.keys import PublicKey, relay_x25519_public
from wgrelay.proto.announce import Announcement
from wgrelay.proto.constants import DIGEST_BUCKETS
from wgrelay.proto.envelope import MAX_CLOCK_SKEW_S
from wgrelay.proto.federation import DIGEST_HASH_LEN

_ISSUED = struct.Struct("!Q")

MAX_TTL_S = 3600
"""The longest announcement a relay takes (ours live 600 s and are re-signed
every minute): an entry must disappear within an hour of its relay."""
MAX_MEMBERS = 10_000
"""Far beyond any federation we expect; a bound on what signed-by-anyone
announcements can make a relay hold (each member costs about 1 kB)."""


class Liveness(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class Verdict(Enum):
    """What ``learn`` made of an announcement."""

    NEW = "new"
    NEWER = "newer"
    KNOWN = "known"
    """Not newer than the one held: a repeat or a replay."""
    FUTURE = "future"
    EXPIRED = "expired"
    SELF = "self"
    """Our own key in someone else's hands: only we announce ourselves."""
    LONG_LIVED = "long_lived"
    """A TTL over ``MAX_TTL_S``: it would outlive any refutation, for good."""
    FULL = "full"
    """A new relay while the directory holds ``MAX_MEMBERS``."""

    @property
    def changed(self) -> bool:
        return self in (Verdict.NEW, Verdict.NEWER)


@dataclass(slots=True)
class Member:
    key: PublicKey
    x25519: bytes
    announcement: Announcement
    liveness: Liveness
    since: float
    """When ``liveness`` last changed (monotonic)."""
    last_ack: float

    @property
    def issued_ms(self) -> int:
        return self.announcement.issued_ms


def bucket_of(key: PublicKey) -> int:
    return key.raw[0] >> 4


def _bucket_hash(items: list[bytes]) -> bytes:
    return hashlib.blake2b(b"".join(sorted(items)), digest_size=DIGEST_HASH_LEN).digest()


class RelayDirectory:
    def __init__(self, own: PublicKey) -> None:
        self.own = own
        self._members: dict[PublicKey, Member] = {}
        self._by_x25519: dict[bytes, PublicKey] = {}
        self.own_announcement: Announcement | None = None

    # ------------------------------------------------------------ learning

    def learn(self, ann: Announcement, now: float, wall_ms: int) -> Verdict:
        key = ann.info.key
        if key == self.own:
            return Verdict.SELF
        if ann.issued_ms > wall_ms + int(MAX_CLOCK_SKEW_S * 1000):
            return Verdict.FUTURE
        if ann.expires_ms() <= wall_ms:
            return Verdict.EXPIRED
        if ann.ttl_s > MAX_TTL_S:
            return Verdict.LONG_LIVED
        old = self._members.get(key)
        if old is None and len(self._members) >= MAX_MEMBERS:
            return Verdict.FULL
        if old is not None and ann.issued_ms <= old.issued_ms:
            return Verdict.KNOWN
        x = relay_x25519_public(key)
        if old is None:
            self._members[key] = Member(key, x, ann, Liveness.ALIVE, now, now)
            self._by_x25519[x] = key
            return Verdict.NEW
        old.announcement = ann
        if old.liveness is not Liveness.ALIVE:  # a newer announcement refutes
            old.liveness = Liveness.ALIVE
            old.since = now
        return Verdict.NEWER

    def set_own(self, ann: Announcement) -> None:
        self.own_announcement = ann

    def expire(self, wall_ms: int) -> list[PublicKey]:
        gone = [k for k, m in self._members.items() if m.announcement.expires_ms() <= wall_ms]
        for k in gone:
            m = self._members.pop(k)
            self._by_x25519.pop(m.x25519, None)
        return gone

    # ------------------------------------------------------------ liveness

    def acked(self, key: PublicKey, now: float) -> bool:
        """A sign of life; True if it changes the member's liveness."""
        m = self._members.get(key)
        if m is None:
            return False
        m.last_ack = now
        if m.liveness is Liveness.ALIVE:
            return False
        m.liveness = Liveness.ALIVE
        m.since = now
        return True

    def suspect(self, key: PublicKey, now: float) -> bool:
        m = self._members.get(key)
        if m is None or m.liveness is not Liveness.ALIVE:
            return False
        m.liveness = Liveness.SUSPECT
        m.since = now
        return True

    def declare_dead(self, key: PublicKey, now: float) -> bool:
        m = self._members.get(key)
        if m is None or m.liveness is Liveness.DEAD:
            return False
        m.liveness = Liveness.DEAD
        m.since = now
        return True

    # ------------------------------------------------------------ views

    def get(self, key: PublicKey) -> Member | None:
        return self._members.get(key)

    def by_x25519(self, x: bytes) -> Member | None:
        key = self._by_x25519.get(x)
        return self._members.get(key) if key is not None else None

    def members(self) -> list[Member]:
        return list(self._members.values())

    def live(self) -> list[PublicKey]:
        """Relays believed up (suspects too, until declared dead), ourselves included."""
        out = [k for k, m in self._members.items() if m.liveness is not Liveness.DEAD]
        return [self.own, *out] if self.own_announcement is not None else out

    def live_members_announcements(self) -> list[Announcement]:
        """Announcements of the live relays, ours first, in key order."""
        out = [self.own_announcement] if self.own_announcement is not None else []
        live = sorted(
            (m for m in self._members.values() if m.liveness is not Liveness.DEAD),
            key=lambda m: m.key.raw,
        )
        return out + [m.announcement for m in live]

    def live_announcements(self) -> list[bytes]:
        """Signed announcements of the live relays, ours first, in key order."""
        return [a.raw for a in self.live_members_announcements()]

    def __len__(self) -> int:
        return len(self._members)

    # ------------------------------------------------------------ anti-entropy

    def _versions(self) -> list[tuple[PublicKey, int]]:
        out = [
            (m.key, m.issued_ms) for m in self._members.values() if m.liveness is not Liveness.DEAD
        ]
        if self.own_announcement is not None:
            out.append((self.own, self.own_announcement.issued_ms))
        return out

    def digest(self) -> tuple[tuple[int, bytes], ...]:
        buckets: list[list[bytes]] = [[] for _ in range(DIGEST_BUCKETS)]
        for key, issued in self._versions():
            buckets[bucket_of(key)].append(key.raw + _ISSUED.pack(issued))
        return tuple(
            (
                len(items),
                hashlib.blake2b(b"".join(sorted(items)), digest_size=DIGEST_HASH_LEN).digest(),
            )
            for items in buckets
        )

    def differing(self, theirs: tuple[tuple[int, bytes], ...]) -> list[int]:
        return [
            i
            for i, (mine, other) in enumerate(zip(self.digest(), theirs, strict=True))
            if mine != other
        ]

    def versions_in(self, buckets: Iterable[int]) -> list[tuple[PublicKey, int]]:
        wanted = set(buckets)
        return sorted(
            ((k, i) for k, i in self._versions() if bucket_of(k) in wanted), key=lambda v: v[0].raw
        )

    def raw_announcement(self, key: PublicKey) -> bytes | None:
        if key == self.own:
            return self.own_announcement.raw if self.own_announcement is not None else None
        m = self._members.get(key)
        return m.announcement.raw if m is not None else None

    def issued(self, key: PublicKey) -> int | None:
        if key == self.own:
            return self.own_announcement.issued_ms if self.own_announcement is not None else None
        m = self._members.get(key)
        return m.issued_ms if m is not None else None
