"""Relay configuration and its timers, all in one place."""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.errors import ConfigError
from wgrelay.relay.budget import Budget

_U16_MAX = 0xFFFF
"""Registered.ttl_s, Registered.heartbeat_s, ConnectionResponse.idle_timeout_s."""
DEFAULT_PORT_RANGE = (52000, 52999)
"""start-relay's --port-range: 500 sessions in port mode (the rest go framed)."""
_U32_MAX = 0xFFFF_FFFF
"""ConnectionResponse.max_bandwidth_kbps, RelayNodeInfo.max_sessions."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    # ---- the seed's limits
    max_connections: int = 100
    """Sessions (relayed connections) at once, across all peers."""
    max_bandwidth_kbps: int = 1000
    """Per connection and direction, in kilobytes (1000 bytes) per second; 0 = unlimited."""

    # ---- further limits
    max_sessions_per_peer: int = 32
    """Sessions a peer may hold; offers it has not accepted yet do not count."""
    max_pending_per_peer: int = 8
    """Offers a peer may have outstanding (asked for, not yet answered)."""
    max_registrations: int = 10_000
    max_registrations_per_source: int = 64
    """Per IPv4 address or IPv6 /64: one host cannot fill the registration table."""
    max_sessions_per_source: int = 64
    """Sessions (pending or established) with an end in one IPv4 address or IPv6 /64."""
    port_range: tuple[int, int] | None = None
    """Session ports for port mode (two per session), inclusive; None: framed only.
    ``start-relay`` defaults to ``DEFAULT_PORT_RANGE``."""
    packet_overhead_bytes: int = 64
    """Charged per data frame on top of its size against ``max_bandwidth_kbps``:
    what a packet costs on the wire beyond its payload (IP, UDP, link framing),
    so a flood of tiny frames cannot pass the byte cap at 100x the packet rate."""
    control_rate_per_ip: float = 50.0
    control_burst_per_ip: float = 100.0
    control_rate_per_key: float = 20.0
    control_burst_per_key: float = 60.0
    control_rate_per_relay: float = 500.0
    control_burst_per_relay: float = 1000.0
    """Other relays send on behalf of many peers (lookups, location records)."""
    rate_table_size: int = 4096
    key_cache_size: int = 20_000
    handshakes_before_cookies: int = 100
    """Public-key operations per second above which unknown senders must show a cookie."""
    leg_relays: frozenset[bytes] = frozenset()
    """Relays (Ed25519 keys) this relay runs multi-hop legs with, either way
    (``--leg-relay``); empty: no multi-hop. A leg's far side is vouched for
    by the other relay alone, so only relays the operator trusts may open
    one here or be sent one (docs/SECURITY.md)."""
    budget: Budget | None = None
    """Bytes the relay may forward per calendar period (``--budget``; budget.py);
    None: no budget."""
    capacity_bytes_per_s: int = 0
    """What all sessions together may forward, both directions, in bytes
    per second (``--capacity``); 0: no relay-wide limit. Above it sessions
    share it by credit (contention.py)."""
    min_share: float = 0.25
    """Of the slots and of the capacity, what is kept for the lowest-credit
    members under contention (``--min-share``; contention.py)."""

    # ---- timers (seconds)
    registration_ttl_s: int = 30
    heartbeat_interval_s: int = 5
    session_idle_timeout_s: int = 180
    offer_retransmit_s: float = 1.0
    offer_timeout_s: float = 5.0
    bandwidth_burst_s: float = 0.25
    """Token bucket depth in seconds of the rate. Deep enough that TCP inside the
    tunnel is not knocked back by every small burst, shallow enough that over 5 s
    the cap holds within 5 %."""
    housekeeping_interval_s: float = 1.0

    def __post_init__(self) -> None:
        # Values that go on the wire must fit their fields (docs/PROTOCOL.md), or
        # encoding the reply fails on every request instead of once at start.
        if not 1 <= self.max_connections <= _U32_MAX:
            raise ConfigError(f"--max-connections must be 1 to {_U32_MAX} (a u32 on the wire)")
        if self.max_bandwidth_kbps < 0:
            raise ConfigError("--max-bandwidth must be 0 (unlimited) or positive")
        if self.max_bandwidth_kbps > 10_000_000:
            raise ConfigError("--max-bandwidth above 10 GB/s is not a limit")
        if self.max_sessions_per_peer < 1 or self.max_registrations < 1:
            raise ConfigError("session and registration limits must be at least 1")
        if self.heartbeat_interval_s < 1 or self.registration_ttl_s < 2 * self.heartbeat_interval_s:
            raise ConfigError("registration TTL must cover at least two heartbeats")
        if self.registration_ttl_s > _U16_MAX:
            raise ConfigError(f"registration TTL must be at most {_U16_MAX} s (a u16 on the wire)")
        if self.port_range is not None:
            lo, hi = self.port_range
            if not 1 <= lo < hi <= _U16_MAX:
                raise ConfigError("--port-range must be LOW-HIGH, two ports or more within 1-65535")
        if not 0 <= self.capacity_bytes_per_s <= 10**11:
            raise ConfigError("--capacity must be off or up to 100 GB/s")
        if not 0.0 < self.min_share <= 0.5:
            raise ConfigError("--min-share must be above 0 and at most 50%")
        if not 1 <= self.session_idle_timeout_s <= _U16_MAX:
            raise ConfigError(f"--idle-timeout must be 1 to {_U16_MAX} s (a u16 on the wire)")

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.max_bandwidth_kbps * 1000.0

    @property
    def bandwidth_burst_bytes(self) -> float:
        # at least two maximum-size frames, so a jumbo packet can ever pass
        return max(self.bandwidth_bytes_per_s * self.bandwidth_burst_s, 2 * 9226.0)
