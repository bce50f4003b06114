"""Choosing relays: a relay's score, and a whole path's cost (lower is better).

Documented in docs/ARCHITECTURE.md ("Choosing the path")::

    rtt(R)     = our measured RTT to R, else the GeoIP prior, else 1000 ms
    score(R)   = rtt(R) + 250 * failures(R) + 2 * load_pct(R)
                 + 1 * budget_used_pct(R)   (100 - budget_left_pct, when announced)
                 + 10^9 if R is full (load 100 %) or its budget is spent

A full or spent relay refuses new sessions: it comes after every relay that
does not (whatever their RTTs and failures), and is tried only when no
other is known (its announcement may be stale: a full relay frees up, a
spent one's period ends). A budget partly used steers gently (at most
100 ms), so a mesh spreads over its volunteers' relays before any is spent.
    cost(A-R-B) = score(R) + rtt_B(R)      (B's RTT to R from its signed
                                            record; 1000 ms if not reported)
                  + 250 * min(lost_B(R), 4)  (relayed sessions to B through R
                                            that failed since the last that
                                            worked: the connection cache)

Two relays (multi-hop through our home H to the peer's relay X; the
client's whole-path choice, client/plan_paths.py)::

    cost(A-H-X-B) = score(H) + rtt_H(X)    (H's RTT to X, measured by H and
                                           told in LEG_RTT_REPLY; no figure:
                                           no such path)
                    + rtt_B(X) + burden(X) (X's load and budget, as in score)
                    + 250 * min(lost_B(H), 4)
                    + TWO_RELAY_EXTRA_MS

``TWO_RELAY_EXTRA_MS`` is what a second relay costs beyond its link: its
forwarding (well under a millisecond) and a bias for fewer relays (one more
that can fail, one more quota to count): a path over two relays is taken
only when it saves more than that, and moved to only by the hysteresis
below on top.

Relays with the same score (typically: none measured yet) are ordered by a
rendezvous hash of our key and theirs, so agents that know the same relays
spread over them instead of all measuring, and homing on, the first few.

Hysteresis: a relayed peer moves to another relay only when the new path is
both ``SWITCH_FRACTION`` cheaper and ``SWITCH_MIN_MS`` cheaper than the
current one, and at most once per ``SWITCH_HOLD_S`` per peer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from wgrelay.discovery.registry import KnownRelay
from wgrelay.discovery.rendezvous import weight
from wgrelay.keys import PublicKey

NEVER_MEASURED_RTT_MS = 1000.0
FAILURE_PENALTY_MS = 250.0
LOAD_WEIGHT_MS = 2.0
BUDGET_WEIGHT_MS = 1.0
"""Per percent of a relay's byte budget used this period."""
UNAVAILABLE_PENALTY_MS = 1e9
"""A relay that refuses new sessions (full, or its budget spent): after any
other, however slow or failing (four million failures would add as much)."""
TWO_RELAY_EXTRA_MS = 10.0
SWITCH_FRACTION = 0.25
SWITCH_MIN_MS = 20.0
SWITCH_HOLD_S = 120.0

RttPrior = Callable[[KnownRelay], float | None]
"""An RTT estimate for a relay never measured (GeoIP distance), or None."""
RelayHistory = Callable[[PublicKey, PublicKey], int]
"""(peer, relay) -> relayed sessions to that peer through that relay that
failed since the last one that worked (the connection cache's relay entries)."""
MAX_HISTORY_FAILURES = 4


def relay_score(relay: KnownRelay, prior: float | None = None) -> float:
    if relay.rtt_ms is not None:
        rtt = relay.rtt_ms
    else:
        rtt = prior if prior is not None else NEVER_MEASURED_RTT_MS
    return rtt + FAILURE_PENALTY_MS * relay.failures + relay_burden(relay)


def relay_burden(relay: KnownRelay) -> float:
    """What a relay's own state adds to any path through it: its load and
    budget (our RTT and failures are about our reach of it, not this)."""
    load = relay.load_pct or 0
    burden = LOAD_WEIGHT_MS * load
    left = relay.budget_left_pct
    if left is not None:
        burden += BUDGET_WEIGHT_MS * (100 - left)
    if load >= 100 or left == 0:
        burden += UNAVAILABLE_PENALTY_MS
    return burden


class Selector:
    """Scores and path costs for one agent (its key spreads the ties)."""

    def __init__(
        self, own: PublicKey, prior: RttPrior | None = None, history: RelayHistory | None = None
    ) -> None:
        self.own = own
        self.prior = prior
        self.history = history
        self.extra_cost: Callable[[PublicKey], float] | None = None
        """What reaching a relay costs beyond its score, in ms (the agent's
        relay manager: a relay reached only over a TCP/TLS stream)."""

    def score(self, relay: KnownRelay) -> float:
        prior = self.prior(relay) if self.prior is not None and relay.rtt_ms is None else None
        extra = self.extra_cost(relay.key) if self.extra_cost is not None else 0.0
        return relay_score(relay, prior) + extra

    def order(self, relays: Iterable[KnownRelay]) -> list[KnownRelay]:
        """Best first; equal scores in an order of our own (rendezvous hash)."""
        return sorted(relays, key=lambda r: (self.score(r), -weight(self.own, r.key)))

    def path_cost(
        self, relay: KnownRelay, peer_rtt_ms: float | None, peer: PublicKey | None = None
    ) -> float:
        theirs = peer_rtt_ms if peer_rtt_ms is not None else NEVER_MEASURED_RTT_MS
        return self.score(relay) + theirs + self._lost(peer, relay.key)

    def two_relay_cost(
        self,
        entry: KnownRelay,
        exit_relay: KnownRelay,
        leg_rtt_ms: float,
        peer_rtt_ms: float | None,
        peer: PublicKey | None = None,
    ) -> float:
        """A-entry-exit-B: ``leg_rtt_ms`` is the entry's RTT to the exit (its
        own measurement), ``peer_rtt_ms`` the peer's to the exit."""
        theirs = peer_rtt_ms if peer_rtt_ms is not None else NEVER_MEASURED_RTT_MS
        return (
            self.score(entry)
            + leg_rtt_ms
            + theirs
            + relay_burden(exit_relay)
            + self._lost(peer, entry.key)
            + TWO_RELAY_EXTRA_MS
        )

    def _lost(self, peer: PublicKey | None, relay: PublicKey) -> float:
        """Relayed sessions to ``peer`` through ``relay`` that failed lately."""
        if peer is None or self.history is None:
            return 0.0
        return FAILURE_PENALTY_MS * min(self.history(peer, relay), MAX_HISTORY_FAILURES)


def worth_switching(current: float, candidate: float) -> bool:
    """Hysteresis: only a clearly better path is worth a new session."""
    gain = current - candidate
    return gain >= SWITCH_MIN_MS and gain >= SWITCH_FRACTION * current
