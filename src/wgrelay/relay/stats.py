"""What the relay counts: drops by reason, control traffic, forwarding totals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class DropReason(StrEnum):
    """Why a datagram was dropped. Wire errors use RemoteProtocolError.reason."""

    TRUNCATED = "truncated"
    OVERSIZE = "oversize"
    UNKNOWN_TYPE = "unknown_type"
    BAD_VERSION = "bad_version"
    MALFORMED = "malformed"
    TRAILING_BYTES = "trailing_bytes"
    WRONG_DIRECTION = "wrong_direction"
    AUTH_FAILED = "auth_failed"
    REPLAYED = "replayed"
    STALE_TIMESTAMP = "stale_timestamp"
    UNKNOWN_SESSION = "unknown_session"
    SPOOFED_SOURCE = "spoofed_source"
    SESSION_NOT_READY = "session_not_ready"
    RATE_LIMITED_IP = "rate_limited_ip"
    RATE_LIMITED_KEY = "rate_limited_key"
    NEEDS_COOKIE = "needs_cookie"
    BAD_COOKIE = "bad_cookie"
    NOT_ALLOWED = "not_allowed"
    BANDWIDTH = "bandwidth"
    NOT_WIREGUARD = "not_wireguard"
    """A data frame whose payload cannot be a WireGuard message."""
    UNPROVEN_ADDRESS = "unproven_address"
    """A bind, or a reply larger than the request, for an address the sender
    has not proven it receives at: answered with a cookie instead."""
    BAD_ADDRESS = "bad_address"
    """A peer address the relay never sends to (its own, unspecified, multicast)."""
    STALE_REBIND = "stale_rebind"
    """A message older than the newest from its key tried to move its registration."""
    PORT_NOT_LATCHED = "port_not_latched"
    """On a session port from a source it is not latched to, and not a handshake."""
    PORT_FOREIGN_ADDRESS = "port_foreign_address"
    """A handshake on a session port from another IP than its side's registration."""
    PORT_BAD_MAC1 = "port_bad_mac1"
    """A handshake on a session port whose mac1 is not for the session's other peer."""
    PORT_PEER_NOT_LATCHED = "port_peer_not_latched"
    """For a side that has not latched its port yet (a handshake is held for it)."""
    OFFLOAD_UNROUTED = "offload_unrouted"
    """Taken by the kernel offload but never sent: no route, or another
    table's forward chain dropped it (a firewall that must accept the relay)."""
    PORT_HELD = "port_held"
    """For a side that asked to hold its port (SESSION_HOLD) while it tries direct."""
    PUNCH_NOT_READY = "punch_not_ready"
    """A PUNCH for a session whose two sides are not both latched (no mappings)."""
    PUNCH_TOO_SOON = "punch_too_soon"
    """A PUNCH within PUNCH_INTERVAL_S of the session's last one."""
    MAPPING_PROBE_UNMATCHED = "mapping_probe_unmatched"
    """A MAPPING_PROBE for no session, or from an IP no latched side has."""
    STREAM_BACKPRESSURE = "stream_backpressure"
    """For a TCP/TLS client whose connection still holds its limit of unsent
    bytes (it stopped reading, or its path is slower than its traffic)."""
    STREAM_CLOSED = "stream_closed"
    """For a TCP/TLS client whose connection has gone (it re-registers)."""
    STREAM_LIMIT = "stream_limit"
    """A TCP/TLS connection over the relay's limits (closed unread)."""
    STREAM_BAD_FRAMING = "stream_bad_framing"
    """A TCP/TLS connection that broke the framing (closed)."""
    INTERNAL_ERROR = "internal_error"
    """A bug: the message was dropped, the relay went on (logged)."""
    UNEXPECTED = "unexpected"


@dataclass(slots=True)
class RelayStats:
    """Snapshot returned by ``RelayCore.get_stats()`` (the seed's RelayStats)."""

    registrations: int = 0
    sessions_active: int = 0
    sessions_pending: int = 0
    sessions_opened: int = 0
    sessions_closed: int = 0
    packets_forwarded: int = 0
    bytes_forwarded: int = 0
    control_received: int = 0
    control_sent: int = 0
    handshakes: int = 0
    port_latches: int = 0
    """Session ports latched (or re-latched) to a verified WireGuard handshake."""
    punches: int = 0
    """Coordinated direct tries (PUNCH) told to both sides of a session."""
    port_sessions: int = 0
    """Established sessions with session ports (port mode offered)."""
    port_sessions_offloaded: int = 0
    """Of those, fully latched on both sides: forwarded by the kernel if offloaded."""
    ports_free: int = 0
    offloaded_paths: int = 0
    """Sessions the kernel forwards (nftables), set by the server."""
    streams_open: int = 0
    """TCP/TLS client connections, set by the server."""
    cookies_sent: int = 0
    cookies_accepted: int = 0
    quota_hits: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    largest_unauthenticated_reply_ratio: float = 0.0
    """max(reply bytes / request bytes) over replies to unauthenticated packets."""
    relays_known: int = 0
    relays_live: int = 0
    budget_bytes: int = 0
    """The byte budget per period (``--budget``), 0 without one."""
    budget_used: int = 0
    budget_left: int = 0
    budget_period_end: int = 0
    """When the count starts again (Unix seconds)."""
    location_records: int = 0
    """Held for other relays' peers (home and standby records)."""
    federation: dict[str, int] = field(default_factory=dict)
    """Relay-to-relay events by name: ``sent_<Message>`` and what was made
    of what arrived (``announcement_new``, ``location_expired``, ...)."""
    legs: dict[str, int] = field(default_factory=dict)
    """Multi-hop legs (relay/legs.py): open_/opened_/closed_/packets_/bytes_
    by role (entry: we opened it; exit: another relay asked us), refusals."""
    credits: dict[str, int] = field(default_factory=dict)
    """Credits (relay/credits.py): requests sent, receipts taken and stored,
    batches spread, ``refused_<reason>``; empty without a ledger."""
    capacity_bytes_per_s: int = 0
    """``--capacity``, 0 without one."""
    contention: dict[str, int] = field(default_factory=dict)
    """Admission and bandwidth under contention (relay/contention.py):
    admitted_<why>, displaced_<why>, refused_full, ticks_contended, and the
    last tick's contended (0/1), demand_ and used_bytes_per_s."""
