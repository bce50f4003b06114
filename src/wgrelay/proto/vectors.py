"""Deterministic test vectors for docs/PROTOCOL.md.

``python -m wgrelay.proto.vectors`` prints the block that the document carries;
tests/unit/test_vectors.py checks that the document and the code agree byte for
byte, and that every vector decodes back to the value it was built from.
"""

from __future__ import annotations

from dataclasses import replace

from wgrelay import xeddsa
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity, clamp
from wgrelay.proto.announce import RelayNodeInfo, encode_announcement
from wgrelay.proto.constants import (
    QUERY_FLAG_WANT_RELAYS,
    REGISTER_FLAG_ACCEPT_INCOMING,
    REGISTER_FLAG_STANDBY,
    RTT_UNKNOWN,
    Capability,
    CloseReason,
    ErrorCode,
    HeartbeatStatus,
    MappingKind,
    Status,
)
from wgrelay.proto.cookie import cookie_mac, encode_cookie_reply
from wgrelay.proto.data import encode_data
from wgrelay.proto.envelope import derive_client_keys, derive_server_keys, seal_control
from wgrelay.proto.federation import (
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
from wgrelay.proto.leg_rtts import LegRttQuery, LegRttReply
from wgrelay.proto.location import encode_location
from wgrelay.proto.messages import (
    Body,
    ConnectionRequest,
    ConnectionResponse,
    DiscoveryQuery,
    DiscoveryResponse,
    Error,
    Heartbeat,
    HeartbeatAck,
    PeerLocation,
    Ping,
    Pong,
    Punch,
    Register,
    Registered,
    SessionAnswer,
    SessionClose,
    SessionHold,
    SessionOffer,
    mapping_probe,
)
from wgrelay.proto.receipts import (
    CLAIM_DOMAIN,
    RECEIPT_DOMAIN,
    Claim,
    CreditQuery,
    CreditReport,
    Receipt,
    ReceiptBody,
    ReceiptRequest,
    Receipts,
    ReceiptsAck,
    RelayEarning,
)
from wgrelay.proto.sealed import (
    ConnectionRequestSealed,
    LegOpenSealed,
    SessionOfferSealed,
    seal_for_exit,
    seal_for_peer,
)
from wgrelay.proto.wgmac import MESSAGE_INITIATION, compute_mac1, mac1_key

PEER_PRIVATE = PrivateKey(clamp(bytes(range(1, 33))))
OTHER_PEER = PrivateKey(clamp(bytes(range(101, 133)))).public_key()
RELAY = RelayIdentity.from_seed(bytes(range(65, 97)))
NONCE = bytes(range(24))
TIMESTAMP_US = 1_700_000_000_000_000
SESSION_ID = bytes.fromhex("0102030405060708")
COOKIE_SECRET = bytes(range(200, 232))
COOKIE_FOR = ("198.51.100.7", 40001)
COOKIE = cookie_mac(COOKIE_SECRET, PEER_PRIVATE.public_key().raw, COOKIE_FOR)
ISSUED_MS = 1_700_000_000_000

INFO = RelayNodeInfo(
    key=RELAY.public,
    endpoints=(("203.0.113.10", 51821), ("2001:db8::10", 51821)),
    region="eu-west",
    capabilities=Capability.UDP_RELAY
    | Capability.DISCOVERY
    | Capability.IPV6
    | Capability.TCP_FALLBACK
    | Capability.TLS_FALLBACK,
    load_pct=12,
    max_sessions=100,
    tcp_port=51821,
    tls_port=443,
)
ANNOUNCEMENT = encode_announcement(INFO, ISSUED_MS, 600, RELAY)
ANNOUNCEMENT_BUDGET = encode_announcement(
    replace(INFO, capabilities=INFO.capabilities | Capability.BUDGET, budget_left_pct=37),
    ISSUED_MS,
    600,
    RELAY,
)
LOCATION = encode_location(OTHER_PEER, ISSUED_MS, 120, RELAY, rtt_ms=23)
STANDBY_RELAY = RelayIdentity.from_seed(bytes(range(97, 129)))
STANDBY_LOCATION = encode_location(OTHER_PEER, ISSUED_MS, 120, STANDBY_RELAY, True, 41)
# private paths: peer asks for other_peer through the standby relay as exit;
# the offer is to peer from other_peer (boxes from fixed ephemeral keys)
SEALED_TO_EXIT = seal_for_exit(
    STANDBY_RELAY.public,
    OTHER_PEER,
    seal_for_peer(
        OTHER_PEER, PEER_PRIVATE.public_key(), STANDBY_RELAY.public, ISSUED_MS, bytes([0x51]) * 32
    ),
    ISSUED_MS,
    bytes([0x50]) * 32,
)
SEALED_TO_PEER = seal_for_peer(
    PEER_PRIVATE.public_key(), OTHER_PEER, RELAY.public, ISSUED_MS, bytes([0x52]) * 32
)
ECHO = 0x0102030405060708

# (name, body, sent by the relay?)
CONTROL_VECTORS: list[tuple[str, Body, bool]] = [
    ("register", Register(flags=REGISTER_FLAG_ACCEPT_INCOMING, keepalive_s=10, rtt_ms=23), False),
    (
        "register_standby",
        Register(flags=REGISTER_FLAG_ACCEPT_INCOMING | REGISTER_FLAG_STANDBY, keepalive_s=10),
        False,
    ),
    (
        "registered",
        Registered(
            ttl_s=60, heartbeat_s=10, epoch=0x0123456789ABCDEF, observed=("198.51.100.7", 40001)
        ),
        True,
    ),
    ("heartbeat", Heartbeat(seq=7, rtt_ms=23), False),
    (
        "heartbeat_ack",
        HeartbeatAck(seq=7, status=HeartbeatStatus.OK, epoch=0x0123456789ABCDEF),
        True,
    ),
    ("connection_request", ConnectionRequest(request_id=42, target=OTHER_PEER), False),
    (
        "connection_request_via",
        ConnectionRequest(request_id=43, target=OTHER_PEER, via=STANDBY_RELAY.public),
        False,
    ),
    (
        "connection_response",
        ConnectionResponse(
            request_id=42,
            status=Status.SUCCESS,
            session_id=SESSION_ID,
            idle_timeout_s=180,
            max_bandwidth_kbps=1000,
            port=52000,
        ),
        True,
    ),
    ("session_offer", SessionOffer(session_id=SESSION_ID, initiator=OTHER_PEER, port=52001), True),
    ("session_answer", SessionAnswer(session_id=SESSION_ID, accept=True), False),
    ("session_close", SessionClose(session_id=SESSION_ID, reason=CloseReason.IDLE), True),
    ("session_hold", SessionHold(session_id=SESSION_ID, hold_s=5), False),
    ("punch", Punch(session_id=SESSION_ID, nonce=7), False),
    (
        "punch_go",
        Punch(
            session_id=SESSION_ID,
            nonce=7,
            go=True,
            endpoints=(("198.51.100.7", 40001), ("203.0.113.9", 61820)),
            mine=MappingKind.INDEPENDENT,
            peer=MappingKind.DEPENDENT,
        ),
        True,
    ),
    ("error", Error(code=ErrorCode.NOT_REGISTERED, ref_type=0x24, detail="register first"), True),
    ("ping", Ping(echo_id=0x1122334455667788), False),
    ("pong", Pong(echo_id=0x1122334455667788, load_pct=12), True),
    (
        "discovery_query",
        DiscoveryQuery(
            query_id=9,
            flags=QUERY_FLAG_WANT_RELAYS,
            max_results=4,
            region="eu-west",
            locate=OTHER_PEER,
            page=1,
        ),
        False,
    ),
    (
        "discovery_response",
        DiscoveryResponse(
            query_id=9,
            announcements=(ANNOUNCEMENT,),
            location=PeerLocation(relay=RELAY.public, endpoint=("203.0.113.10", 51821)),
            record=LOCATION,
            more=True,
            alternate=PeerLocation(relay=STANDBY_RELAY.public, endpoint=("203.0.113.11", 51821)),
            alternate_record=STANDBY_LOCATION,
        ),
        True,
    ),
    # relay to relay (sealed here on the same channel as the rest: between two
    # relays the client's key is the contacting relay's X25519 form)
    ("gossip", Gossip((ANNOUNCEMENT,), ((RELAY.public, ISSUED_MS),)), False),
    ("gossip_ack", GossipAck(1), True),
    ("digest", Digest(tuple((i, bytes([i]) * 8) for i in range(16))), False),
    ("digest_reply", DigestReply(((RELAY.public, ISSUED_MS),), buckets=0x0A01), True),
    ("pull", Pull((RELAY.public,)), False),
    ("pull_reply", PullReply((ANNOUNCEMENT,)), True),
    ("location_store", LocationStore((LOCATION,)), False),
    ("location_ack", LocationAck(1), True),
    ("probe_request", ProbeRequest(RELAY.public, ECHO), False),
    ("probe_answer", ProbeAnswer(RELAY.public, ECHO, True), True),
    # multi-hop: one-way notices, each on its sender's own channel (as a client)
    ("leg_open", LegOpen(SESSION_ID, PEER_PRIVATE.public_key(), OTHER_PEER, 2, 52001), False),
    ("leg_answer", LegAnswer(SESSION_ID, Status.SUCCESS, 52002), False),
    ("leg_close", LegClose(SESSION_ID, CloseReason.PEER_GONE), False),
    # private paths (proto/sealed.py)
    (
        "connection_request_sealed",
        ConnectionRequestSealed(0x01020304, STANDBY_RELAY.public, SEALED_TO_EXIT),
        False,
    ),
    ("session_offer_sealed", SessionOfferSealed(SESSION_ID, SEALED_TO_PEER, 52003), True),
    ("leg_open_sealed", LegOpenSealed(SESSION_ID, SEALED_TO_EXIT, 2), False),
]

# credits (proto/receipts.py): XEdDSA with fixed randomness, so the bytes repeat
_UNSIGNED = Receipt(RELAY.public, PEER_PRIVATE.public_key(), SESSION_ID, 3, 1_234_567, ISSUED_MS)
RECEIPT = replace(
    _UNSIGNED,
    signature=xeddsa.sign(
        PEER_PRIVATE.raw, RECEIPT_DOMAIN + _UNSIGNED.signed_part(), bytes([0x60]) * 64
    ),
)
_CLAIM = Claim(PEER_PRIVATE.public_key(), RELAY.public, ISSUED_MS, bytes(64))
CLAIM = replace(
    _CLAIM,
    member_signature=xeddsa.sign(
        PEER_PRIVATE.raw, CLAIM_DOMAIN + _CLAIM.member_part(), bytes([0x61]) * 64
    ),
).endorsed_by(RELAY)
CONTROL_VECTORS += [
    ("receipt_request", ReceiptRequest(SESSION_ID, 3, 1_300_000), True),
    ("receipt", ReceiptBody(RECEIPT), False),
    ("credit_query", CreditQuery(0x01020304, PEER_PRIVATE.public_key()), False),
    (
        "credit_report",
        CreditReport(
            0x01020304,
            PEER_PRIVATE.public_key(),
            30,
            2_469_134,
            1_234_567,
            1,
            (RelayEarning(RELAY.public, 2_469_134, 2),),
        ),
        True,
    ),
    ("receipts", Receipts((RECEIPT,), (CLAIM,)), False),
    ("receipts_ack", ReceiptsAck(2, 0), True),
]
# whole-path choice (proto/leg_rtts.py)
CONTROL_VECTORS += [
    ("leg_rtt_query", LegRttQuery(0x01020304), False),
    (
        "leg_rtt_reply",
        LegRttReply(0x01020304, ((RELAY.public, 22), (STANDBY_RELAY.public, RTT_UNKNOWN))),
        True,
    ),
]


def peer_public() -> PublicKey:
    return PEER_PRIVATE.public_key()


def sealed(body: Body, from_relay: bool) -> bytes:
    """The vector's full datagram: sealed by the relay or by the peer."""
    peer_pub = peer_public().raw
    if from_relay:
        keys = derive_server_keys(RELAY.x25519_public, RELAY.x25519_private, peer_pub)
        sender = RELAY.x25519_public
    else:
        keys = derive_client_keys(peer_pub, PEER_PRIVATE.raw, RELAY.x25519_public)
        sender = peer_pub
    return seal_control(body, sender=sender, keys=keys, timestamp_us=TIMESTAMP_US, nonce=NONCE)


def latch_initiation() -> bytes:
    """A WireGuard handshake initiation from peer_public to other_peer_public
    as a relay in port mode checks it: exact size, reserved bytes zero, mac1
    keyed by the receiver's (other_peer's) public key. Its encrypted fields are
    zeros here: the relay cannot and does not read them."""
    body = (
        bytes((MESSAGE_INITIATION, 0, 0, 0))
        + (0x04030201).to_bytes(4, "little")  # sender index
        + bytes(range(32))  # ephemeral
        + bytes(48 + 28)  # encrypted static, encrypted timestamp
    )
    return body + compute_mac1(mac1_key(OTHER_PEER.raw), body) + bytes(16)  # mac2: none


def all_vectors() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    out["data"] = encode_data(SESSION_ID, bytes.fromhex("04000000") + bytes(12))
    for name, body, from_relay in CONTROL_VECTORS:
        out[name] = sealed(body, from_relay)
    out["register_with_cookie"] = seal_control(
        Register(flags=REGISTER_FLAG_ACCEPT_INCOMING, keepalive_s=10),
        sender=peer_public().raw,
        keys=derive_client_keys(peer_public().raw, PEER_PRIVATE.raw, RELAY.x25519_public),
        timestamp_us=TIMESTAMP_US,
        nonce=NONCE,
        cookie=COOKIE,
    )
    out["cookie_reply"] = encode_cookie_reply(NONCE[:8], COOKIE)
    out["mapping_probe"] = mapping_probe(SESSION_ID)
    out["latch_initiation"] = latch_initiation()
    out["announcement"] = ANNOUNCEMENT
    out["announcement_budget"] = ANNOUNCEMENT_BUDGET
    out["location"] = LOCATION
    out["location_standby"] = STANDBY_LOCATION
    return out


def render() -> str:
    lines = [
        f"peer_private: {PEER_PRIVATE}",
        f"peer_public: {peer_public()}",
        f"other_peer_public: {OTHER_PEER}",
        f"relay_seed: {RELAY}",
        f"relay_public: {RELAY.public}",
        f"relay_x25519_public: {RELAY.x25519_public.hex()}",
        f"nonce: {NONCE.hex()}",
        f"timestamp_us: {TIMESTAMP_US}",
        f"cookie_secret: {COOKIE_SECRET.hex()}",
        f"cookie_for: peer_public at {COOKIE_FOR[0]}:{COOKIE_FOR[1]}",
        f"cookie: {COOKIE.hex()}",
        f"latch_mac1_key: {mac1_key(OTHER_PEER.raw).hex()}",
        f"receipt_record: {RECEIPT.encode().hex()}",  # (records: inside sealed bodies)
        f"claim_record: {CLAIM.encode().hex()}",
    ]
    lines += [f"{name}: {raw.hex()}" for name, raw in all_vectors().items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
