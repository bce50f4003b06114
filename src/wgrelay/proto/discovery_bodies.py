"""Discovery bodies: DISCOVERY_QUERY, DISCOVERY_RESPONSE and its peer location.

Split from messages.py (which re-exports them) to keep each module readable
in one sitting; the layouts are in docs/PROTOCOL.md section 3.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PublicKey
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import (
    KEY_LEN,
    LOCATION_RECORD_LEN,
    MAX_REGION_LEN,
    QUERY_FLAG_LOCATE_PEER,
    RESPONSE_FLAG_ALTERNATE,
    RESPONSE_FLAG_LOCATED,
    RESPONSE_FLAG_MORE,
    RESPONSE_FLAG_RECORD,
    MsgType,
)


def _pull_key(b: Buffer) -> PublicKey:
    return PublicKey(b.pull_bytes(KEY_LEN))


@dataclass(frozen=True, slots=True)
class DiscoveryQuery(Body):
    """Ask a relay for relays it knows (filtered) and/or where a peer is registered.

    ``flags`` holds the want-relays bit; the locate bit on the wire is derived
    from ``locate`` (so the two can never disagree).
    """

    TYPE: ClassVar[MsgType] = MsgType.DISCOVERY_QUERY
    query_id: int
    flags: int
    max_results: int = 6
    required_caps: int = 0
    region: str = ""
    locate: PublicKey | None = None
    page: int = 0
    """Which page of the relay list (``max_results`` a page), from 0."""

    def encode_body(self, w: Writer) -> None:
        flags = self.flags & ~QUERY_FLAG_LOCATE_PEER
        if self.locate is not None:
            flags |= QUERY_FLAG_LOCATE_PEER
        w.push_u32(self.query_id)
        w.push_u8(flags)
        w.push_u8(self.max_results)
        w.push_u32(self.required_caps)
        w.push_str8(self.region, MAX_REGION_LEN)
        w.push_u16(self.page)
        if self.locate is not None:
            w.push_bytes(self.locate.raw, KEY_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        qid = b.pull_u32()
        flags = b.pull_u8()
        max_results = b.pull_u8()
        caps = b.pull_u32()
        region = b.pull_str8(MAX_REGION_LEN)
        page = b.pull_u16()
        locate = _pull_key(b) if flags & QUERY_FLAG_LOCATE_PEER else None
        return cls(
            query_id=qid,
            flags=flags & ~QUERY_FLAG_LOCATE_PEER,  # carried by `locate` instead
            max_results=max_results,
            required_caps=caps,
            region=region,
            locate=locate,
            page=page,
        )


@dataclass(frozen=True, slots=True)
class PeerLocation:
    """Where a peer is registered: its home relay's key and endpoint."""

    relay: PublicKey
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class DiscoveryResponse(Body):
    """Signed announcements (each verifiable on its own) and an optional location."""

    TYPE: ClassVar[MsgType] = MsgType.DISCOVERY_RESPONSE
    query_id: int
    announcements: tuple[bytes, ...] = ()
    location: PeerLocation | None = None
    record: bytes | None = None
    """The home relay's signed LOCATION record behind ``location``, when known."""
    more: bool = False
    """More relays than this page holds."""
    alternate: PeerLocation | None = None
    alternate_record: bytes | None = None
    """A second relay where the peer accepts sessions, with that relay's
    signed record (always: an alternate is never unsigned)."""

    def encode_body(self, w: Writer) -> None:
        flags = RESPONSE_FLAG_LOCATED if self.location is not None else 0
        if self.record is not None:
            if self.location is None:
                raise LocalProtocolError("a location record goes with a location")
            flags |= RESPONSE_FLAG_RECORD
        if (self.alternate is None) != (self.alternate_record is None) or (
            self.alternate is not None and self.record is None
        ):
            raise LocalProtocolError("an alternate goes with its record, after a signed location")
        flags |= RESPONSE_FLAG_ALTERNATE if self.alternate is not None else 0
        flags |= RESPONSE_FLAG_MORE if self.more else 0
        w.push_u32(self.query_id)
        w.push_u8(flags)
        if self.location is not None:
            w.push_bytes(self.location.relay.raw, KEY_LEN)
            w.push_endpoint(self.location.endpoint)
        if self.record is not None:
            w.push_bytes(self.record, LOCATION_RECORD_LEN)
        if self.alternate is not None and self.alternate_record is not None:
            w.push_bytes(self.alternate.relay.raw, KEY_LEN)
            w.push_endpoint(self.alternate.endpoint)
            w.push_bytes(self.alternate_record, LOCATION_RECORD_LEN)
        w.push_u8(len(self.announcements))
        for ann in self.announcements:
            w.push_u16(len(ann))
            w.push_bytes(ann)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        qid = b.pull_u32()
        flags = b.pull_u8()
        known = RESPONSE_FLAG_LOCATED | RESPONSE_FLAG_RECORD | RESPONSE_FLAG_MORE
        if flags & ~(known | RESPONSE_FLAG_ALTERNATE):
            raise Malformed(f"unknown discovery response flags {flags:#04x}")
        location = alternate = None
        record = alternate_record = None
        if flags & RESPONSE_FLAG_LOCATED:
            location = PeerLocation(relay=_pull_key(b), endpoint=b.pull_endpoint())
        if flags & RESPONSE_FLAG_RECORD:
            if location is None:
                raise Malformed("a location record without a location")
            record = b.pull_bytes(LOCATION_RECORD_LEN)
        if flags & RESPONSE_FLAG_ALTERNATE:
            if record is None:
                raise Malformed("an alternate location without a signed first one")
            alternate = PeerLocation(relay=_pull_key(b), endpoint=b.pull_endpoint())
            alternate_record = b.pull_bytes(LOCATION_RECORD_LEN)
        n = b.pull_u8()
        anns = tuple(b.pull_bytes(b.pull_u16()) for _ in range(n))
        return cls(
            query_id=qid,
            announcements=anns,
            location=location,
            record=record,
            more=bool(flags & RESPONSE_FLAG_MORE),
            alternate=alternate,
            alternate_record=alternate_record,
        )
