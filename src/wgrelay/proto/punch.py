"""PUNCH and MAPPING_PROBE: hole punching through the relay (port mode).

The relay tells both sides of a session each WireGuard's public mapping and
how each NAT maps, and starts coordinated direct tries (docs/PROTOCOL.md 2b).
Kept apart from messages.py, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import (
    MAPPING_PROBE_LEN,
    PROTOCOL_VERSION,
    PUNCH_ENDPOINTS,
    PUNCH_FLAG_GO,
    PUNCH_MAPPING_SHIFT_MINE,
    PUNCH_MAPPING_SHIFT_PEER,
    SESSION_ID_LEN,
    MappingKind,
    MsgType,
)


def _check_session_id(sid: bytes) -> None:
    if len(sid) != SESSION_ID_LEN:
        raise LocalProtocolError("session ids are 8 bytes")


@dataclass(frozen=True, slots=True)
class Punch(Body):
    """Port mode: a coordinated direct try (hole punching through the relay).

    An agent asks (``go`` False, no endpoints). The relay answers both sides
    of the session at the same moment with ``go`` set and ``endpoints`` =
    (the receiver's WireGuard mapping, the peer's), as its session ports see
    them: both move WireGuard to the peer's mapping now (simultaneous open).
    The relay also sends it without ``go`` when the mappings become known or
    change (information: candidates for status and for the next try).
    """

    TYPE: ClassVar[MsgType] = MsgType.PUNCH
    session_id: bytes
    nonce: int
    go: bool = False
    endpoints: tuple[Endpoint, ...] = ()
    mine: MappingKind = MappingKind.UNKNOWN
    """(From the relay) how the receiver's NAT maps WireGuard's socket."""
    peer: MappingKind = MappingKind.UNKNOWN
    """(From the relay) how the peer's does."""

    def encode_body(self, w: Writer) -> None:
        _check_session_id(self.session_id)
        if len(self.endpoints) > PUNCH_ENDPOINTS:
            raise LocalProtocolError(f"at most {PUNCH_ENDPOINTS} endpoints in a PUNCH")
        w.push_bytes(self.session_id)
        w.push_u32(self.nonce)
        flags = PUNCH_FLAG_GO if self.go else 0
        flags |= self.mine << PUNCH_MAPPING_SHIFT_MINE | self.peer << PUNCH_MAPPING_SHIFT_PEER
        w.push_u8(flags)
        w.push_u8(len(self.endpoints))
        for ep in self.endpoints:
            w.push_endpoint(ep)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        nonce = b.pull_u32()
        flags = b.pull_u8()
        if flags >> (PUNCH_MAPPING_SHIFT_PEER + 2):
            raise Malformed(f"unknown PUNCH flags {flags:#04x}")
        n = b.pull_u8()
        if n > PUNCH_ENDPOINTS:
            raise Malformed(f"{n} endpoints in a PUNCH (at most {PUNCH_ENDPOINTS})")
        eps = tuple(b.pull_endpoint() for _ in range(n))
        return cls(
            session_id=sid,
            nonce=nonce,
            go=bool(flags & PUNCH_FLAG_GO),
            endpoints=eps,
            mine=_mapping_kind(flags >> PUNCH_MAPPING_SHIFT_MINE),
            peer=_mapping_kind(flags >> PUNCH_MAPPING_SHIFT_PEER),
        )


def _mapping_kind(bits: int) -> MappingKind:
    try:
        return MappingKind(bits & 3)
    except ValueError:
        raise Malformed(f"unknown mapping kind {bits & 3}") from None


def mapping_probe(session_id: bytes) -> bytes:
    """The MAPPING_PROBE datagram (unauthenticated, never answered)."""
    _check_session_id(session_id)
    return bytes((MsgType.MAPPING_PROBE, PROTOCOL_VERSION)) + session_id


def parse_mapping_probe(data: bytes) -> bytes | None:
    """A MAPPING_PROBE's session id, or None if ``data`` is not one."""
    if len(data) != MAPPING_PROBE_LEN or data[0] != MsgType.MAPPING_PROBE:
        return None
    if data[1] != PROTOCOL_VERSION:
        return None
    return bytes(data[2:])
