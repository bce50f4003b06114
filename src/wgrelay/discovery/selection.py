"""Choosing among known relays: the score (lower is better).

Documented in docs/ARCHITECTURE.md::

    score = rtt_ms (1000 if never measured) + 250 * failures + 2 * load_pct
"""

from __future__ import annotations

from wgrelay.discovery.registry import KnownRelay

NEVER_MEASURED_RTT_MS = 1000.0
FAILURE_PENALTY_MS = 250.0
LOAD_WEIGHT_MS = 2.0


def relay_score(relay: KnownRelay) -> float:
    rtt = relay.rtt_ms if relay.rtt_ms is not None else NEVER_MEASURED_RTT_MS
    return rtt + FAILURE_PENALTY_MS * relay.failures + LOAD_WEIGHT_MS * (relay.load_pct or 0)
