"""The planner's configuration and the state it keeps per attempt, per link."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from wgrelay.client.events import (
    Place,
)
from wgrelay.client.link import RelayLink
from wgrelay.client.privacy import PrivacyConfig
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey

MAX_PAGES = 100
"""Of the relay list: 600 relays; a federation bigger than that is sampled."""


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """Every timer and fan-out of the planner, in one place."""

    measure_count: int = 8
    """Relays pinged before choosing a home (the best by score)."""
    measure_timeout_s: float = 2.0
    connect_timeout_s: float = 6.0
    """Registering at a relay (cookie round trip included)."""
    session_timeout_s: float = 6.0
    locate_fanout: int = 2
    """Relays asked where a peer is when we have no home yet (else only the home)."""
    locate_timeout_s: float = 2.0
    located_relay_ttl_s: float = 600.0
    locate_widen: int = 8
    """Relays asked when the home does not know where a peer is."""
    rehome_retry_s: float = 5.0
    rehome_retry_max_s: float = 60.0
    retry_jitter: float = 0.2
    """Backoff delays vary by this fraction either way."""
    measure_interval_s: float = 15.0
    announcements_interval_s: float = 300.0
    link_idle_s: float = 60.0
    standby: bool = True
    """Keep a second relay registered, so losing the home costs one REGISTER."""
    private: PrivacyConfig = field(default_factory=PrivacyConfig)
    """Peers whose relayed paths use two relays, neither knowing both (plan_private.py)."""


class Phase(Enum):
    LOCATING = "locating"
    CONNECTING = "connecting"


@dataclass(slots=True)
class Attempt:
    """One ``relay_peer`` in progress."""

    peer: PublicKey
    phase: Phase
    deadline: float
    queries: dict[PublicKey, int] = field(default_factory=dict)
    located: PublicKey | None = None
    candidates: list[PublicKey] = field(default_factory=list)
    current: PublicKey | None = None
    tried: set[PublicKey] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    report_located: bool = False
    """Only locate (``locate()``): report where, do not connect."""
    asked: set[PublicKey] = field(default_factory=set)
    widened: bool = False
    """The home did not know: other relays were asked too (relays that do
    not federate, or a peer whose records are not placed yet)."""
    places: tuple[Place, ...] = ()
    moving: bool = False
    """A relayed peer moving to a cheaper path: a failure keeps the old one."""
    via: PublicKey | None = None
    """The relay the current request goes through (multi-hop), if any."""
    bridges: list[PublicKey] = field(default_factory=list)
    """Places of the peer we could not reach, to ask our home to go through next."""
    bridged: set[PublicKey] = field(default_factory=set)


@dataclass(slots=True)
class Homing:
    """Choosing a home relay: measure, then register at the best."""

    measuring: set[PublicKey]
    measure_deadline: float
    trying: PublicKey | None = None
    deadline: float = 0.0
    tried: set[PublicKey] = field(default_factory=set)


@dataclass(slots=True)
class LinkSlot:
    link: RelayLink
    addr: Endpoint
    idle_since: float
