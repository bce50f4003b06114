"""Scoring: the order of a peer's candidates, what worked last, what to keep.

Candidate order (``ConnectionCache.ordered_candidates``)
-------------------------------------------------------
Candidates are sorted ascending by the key::

    (-H, type rank, latency_ms (unknown = +inf), host, port)

where H, the *history points* of the endpoint (0 for one never tried), is::

    H = recency + min(10, success_count) - 10 * recent_failures - 5 * failure_count

    recency = 40 if the last success was < 10 min ago, 30 if < 1 h, 20 if < 1 day,
              10 if older, 0 if it never succeeded
    recent_failures = failures in the last 30 min; failure_count = failures
                      since the last success

So history dominates: a recent success first, more successes better, failures
worse. An endpoint that only ever failed has H <= -5 and sorts after every
never-tried one (H = 0). Type breaks ties: public-v4, public-v6, private-v4,
private-v6. Public first because a peer behind NAT is reachable (if at all) on
its public mapping, while a private address only works on a shared LAN and may
even reach a different host that uses the same RFC 1918 address; v4 before v6
because v4 is what both ends most often have. Then the measured (smoothed)
latency, then the endpoint itself, so the order is fully deterministic.

What worked last (``last_path``, ``best_relay``)
------------------------------------------------
After a restart the agent goes straight to the kind of path (direct or relay)
whose latest success is the most recent; a tie goes to direct. The best relay
is chosen among those that ever carried the peer: one whose latest outcome was
a failure ranks after every one whose latest outcome was a success; then the
most recent success, then the most successes, then the key text.

Which entries to keep (``prune`` and the per-peer bound)
--------------------------------------------------------
``prune`` drops an entry whose latest activity (success, try, relay success or
measurement) is more than ``max_age_s`` old, and failure times older than 30
minutes. When a peer still has too many entries, the ones that ever worked
(directly or through a relay) stay, then the freshest by their latest
activity; the endpoint breaks ties.
"""

from __future__ import annotations

import math
from typing import Literal

from wgrelay.endpoint import Endpoint
from wgrelay.mesh.addresses import EndpointType, classify
from wgrelay.mesh.cache_entry import (
    CachedEndpoint,
    ConnectionStatus,
    count_recent_failures,
    last_activity,
    trim_failures,
)

_RECENCY_POINTS = ((600.0, 40), (3600.0, 30), (86400.0, 20))
_RECENCY_POINTS_OLDER = 10
_SUCCESS_POINTS_MAX = 10
_RECENT_FAILURE_POINTS = 10
_FAILURE_POINTS = 5

_TYPE_RANK = {
    EndpointType.PUBLIC_V4: 0,
    EndpointType.PUBLIC_V6: 1,
    EndpointType.PRIVATE_V4: 2,
    EndpointType.PRIVATE_V6: 3,
    EndpointType.RELAY: 4,
}


def history_points(entry: CachedEndpoint | None, now: float) -> int:
    """H of the module docstring: success history minus failures (0: never tried)."""
    if entry is None:
        return 0
    points = 0
    if entry.last_success is not None:
        age = now - entry.last_success
        points = _RECENCY_POINTS_OLDER
        for limit_s, p in _RECENCY_POINTS:
            if age < limit_s:
                points = p
                break
    points += min(_SUCCESS_POINTS_MAX, entry.success_count)
    points -= _RECENT_FAILURE_POINTS * count_recent_failures(entry, now)
    points -= _FAILURE_POINTS * entry.failure_count
    return points


def candidate_key(
    entry: CachedEndpoint | None, endpoint: Endpoint, now: float
) -> tuple[int, int, float, str, int]:
    """The sort key of the module docstring (``entry``: None if never tried)."""
    kind = entry.endpoint_type if entry is not None else classify(endpoint)
    latency = entry.latency_ms if entry is not None and entry.latency_ms is not None else math.inf
    return (-history_points(entry, now), _TYPE_RANK[kind], latency, endpoint[0], endpoint[1])


def latest_path(entries: list[CachedEndpoint]) -> Literal["direct", "relay"] | None:
    """Which kind of path succeeded most recently (a tie goes to direct); None if none."""
    direct: float | None = None
    relay: float | None = None
    for e in entries:
        if e.endpoint_type is EndpointType.RELAY:
            if e.last_relay_success is not None:
                relay = e.last_relay_success if relay is None else max(relay, e.last_relay_success)
        elif e.last_success is not None:
            direct = e.last_success if direct is None else max(direct, e.last_success)
    if direct is None and relay is None:
        return None
    if relay is None or (direct is not None and direct >= relay):
        return "direct"
    return "relay"


def best_relay_entry(entries: list[CachedEndpoint]) -> CachedEndpoint | None:
    """The relay entry ranked first (module docstring); None if no relay ever worked."""
    best: CachedEndpoint | None = None
    best_key: tuple[bool, float, int, str] | None = None
    for e in entries:
        if e.relay_pubkey is None or e.last_relay_success is None:
            continue
        key = (
            e.status is ConnectionStatus.FAILED,
            -e.last_relay_success,
            -e.relay_success_count,
            str(e.relay_pubkey),
        )
        if best_key is None or key < best_key:
            best, best_key = e, key
    return best


def keep_entries(
    entries: list[CachedEndpoint], now: float, max_age_s: float, max_entries: int
) -> tuple[list[CachedEndpoint], bool]:
    """``prune`` for one peer: the entries kept, and whether anything changed."""
    keep: list[CachedEndpoint] = []
    changed = False
    for e in entries:
        last = last_activity(e)
        if last is None or now - last > max_age_s:
            changed = True
            continue
        changed |= trim_failures(e, now)
        keep.append(e)
    if len(keep) > max_entries:
        keep = evict(keep, len(keep) - max_entries)
        changed = True
    return keep, changed


def _keep_rank(e: CachedEndpoint) -> tuple[bool, float, str, int]:
    """Which entries to keep when a peer has too many: ones that worked, then the freshest."""
    worked = e.last_success is not None or e.last_relay_success is not None
    last = last_activity(e)
    return (worked, last if last is not None else -math.inf, e.endpoint[0], e.endpoint[1])


def evict(entries: list[CachedEndpoint], count: int) -> list[CachedEndpoint]:
    """``entries`` without the ``count`` least worth keeping, order preserved."""
    drop = {id(e) for e in sorted(entries, key=_keep_rank)[:count]}
    return [e for e in entries if id(e) not in drop]
