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
optional SQLite file: loaded once in ``__init__``, written by ``flush()``.

Relay rules (seed 4.3), over the peer's **direct** entries only
---------------------------------------------------------------
(a) at least ``RELAY_MIN_FAILED_ENDPOINTS`` (3) direct endpoints, and the last
    outcome of every one of them was a failure (``status`` FAILED); or
(b) more than ``RELAY_MAX_RECENT_FAILURES`` (10) failures within the last
    ``RECENT_FAILURE_WINDOW_S`` (30 min) across them.

Candidate order (``ordered_candidates``)
----------------------------------------
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

Quality
-------
* latency: exponentially smoothed like ``RelayRegistry.record_rtt``
  (``srtt = 0.75 srtt + 0.25 sample``; the first sample is taken as is).
* jitter: RFC 3550 style, the running mean deviation of successive latency
  samples, ``J += (|D| - J) / 16`` with ``D = sample - previous sample``; it
  starts at the first ``|D|`` (so it needs two samples) instead of at 0.
* packet loss: smoothed with the same 0.25 gain as latency.
* ``quality_score`` (0-100, higher is better) is the weighted mean of the
  component scores that were actually measured, None if none was::

      latency: 100 * (1 - latency_ms / 500)    weight 0.4
      jitter:  100 * (1 - jitter_ms / 100)     weight 0.2
      loss:    100 * (1 - loss_pct / 20)       weight 0.4   (each clamped to 0..100)

  Nothing is ever invented: a field stays None until something measures it.

Persistence
-----------
``ConnectionCache(path)`` opens ``path`` with ``storage.open_store`` (WAL,
``synchronous=FULL``; a corrupt, foreign or unknown-version file is moved aside
with a warning and an empty cache starts) and loads every row; a bad row is
skipped with a warning and deleted at the next flush. ``flush()`` rewrites the
rows of every peer changed since the last flush inside one ``BEGIN IMMEDIATE``
transaction, so after ``kill -9`` the file holds exactly the last completed
flush. Nothing changed: ``flush()`` does not touch the file. A failed flush
(disk full, locked) is logged and retried at the next one, never raised. The
SQLite connection belongs to the thread that created the cache: call
``flush()`` and ``close()`` from that thread.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Literal

from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import LocalProtocolError, WgRelayError
from wgrelay.keys import PublicKey
from wgrelay.storage import CACHE_APPLICATION_ID, open_store

log = logging.getLogger(__name__)

# ------------------------------------------------------------ seed rules (4.3)

RELAY_MIN_FAILED_ENDPOINTS = 3
"""Rule (a): at least this many direct endpoints, all failed."""
RELAY_MAX_RECENT_FAILURES = 10
"""Rule (b): more than this many direct failures within the window."""
RECENT_FAILURE_WINDOW_S = 30 * 60.0

# ------------------------------------------------------------ implementation limits

MAX_RECENT_FAILURES = 64
"""Failure times kept per entry (rule (b) needs 11 at most across endpoints)."""
HARD_MAX_ENTRIES_PER_PEER = 64
"""Bound enforced on every insert, whether or not the agent prunes."""
DEFAULT_MAX_AGE_S = 7 * 86400.0
DEFAULT_MAX_ENTRIES_PER_PEER = 16

# ------------------------------------------------------------ scoring constants

_RECENCY_POINTS = ((600.0, 40), (3600.0, 30), (86400.0, 20))
_RECENCY_POINTS_OLDER = 10
_SUCCESS_POINTS_MAX = 10
_RECENT_FAILURE_POINTS = 10
_FAILURE_POINTS = 5

LATENCY_GAIN = 0.25
LOSS_GAIN = 0.25
JITTER_GAIN = 1 / 16
_LATENCY_ZERO_MS = 500.0
_JITTER_ZERO_MS = 100.0
_LOSS_ZERO_PCT = 20.0
_W_LATENCY, _W_JITTER, _W_LOSS = 0.4, 0.2, 0.4


class EndpointType(StrEnum):
    PUBLIC_V4 = "public-v4"
    PUBLIC_V6 = "public-v6"
    PRIVATE_V4 = "private-v4"
    PRIVATE_V6 = "private-v6"
    RELAY = "relay"


class ConnectionStatus(StrEnum):
    """The outcome of the latest try (UNKNOWN: none finished yet)."""

    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAILED = "failed"


_TYPE_RANK = {
    EndpointType.PUBLIC_V4: 0,
    EndpointType.PUBLIC_V6: 1,
    EndpointType.PRIVATE_V4: 2,
    EndpointType.PRIVATE_V6: 3,
    EndpointType.RELAY: 4,
}


@dataclass(slots=True)
class CachedEndpoint:
    """What we know about one way to reach a peer (the seed's 4.4, all fields).

    Times are Unix wall seconds. A direct entry uses the ``success``/``failure``
    fields; a RELAY entry is keyed by ``relay_pubkey``, its ``endpoint`` is the
    relay's, and its successes are counted in ``relay_success_count`` and
    ``last_relay_success`` (``success_count``/``last_success`` stay 0/None).
    """

    endpoint: Endpoint
    """(host, port); the host is a canonical IP literal. For RELAY: the relay's."""
    endpoint_type: EndpointType
    last_success: float | None = None
    """When a handshake last came through this direct endpoint."""
    success_count: int = 0
    """Direct successes over the entry's life."""
    status: ConnectionStatus = ConnectionStatus.UNKNOWN
    last_checked: float | None = None
    """When a try started or finished (attempt, success or failure)."""
    failure_count: int = 0
    """Failures since the last success (a success resets it)."""
    latency_ms: float | None = None
    """Smoothed round-trip time, milliseconds; None until measured."""
    packet_loss_pct: float | None = None
    """Smoothed loss, percent (0-100); None until measured."""
    handshake_success_rate: float | None = None
    """Percent of attempts that succeeded over the entry's life; None before any."""
    recent_failures: list[float] = field(default_factory=list)
    """Failure times within the last 30 min, oldest first, at most 64."""
    jitter_ms: float | None = None
    """Mean deviation of successive latency samples, milliseconds; needs two samples."""
    quality_score: float | None = None
    """0-100 from latency, jitter and loss (module docstring); None if none measured."""
    last_quality_update: float | None = None
    relay_pubkey: PublicKey | None = None
    """The relay (RELAY entries only)."""
    relay_success_count: int = 0
    last_relay_success: float | None = None
    attempts: int = 0
    """Tries over the entry's life: each ``record_attempt``, plus every outcome
    that was not preceded by one (a handshake we did not ask for still counts)."""
    attempt_pending: bool = False
    """A ``record_attempt`` is waiting for its outcome."""
    last_latency_sample_ms: float | None = None
    """The previous raw latency sample (jitter needs successive samples)."""


# ------------------------------------------------------------ endpoints


def normalize_endpoint(endpoint: Endpoint) -> Endpoint:
    """``(canonical IP text, port)``; ValueError if it is not an IP endpoint.

    Canonical like ``backend.base.parse_endpoint``, so an endpoint read from
    WireGuard and one from discovery compare equal.
    """
    host, port = endpoint
    if not isinstance(host, str):
        raise ValueError(f"endpoint host {host!r} is not text")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"endpoint host {host!r} is not an IP address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
        raise ValueError(f"endpoint port {port!r} is not in 1..65535")
    return str(ip), port


# Not reachable across the internet: RFC 1918, CGNAT, loopback, link-local, ULA,
# plus addresses that are never a peer's endpoint (unspecified, multicast,
# reserved). Documentation and benchmarking ranges are deliberately absent: the
# testbed uses them as the public internet.
_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_PRIVATE_V6 = tuple(
    ipaddress.IPv6Network(n) for n in ("::/127", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")
)


def classify(endpoint: Endpoint) -> EndpointType:
    """Public or private, v4 or v6 (never RELAY); ValueError for a non-IP host."""
    host, _ = normalize_endpoint(endpoint)
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:a.b.c.d reaches an IPv4 host
    if isinstance(ip, ipaddress.IPv4Address):
        private = any(ip in net for net in _PRIVATE_V4)
        return EndpointType.PRIVATE_V4 if private else EndpointType.PUBLIC_V4
    private = any(ip in net for net in _PRIVATE_V6)
    return EndpointType.PRIVATE_V6 if private else EndpointType.PUBLIC_V6


# ------------------------------------------------------------ pure scoring


def _wall(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be finite wall seconds, got {now!r}")
    return float(now)


def count_recent_failures(entry: CachedEndpoint, now: float) -> int:
    """Failures within the last 30 minutes (a time ahead of ``now`` counts as recent)."""
    return sum(1 for t in entry.recent_failures if now - t < RECENT_FAILURE_WINDOW_S)


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


def quality_score(
    latency_ms: float | None, jitter_ms: float | None, loss_pct: float | None
) -> float | None:
    """0-100 from what was measured (weights in the module docstring); None if nothing."""
    parts: list[tuple[float, float]] = []
    if latency_ms is not None:
        parts.append((_W_LATENCY, 100.0 * (1.0 - latency_ms / _LATENCY_ZERO_MS)))
    if jitter_ms is not None:
        parts.append((_W_JITTER, 100.0 * (1.0 - jitter_ms / _JITTER_ZERO_MS)))
    if loss_pct is not None:
        parts.append((_W_LOSS, 100.0 * (1.0 - loss_pct / _LOSS_ZERO_PCT)))
    if not parts:
        return None
    total = sum(w * min(100.0, max(0.0, s)) for w, s in parts)
    return total / sum(w for w, _ in parts)


def _candidate_key(
    entry: CachedEndpoint | None, endpoint: Endpoint, now: float
) -> tuple[int, int, float, str, int]:
    kind = entry.endpoint_type if entry is not None else classify(endpoint)
    latency = entry.latency_ms if entry is not None and entry.latency_ms is not None else math.inf
    return (-history_points(entry, now), _TYPE_RANK[kind], latency, endpoint[0], endpoint[1])


def _last_activity(e: CachedEndpoint) -> float | None:
    times = [
        t
        for t in (e.last_success, e.last_checked, e.last_relay_success, e.last_quality_update)
        if t is not None
    ]
    return max(times) if times else None


def _keep_rank(e: CachedEndpoint) -> tuple[bool, float, str, int]:
    """Which entries to keep when a peer has too many: ones that worked, then the freshest."""
    worked = e.last_success is not None or e.last_relay_success is not None
    last = _last_activity(e)
    return (worked, last if last is not None else -math.inf, e.endpoint[0], e.endpoint[1])


def _trim_failures(e: CachedEndpoint, now: float) -> bool:
    """Drop failures older than the window, clamp ones from the future; True if changed.

    A wall clock that stepped back must not keep failures "recent" forever, so
    a time ahead of ``now`` is taken as ``now``.
    """
    kept = [min(t, now) for t in e.recent_failures if now - t < RECENT_FAILURE_WINDOW_S]
    kept = kept[-MAX_RECENT_FAILURES:]
    if kept == e.recent_failures:
        return False
    e.recent_failures = kept
    return True


def _close_attempt(e: CachedEndpoint) -> None:
    """An outcome arrived: it closes the pending attempt, or counts as one itself."""
    if not e.attempt_pending:
        e.attempts += 1
    e.attempt_pending = False
    _update_rate(e)


def _update_rate(e: CachedEndpoint) -> None:
    successes = e.relay_success_count if e.endpoint_type is EndpointType.RELAY else e.success_count
    e.handshake_success_rate = (
        min(100.0, 100.0 * successes / e.attempts) if e.attempts > 0 else None
    )


def _sample(value: float | None, name: str, upper: float = math.inf) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 <= value <= upper:
        raise ValueError(f"{name} {value!r} is out of range")
    return float(value)


# ------------------------------------------------------------ the cache


class ConnectionCache:
    """Per-peer endpoint history; in memory, optionally persisted (module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._peers: dict[PublicKey, list[CachedEndpoint]] = {}
        self._dirty: set[PublicKey] = set()
        self._bad_rowids: list[int] = []  # deleted with the next flush
        self._flush_failing = False
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        if path is not None:
            self._conn = open_store(path, SCHEMA, SCHEMA_VERSION, CACHE_APPLICATION_ID)
            self._load(self._conn)

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
        return bool(self._dirty or self._bad_rowids)

    def should_try_relay(self, peer: PublicKey, now: float) -> bool:
        """The seed's rules (module docstring), over the peer's direct entries."""
        now = _wall(now)
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
        now = _wall(now)
        cached = {
            e.endpoint: e for e in self._list(peer) if e.endpoint_type is not EndpointType.RELAY
        }
        candidates = dict.fromkeys(normalize_endpoint(ep) for ep in known)
        candidates.update(dict.fromkeys(cached))
        return sorted(candidates, key=lambda ep: _candidate_key(cached.get(ep), ep, now))

    def last_path(self, peer: PublicKey) -> Literal["direct", "relay"] | None:
        """Which kind of path worked most recently (a tie goes to direct)."""
        direct: float | None = None
        relay: float | None = None
        for e in self._list(peer):
            if e.endpoint_type is EndpointType.RELAY:
                if e.last_relay_success is not None:
                    relay = (
                        e.last_relay_success if relay is None else max(relay, e.last_relay_success)
                    )
            elif e.last_success is not None:
                direct = e.last_success if direct is None else max(direct, e.last_success)
        if direct is None and relay is None:
            return None
        if relay is None or (direct is not None and direct >= relay):
            return "direct"
        return "relay"

    def best_relay(self, peer: PublicKey) -> tuple[PublicKey, Endpoint] | None:
        """The relay that worked most recently for this peer, or None.

        A relay whose latest outcome was a failure ranks after every relay whose
        latest outcome was a success; then the most recent success, then the most
        successes, then the key text.
        """
        best: CachedEndpoint | None = None
        best_key: tuple[bool, float, int, str] | None = None
        for e in self._list(peer):
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
        if best is None or best.relay_pubkey is None:
            return None
        return best.relay_pubkey, best.endpoint

    # ---------------------------------------------------------------- direct outcomes

    def record_attempt(self, peer: PublicKey, endpoint: Endpoint, now: float) -> None:
        """A direct try of ``endpoint`` started."""
        now = _wall(now)
        e = self._direct(peer, endpoint)
        e.attempts += 1
        e.attempt_pending = True
        e.last_checked = now
        _update_rate(e)
        self._dirty.add(peer)

    def record_success(
        self, peer: PublicKey, endpoint: Endpoint, now: float, latency_ms: float | None = None
    ) -> None:
        """A handshake came through ``endpoint`` (``latency_ms``: a sample, if measured)."""
        now = _wall(now)
        latency = _sample(latency_ms, "latency_ms")
        e = self._direct(peer, endpoint)
        e.status = ConnectionStatus.SUCCESS
        e.success_count += 1
        e.last_success = now
        e.last_checked = now
        e.failure_count = 0
        _close_attempt(e)
        if latency is not None:
            _measure(e, now, latency, None)
        self._dirty.add(peer)

    def record_failure(self, peer: PublicKey, endpoint: Endpoint, now: float) -> None:
        """No handshake came through ``endpoint`` in time."""
        now = _wall(now)
        e = self._direct(peer, endpoint)
        _fail(e, now)
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
        now = _wall(now)
        e = self._relay(peer, relay_key, relay_endpoint)
        e.endpoint = normalize_endpoint(relay_endpoint)
        e.relay_success_count += 1
        e.last_relay_success = now
        e.status = ConnectionStatus.SUCCESS
        e.last_checked = now
        e.failure_count = 0
        _close_attempt(e)
        self._dirty.add(peer)

    def record_relay_failure(
        self, peer: PublicKey, relay_key: PublicKey, relay_endpoint: Endpoint, now: float
    ) -> None:
        """A relayed session to ``peer`` through ``relay_key`` failed or was lost."""
        now = _wall(now)
        e = self._relay(peer, relay_key, relay_endpoint)
        _fail(e, now)
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
        now = _wall(now)
        latency = _sample(latency_ms, "latency_ms")
        loss = _sample(loss_pct, "loss_pct", 100.0)
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
        _measure(e, now, latency, loss)
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
        now = _wall(now)
        if max_entries_per_peer < 0:
            raise ValueError("max_entries_per_peer must be >= 0")
        removed = 0
        for peer, entries in list(self._peers.items()):
            keep: list[CachedEndpoint] = []
            changed = False
            for e in entries:
                last = _last_activity(e)
                if last is None or now - last > max_age_s:
                    changed = True
                    continue
                changed |= _trim_failures(e, now)
                keep.append(e)
            if len(keep) > max_entries_per_peer:
                keep = _evict(keep, len(keep) - max_entries_per_peer)
                changed = True
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
        if self._conn is None:
            self._dirty.clear()
            return
        if not self._dirty and not self._bad_rowids:
            return
        dirty = list(self._dirty)
        rows = [_encode(peer, e) for peer in dirty for e in self._peers.get(peer, ())]
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "DELETE FROM endpoints WHERE rowid = ?", [(r,) for r in self._bad_rowids]
                )
                conn.executemany("DELETE FROM endpoints WHERE peer = ?", [(str(p),) for p in dirty])
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.ProgrammingError:
            raise  # our bug (e.g. called from another thread), not the disk's
        except sqlite3.Error as e:
            if not self._flush_failing:
                log.warning(
                    "%s: could not save the connection cache (will retry): %s", self.path, e
                )
            self._flush_failing = True
            return
        if self._flush_failing:
            log.info("%s: saving the connection cache works again", self.path)
        self._flush_failing = False
        self._dirty.clear()
        self._bad_rowids.clear()

    def close(self) -> None:
        """Flush what is pending and close the file (idempotent)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- internals

    def _list(self, peer: PublicKey) -> list[CachedEndpoint]:
        return self._peers.get(peer, [])

    def _insert(self, peer: PublicKey, entry: CachedEndpoint) -> CachedEndpoint:
        entries = self._peers.setdefault(peer, [])
        if len(entries) >= HARD_MAX_ENTRIES_PER_PEER:
            # bounded even if the agent never prunes: make room before adding
            self._peers[peer] = entries = _evict(
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

    def _load(self, conn: sqlite3.Connection) -> None:
        try:
            rows = conn.execute(_SELECT).fetchall()
        except sqlite3.DatabaseError as e:
            # open_store's integrity check passed, so this is rare; run empty, never fatal
            log.warning("%s: cannot read the connection cache, starting empty: %s", self.path, e)
            return
        bad = 0
        for rowid, *values in rows:
            try:
                peer, entry = _decode(values)
                if any(_same_slot(entry, e) for e in self._list(peer)):
                    raise ValueError("duplicate entry")
            except (ValueError, TypeError, WgRelayError) as e:
                bad += 1
                if bad <= _BAD_ROWS_LOGGED:
                    log.warning("%s: skipping a bad cache row: %s", self.path, e)
                self._bad_rowids.append(rowid)
                continue
            self._peers.setdefault(peer, []).append(entry)
        if bad > _BAD_ROWS_LOGGED:
            log.warning("%s: skipped %d bad cache rows in all", self.path, bad)


_BAD_ROWS_LOGGED = 5


def _fail(e: CachedEndpoint, now: float) -> None:
    e.status = ConnectionStatus.FAILED
    e.failure_count += 1
    e.last_checked = now
    e.recent_failures.append(now)
    _trim_failures(e, now)
    _close_attempt(e)


def _measure(e: CachedEndpoint, now: float, latency: float | None, loss: float | None) -> None:
    if latency is not None:
        prev = e.last_latency_sample_ms
        if prev is not None:
            d = abs(latency - prev)
            e.jitter_ms = (
                d if e.jitter_ms is None else e.jitter_ms + (d - e.jitter_ms) * JITTER_GAIN
            )
        e.latency_ms = (
            latency
            if e.latency_ms is None
            else e.latency_ms + (latency - e.latency_ms) * LATENCY_GAIN
        )
        e.last_latency_sample_ms = latency
    if loss is not None:
        e.packet_loss_pct = (
            loss
            if e.packet_loss_pct is None
            else e.packet_loss_pct + (loss - e.packet_loss_pct) * LOSS_GAIN
        )
    e.quality_score = quality_score(e.latency_ms, e.jitter_ms, e.packet_loss_pct)
    e.last_quality_update = now


def _evict(entries: list[CachedEndpoint], count: int) -> list[CachedEndpoint]:
    """``entries`` without the ``count`` least worth keeping, order preserved."""
    drop = {id(e) for e in sorted(entries, key=_keep_rank)[:count]}
    return [e for e in entries if id(e) not in drop]


def _same_slot(a: CachedEndpoint, b: CachedEndpoint) -> bool:
    if (a.endpoint_type is EndpointType.RELAY) != (b.endpoint_type is EndpointType.RELAY):
        return False
    if a.endpoint_type is EndpointType.RELAY:
        return a.relay_pubkey == b.relay_pubkey
    return a.endpoint == b.endpoint


# ---------------------------------------------------------------- persistence

SCHEMA_VERSION = 1

# (column, declaration): one list drives the schema, SELECT and INSERT, so they
# cannot drift apart.
_COLUMNS = (
    ("peer", "TEXT NOT NULL"),
    ("endpoint_type", "TEXT NOT NULL"),
    ("host", "TEXT NOT NULL"),
    ("port", "INTEGER NOT NULL"),
    ("last_success", "REAL"),
    ("success_count", "INTEGER NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("last_checked", "REAL"),
    ("failure_count", "INTEGER NOT NULL"),
    ("latency_ms", "REAL"),
    ("packet_loss_pct", "REAL"),
    ("handshake_success_rate", "REAL"),
    ("recent_failures", "TEXT NOT NULL"),  # JSON list of wall seconds
    ("jitter_ms", "REAL"),
    ("quality_score", "REAL"),
    ("last_quality_update", "REAL"),
    ("relay_pubkey", "TEXT"),
    ("relay_success_count", "INTEGER NOT NULL"),
    ("last_relay_success", "REAL"),
    ("attempts", "INTEGER NOT NULL"),
    ("attempt_pending", "INTEGER NOT NULL"),
    ("last_latency_sample_ms", "REAL"),
)
_COLUMN_NAMES = tuple(name for name, _ in _COLUMNS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS endpoints (
    {", ".join(f"{name} {decl}" for name, decl in _COLUMNS)}
);
CREATE INDEX IF NOT EXISTS endpoints_peer ON endpoints (peer)
"""

# Built from the constant column list above, never from data: no injection.
_SELECT = f"SELECT rowid, {', '.join(_COLUMN_NAMES)} FROM endpoints"  # noqa: S608
_INSERT = (
    f"INSERT INTO endpoints ({', '.join(_COLUMN_NAMES)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def _encode(peer: PublicKey, e: CachedEndpoint) -> tuple[object, ...]:
    return (
        str(peer),
        e.endpoint_type.value,
        e.endpoint[0],
        e.endpoint[1],
        e.last_success,
        e.success_count,
        e.status.value,
        e.last_checked,
        e.failure_count,
        e.latency_ms,
        e.packet_loss_pct,
        e.handshake_success_rate,
        json.dumps(e.recent_failures),
        e.jitter_ms,
        e.quality_score,
        e.last_quality_update,
        None if e.relay_pubkey is None else str(e.relay_pubkey),
        e.relay_success_count,
        e.last_relay_success,
        e.attempts,
        int(e.attempt_pending),
        e.last_latency_sample_ms,
    )


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number: {value!r}")
    return float(value)


def _opt_float(value: object, name: str) -> float | None:
    return None if value is None else _float(value, name)


def _opt_sample(value: object, name: str, upper: float = math.inf) -> float | None:
    """A stored measurement: None, or a number in 0..upper."""
    if value is None:
        return None
    v = _float(value, name)
    if not 0.0 <= v <= upper:
        raise ValueError(f"{name} {v!r} is out of range")
    return v


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not text: {value!r}")
    return value


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is not a count: {value!r}")
    return value


def _decode(values: list[object]) -> tuple[PublicKey, CachedEndpoint]:
    """One row back into an entry; ValueError/TypeError/WgRelayError if it is bad."""
    row = dict(zip(_COLUMN_NAMES, values, strict=True))
    peer_text, host, port = row["peer"], row["host"], row["port"]
    if not isinstance(peer_text, str):
        raise ValueError("peer key is not text")
    peer = PublicKey.from_base64(peer_text)
    if not isinstance(host, str) or not isinstance(port, int):
        raise ValueError(f"bad endpoint {host!r} {port!r}")
    endpoint = normalize_endpoint((host, port))
    kind = EndpointType(_text(row["endpoint_type"], "endpoint_type"))
    relay_text = row["relay_pubkey"]
    relay_key: PublicKey | None = None
    if kind is EndpointType.RELAY:
        if not isinstance(relay_text, str):
            raise ValueError("relay entry without a relay key")
        relay_key = PublicKey.from_base64(relay_text)
    else:
        if relay_text is not None:
            raise ValueError("direct entry with a relay key")
        kind = classify(endpoint)  # derived: follows the current classification rules
    failures_json = row["recent_failures"]
    if not isinstance(failures_json, str):
        raise ValueError("recent_failures is not text")
    failures_raw = json.loads(failures_json)
    if not isinstance(failures_raw, list):
        raise ValueError("recent_failures is not a list")
    recent = [_float(t, "recent failure time") for t in failures_raw]
    entry = CachedEndpoint(
        endpoint=endpoint,
        endpoint_type=kind,
        last_success=_opt_float(row["last_success"], "last_success"),
        success_count=_count(row["success_count"], "success_count"),
        status=ConnectionStatus(_text(row["status"], "status")),
        last_checked=_opt_float(row["last_checked"], "last_checked"),
        failure_count=_count(row["failure_count"], "failure_count"),
        latency_ms=_opt_sample(row["latency_ms"], "latency_ms"),
        packet_loss_pct=_opt_sample(row["packet_loss_pct"], "packet_loss_pct", 100.0),
        handshake_success_rate=_opt_sample(
            row["handshake_success_rate"], "handshake_success_rate", 100.0
        ),
        recent_failures=recent[-MAX_RECENT_FAILURES:],
        jitter_ms=_opt_sample(row["jitter_ms"], "jitter_ms"),
        quality_score=_opt_sample(row["quality_score"], "quality_score", 100.0),
        last_quality_update=_opt_float(row["last_quality_update"], "last_quality_update"),
        relay_pubkey=relay_key,
        relay_success_count=_count(row["relay_success_count"], "relay_success_count"),
        last_relay_success=_opt_float(row["last_relay_success"], "last_relay_success"),
        attempts=_count(row["attempts"], "attempts"),
        attempt_pending=bool(_count(row["attempt_pending"], "attempt_pending")),
        last_latency_sample_ms=_opt_sample(row["last_latency_sample_ms"], "last_latency_sample_ms"),
    )
    return peer, entry
