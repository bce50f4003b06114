"""Relay-to-relay message bodies (types 0x40-0x4F), inside the usual envelope.

Relays talk to each other exactly as a peer talks to a relay: the relay that
starts an exchange is the client of the channel (its X25519 form of its
Ed25519 identity is the envelope's sender), the other answers as the server.
Only a relay may send these; the receiving relay accepts them from a sender
whose announcement it holds, and a GOSSIP may introduce an unknown relay by
carrying that relay's own announcement.

Layouts (all integers big endian)::

    GOSSIP         n u8 | n x (len u16 | ANNOUNCEMENT)
                   m u8 | m x (relay key 32B | issued_ms u64)    relays believed dead
    GOSSIP_ACK     new u8                                        how many were news
    DIGEST         16 x (count u16 | hash 8B)                    per bucket of keys
    DIGEST_REPLY   more u8 | buckets u16 | n u8 | n x (relay key 32B | issued_ms u64)
                   (buckets: bit i set = bucket i differs; entries are the
                   server's members in those buckets, a page of them)
    PULL           n u8 | n x relay key 32B
    PULL_REPLY     n u8 | n x (len u16 | ANNOUNCEMENT)
    LOCATION_STORE n u8 | n x LOCATION (145 B each)
    LOCATION_ACK   stored u8
    PROBE_REQUEST  target relay key 32B | nonce u64
    PROBE_ANSWER   target relay key 32B | nonce u64 | alive u8
    LEG_OPEN       session 8B | initiator key 32B | target key 32B | hops u8
    LEG_ANSWER     session 8B | status u8 (ConnectionResponse's Status)
    LEG_CLOSE      session 8B | reason u8 (SessionClose's CloseReason)

The LEG_* messages join one session across two relays (relay/legs.py). Each
is a one-way notice sent on the sender's own channel to the other relay, so
LEG_ANSWER and LEG_CLOSE from the exit relay arrive as requests too. ``hops``
counts the relays on the path, the receiver included (2 for A-R1-R2-B), at
most ``MAX_PATH_RELAYS``.

A bucket is the top four bits of a relay key's first byte; its hash is the
first 8 bytes of BLAKE2b over the sorted ``key || issued_ms`` of the live
announcements in it (discovery/directory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PublicKey
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import (
    DIGEST_BUCKETS,
    KEY_LEN,
    LOCATION_RECORD_LEN,
    MAX_DIGEST_ENTRIES,
    MAX_PATH_RELAYS,
    MAX_PULL_KEYS,
    MAX_RECORDS_PER_MESSAGE,
    SESSION_ID_LEN,
    CloseReason,
    MsgType,
    Status,
)

DIGEST_HASH_LEN = 8
MAX_DEAD_NOTICES = 8


def _push_blobs(w: Writer, blobs: tuple[bytes, ...]) -> None:
    w.push_u8(len(blobs))
    for blob in blobs:
        w.push_u16(len(blob))
        w.push_bytes(blob)


def _pull_blobs(b: Buffer) -> tuple[bytes, ...]:
    return tuple(b.pull_bytes(b.pull_u16()) for _ in range(b.pull_u8()))


def _push_versions(w: Writer, versions: tuple[tuple[PublicKey, int], ...]) -> None:
    w.push_u8(len(versions))
    for key, issued_ms in versions:
        w.push_bytes(key.raw, KEY_LEN)
        w.push_u64(issued_ms)


def _pull_versions(b: Buffer) -> tuple[tuple[PublicKey, int], ...]:
    return tuple((PublicKey(b.pull_bytes(KEY_LEN)), b.pull_u64()) for _ in range(b.pull_u8()))


@dataclass(frozen=True, slots=True)
class Gossip(Body):
    """Announcements to merge (raw, each verified on its own), and relays the
    sender believes dead at the given announcement (a newer one refutes it)."""

    TYPE: ClassVar[MsgType] = MsgType.GOSSIP
    announcements: tuple[bytes, ...] = ()
    dead: tuple[tuple[PublicKey, int], ...] = ()

    def encode_body(self, w: Writer) -> None:
        if len(self.dead) > MAX_DEAD_NOTICES:
            raise LocalProtocolError(f"at most {MAX_DEAD_NOTICES} dead notices")
        _push_blobs(w, self.announcements)
        _push_versions(w, self.dead)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        anns = _pull_blobs(b)
        dead = _pull_versions(b)
        if len(dead) > MAX_DEAD_NOTICES:
            raise Malformed(f"{len(dead)} dead notices")
        return cls(anns, dead)


@dataclass(frozen=True, slots=True)
class GossipAck(Body):
    TYPE: ClassVar[MsgType] = MsgType.GOSSIP_ACK
    new: int = 0

    def encode_body(self, w: Writer) -> None:
        w.push_u8(self.new)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(b.pull_u8())


@dataclass(frozen=True, slots=True)
class Digest(Body):
    """(count, hash) per bucket of the sender's live relays."""

    TYPE: ClassVar[MsgType] = MsgType.DIGEST
    buckets: tuple[tuple[int, bytes], ...]

    def encode_body(self, w: Writer) -> None:
        if len(self.buckets) != DIGEST_BUCKETS:
            raise LocalProtocolError(f"a digest has {DIGEST_BUCKETS} buckets")
        for count, digest in self.buckets:
            w.push_u16(count)
            w.push_bytes(digest, DIGEST_HASH_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(
            tuple((b.pull_u16(), b.pull_bytes(DIGEST_HASH_LEN)) for _ in range(DIGEST_BUCKETS))
        )


@dataclass(frozen=True, slots=True)
class DigestReply(Body):
    """What the server holds in the buckets that differ (a page of it)."""

    TYPE: ClassVar[MsgType] = MsgType.DIGEST_REPLY
    entries: tuple[tuple[PublicKey, int], ...]
    buckets: int = 0
    """Bit i set: bucket i differs between the two relays."""
    more: bool = False

    def encode_body(self, w: Writer) -> None:
        if len(self.entries) > MAX_DIGEST_ENTRIES:
            raise LocalProtocolError(f"at most {MAX_DIGEST_ENTRIES} entries a reply")
        w.push_u8(1 if self.more else 0)
        w.push_u16(self.buckets)
        _push_versions(w, self.entries)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        more = b.pull_u8()
        if more > 1:
            raise Malformed(f"more must be 0 or 1, got {more}")
        buckets = b.pull_u16()
        entries = _pull_versions(b)
        if len(entries) > MAX_DIGEST_ENTRIES:
            raise Malformed(f"{len(entries)} digest entries")
        return cls(entries, buckets, more == 1)


@dataclass(frozen=True, slots=True)
class Pull(Body):
    TYPE: ClassVar[MsgType] = MsgType.PULL
    keys: tuple[PublicKey, ...]

    def encode_body(self, w: Writer) -> None:
        if len(self.keys) > MAX_PULL_KEYS:
            raise LocalProtocolError(f"at most {MAX_PULL_KEYS} keys a pull")
        w.push_u8(len(self.keys))
        for key in self.keys:
            w.push_bytes(key.raw, KEY_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        n = b.pull_u8()
        if n > MAX_PULL_KEYS:
            raise Malformed(f"{n} keys in a pull")
        return cls(tuple(PublicKey(b.pull_bytes(KEY_LEN)) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class PullReply(Body):
    TYPE: ClassVar[MsgType] = MsgType.PULL_REPLY
    announcements: tuple[bytes, ...] = ()

    def encode_body(self, w: Writer) -> None:
        _push_blobs(w, self.announcements)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(_pull_blobs(b))


@dataclass(frozen=True, slots=True)
class LocationStore(Body):
    """Signed location records for the receiver to hold."""

    TYPE: ClassVar[MsgType] = MsgType.LOCATION_STORE
    records: tuple[bytes, ...]

    def encode_body(self, w: Writer) -> None:
        if len(self.records) > MAX_RECORDS_PER_MESSAGE:
            raise LocalProtocolError(f"at most {MAX_RECORDS_PER_MESSAGE} records a message")
        w.push_u8(len(self.records))
        for rec in self.records:
            w.push_bytes(rec, LOCATION_RECORD_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        n = b.pull_u8()
        if n > MAX_RECORDS_PER_MESSAGE:
            raise Malformed(f"{n} location records")
        return cls(tuple(b.pull_bytes(LOCATION_RECORD_LEN) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class LocationAck(Body):
    TYPE: ClassVar[MsgType] = MsgType.LOCATION_ACK
    stored: int = 0

    def encode_body(self, w: Writer) -> None:
        w.push_u8(self.stored)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(b.pull_u8())


@dataclass(frozen=True, slots=True)
class ProbeRequest(Body):
    """Ask a relay to ping ``target`` for us (SWIM's indirect probe)."""

    TYPE: ClassVar[MsgType] = MsgType.PROBE_REQUEST
    target: PublicKey
    nonce: int

    def encode_body(self, w: Writer) -> None:
        w.push_bytes(self.target.raw, KEY_LEN)
        w.push_u64(self.nonce)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(PublicKey(b.pull_bytes(KEY_LEN)), b.pull_u64())


@dataclass(frozen=True, slots=True)
class ProbeAnswer(Body):
    TYPE: ClassVar[MsgType] = MsgType.PROBE_ANSWER
    target: PublicKey
    nonce: int
    alive: bool

    def encode_body(self, w: Writer) -> None:
        w.push_bytes(self.target.raw, KEY_LEN)
        w.push_u64(self.nonce)
        w.push_u8(1 if self.alive else 0)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        target = PublicKey(b.pull_bytes(KEY_LEN))
        nonce = b.pull_u64()
        alive = b.pull_u8()
        if alive > 1:
            raise Malformed(f"alive must be 0 or 1, got {alive}")
        return cls(target, nonce, alive == 1)


def _check_sid(sid: bytes) -> None:
    if len(sid) != SESSION_ID_LEN:
        raise LocalProtocolError("session ids are 8 bytes")


@dataclass(frozen=True, slots=True)
class LegOpen(Body):
    """The entry relay asks the exit relay to carry session ``session_id``
    from ``initiator`` (registered at the entry) to ``target`` (registered
    at the exit); the same id on both relays, so data frames pass unchanged.
    ``port``: the entry relay's session port for the leg (0: framed only);
    the exit relay sends the leg's packets there, raw, so both relays can
    forward the whole path in port mode (and in the kernel)."""

    TYPE: ClassVar[MsgType] = MsgType.LEG_OPEN
    session_id: bytes
    initiator: PublicKey
    target: PublicKey
    hops: int = 2
    port: int = 0

    def encode_body(self, w: Writer) -> None:
        _check_sid(self.session_id)
        if not 2 <= self.hops <= MAX_PATH_RELAYS:
            raise LocalProtocolError(f"a leg's path has 2 to {MAX_PATH_RELAYS} relays")
        w.push_bytes(self.session_id)
        w.push_bytes(self.initiator.raw, KEY_LEN)
        w.push_bytes(self.target.raw, KEY_LEN)
        w.push_u8(self.hops)
        w.push_u16(self.port)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        initiator = PublicKey(b.pull_bytes(KEY_LEN))
        target = PublicKey(b.pull_bytes(KEY_LEN))
        hops = b.pull_u8()
        if not 2 <= hops <= MAX_PATH_RELAYS:
            raise Malformed(f"hops must be 2 to {MAX_PATH_RELAYS}, got {hops}")
        return cls(sid, initiator, target, hops, b.pull_u16())


@dataclass(frozen=True, slots=True)
class LegAnswer(Body):
    """The exit relay's answer to LEG_OPEN: SUCCESS once the target accepted.
    ``port``: the exit relay's session port for the leg (0: framed only)."""

    TYPE: ClassVar[MsgType] = MsgType.LEG_ANSWER
    session_id: bytes
    status: Status
    port: int = 0

    def encode_body(self, w: Writer) -> None:
        _check_sid(self.session_id)
        w.push_bytes(self.session_id)
        w.push_u8(self.status)
        w.push_u16(self.port)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        v = b.pull_u8()
        try:
            status = Status(v)
        except ValueError:
            raise Malformed(f"unknown Status {v}") from None
        return cls(sid, status, b.pull_u16())


@dataclass(frozen=True, slots=True)
class LegClose(Body):
    """Either relay ends a leg (its side of the session ended)."""

    TYPE: ClassVar[MsgType] = MsgType.LEG_CLOSE
    session_id: bytes
    reason: CloseReason = CloseReason.NORMAL

    def encode_body(self, w: Writer) -> None:
        _check_sid(self.session_id)
        w.push_bytes(self.session_id)
        w.push_u8(self.reason)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        v = b.pull_u8()
        try:
            return cls(sid, CloseReason(v))
        except ValueError:
            raise Malformed(f"unknown CloseReason {v}") from None


FEDERATION_BODIES: tuple[type[Body], ...] = (
    Gossip,
    GossipAck,
    Digest,
    DigestReply,
    Pull,
    PullReply,
    LocationStore,
    LocationAck,
    ProbeRequest,
    ProbeAnswer,
    LegOpen,
    LegAnswer,
    LegClose,
)
