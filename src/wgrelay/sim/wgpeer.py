"""Per-peer state of the simulated WireGuard: keypairs, timers, counters.

Spec constants are WireGuard's (the paper, section 6, and wireguard-go's
``device/constants.go``); the device logic using them is in ``wireguard.py``.

Packets inside the tunnel are not real IP packets. A sim-only inner header
stands in for one: ``0x45 | kind u8 | total length u16 BE | ping id u64 BE``
(version and length where IPv4 has them, so sizes and padding behave like
real traffic), then zeros up to the length, then WireGuard's padding to a
multiple of 16.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import Callable
from dataclasses import dataclass

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey

# ---------------------------------------------------------------- spec constants

REKEY_AFTER_TIME_S = 120.0
REJECT_AFTER_TIME_S = 180.0
REKEY_ATTEMPT_TIME_S = 90.0
REKEY_TIMEOUT_S = 5.0
KEEPALIVE_TIMEOUT_S = 10.0
REKEY_TIMEOUT_JITTER_MAX_S = 0.334
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME_S / REKEY_TIMEOUT_S)
"""18, as wireguard-go counts it: the first initiation plus 19 retries (one
every REKEY_TIMEOUT_S) are sent, so the last goes out 95 s after the first and
the peer gives up (drops what it had queued) at 100 s."""
HANDSHAKE_INITIATION_RATE_S = 1 / 50
"""A responder ignores initiations from one peer arriving faster than this."""
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
PADDING_MULTIPLE = 16

# ---------------------------------------------------------------- implementation constants

MAX_STAGED_PACKETS = 128
"""Packets queued per peer while there is no session (the oldest is dropped)."""
REPLAY_WINDOW = 8128
"""wireguard-go's replay window: (128 - 1) blocks of 64 bits."""
_REPLAY_MASK = (1 << REPLAY_WINDOW) - 1
_CLOCK_EPSILON_S = 1e-9
"""Timers fire exactly on time; this keeps float sums from making a 5.0 s wait 4.999..."""

# ---------------------------------------------------------------- the inner packet

INNER_HEADER = struct.Struct(">BBHQ")
INNER_VERSION = 0x45
INNER_DATA = 0
INNER_PING = 1
INNER_PONG = 2
MIN_INNER_LEN = 20
"""The smallest packet ``send_app`` takes: an IPv4 header's worth."""
PING_LEN = 84
"""What ``ping`` sends by default: 20 IP + 8 ICMP + 56 bytes, like ping(8)."""


def make_inner(kind: int, length: int, ping_id: int, mtu: int) -> bytes:
    """A tunnel packet of ``length`` bytes, padded as WireGuard pads it."""
    padded = min(-(-length // PADDING_MULTIPLE) * PADDING_MULTIPLE, max(mtu, length))
    header = INNER_HEADER.pack(INNER_VERSION, kind, length, ping_id)
    return header + bytes(padded - len(header))


def parse_inner(packet: bytes) -> tuple[int, int, int] | None:
    """(kind, length, ping id), or None if it is not one of ours."""
    if len(packet) < MIN_INNER_LEN:
        return None
    version, kind, length, ping_id = INNER_HEADER.unpack_from(packet)
    if version != INNER_VERSION or not MIN_INNER_LEN <= length <= len(packet):
        return None
    return kind, length, ping_id


# ---------------------------------------------------------------- pieces of a peer


class LazyTimer:
    """A re-armable deadline that costs no loop operation when pushed later.

    WireGuard moves some timers on every packet (persistent keepalive); a new
    asyncio handle each time would litter the loop's heap. Here ``mod`` only
    stores the deadline unless it is earlier than the armed handle; a handle
    that fires early re-arms itself for the current deadline.
    """

    __slots__ = ("_callback", "_handle", "_handle_at", "_loop", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0
        self.deadline: float | None = None

    @property
    def pending(self) -> bool:
        return self.deadline is not None

    def mod(self, deadline: float) -> None:
        self.deadline = deadline
        if self._handle is None or deadline < self._handle_at:
            if self._handle is not None:
                self._handle.cancel()
            self._arm(deadline)

    def delete(self) -> None:
        self.deadline = None

    def stop(self) -> None:
        self.deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        self._handle = self._loop.call_at(when, self._fire)
        self._handle_at = when

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._arm(deadline)
            return
        self.deadline = None
        self._callback()


class Keypair:
    """One session's indices, age, send counter and replay window."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "remote_index",
        "replay_highest",
        "replay_mask",
        "send_counter",
    )

    def __init__(
        self, peer: Peer, local_index: int, remote_index: int, created: float, is_initiator: bool
    ) -> None:
        self.peer = peer
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = is_initiator
        self.send_counter = 0
        self.replay_highest = -1
        self.replay_mask = 0

    def accept_counter(self, counter: int) -> bool:
        """Sliding-window replay check (RFC 6479's rules); records ``counter``."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        highest = self.replay_highest
        if counter > highest:
            shift = counter - highest
            mask = self.replay_mask
            self.replay_mask = ((mask << shift) & _REPLAY_MASK) | 1 if shift < REPLAY_WINDOW else 1
            self.replay_highest = counter
            return True
        back = highest - counter
        if back >= REPLAY_WINDOW:
            return False
        bit = 1 << back
        if self.replay_mask & bit:
            return False
        self.replay_mask |= bit
        return True


@dataclass(frozen=True, slots=True)
class PeerStats:
    """What one peer's tunnel did, for scenario assertions."""

    initiations_sent: int
    responses_sent: int
    handshakes_completed: int
    keepalives_sent: int
    keepalives_received: int
    app_packets_sent: int
    app_bytes_sent: int
    app_packets_received: int
    app_bytes_received: int
    staged_dropped: int
    """Packets thrown away unsent (queue full, or the handshake was given up)."""


class Peer:
    """Everything the device keeps about one configured peer."""

    def __init__(
        self,
        public_key: PublicKey,
        mac1_key: bytes,
        endpoint: Endpoint | None,
        allowed_ips: tuple[str, ...],
        keepalive_s: int,
        make_timer: Callable[[Callable[[], None]], LazyTimer],
        on_expiry: tuple[
            Callable[[Peer], None],
            Callable[[Peer], None],
            Callable[[Peer], None],
            Callable[[Peer], None],
        ],
    ) -> None:
        self.public_key = public_key
        self.mac1_key = mac1_key
        """Key for the mac1 of handshakes *to* this peer."""
        self.endpoint = endpoint
        self.allowed_ips = allowed_ips
        self.keepalive_s = keepalive_s
        self.configured = (endpoint, keepalive_s)
        """What ``add_peer`` set; a reboot of the host goes back to it."""
        self.latest_handshake: float | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.pending_index: int | None = None
        """Our sender index of the initiation we wait a response for."""
        self.last_sent_handshake = -1e18
        self.last_initiation_consumed = -1e18
        self.last_timestamp = b""
        """Greatest TAI64N seen in this peer's initiations (replay protection)."""
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.need_another_keepalive = False
        self.staged: collections.deque[bytes] = collections.deque()
        retransmit, send_keepalive, new_handshake, persistent = on_expiry
        self.retransmit_handshake = make_timer(lambda: retransmit(self))
        self.send_keepalive = make_timer(lambda: send_keepalive(self))
        self.new_handshake = make_timer(lambda: new_handshake(self))
        self.persistent_keepalive = make_timer(lambda: persistent(self))
        self.initiations_sent = 0
        self.responses_sent = 0
        self.handshakes_completed = 0
        self.keepalives_sent = 0
        self.keepalives_received = 0
        self.app_packets_sent = 0
        self.app_bytes_sent = 0
        self.app_packets_received = 0
        self.app_bytes_received = 0
        self.staged_dropped = 0

    def timers(self) -> tuple[LazyTimer, ...]:
        return (
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.persistent_keepalive,
        )

    def stats(self) -> PeerStats:
        return PeerStats(
            initiations_sent=self.initiations_sent,
            responses_sent=self.responses_sent,
            handshakes_completed=self.handshakes_completed,
            keepalives_sent=self.keepalives_sent,
            keepalives_received=self.keepalives_received,
            app_packets_sent=self.app_packets_sent,
            app_bytes_sent=self.app_bytes_sent,
            app_packets_received=self.app_packets_received,
            app_bytes_received=self.app_bytes_received,
            staged_dropped=self.staged_dropped,
        )

    def stage(self, packet: bytes) -> None:
        if len(self.staged) >= MAX_STAGED_PACKETS:
            self.staged.popleft()
            self.staged_dropped += 1
        self.staged.append(packet)

    def session_usable(self, now: float) -> Keypair | None:
        kp = self.current
        if kp is None or now - kp.created >= REJECT_AFTER_TIME_S - _CLOCK_EPSILON_S:
            return None
        return kp

    def handshake_rate_limited(self, now: float) -> bool:
        return now - self.last_sent_handshake < REKEY_TIMEOUT_S - _CLOCK_EPSILON_S
