"""Everything the client side reports, as frozen events (past-tense names).

``RelayLink`` (one relay) reports ``LinkEvent``s to its owner; ``RelayPlanner``
(every relay) turns them into ``PlanEvent``s, the agent's one outcome channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.proto.announce import Announcement
from wgrelay.proto.constants import CloseReason, MappingKind, Status
from wgrelay.proto.messages import PeerLocation
from wgrelay.proto.receipts import CreditReport

# ---------------------------------------------------------------- one relay


@dataclass(frozen=True, slots=True)
class LinkRegistered:
    observed: Endpoint
    heartbeat_s: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class LinkLost:
    reason: str


@dataclass(frozen=True, slots=True)
class LinkRejected:
    reason: str


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    peer: PublicKey
    session_id: bytes
    incoming: bool
    port: int = 0
    """The relay's session port for our side (port mode); 0: framed only."""


@dataclass(frozen=True, slots=True)
class SessionFailed:
    peer: PublicKey
    status: Status


@dataclass(frozen=True, slots=True)
class SessionEnded:
    peer: PublicKey
    session_id: bytes
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class PortNotLatched:
    """Port mode: the relay sees our WireGuard's packets for ``peer`` come from
    a source its port is not latched to (our NAT rebound WireGuard's socket)."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class PunchTold:
    """Port mode: the relay's PUNCH for our session with ``peer``: WireGuard's
    public mappings as its session ports see them (``mine``, ``theirs``);
    ``go``: move to ``theirs`` now, the peer does the same (nonce: whose try)."""

    peer: PublicKey
    nonce: int
    go: bool
    mine: Endpoint
    theirs: Endpoint
    mine_kind: MappingKind = MappingKind.UNKNOWN
    """How our NAT maps WireGuard's socket, as far as the relay could tell."""
    theirs_kind: MappingKind = MappingKind.UNKNOWN


@dataclass(frozen=True, slots=True)
class RttMeasured:
    rtt_s: float
    load_pct: int


@dataclass(frozen=True, slots=True)
class PingTimedOut:
    """A PING went unanswered until its deadline: a loss on the path."""

    echo_id: int


@dataclass(frozen=True, slots=True)
class Place:
    """A relay where a located peer accepts sessions, as its signed record says."""

    location: PeerLocation
    peer_rtt_ms: int | None
    """The peer's RTT to that relay (None: not reported, or unsigned)."""
    standby: bool


@dataclass(frozen=True, slots=True)
class DiscoveryAnswered:
    query_id: int
    located: PeerLocation | None
    announcements: tuple[Announcement, ...]
    asked_for: PublicKey | None
    more: bool = False
    """The relay knows more relays than this page held (ask for the next)."""
    page: int = 0
    places: tuple[Place, ...] = ()
    """Every place the peer accepts sessions, its home first (``located``
    is the first one's location)."""


@dataclass(frozen=True, slots=True)
class QueryFailed:
    query_id: int
    asked_for: PublicKey | None


@dataclass(frozen=True, slots=True)
class CreditReported:
    """The relay's answer to ``RelayLink.credit_query`` (wgrelay credits)."""

    report: CreditReport


LinkEvent = (
    LinkRegistered
    | LinkLost
    | LinkRejected
    | SessionEstablished
    | SessionFailed
    | SessionEnded
    | PortNotLatched
    | PunchTold
    | RttMeasured
    | PingTimedOut
    | DiscoveryAnswered
    | QueryFailed
    | CreditReported
)


# ---------------------------------------------------------------- every relay (the planner)


@dataclass(frozen=True, slots=True)
class PeerRelayed:
    peer: PublicKey
    relay: PublicKey
    incoming: bool
    session_id: bytes
    port: int = 0
    """The relay's session port for our side (port mode); 0: framed only."""


@dataclass(frozen=True, slots=True)
class PeerRelayLost:
    peer: PublicKey
    relay: PublicKey
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRelayFailed:
    peer: PublicKey
    error: str


@dataclass(frozen=True, slots=True)
class HomeChanged:
    relay: PublicKey | None


@dataclass(frozen=True, slots=True)
class PeerLocated:
    peer: PublicKey
    relay: PublicKey | None


@dataclass(frozen=True, slots=True)
class RelayMeasured:
    relay: PublicKey
    rtt_s: float | None
    """None: the ping went unanswered (a loss)."""
    peers: tuple[PublicKey, ...]
    """The peers the relay carries at the moment."""


@dataclass(frozen=True, slots=True)
class RelaysLearned:
    """Verified announcements changed the registry (new relays, or newer facts)."""

    relays: tuple[PublicKey, ...]


@dataclass(frozen=True, slots=True)
class PeerPunch:
    """``PunchTold`` from the relay carrying ``peer``."""

    told: PunchTold
    relay: PublicKey


@dataclass(frozen=True, slots=True)
class PeerPortNotLatched:
    """``PortNotLatched`` from the relay carrying ``peer``."""

    peer: PublicKey
    relay: PublicKey


@dataclass(frozen=True, slots=True)
class RelayCarrierChanged:
    """The link to ``relay`` now goes over ``carrier`` ("udp", "tcp", "tls"):
    its peers' WireGuard cannot use session ports over a stream (the shell's
    fallback, client/fallback.py, not the planner, says this)."""

    relay: PublicKey
    carrier: str


PlanEvent = (
    PeerRelayed
    | PeerPortNotLatched
    | RelayCarrierChanged
    | PeerPunch
    | PeerRelayLost
    | PeerRelayFailed
    | HomeChanged
    | PeerLocated
    | RelayMeasured
    | RelaysLearned
)
