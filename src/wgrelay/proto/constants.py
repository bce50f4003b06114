"""Wire constants: message types, sizes, status and reason codes.

Every datagram starts with a one-byte message type. WireGuard's own messages
start with 1-4 (a little-endian u32 type whose first byte is 1..4), so our types
live at 0x10 and above and a WireGuard packet can never be mistaken for ours.
Byte layouts are in docs/PROTOCOL.md; the comment next to each type is a summary.
"""

from __future__ import annotations

from enum import IntEnum

PROTOCOL_VERSION = 1
"""Carried by every control message, announcement and cookie reply."""


class MsgType(IntEnum):
    # data plane: type u8 | flags u8 | session_id 8B | WireGuard packet
    DATA = 0x10

    # control plane, inside the encrypted envelope (see envelope.py)
    REGISTER = 0x20  # flags u8 | keepalive_s u16
    REGISTERED = 0x21  # ttl_s u16 | heartbeat_s u16 | epoch u64 | observed endpoint
    HEARTBEAT = 0x22  # seq u32
    HEARTBEAT_ACK = 0x23  # seq u32 | status u8 | epoch u64
    CONNECTION_REQUEST = 0x24  # request_id u32 | target key 32B
    # request_id u32 | status u8 | session 8B | idle_s u16 | kBps u32 | port u16
    CONNECTION_RESPONSE = 0x25
    SESSION_OFFER = 0x26  # session 8B | initiator key 32B | port u16
    SESSION_ANSWER = 0x27  # session 8B | accept u8
    SESSION_CLOSE = 0x28  # session 8B | reason u8
    ERROR = 0x29  # code u8 | ref_type u8 | value u64 | detail str8
    PING = 0x2A  # echo_id u64
    PONG = 0x2B  # echo_id u64 | load_pct u8
    DISCOVERY_QUERY = 0x2C  # query_id u32 | flags u8 | max u8 | caps u32 | region str8 | [key]
    DISCOVERY_RESPONSE = 0x2D  # query_id u32 | flags u8 | [location] | n u8 | n x (u16 len, ann)
    SESSION_HOLD = 0x2E  # session 8B | hold_s u8: port mode, deliver nothing to me for hold_s
    # session 8B | nonce u32 | flags u8 | n u8 | n x endpoint: port mode, a
    # coordinated direct try (agent asks; relay tells both sides, GO or info)
    PUNCH = 0x2F

    # relay to relay, inside the same envelope (the contacting relay is the client)
    GOSSIP = 0x40  # n u8 | n x (u16 len, ANNOUNCEMENT) | m u8 | m x (key 32B, issued_ms u64)
    GOSSIP_ACK = 0x41  # new u8
    DIGEST = 0x42  # 16 x (count u16 | hash 8B): one per bucket of relay keys
    DIGEST_REPLY = 0x43  # more u8 | buckets u16 | n u8 | n x (key 32B | issued_ms u64)
    PULL = 0x44  # n u8 | n x key 32B
    PULL_REPLY = 0x45  # n u8 | n x (u16 len, ANNOUNCEMENT)
    LOCATION_STORE = 0x46  # n u8 | n x LOCATION record
    LOCATION_ACK = 0x47  # stored u8
    PROBE_REQUEST = 0x48  # target key 32B | nonce u64: "ping it for me"
    PROBE_ANSWER = 0x49  # target key 32B | nonce u64 | alive u8
    # multi-hop (relay/legs.py): one-way notices, each on the sender's own
    # channel to the other relay (so an answer is a request too)
    LEG_OPEN = 0x4A  # session 8B | initiator key 32B | target key 32B | hops u8 | port u16
    LEG_ANSWER = 0x4B  # session 8B | status u8 (Status) | port u16
    LEG_CLOSE = 0x4C  # session 8B | reason u8 (CloseReason)
    # private paths (proto/sealed.py, relay/private_legs.py): the target is
    # sealed to the exit relay, the initiator to the target
    LEG_OPEN_SEALED = 0x4D  # session 8B | hops u8 | sealed to the exit relay 210B
    # credits (proto/receipts.py): signed usage receipts and operator
    # claims, spread between relays
    RECEIPTS = 0x4E  # n u8 | n x RECEIPT record | m u8 | m x CLAIM record
    RECEIPTS_ACK = 0x4F  # stored u8 | refused u8

    # signed, readable by anyone: type | version | RelayNodeInfo | issued_ms u64 | ttl_s u32 | sig
    ANNOUNCEMENT = 0x30
    # signed by the home relay: type | version | peer | home | issued_ms u64 | ttl_s u32 | sig
    LOCATION = 0x32
    # unauthenticated and stateless: type | version | echo 8B | cookie 16B.
    # Proves the peer receives at its address (return routability) before the
    # relay binds it there or answers it with more bytes than it sent.
    COOKIE_REPLY = 0x31
    # unauthenticated, never answered: type | version | session 8B. Sent by an
    # agent from WireGuard's own port to the relay's main port: the relay
    # compares its source with the session port's latch (NAT mapping kind).
    MAPPING_PROBE = 0x33

    # agent <-> relay, continued (0x20-0x2F is full)
    # request_id u32 | exit relay key 32B | sealed to the exit relay 210B
    CONNECTION_REQUEST_SEALED = 0x50
    SESSION_OFFER_SEALED = 0x51  # session 8B | port u16 | sealed to the target 121B

    # credits, agent <-> relay (proto/receipts.py)
    RECEIPT_REQUEST = 0x54  # session 8B | seq u32 | claimed bytes u64
    RECEIPT = 0x55  # RECEIPT record (156 B, signed by the peer)
    CREDIT_QUERY = 0x56  # query_id u32 | member key 32B
    CREDIT_REPORT = 0x57  # query_id u32 | member 32B | ... (proto/receipts.py)

    # whole-path choice (proto/leg_rtts.py): the relays the home carries legs to
    LEG_RTT_QUERY = 0x58  # query_id u32
    LEG_RTT_REPLY = 0x59  # query_id u32 | n u8 | n x (relay key 32B | rtt_ms u16)


# 0x20-0x2F filled up: later agent<->relay messages take 0x50-0x5F.
CONTROL_TYPES = frozenset(t for t in MsgType if 0x20 <= t <= 0x2F or 0x40 <= t <= 0x5F)
RELAY_TO_RELAY = frozenset(t for t in MsgType if 0x40 <= t <= 0x4F)
"""Messages only relays send each other (the sender must be a known relay)."""

# Control messages sent by the server side of a channel (the relay a peer or
# another relay contacted). The envelope's FROM_SERVER flag must agree.
SERVER_TO_CLIENT = frozenset(
    {
        MsgType.REGISTERED,
        MsgType.HEARTBEAT_ACK,
        MsgType.CONNECTION_RESPONSE,
        MsgType.SESSION_OFFER,
        MsgType.ERROR,
        MsgType.PONG,
        MsgType.DISCOVERY_RESPONSE,
        MsgType.GOSSIP_ACK,
        MsgType.DIGEST_REPLY,
        MsgType.PULL_REPLY,
        MsgType.LOCATION_ACK,
        MsgType.PROBE_ANSWER,
        MsgType.RECEIPT_REQUEST,
        MsgType.CREDIT_REPORT,
        MsgType.RECEIPTS_ACK,
        MsgType.SESSION_OFFER_SEALED,
        MsgType.LEG_RTT_REPLY,
    }
)
BOTH_DIRECTIONS = frozenset({MsgType.SESSION_CLOSE, MsgType.PUNCH})
"""Sent by either side of a channel (FROM_SERVER may be set or not): a
session's close, and PUNCH (an agent asks, the relay tells both sides)."""

# ------------------------------------------------------------------ sizes

KEY_LEN = 32
SESSION_ID_LEN = 8
NONCE_LEN = 24
TAG_LEN = 16
COOKIE_LEN = 16
COOKIE_ECHO_LEN = 8
SIGNATURE_LEN = 64
TIMESTAMP_LEN = 8

DATA_HEADER_LEN = 10
"""type + flags + session id. A 1452-byte WireGuard packet becomes 1462 bytes."""

MIN_WIREGUARD_PACKET = 32
"""The smallest WireGuard message (a keepalive: type, receiver, counter, tag).
A data frame carrying less is not WireGuard and is not forwarded."""

MAX_DATA_PAYLOAD = 9216
"""Largest WireGuard packet we carry (covers jumbo-frame MTUs up to ~9100)."""

MAX_CONTROL_SIZE = 1200
"""Hard cap on any control datagram: fits an IPv6 minimum-MTU path unfragmented."""

MAX_REGION_LEN = 32
MAX_DETAIL_LEN = 120
MAX_ENDPOINTS = 8
PUNCH_FLAG_GO = 0x01
"""PUNCH from the relay: both sides move to the direct candidate now."""
PUNCH_MAPPING_SHIFT_MINE = 1
PUNCH_MAPPING_SHIFT_PEER = 3
"""PUNCH from the relay: 2-bit ``MappingKind`` fields in the flags, for the
receiver's NAT (bits 1-2) and the peer's (bits 3-4)."""
MAPPING_PROBE_LEN = 10
PUNCH_ENDPOINTS = 2
"""PUNCH from the relay: the receiver's WireGuard mapping, then the peer's."""
MAX_ANNOUNCEMENTS_PER_RESPONSE = 6
LOCATION_RECORD_LEN = 145
MAX_RECORDS_PER_MESSAGE = 7
MAX_DIGEST_ENTRIES = 25
MAX_PULL_KEYS = 5
"""A PULL_REPLY carries the announcements asked for: five fit one datagram."""
DIGEST_BUCKETS = 16

# ------------------------------------------------------------------ codes


class Status(IntEnum):
    """ConnectionResponse status codes (the seed's list)."""

    SUCCESS = 0
    REJECTED = 1
    TARGET_UNREACHABLE = 2
    AUTH_FAILED = 3
    RESOURCE_LIMIT = 4
    ERROR = 5


class CloseReason(IntEnum):
    NORMAL = 0
    IDLE = 1
    SHUTDOWN = 2
    PEER_GONE = 3
    REPLACED = 4
    """The end that closed wants a new session (its path through this one went silent)."""
    # 5: retired (QUOTA, never sent)
    PREEMPTED = 6
    """The relay is at capacity and gave the slot to a session with more
    credit, or back to its lowest-credit members' reserve (relay/contention.py)."""


class ErrorCode(IntEnum):
    MALFORMED = 1
    NOT_REGISTERED = 2
    AUTH_FAILED = 3
    RESOURCE_LIMIT = 4
    UNKNOWN_SESSION = 5
    INTERNAL = 6
    SHUTTING_DOWN = 7
    STALE_TIMESTAMP = 8
    """Our timestamp is too far from the relay's clock; ``value`` is that clock (us)."""
    REPLAYED = 9
    """Our timestamp is not newer than what the relay accepted; ``value`` is its newest."""
    PORT_NOT_LATCHED = 10
    """Port mode: WireGuard packets from our IP reach session port ``value``
    from a source it is not latched to (our NAT rebound WireGuard's socket):
    only a new handshake re-latches it."""


class HeartbeatStatus(IntEnum):
    OK = 0
    NOT_REGISTERED = 1


class MappingKind(IntEnum):
    """How a side's NAT maps WireGuard's socket (RFC 4787 section 4.1), as the
    relay tells from a MAPPING_PROBE sent from that socket to its main port."""

    UNKNOWN = 0
    INDEPENDENT = 1
    """The same public port towards the relay's session port and main port."""
    DEPENDENT = 2
    """Another port per destination ("symmetric"): a direct try towards a
    peer with the same kind cannot work."""


class Capability(IntEnum):
    """Bits of RelayNodeInfo.capabilities."""

    UDP_RELAY = 1 << 0
    TCP_FALLBACK = 1 << 1
    IPV6 = 1 << 2
    DISCOVERY = 1 << 3
    GOSSIP = 1 << 4
    PORT_MODE = 1 << 5
    """Session ports: WireGuard talks to the relay without the agent's proxy."""
    TLS_FALLBACK = 1 << 6
    """Agents may connect over TLS (RelayNodeInfo.tls_port); TCP_FALLBACK: over TCP."""
    BUDGET = 1 << 7
    """The operator set a byte budget; RelayNodeInfo.budget_left_pct says what is left."""
    MULTI_HOP = 1 << 8
    """Takes CONNECTION_REQUEST with a relay to go through, and LEG_* from relays."""
    PRIVATE_PATHS = 1 << 9
    """Takes CONNECTION_REQUEST_SEALED and LEG_OPEN_SEALED (``wgrelay up --private``)."""
    CREDITS = 1 << 10
    """Asks its peers for usage receipts and spreads them (RECEIPTS): credits."""


REQUEST_FLAG_VIA = 0x01
"""CONNECTION_REQUEST: a relay key follows; the relay opens a leg to it and
the session goes through both (multi-hop, relay/legs.py)."""
MAX_PATH_RELAYS = 3
"""LEG_OPEN's ``hops`` (relays on the path, the receiver included) is at most
this; a relay extends a path only while ``hops`` is below it."""

REGISTER_FLAG_ACCEPT_INCOMING = 0x01
REGISTER_FLAG_STANDBY = 0x02
"""A second registration, kept ready for failover: the relay places a record
marked standby (lookups offer it after the home); the same REGISTER without
the bit promotes it to home."""
REGISTER_FLAG_UNLISTED = 0x04
"""Registered only to reach a peer there: no location record at all."""
QUERY_FLAG_WANT_RELAYS = 0x01
QUERY_FLAG_LOCATE_PEER = 0x02
RESPONSE_FLAG_LOCATED = 0x01
RESPONSE_FLAG_RECORD = 0x02
"""The location comes with the home relay's signed LOCATION record."""
RESPONSE_FLAG_MORE = 0x04
RESPONSE_FLAG_ALTERNATE = 0x08
"""A second place the peer accepts sessions (its standby), with its record."""
RTT_UNKNOWN = 0xFFFF
"""An ``rtt_ms`` field that was not measured."""
LOCATION_FLAG_STANDBY = 0x01
"""The record's relay holds a standby registration, not the peer's home."""
"""More relays than fit: ask again with the next page."""
