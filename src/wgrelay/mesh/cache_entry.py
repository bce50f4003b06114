"""CachedEndpoint: one way to reach a peer, and how it learns (the seed's 4.4).

``ConnectionCache`` (``cache.py``) finds or creates the entry an outcome or a
measurement is about; the functions here change that one entry. Every one
takes ``now`` in Unix wall seconds and reads no clock.

Outcomes
--------
An outcome (success or failure) closes the attempt that ``record_attempt``
opened, or counts as an attempt itself: a handshake we did not ask for still
counts. ``handshake_success_rate`` is successes per attempt, in percent. A
failure is remembered in ``recent_failures`` for ``RECENT_FAILURE_WINDOW_S``
(30 min, at most 64 of them); a time ahead of ``now`` (the wall clock stepped
back) is taken as ``now``, so it cannot stay recent forever.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.addresses import EndpointType

RECENT_FAILURE_WINDOW_S = 30 * 60.0
"""The seed's 30 minutes (4.3): how long a failure counts as recent (rule (b))."""
MAX_RECENT_FAILURES = 64
"""Failure times kept per entry (rule (b) needs 11 at most across endpoints)."""

LATENCY_GAIN = 0.25
LOSS_GAIN = 0.25
JITTER_GAIN = 1 / 16
_LATENCY_ZERO_MS = 500.0
_JITTER_ZERO_MS = 100.0
_LOSS_ZERO_PCT = 20.0
_W_LATENCY, _W_JITTER, _W_LOSS = 0.4, 0.2, 0.4


class ConnectionStatus(StrEnum):
    """The outcome of the latest try (UNKNOWN: none finished yet)."""

    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAILED = "failed"


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


# ------------------------------------------------------------ checking inputs


def check_wall(now: float) -> float:
    """``now`` as float wall seconds; ValueError unless it is a finite number."""
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be finite wall seconds, got {now!r}")
    return float(now)


def check_sample(value: float | None, name: str, upper: float = math.inf) -> float | None:
    """A measurement: None, or a finite number in 0..upper; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 <= value <= upper:
        raise ValueError(f"{name} {value!r} is out of range")
    return float(value)


# ------------------------------------------------------------ reading an entry


def count_recent_failures(entry: CachedEndpoint, now: float) -> int:
    """Failures within the last 30 minutes (a time ahead of ``now`` counts as recent)."""
    return sum(1 for t in entry.recent_failures if now - t < RECENT_FAILURE_WINDOW_S)


def last_activity(e: CachedEndpoint) -> float | None:
    """The latest success, try, relay success or measurement; None if none."""
    times = [
        t
        for t in (e.last_success, e.last_checked, e.last_relay_success, e.last_quality_update)
        if t is not None
    ]
    return max(times) if times else None


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


# ------------------------------------------------------------ changing an entry


def trim_failures(e: CachedEndpoint, now: float) -> bool:
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


def note_attempt(e: CachedEndpoint, now: float) -> None:
    """A try through ``e`` started at ``now``; its outcome closes it."""
    e.attempts += 1
    e.attempt_pending = True
    e.last_checked = now
    _update_rate(e)


def note_success(e: CachedEndpoint, now: float) -> None:
    """A handshake came through the direct endpoint of ``e`` at ``now``."""
    e.status = ConnectionStatus.SUCCESS
    e.success_count += 1
    e.last_success = now
    e.last_checked = now
    e.failure_count = 0
    _close_attempt(e)


def note_relay_success(e: CachedEndpoint, now: float) -> None:
    """A relayed session through the relay of ``e`` works at ``now``."""
    e.relay_success_count += 1
    e.last_relay_success = now
    e.status = ConnectionStatus.SUCCESS
    e.last_checked = now
    e.failure_count = 0
    _close_attempt(e)


def note_failure(e: CachedEndpoint, now: float) -> None:
    """A try through ``e`` (direct or relayed) failed at ``now``."""
    e.status = ConnectionStatus.FAILED
    e.failure_count += 1
    e.last_checked = now
    e.recent_failures.append(now)
    trim_failures(e, now)
    _close_attempt(e)


def note_measurement(
    e: CachedEndpoint, now: float, latency: float | None, loss: float | None
) -> None:
    """Fold samples (validated by the caller) into the smoothed fields and the score."""
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
