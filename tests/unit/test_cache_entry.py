"""CachedEndpoint bookkeeping: failure times, quality measurements, handshake success rate."""

from __future__ import annotations

import pytest

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.cache import CachedEndpoint, ConnectionCache
from wgrelay.mesh.cache_entry import quality_score

T0 = 1_700_000_000.0
PEER = PublicKey(b"\x01" * 32)
RELAY_A = PublicKey(b"\xaa" * 32)
RELAY_A_EP: Endpoint = ("203.0.113.100", 51821)

PUB4: Endpoint = ("203.0.113.7", 51820)


def direct(cache: ConnectionCache, peer: PublicKey, ep: Endpoint) -> CachedEndpoint:
    found = [e for e in cache.entries(peer) if e.endpoint == ep and e.relay_pubkey is None]
    assert len(found) == 1
    return found[0]


def relay_entry(cache: ConnectionCache, peer: PublicKey, key: PublicKey) -> CachedEndpoint:
    found = [e for e in cache.entries(peer) if e.relay_pubkey == key]
    assert len(found) == 1
    return found[0]


# ---------------------------------------------------------------- failure times


def test_recent_failures_are_bounded_and_pruned() -> None:
    cache = ConnectionCache()
    for i in range(100):
        cache.record_failure(PEER, PUB4, T0 + i)
    e = direct(cache, PEER, PUB4)
    assert len(e.recent_failures) == 64
    assert e.recent_failures[-1] == T0 + 99
    assert e.failure_count == 100
    cache.record_failure(PEER, PUB4, T0 + 3600)
    assert direct(cache, PEER, PUB4).recent_failures == [T0 + 3600]


def test_failure_times_ahead_of_the_clock_are_clamped() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0 + 86400)  # recorded before the clock stepped back
    cache.record_failure(PEER, PUB4, T0)
    assert direct(cache, PEER, PUB4).recent_failures == [T0, T0]


# ---------------------------------------------------------------- quality


def test_nothing_measured_means_none() -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, PUB4, T0)
    e = direct(cache, PEER, PUB4)
    assert (e.latency_ms, e.jitter_ms, e.packet_loss_pct) == (None, None, None)
    assert (e.quality_score, e.last_quality_update) == (None, None)
    assert quality_score(None, None, None) is None


def test_latency_smoothing_and_jitter() -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, PUB4, T0, latency_ms=10.0)
    e = direct(cache, PEER, PUB4)
    assert (e.latency_ms, e.jitter_ms, e.last_quality_update) == (10.0, None, T0)
    cache.record_quality(PEER, PUB4, T0 + 1, latency_ms=30.0)
    e = direct(cache, PEER, PUB4)
    assert e.latency_ms == pytest.approx(15.0)  # 0.75 * 10 + 0.25 * 30
    assert e.jitter_ms == pytest.approx(20.0)  # first |D| taken as is
    cache.record_quality(PEER, PUB4, T0 + 2, latency_ms=30.0)
    e = direct(cache, PEER, PUB4)
    assert e.latency_ms == pytest.approx(18.75)
    assert e.jitter_ms == pytest.approx(20.0 + (0.0 - 20.0) / 16)  # D = 0 against the last sample
    assert e.last_quality_update == T0 + 2
    assert e.quality_score == pytest.approx(
        (0.4 * 100 * (1 - 18.75 / 500) + 0.2 * 100 * (1 - 18.75 / 100)) / 0.6
    )
    assert e.packet_loss_pct is None


def test_loss_smoothing_and_score() -> None:
    cache = ConnectionCache()
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0)
    # a measurement of the relay's endpoint lands on the relay entry
    cache.record_quality(PEER, RELAY_A_EP, T0 + 1, loss_pct=10.0)
    e = relay_entry(cache, PEER, RELAY_A)
    assert (e.packet_loss_pct, e.latency_ms) == (10.0, None)
    assert e.quality_score == pytest.approx(50.0)  # loss only: 100 * (1 - 10/20)
    cache.record_quality(PEER, RELAY_A_EP, T0 + 2, loss_pct=0.0)
    e = relay_entry(cache, PEER, RELAY_A)
    assert e.packet_loss_pct == pytest.approx(7.5)
    cache.record_quality(PEER, RELAY_A_EP, T0 + 3, loss_pct=100.0)
    assert quality_score(1000.0, 500.0, 100.0) == 0.0
    assert quality_score(0.0, 0.0, 0.0) == 100.0


@pytest.mark.parametrize(
    "kw",
    [{"latency_ms": -1.0}, {"latency_ms": float("nan")}, {"loss_pct": 101.0}, {"loss_pct": -0.5}],
)
def test_bad_measurements_are_rejected(kw: dict[str, float]) -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, PUB4, T0)
    with pytest.raises(ValueError, match=r"out of range|finite"):
        cache.record_quality(PEER, PUB4, T0, **kw)


def test_handshake_success_rate() -> None:
    cache = ConnectionCache()
    cache.record_attempt(PEER, PUB4, T0)
    assert direct(cache, PEER, PUB4).handshake_success_rate == 0.0
    cache.record_failure(PEER, PUB4, T0 + 3)
    cache.record_attempt(PEER, PUB4, T0 + 10)
    cache.record_success(PEER, PUB4, T0 + 11)
    e = direct(cache, PEER, PUB4)
    assert (e.attempts, e.success_count, e.handshake_success_rate) == (2, 1, 50.0)
    cache.record_success(PEER, PUB4, T0 + 120)  # a handshake we did not ask for: an attempt too
    e = direct(cache, PEER, PUB4)
    assert e.attempts == 3
    assert e.handshake_success_rate == pytest.approx(200 / 3)
    assert e.failure_count == 0  # reset by the success
