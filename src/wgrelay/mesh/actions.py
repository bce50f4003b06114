"""What ``AgentCore`` asks the daemon to do, one frozen value per action.

The core decides; the daemon (daemon.py) carries actions out against the
WireGuard backend, the relay manager and the proxies, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.nat import TryDirect


@dataclass(frozen=True, slots=True)
class Kick:
    """Switch persistent keepalive on through 0: WireGuard sends at once."""

    peer: PublicKey
    keepalive_s: int


@dataclass(frozen=True, slots=True)
class UseProxy:
    """Point the peer's endpoint at its local proxy (creating it)."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class HoldProxy:
    """Stop (or resume) handing relay frames to WireGuard during a probe-back."""

    peer: PublicKey
    hold: bool


@dataclass(frozen=True, slots=True)
class LeaveRelay:
    """The peer is direct now: close its relay session and proxy (endpoint stays)."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class UseDirect:
    """Set the peer's endpoint (and keepalive) and drop any relay path (restore)."""

    peer: PublicKey
    endpoint: Endpoint | None
    keepalive_s: int | None


@dataclass(frozen=True, slots=True)
class StartRelay:
    peer: PublicKey


@dataclass(frozen=True, slots=True)
class ReplaceRelay:
    """Drop the peer's relay session (telling the other end we want a new
    one) but keep its proxy: WireGuard's endpoint does not change."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class CloseRelay:
    peer: PublicKey


@dataclass(frozen=True, slots=True)
class AskPunch:
    """Ask the relay carrying the peer for a coordinated direct try (PUNCH):
    it tells both sides GO at the same moment."""

    peer: PublicKey
    nonce: int


@dataclass(frozen=True, slots=True)
class CheckMapping:
    """Let the relay carrying the peer see how our NAT maps WireGuard's
    socket again (a MAPPING_PROBE from WireGuard's port)."""

    peer: PublicKey


Action = (
    Kick
    | TryDirect
    | UseProxy
    | HoldProxy
    | LeaveRelay
    | UseDirect
    | StartRelay
    | ReplaceRelay
    | CloseRelay
    | AskPunch
    | CheckMapping
)
