"""A relay link's configuration, states and bookkeeping (link.py has the theory
of operation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from wgrelay.keys import PublicKey
from wgrelay.proto.constants import (
    REGISTER_FLAG_STANDBY,
    REGISTER_FLAG_UNLISTED,
)
from wgrelay.proto.messages import (
    Body,
)

MAX_CLOCK_CORRECTION_S = 366 * 86400.0
"""A relay that says our clock is off by more than a year is wrong (or
hostile): its figure is not followed."""


class Role(Enum):
    """How the relay publishes our registration (REGISTER flags)."""

    HOME = "home"
    """Lookups lead here first."""
    STANDBY = "standby"
    """Ready for failover: lookups offer it after the home."""
    UNLISTED = "unlisted"
    """Registered only to reach a peer here: no record."""


_ROLE_FLAGS = {
    Role.HOME: 0,
    Role.STANDBY: REGISTER_FLAG_STANDBY,
    Role.UNLISTED: REGISTER_FLAG_UNLISTED,
}


class LinkState(Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    LOST = "lost"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class LinkConfig:
    request_timeout_s: float = 8.0
    retransmit_initial_s: float = 0.5
    retransmit_max_s: float = 2.0
    default_heartbeat_s: float = 5.0
    lost_after_s: float = 9.0
    """Nothing authenticated heard from the relay for this long: the relay is lost."""
    carrier_probe_s: float = 0.5
    """A relay we sent our peers' traffic through, and that has been silent
    since for this long, is pinged..."""
    carrier_probe_interval_s: float = 0.25
    """...then at this interval (dense: a lossy path must not lose them all)..."""
    carrier_lost_after_s: float = 2.0
    """...and declared lost once silent this long with ``carrier_probes``
    probes unanswered: failover in seconds where traffic flows, while a link
    whose traffic is answered, or an idle one, costs no more than its
    heartbeats. At 20 % loss each way, all of 6 probes are lost with
    probability 0.36^6 = 0.2 %."""
    carrier_probes: int = 6
    rejoin_window_s: float = 15.0
    """After the relay forgot us (it restarted, or we lost it), a session we
    re-request whose peer is not back yet is asked for again every
    ``rejoin_retry_s`` for this long: the peer is re-registering too."""
    rejoin_retry_s: float = 1.0
    reregister_backoff_max_s: float = 8.0
    cookie_lifetime_s: float = 100.0
    accept_incoming: bool = True


@dataclass(slots=True)
class Request:
    body: Body
    deadline: float
    next_send: float
    interval: float
    sent_at: float
    peer: PublicKey | None = None


@dataclass(slots=True)
class LinkCounters:
    sent: int = 0
    received: int = 0
    retransmits: int = 0
    drops: dict[str, int] = field(default_factory=dict)
