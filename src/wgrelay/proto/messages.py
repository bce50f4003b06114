"""Control message bodies: frozen dataclasses with their encoders and decoders.

A body is what sits inside the encrypted envelope after the timestamp. The type
byte lives in the envelope header, so a body never repeats it. Every decoder reads
through ``Buffer`` and ends with ``expect_end()``: a body with trailing bytes is
malformed, not silently accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar, cast

from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError, Malformed
from wgrelay.keys import PublicKey
from wgrelay.proto.body import Body
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import (
    KEY_LEN,
    MAX_DETAIL_LEN,
    MAX_ENDPOINTS,
    REQUEST_FLAG_VIA,
    RTT_UNKNOWN,
    SESSION_ID_LEN,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MsgType,
    Status,
)
from wgrelay.proto.discovery_bodies import DiscoveryQuery, DiscoveryResponse, PeerLocation
from wgrelay.proto.federation import (
    FEDERATION_BODIES,
    Digest,
    DigestReply,
    Gossip,
    GossipAck,
    LegAnswer,
    LegClose,
    LegOpen,
    LocationAck,
    LocationStore,
    ProbeAnswer,
    ProbeRequest,
    Pull,
    PullReply,
)
from wgrelay.proto.leg_rtts import LEG_RTT_BODIES
from wgrelay.proto.punch import Punch, mapping_probe, parse_mapping_probe
from wgrelay.proto.receipts import RECEIPT_BODIES
from wgrelay.proto.sealed import SEALED_BODIES


def _pull_key(b: Buffer) -> PublicKey:
    return PublicKey(b.pull_bytes(KEY_LEN))


_E = TypeVar("_E", Status, CloseReason, ErrorCode, HeartbeatStatus)


def _pull_enum(b: Buffer, enum: type[_E]) -> _E:
    v = b.pull_u8()
    try:
        return enum(v)
    except ValueError:
        raise Malformed(f"unknown {enum.__name__} {v}") from None


def _check_session_id(sid: bytes) -> None:
    if len(sid) != SESSION_ID_LEN:
        raise LocalProtocolError("session ids are 8 bytes")


@dataclass(frozen=True, slots=True)
class Register(Body):
    """A peer registers at (or refreshes with) its home relay."""

    TYPE: ClassVar[MsgType] = MsgType.REGISTER
    flags: int = 0
    keepalive_s: int = 0
    rtt_ms: int = RTT_UNKNOWN
    """Our round trip to this relay as we measured it (RTT_UNKNOWN if not):
    the relay puts it in our location record, so whoever looks us up can
    weigh the whole path through it (docs/ARCHITECTURE.md)."""

    def encode_body(self, w: Writer) -> None:
        w.push_u8(self.flags)
        w.push_u16(self.keepalive_s)
        w.push_u16(self.rtt_ms)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(flags=b.pull_u8(), keepalive_s=b.pull_u16(), rtt_ms=b.pull_u16())


@dataclass(frozen=True, slots=True)
class Registered(Body):
    """The relay accepted a registration; tells the peer how it looks from outside."""

    TYPE: ClassVar[MsgType] = MsgType.REGISTERED
    ttl_s: int
    heartbeat_s: int
    epoch: int
    """Random per relay start: a new value tells the peer the relay restarted."""
    observed: Endpoint

    def encode_body(self, w: Writer) -> None:
        w.push_u16(self.ttl_s)
        w.push_u16(self.heartbeat_s)
        w.push_u64(self.epoch)
        w.push_endpoint(self.observed)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(
            ttl_s=b.pull_u16(),
            heartbeat_s=b.pull_u16(),
            epoch=b.pull_u64(),
            observed=b.pull_endpoint(),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat(Body):
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    seq: int
    rtt_ms: int = RTT_UNKNOWN
    """Our smoothed round trip to this relay (as in REGISTER)."""

    def encode_body(self, w: Writer) -> None:
        w.push_u32(self.seq)
        w.push_u16(self.rtt_ms)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(seq=b.pull_u32(), rtt_ms=b.pull_u16())


@dataclass(frozen=True, slots=True)
class HeartbeatAck(Body):
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT_ACK
    seq: int
    status: HeartbeatStatus = HeartbeatStatus.OK
    epoch: int = 0
    """The relay's start epoch (as in REGISTERED): a change means it restarted
    and forgot our sessions, even if something re-registered us meanwhile."""

    def encode_body(self, w: Writer) -> None:
        w.push_u32(self.seq)
        w.push_u8(self.status)
        w.push_u64(self.epoch)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(seq=b.pull_u32(), status=_pull_enum(b, HeartbeatStatus), epoch=b.pull_u64())


@dataclass(frozen=True, slots=True)
class ConnectionRequest(Body):
    """Peer A asks its relay for a session to peer ``target``; with ``via``,
    through that relay too (the target is registered there: multi-hop).

    ``request_id u32 | target 32B | [flags u8 | via 32B if flags bit 0]``:
    without ``via`` the flags byte is left out (the original layout)."""

    TYPE: ClassVar[MsgType] = MsgType.CONNECTION_REQUEST
    request_id: int
    target: PublicKey
    via: PublicKey | None = None

    def encode_body(self, w: Writer) -> None:
        w.push_u32(self.request_id)
        w.push_bytes(self.target.raw, KEY_LEN)
        if self.via is not None:
            w.push_u8(REQUEST_FLAG_VIA)
            w.push_bytes(self.via.raw, KEY_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        rid, target = b.pull_u32(), _pull_key(b)
        if b.eof():
            return cls(request_id=rid, target=target)
        flags = b.pull_u8()
        if flags != REQUEST_FLAG_VIA:  # (the flags byte is there only for a flag)
            raise Malformed(f"unknown request flags {flags:#x}")
        return cls(request_id=rid, target=target, via=_pull_key(b))


@dataclass(frozen=True, slots=True)
class ConnectionResponse(Body):
    TYPE: ClassVar[MsgType] = MsgType.CONNECTION_RESPONSE
    request_id: int
    status: Status
    session_id: bytes = bytes(SESSION_ID_LEN)
    idle_timeout_s: int = 0
    max_bandwidth_kbps: int = 0
    """Per-connection cap in kilobytes per second (0: none)."""
    port: int = 0
    """The relay port for the requester's WireGuard in port mode (0: framed only)."""

    def encode_body(self, w: Writer) -> None:
        _check_session_id(self.session_id)
        w.push_u32(self.request_id)
        w.push_u8(self.status)
        w.push_bytes(self.session_id)
        w.push_u16(self.idle_timeout_s)
        w.push_u32(self.max_bandwidth_kbps)
        w.push_u16(self.port)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(
            request_id=b.pull_u32(),
            status=_pull_enum(b, Status),
            session_id=b.pull_bytes(SESSION_ID_LEN),
            idle_timeout_s=b.pull_u16(),
            max_bandwidth_kbps=b.pull_u32(),
            port=b.pull_u16(),
        )


@dataclass(frozen=True, slots=True)
class SessionOffer(Body):
    """Notice to the target peer: ``initiator`` wants a session through this relay."""

    TYPE: ClassVar[MsgType] = MsgType.SESSION_OFFER
    session_id: bytes
    initiator: PublicKey
    port: int = 0
    """The relay port for the target's WireGuard in port mode (0: framed only)."""

    def encode_body(self, w: Writer) -> None:
        _check_session_id(self.session_id)
        w.push_bytes(self.session_id)
        w.push_bytes(self.initiator.raw, KEY_LEN)
        w.push_u16(self.port)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(
            session_id=b.pull_bytes(SESSION_ID_LEN), initiator=_pull_key(b), port=b.pull_u16()
        )


@dataclass(frozen=True, slots=True)
class SessionAnswer(Body):
    TYPE: ClassVar[MsgType] = MsgType.SESSION_ANSWER
    session_id: bytes
    accept: bool

    def encode_body(self, w: Writer) -> None:
        _check_session_id(self.session_id)
        w.push_bytes(self.session_id)
        w.push_u8(1 if self.accept else 0)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        v = b.pull_u8()
        if v > 1:
            raise Malformed(f"accept must be 0 or 1, got {v}")
        return cls(session_id=sid, accept=v == 1)


MAX_HOLD_S = 10
"""The longest a SESSION_HOLD may pause delivery (a direct try takes 3 s)."""


@dataclass(frozen=True, slots=True)
class SessionHold(Body):
    """Port mode: deliver nothing to my session port for ``hold_s`` seconds
    (0: resume now). While the agent tries a direct path, a packet from the
    relay would make WireGuard roam straight back to the relay port."""

    TYPE: ClassVar[MsgType] = MsgType.SESSION_HOLD
    session_id: bytes
    hold_s: int

    def encode_body(self, w: Writer) -> None:
        _check_session_id(self.session_id)
        if not 0 <= self.hold_s <= MAX_HOLD_S:
            raise LocalProtocolError(f"hold_s must be 0-{MAX_HOLD_S}, not {self.hold_s}")
        w.push_bytes(self.session_id)
        w.push_u8(self.hold_s)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        sid = b.pull_bytes(SESSION_ID_LEN)
        hold_s = b.pull_u8()
        if hold_s > MAX_HOLD_S:
            raise Malformed(f"hold_s {hold_s} exceeds {MAX_HOLD_S}")
        return cls(session_id=sid, hold_s=hold_s)


@dataclass(frozen=True, slots=True)
class SessionClose(Body):
    TYPE: ClassVar[MsgType] = MsgType.SESSION_CLOSE
    session_id: bytes
    reason: CloseReason = CloseReason.NORMAL

    def encode_body(self, w: Writer) -> None:
        _check_session_id(self.session_id)
        w.push_bytes(self.session_id)
        w.push_u8(self.reason)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(session_id=b.pull_bytes(SESSION_ID_LEN), reason=_pull_enum(b, CloseReason))


@dataclass(frozen=True, slots=True)
class Error(Body):
    """An error with a reason code, referring to the message type that caused it."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: ErrorCode
    ref_type: int = 0
    detail: str = ""
    value: int = 0
    """A number the code gives meaning to: STALE_TIMESTAMP carries the relay's
    clock and REPLAYED the newest timestamp it accepted from us (both in
    microseconds), so the peer can fix its timestamps instead of being locked
    out; 0 for the other codes."""

    def encode_body(self, w: Writer) -> None:
        w.push_u8(self.code)
        w.push_u8(self.ref_type)
        w.push_u64(self.value)
        w.push_str8(self.detail, MAX_DETAIL_LEN)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        code = _pull_enum(b, ErrorCode)
        ref_type = b.pull_u8()
        value = b.pull_u64()
        return cls(code=code, ref_type=ref_type, value=value, detail=b.pull_str8(MAX_DETAIL_LEN))


@dataclass(frozen=True, slots=True)
class Ping(Body):
    """RTT echo request; the sender keeps its own send time."""

    TYPE: ClassVar[MsgType] = MsgType.PING
    echo_id: int

    def encode_body(self, w: Writer) -> None:
        w.push_u64(self.echo_id)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        return cls(echo_id=b.pull_u64())


@dataclass(frozen=True, slots=True)
class Pong(Body):
    TYPE: ClassVar[MsgType] = MsgType.PONG
    echo_id: int
    load_pct: int = 0

    def encode_body(self, w: Writer) -> None:
        w.push_u64(self.echo_id)
        w.push_u8(self.load_pct)

    @classmethod
    def decode_body(cls, b: Buffer) -> Self:
        echo_id = b.pull_u64()
        load = b.pull_u8()
        if load > 100:
            raise Malformed(f"load {load}% > 100")
        return cls(echo_id=echo_id, load_pct=load)


_PEER_BODIES: tuple[type[Body], ...] = (
    Register,
    Registered,
    Heartbeat,
    HeartbeatAck,
    ConnectionRequest,
    ConnectionResponse,
    SessionOffer,
    SessionAnswer,
    SessionClose,
    SessionHold,
    Punch,
    Error,
    Ping,
    Pong,
    DiscoveryQuery,
    DiscoveryResponse,
)
BODY_TYPES: dict[MsgType, type[Body]] = {
    cls.TYPE: cls for cls in _PEER_BODIES + FEDERATION_BODIES + SEALED_BODIES
}
BODY_TYPES.update({cls.TYPE: cls for cls in RECEIPT_BODIES})  # credits: proto/receipts.py
BODY_TYPES.update({cls.TYPE: cls for cls in LEG_RTT_BODIES})  # whole-path choice: leg_rtts.py


RelayMessage = (
    Register
    | Registered
    | Heartbeat
    | HeartbeatAck
    | ConnectionRequest
    | ConnectionResponse
    | SessionOffer
    | SessionAnswer
    | SessionClose
    | SessionHold
    | Punch
    | Error
    | Ping
    | Pong
    | DiscoveryQuery
    | DiscoveryResponse
    | Gossip
    | GossipAck
    | Digest
    | DigestReply
    | Pull
    | PullReply
    | LocationStore
    | LocationAck
    | ProbeRequest
    | ProbeAnswer
    | LegOpen
    | LegAnswer
    | LegClose
)
"""The seed's RelayMessage: every control message body, one union to match on."""


def encode_body(body: Body) -> bytes:
    w = Writer()
    body.encode_body(w)
    return w.getvalue()


def decode_body(msg_type: MsgType, data: bytes) -> RelayMessage:
    cls = BODY_TYPES.get(msg_type)
    if cls is None:
        raise Malformed(f"type {msg_type:#x} has no control body")
    b = Buffer(data)
    body = cls.decode_body(b)
    b.expect_end()
    return cast(RelayMessage, body)  # BODY_TYPES holds exactly the union's members


__all__ = [
    "BODY_TYPES",
    "MAX_ENDPOINTS",
    "Body",
    "ConnectionRequest",
    "ConnectionResponse",
    "DiscoveryQuery",
    "DiscoveryResponse",
    "Error",
    "Heartbeat",
    "HeartbeatAck",
    "PeerLocation",
    "Ping",
    "Pong",
    "Punch",
    "Register",
    "Registered",
    "RelayMessage",
    "SessionAnswer",
    "SessionClose",
    "SessionHold",
    "SessionOffer",
    "decode_body",
    "encode_body",
    "mapping_probe",
    "parse_mapping_probe",
]
