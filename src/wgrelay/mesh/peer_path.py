"""What the agent knows of one peer's path (``PeerPath``), its settings
(``AgentConfig``), and the rule that decides a path went silent. The
decisions themselves are ``AgentCore``'s (agent.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import MappingKind

ANSWER_WAIT_S = 11.0
"""How long WireGuard may take to answer data: it sends a keepalive 10 s after
receiving data if it had nothing else to send (KEEPALIVE_TIMEOUT)."""
KEEPALIVE_MESSAGE_BYTES = 32
"""A WireGuard keepalive as backends count it in tx_bytes: a transport message
with an empty payload (16-byte header, 16-byte tag)."""


class PathKind(StrEnum):
    PROBING = "probing"
    DIRECT = "direct"
    RELAY_PENDING = "relay-pending"
    RELAYED = "relayed"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    relay_enabled: bool = True
    direct_probe_s: float = 3.0
    """How long one direct candidate may take to show a handshake."""
    initiate_delay_s: float = 2.0
    handshake_fresh_s: float = 180.0
    """A handshake younger than this (WireGuard's REJECT_AFTER_TIME) proves a path."""
    broken_after_s: float = 15.0
    """Sending without any answer for this long on a direct path: it broke."""
    relay_silent_s: float = 20.0
    """The same for a relayed path (a little longer: two hops, and the relay's
    own liveness checks usually notice first)."""
    keepalive_s: int = 25
    """Persistent keepalive the agent sets on peers it manages (0: leave alone)."""
    relay_retry_initial_s: float = 5.0
    relay_retry_max_s: float = 60.0
    relay_first: bool = True
    """A peer without a recent handshake is relayed at once and direct is
    tried in the background (False: direct candidates first, then a relay)."""
    start_grace_s: float = 0.25
    """No relay is asked for sooner than this after the agent's start: peers
    starting with us (a mesh brought up at once) register at their homes
    and their location records reach the relays that answer lookups, so a
    lookup finds them at once instead of widening to more relays."""
    first_upgrade_s: float = 2.0
    """After a relayed path came up, the first direct try waits this long (the
    relay's session ports latch and tell both sides the mappings first)."""
    upgrade_probe_s: float = 0.8
    """A direct try while relayed: each candidate's time. The relay's frames
    are held meanwhile (WireGuard would roam back to the relay), so this is
    what a failed try costs the tunnel; a working path answers in one round
    trip, and both sides send every poll while it runs."""
    probe_back_s: float = 30.0
    probe_back_max_s: float = 900.0
    flap_window_s: float = 300.0


@dataclass(slots=True)
class PeerPath:
    key: PublicKey
    kind: PathKind
    since: float
    reason: str
    original_endpoint: Endpoint | None
    original_keepalive: int | None
    direct_endpoint: Endpoint | None = None
    """The direct endpoint in use, or the best known one: where the peer goes back to."""
    relay: PublicKey | None = None
    relay_endpoint: Endpoint | None = None
    relay_requested: bool = False
    relay_asked_at: float = float("-inf")
    relay_retry_at: float = 0.0
    relay_backoff_s: float = 0.0
    probing_back: bool = False
    next_probe_back: float = 0.0
    probe_back_interval_s: float = 0.0
    flaps: int = 0
    direct_since: float | None = None
    returned_direct_at: float | None = None
    latest_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    silent_since: float | None = None
    """Since when we send and hear nothing (see ``silent``)."""
    tx_at_silence: int = 0
    owed_since: float | None = None
    """Since when we sent more than keepalives into the silence (an answer is owed)."""
    tx_before: int = 0
    """tx_bytes at the previous observation."""
    wg_endpoint: Endpoint | None = None
    """WireGuard's endpoint for the peer at the last observation."""
    last_heard: float | None = None
    """When we last saw the peer alive (rx grew or a new handshake)."""
    history: list[str] = field(default_factory=list)
    mapping_mine: Endpoint | None = None
    """Our WireGuard's public mapping as the relay's session port sees it."""
    mapping_peer: Endpoint | None = None
    """The peer's (its WireGuard's public mapping): a direct candidate."""
    nat_mine: MappingKind = MappingKind.UNKNOWN
    """How our NAT maps WireGuard's socket, as the relay told (MAPPING_PROBE)."""
    nat_peer: MappingKind = MappingKind.UNKNOWN
    mappings_due: float = 0.0
    """Port mode: until then a direct try waits for the relay's mappings
    (the latch of both session ports) rather than trying alone."""
    unanswered_asks: int = 0
    """AskPunch sent since the last GO."""
    hopeless_until: float = 0.0
    """Both NATs map per destination: the configured endpoints' next
    coordinated try is not before then."""
    roamed_first: bool = False
    """The next direct tries start where WireGuard points (the peer left the
    relay for a direct path, which WireGuard has most likely followed)."""
    upgrades: int = 0
    """Direct tries while relayed (probe-backs and coordinated ones)."""
    last_upgrade: str | None = None
    """The latest direct try while relayed: when, how, and what came of it."""
    punch_nonce: int = 0
    """Of the coordinated try under way (0: the try, if any, is not one)."""

    def track_silence(self, heard: bool, sent: bool, now: float) -> None:
        """Note whether the peer was heard, and since when we send into silence."""
        if heard:
            self.silent_since = None
            self.owed_since = None
        elif sent and self.silent_since is None:
            self.silent_since = now
            self.tx_at_silence = self.tx_before

    def silent(self, now: float, limit_s: float, keepalive_s: int) -> bool:
        """Has the path been silent for ``limit_s`` while it owed us an answer?

        Sending and hearing nothing is normal on an idle tunnel: WireGuard's
        persistent keepalive timer restarts on any packet sent *or received*,
        so with both ends at the same interval only one end ever sends its
        keepalives (32-byte messages nobody answers), and the other end hears
        from it but sends nothing until its next rekey. So silence only counts
        once we sent more than keepalives (data, which WireGuard answers within
        its 10 s passive keepalive, or a handshake initiation, answered at
        once), and only after the answer had ``ANSWER_WAIT_S`` to come. An idle
        broken path is still found: its next rekey sends an initiation (at most
        about two minutes later).
        """
        if self.silent_since is None:
            return False
        sent = self.tx_bytes - self.tx_at_silence
        ka = keepalive_s
        # the window opens at the first growth we saw, which may have been a
        # keepalive sent up to one poll earlier: count one more than fit
        allowed = (
            KEEPALIVE_MESSAGE_BYTES * (math.ceil((now - self.silent_since) / ka) + 1) if ka else 0
        )
        if sent <= allowed:
            self.owed_since = None
            return False
        if self.owed_since is None:
            self.owed_since = now
        return now >= self.silent_since + limit_s and now >= self.owed_since + ANSWER_WAIT_S
