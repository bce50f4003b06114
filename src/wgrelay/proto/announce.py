"""RelayNodeInfo and the signed Announcement that carries it.

Announcement layout::

    0   type        u8    ANNOUNCEMENT (0x30)
    1   version     u8
    2   info              RelayNodeInfo (below)
    ..  issued_ms   u64   when the relay signed it (Unix ms); newer replaces older
    ..  ttl_s       u32   how long it may be believed after issued_ms
    ..  signature   64B   Ed25519 by info.key over every byte before it

RelayNodeInfo layout::

    key            32B   the relay's Ed25519 identity key
    proto_version  u8
    capabilities   u32   Capability bits
    load_pct       u8    0..100
    max_sessions   u32
    region         str8  <= 32 bytes UTF-8 ("" when unknown)
    n_endpoints    u8    1..8
    endpoints            n x (family u8 (4|6) | address 4/16B | port u16)
    tcp_port       u16   only with capability TCP_FALLBACK: agents may connect over TCP
    tls_port       u16   only with capability TLS_FALLBACK: ... over TLS
                         (on every announced endpoint's address; see "Stream transport")
    budget_left    u8    only with capability BUDGET: percent of the operator's byte
                         budget left this period, 0..100 (rounded up: 0 = spent)

The announcement is self-certifying: the key that verifies it is inside it, so
anyone can check that the holder of that key said this, and nobody can change a
byte of it on the way. Whether to trust that key as a relay is a policy of the
registry, not of the codec.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.endpoint import Endpoint
from wgrelay.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    Malformed,
    Oversize,
    Truncated,
    UnknownType,
    UnsupportedVersion,
)
from wgrelay.keys import PublicKey, RelayIdentity, verify_signature
from wgrelay.proto.buffer import Buffer, Writer
from wgrelay.proto.constants import (
    KEY_LEN,
    MAX_CONTROL_SIZE,
    MAX_ENDPOINTS,
    MAX_REGION_LEN,
    PROTOCOL_VERSION,
    SIGNATURE_LEN,
    Capability,
    MsgType,
)


@dataclass(frozen=True, slots=True)
class RelayNodeInfo:
    key: PublicKey
    endpoints: tuple[Endpoint, ...]
    region: str = ""
    capabilities: int = 0
    load_pct: int = 0
    max_sessions: int = 0
    protocol_version: int = PROTOCOL_VERSION
    tcp_port: int = 0
    """Where agents may connect over TCP (with Capability.TCP_FALLBACK), else 0."""
    tls_port: int = 0
    """Where agents may connect over TLS (with Capability.TLS_FALLBACK), else 0."""
    budget_left_pct: int | None = None
    """Percent of the byte budget left (with Capability.BUDGET), else None."""

    def encode(self, w: Writer) -> None:
        if not 1 <= len(self.endpoints) <= MAX_ENDPOINTS:
            raise LocalProtocolError(f"a relay announces 1..{MAX_ENDPOINTS} endpoints")
        if not 0 <= self.load_pct <= 100:
            raise LocalProtocolError("load_pct is 0..100")
        w.push_bytes(self.key.raw, KEY_LEN)
        w.push_u8(self.protocol_version)
        w.push_u32(self.capabilities)
        w.push_u8(self.load_pct)
        w.push_u32(self.max_sessions)
        w.push_str8(self.region, MAX_REGION_LEN)
        w.push_u8(len(self.endpoints))
        for ep in self.endpoints:
            w.push_endpoint(ep)
        for bit, port in (
            (Capability.TCP_FALLBACK, self.tcp_port),
            (Capability.TLS_FALLBACK, self.tls_port),
        ):
            if self.capabilities & bit:
                if not 1 <= port <= 0xFFFF:
                    raise LocalProtocolError(f"{bit.name} needs its port (1..65535)")
                w.push_u16(port)
            elif port:
                raise LocalProtocolError(f"a port without {bit.name}")
        if self.capabilities & Capability.BUDGET:
            if self.budget_left_pct is None or not 0 <= self.budget_left_pct <= 100:
                raise LocalProtocolError("BUDGET needs budget_left_pct (0..100)")
            w.push_u8(self.budget_left_pct)
        elif self.budget_left_pct is not None:
            raise LocalProtocolError("budget_left_pct without BUDGET")

    @classmethod
    def decode(cls, b: Buffer) -> RelayNodeInfo:
        key = PublicKey(b.pull_bytes(KEY_LEN))
        proto_version = b.pull_u8()
        caps = b.pull_u32()
        load = b.pull_u8()
        if load > 100:
            raise Malformed(f"load {load}% > 100")
        max_sessions = b.pull_u32()
        region = b.pull_str8(MAX_REGION_LEN)
        n = b.pull_u8()
        if not 1 <= n <= MAX_ENDPOINTS:
            raise Malformed(f"{n} endpoints (1..{MAX_ENDPOINTS} allowed)")
        endpoints = tuple(b.pull_endpoint() for _ in range(n))
        ports = []
        for bit in (Capability.TCP_FALLBACK, Capability.TLS_FALLBACK):
            port = b.pull_u16() if caps & bit else 0
            if caps & bit and not port:
                raise Malformed(f"{bit.name} with port 0")
            ports.append(port)
        budget_left = b.pull_u8() if caps & Capability.BUDGET else None
        if budget_left is not None and budget_left > 100:
            raise Malformed(f"budget left {budget_left}% > 100")
        return cls(
            key=key,
            endpoints=endpoints,
            region=region,
            capabilities=caps,
            load_pct=load,
            max_sessions=max_sessions,
            protocol_version=proto_version,
            tcp_port=ports[0],
            tls_port=ports[1],
            budget_left_pct=budget_left,
        )


@dataclass(frozen=True, slots=True)
class Announcement:
    info: RelayNodeInfo
    issued_ms: int
    ttl_s: int
    raw: bytes
    """The exact signed bytes, forwarded unchanged when gossiped."""

    def expires_ms(self) -> int:
        return self.issued_ms + self.ttl_s * 1000


def encode_announcement(
    info: RelayNodeInfo, issued_ms: int, ttl_s: int, identity: RelayIdentity
) -> bytes:
    if info.key != identity.public:
        raise LocalProtocolError("a relay can only announce itself")
    w = Writer()
    w.push_u8(MsgType.ANNOUNCEMENT)
    w.push_u8(PROTOCOL_VERSION)
    info.encode(w)
    w.push_u64(issued_ms)
    w.push_u32(ttl_s)
    signed = w.getvalue()
    out = signed + identity.sign(signed)
    if len(out) > MAX_CONTROL_SIZE:
        raise LocalProtocolError("announcement exceeds the control size cap")
    return out


def decode_announcement(data: bytes) -> Announcement:
    """Parse and verify; raises ``AuthenticationFailed`` on a bad signature."""
    n = len(data)
    if n < 2:
        raise Truncated("announcement too short")
    if data[0] != MsgType.ANNOUNCEMENT:
        raise UnknownType(f"not an announcement: {data[0]:#04x}")
    if data[1] != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {data[1]}")
    if n > MAX_CONTROL_SIZE:
        raise Oversize(f"announcement of {n} bytes")
    if n < 2 + KEY_LEN + SIGNATURE_LEN:
        raise Truncated("announcement too short")
    body_end = n - SIGNATURE_LEN
    b = Buffer(data, 2, body_end)
    info = RelayNodeInfo.decode(b)
    issued_ms = b.pull_u64()
    ttl_s = b.pull_u32()
    b.expect_end()
    if not verify_signature(info.key, bytes(data[:body_end]), bytes(data[body_end:])):
        raise AuthenticationFailed("announcement signature does not verify")
    return Announcement(info=info, issued_ms=issued_ms, ttl_s=ttl_s, raw=bytes(data))
