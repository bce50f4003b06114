"""ConnectionCache: what worked, per peer and endpoint (the seed's connection_cache.rs).

Theory of operation
-------------------
For every WireGuard peer the agent keeps ``CachedEndpoint`` entries: one per
*direct* endpoint it tried or saw working, and one per *relay* that carried (or
failed to carry) that peer's traffic. The agent reports what happens:

* ``record_attempt`` when it starts a direct try, then ``record_success`` (a
  fresh handshake over that endpoint) or ``record_failure`` (none in time);
* ``record_relay_success`` / ``record_relay_failure`` for relayed sessions;
* ``record_quality`` for measurements (latency, loss) of a known path;

and asks back:

* ``ordered_candidates``: the direct endpoints to try, best first, none dropped;
* ``should_try_relay``: the seed's two rules (below);
* ``last_path`` / ``best_relay``: after a restart, go straight to what worked.

The cache is sans-I/O in the aioquic sense: every method takes ``now`` in Unix
wall seconds (wall, not monotonic, because entries outlive the process and are
compared across restarts) and nothing here reads a clock. The only I/O is the
optional SQLite file, behind a ``CacheStore``: loaded once in ``__init__``,
written by ``flush()``.

Relay rules (seed 4.3), over the peer's **direct** entries only
---------------------------------------------------------------
(a) at least ``RELAY_MIN_FAILED_ENDPOINTS`` (3) direct endpoints, and the last
    outcome of every one of them was a failure (``status`` FAILED); or
(b) more than ``RELAY_MAX_RECENT_FAILURES`` (10) failures within the last
    ``RECENT_FAILURE_WINDOW_S`` (30 min) across them.

Where the rest is
-----------------
* ``cache_entry.py``: ``CachedEndpoint`` and how one entry takes an outcome or
  a measurement (smoothing, jitter, ``quality_score``);
* ``cache_score.py``: the candidate order, what worked last (for ``last_path``
  and ``best_relay``) and which entries to keep;
* ``addresses.py``: what kind of address an endpoint is (public/private, v4/v6);
* ``cache_store.py``: the SQLite file (schema, load, flush, crash safety).

The model's names (``CachedEndpoint``, ``EndpointType``, ``classify``,
``quality_score``...) are importable from here too (``__all__``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Literal

from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import LocalProtocolError
from wgrelay.keys import PublicKey
from wgrelay.mesh.addresses import EndpointType, classify, normalize_endpoint
from wgrelay.mesh.cache_entry import (
    RECENT_FAILURE_WINDOW_S,
    CachedEndpoint,
    ConnectionStatus,
    check_sample,
    check_wall,
    count_recent_failures,
    note_attempt,
    note_failure,
    note_measurement,
    note_relay_success,
    note_success,
    quality_score,
)
from wgrelay.mesh.cache_score import (
    best_relay_entry,
    candidate_key,
    evict,
    history_points,
    keep_entries,
    latest_path,
)
from wgrelay.mesh.cache_store import CacheStore

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_ENTRIES_PER_PEER",
    "HARD_MAX_ENTRIES_PER_PEER",
    "RECENT_FAILURE_WINDOW_S",
    "RELAY_MAX_RECENT_FAILURES",
    "RELAY_MIN_FAILED_ENDPOINTS",
    "CachedEndpoint",
    "ConnectionCache",
    "ConnectionStatus",
    "EndpointType",
    "classify",
    "history_points",
    "normalize_endpoint",
    "quality_score",
]

log = logging.getLogger(__name__)

# ------------------------------------------------------------ seed rules (4.3)

RELAY_MIN_FAILED_ENDPOINTS = 3
"""Rule (a): at least this many direct endpoints, all failed."""
RELAY_MAX_RECENT_FAILURES = 10
"""Rule (b): more than this many direct failures within the window
(``RECENT_FAILURE_WINDOW_S``, 30 min)."""

# ------------------------------------------------------------ implementation limits

HARD_MAX_ENTRIES_PER_PEER = 64
"""Bound enforced on every insert, whether or not the agent prunes."""
DEFAULT_MAX_AGE_S = 7 * 86400.0
DEFAULT_MAX_ENTRIES_PER_PEER = 16


# ------------------------------------------------------------ the cache


class ConnectionCache:
    """Per-peer endpoint history; in memory, optionally persisted (module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._peers: dict[PublicKey, list[CachedEndpoint]] = {}
        self._dirty: set[PublicKey] = set()
        self._closed = False
        self._store: CacheStore | None = None
        if path is not None:
            self._store = CacheStore(path)
            self._peers = self._store.load()

    # ---------------------------------------------------------------- queries

    def entries(self, peer: PublicKey) -> list[CachedEndpoint]:
        """Copies of the peer's entries (changing them does not change the cache)."""
        return [replace(e, recent_failures=list(e.recent_failures)) for e in self._list(peer)]

    def peers(self) -> list[PublicKey]:
        return list(self._peers)

    def __len__(self) -> int:
        return sum(len(v) for v in self._peers.values())

    @property
    def dirty(self) -> bool:
        """Something changed since the last successful flush."""
        return bool(self._dirty) or (self._store is not None and self._store.has_bad_rows)

    def should_try_relay(self, peer: PublicKey, now: float) -> bool:
        """The seed's rules (module docstring), over the peer's direct entries."""
        now = check_wall(now)
        direct = [e for e in self._list(peer) if e.endpoint_type is not EndpointType.RELAY]
        if len(direct) >= RELAY_MIN_FAILED_ENDPOINTS and all(
            e.status is ConnectionStatus.FAILED for e in direct
        ):
            return True
        recent = sum(count_recent_failures(e, now) for e in direct)
        return recent > RELAY_MAX_RECENT_FAILURES

    def ordered_candidates(
        self, peer: PublicKey, known: Iterable[Endpoint], now: float
    ) -> list[Endpoint]:
        """Known endpoints plus cached direct ones, each once, best first; none dropped."""
        now = check_wall(now)
        cached = {
            e.endpoint: e for e in self._list(peer) if e.endpoint_type is not EndpointType.RELAY
        }
        candidates = dict.fromkeys(normalize_endpoint(ep) for ep in known)
        candidates.update(dict.fromkeys(cached))
        return sorted(candidates, key=lambda ep: candidate_key(cached.get(ep), ep, now))

    def last_path(self, peer: PublicKey) -> Literal["direct", "relay"] | None:
        """Which kind of path worked most recently (a tie goes to direct)."""
        return latest_path(self._list(peer))

    def best_relay(self, peer: PublicKey) -> tuple[PublicKey, Endpoint] | None:
        """The relay that worked most recently for this peer, or None (the order
        is in ``cache_score``: a relay that failed since ranks last)."""
        best = best_relay_entry(self._list(peer))
        if best is None or best.relay_pubkey is None:
            return None
        return best.relay_pubkey, best.endpoint

    # ---------------------------------------------------------------- direct outcomes

    def record_attempt(self, peer: PublicKey, endpoint: Endpoint, now: float) -> None:
        """A direct try of ``endpoint`` started."""
        now = check_wall(now)
        note_attempt(self._direct(peer, endpoint), now)
        self._dirty.add(peer)

    def record_success(
        self, peer: PublicKey, endpoint: Endpoint, now: float, latency_ms: float | None = None
    ) -> None:
        """A handshake came through ``endpoint`` (``latency_ms``: a sample, if measured)."""
        now = check_wall(now)
        latency = check_sample(latency_ms, "latency_ms")
        e = self._direct(peer, endpoint)
        note_success(e, now)
        if latency is not None:
            note_measurement(e, now, latency, None)
        self._dirty.add(peer)

    def record_failure(self, peer: PublicKey, endpoint: Endpoint, now: float) -> None:
        """No handshake came through ``endpoint`` in time."""
        now = check_wall(now)
        e = self._direct(peer, endpoint)
        note_failure(e, now)
        self._dirty.add(peer)

    # ---------------------------------------------------------------- relay outcomes

    def record_relay_success(
        self, peer: PublicKey, relay_key: PublicKey, relay_endpoint: Endpoint, now: float
    ) -> None:
        """A relayed session to ``peer`` through ``relay_key`` works (seed 4.3).

        The entry of that relay gets ``relay_success_count + 1`` and
        ``last_relay_success = now``; a relay not seen before gets a new entry
        with a count of 1. The entry follows the relay to ``relay_endpoint``.
        """
        now = check_wall(now)
        e = self._relay(peer, relay_key, relay_endpoint)
        e.endpoint = normalize_endpoint(relay_endpoint)
        note_relay_success(e, now)
        self._dirty.add(peer)

    def record_relay_failure(
        self, peer: PublicKey, relay_key: PublicKey, relay_endpoint: Endpoint, now: float
    ) -> None:
        """A relayed session to ``peer`` through ``relay_key`` failed or was lost."""
        now = check_wall(now)
        e = self._relay(peer, relay_key, relay_endpoint)
        note_failure(e, now)
        self._dirty.add(peer)

    # ---------------------------------------------------------------- measurements

    def record_quality(
        self,
        peer: PublicKey,
        endpoint: Endpoint,
        now: float,
        *,
        latency_ms: float | None = None,
        loss_pct: float | None = None,
    ) -> None:
        """A measurement of a known path: the direct entry of ``endpoint``, else the
        relay entry whose relay is at ``endpoint``.

        A measurement of an endpoint the cache does not know is ignored: creating
        a direct entry for it could turn a relay's address into a direct candidate.
        """
        now = check_wall(now)
        latency = check_sample(latency_ms, "latency_ms")
        loss = check_sample(loss_pct, "loss_pct", 100.0)
        ep = normalize_endpoint(endpoint)
        entries = self._list(peer)
        e = next(
            (x for x in entries if x.endpoint_type is not EndpointType.RELAY and x.endpoint == ep),
            None,
        )
        if e is None:
            e = next(
                (x for x in entries if x.endpoint_type is EndpointType.RELAY and x.endpoint == ep),
                None,
            )
        if e is None:
            log.debug(
                "peer %s: no cache entry for %s; measurement ignored",
                peer.short(),
                endpoint_str(ep),
            )
            return
        if latency is None and loss is None:
            return
        note_measurement(e, now, latency, loss)
        self._dirty.add(peer)

    # ---------------------------------------------------------------- housekeeping

    def forget(self, peer: PublicKey) -> bool:
        """Drop everything about ``peer`` (e.g. it left the interface); True if known."""
        if self._peers.pop(peer, None) is None:
            return False
        self._dirty.add(peer)
        return True

    def prune(
        self,
        now: float,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_entries_per_peer: int = DEFAULT_MAX_ENTRIES_PER_PEER,
    ) -> int:
        """Drop stale entries; return how many were removed.

        An entry goes when its latest activity (success, try, relay success or
        measurement) is more than ``max_age_s`` old. A peer with more than
        ``max_entries_per_peer`` left keeps the ones that ever worked, then the
        freshest. Failure times older than 30 minutes are dropped too.
        """
        now = check_wall(now)
        if max_entries_per_peer < 0:
            raise ValueError("max_entries_per_peer must be >= 0")
        removed = 0
        for peer, entries in list(self._peers.items()):
            keep, changed = keep_entries(entries, now, max_age_s, max_entries_per_peer)
            removed += len(entries) - len(keep)
            if changed:
                self._dirty.add(peer)
            if keep:
                self._peers[peer] = keep
            else:
                del self._peers[peer]
        return removed

    def flush(self) -> None:
        """Write every change since the last flush in one transaction.

        Does not touch the file when nothing changed. A database error is logged
        (once per run of failures) and the changes stay pending for the next flush.
        """
        if self._closed:
            raise LocalProtocolError("flush() on a closed ConnectionCache")
        if self._store is None:
            self._dirty.clear()
            return
        if not self.dirty:
            return
        if self._store.save({peer: self._list(peer) for peer in self._dirty}):
            self._dirty.clear()

    def close(self) -> None:
        """Flush what is pending and close the file (idempotent)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._store is not None:
            self._store.close()

    # ---------------------------------------------------------------- internals

    def _list(self, peer: PublicKey) -> list[CachedEndpoint]:
        return self._peers.get(peer, [])

    def _insert(self, peer: PublicKey, entry: CachedEndpoint) -> CachedEndpoint:
        entries = self._peers.setdefault(peer, [])
        if len(entries) >= HARD_MAX_ENTRIES_PER_PEER:
            # bounded even if the agent never prunes: make room before adding
            self._peers[peer] = entries = evict(
                entries, len(entries) - HARD_MAX_ENTRIES_PER_PEER + 1
            )
        entries.append(entry)
        return entry

    def _direct(self, peer: PublicKey, endpoint: Endpoint) -> CachedEndpoint:
        ep = normalize_endpoint(endpoint)
        for e in self._list(peer):
            if e.endpoint_type is not EndpointType.RELAY and e.endpoint == ep:
                return e
        return self._insert(peer, CachedEndpoint(endpoint=ep, endpoint_type=classify(ep)))

    def _relay(
        self, peer: PublicKey, relay_key: PublicKey, relay_endpoint: Endpoint
    ) -> CachedEndpoint:
        ep = normalize_endpoint(relay_endpoint)
        for e in self._list(peer):
            if e.endpoint_type is EndpointType.RELAY and e.relay_pubkey == relay_key:
                return e
        return self._insert(
            peer,
            CachedEndpoint(endpoint=ep, endpoint_type=EndpointType.RELAY, relay_pubkey=relay_key),
        )
