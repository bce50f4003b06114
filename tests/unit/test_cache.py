"""ConnectionCache: the seed's relay rules, relay bookkeeping, the API's checks, prune."""

from __future__ import annotations

import pytest

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh import addresses, cache, cache_entry, cache_score
from wgrelay.mesh.cache import CachedEndpoint, ConnectionCache, ConnectionStatus, EndpointType

T0 = 1_700_000_000.0
PEER = PublicKey(b"\x01" * 32)
OTHER = PublicKey(b"\x02" * 32)
RELAY_A = PublicKey(b"\xaa" * 32)
RELAY_B = PublicKey(b"\xbb" * 32)
RELAY_A_EP: Endpoint = ("203.0.113.100", 51821)
RELAY_B_EP: Endpoint = ("198.51.100.100", 51821)

PUB4: Endpoint = ("203.0.113.7", 51820)
PUB6: Endpoint = ("2001:db8::7", 51820)
PRIV4: Endpoint = ("192.168.1.7", 51820)
PRIV6: Endpoint = ("fd00::7", 51820)


def direct(cache: ConnectionCache, peer: PublicKey, ep: Endpoint) -> CachedEndpoint:
    found = [e for e in cache.entries(peer) if e.endpoint == ep and e.relay_pubkey is None]
    assert len(found) == 1
    return found[0]


def relay_entry(cache: ConnectionCache, peer: PublicKey, key: PublicKey) -> CachedEndpoint:
    found = [e for e in cache.entries(peer) if e.relay_pubkey == key]
    assert len(found) == 1
    return found[0]


# ---------------------------------------------------------------- should_try_relay


def test_rule_a_three_direct_endpoints_all_failed() -> None:
    cache = ConnectionCache()
    for i, ep in enumerate((PUB4, PUB6, PRIV4)):
        assert not cache.should_try_relay(PEER, T0 + i)
        cache.record_failure(PEER, ep, T0 + i)
    assert cache.should_try_relay(PEER, T0 + 3)  # only 3 failures: rule (a), not (b)
    assert not cache.should_try_relay(OTHER, T0 + 3)


def test_rule_a_needs_three_endpoints() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    cache.record_failure(PEER, PUB6, T0)
    assert not cache.should_try_relay(PEER, T0)


def test_rule_a_one_success_is_enough_to_stay_direct() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    cache.record_failure(PEER, PUB6, T0)
    cache.record_success(PEER, PRIV4, T0)
    assert not cache.should_try_relay(PEER, T0)
    cache.record_attempt(PEER, PRIV6, T0)  # tried, no outcome yet: not FAILED
    cache.record_failure(PEER, PRIV4, T0)
    assert not cache.should_try_relay(PEER, T0)


def test_rule_a_counts_direct_endpoints_only() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    cache.record_failure(PEER, PUB6, T0)
    cache.record_relay_failure(PEER, RELAY_A, RELAY_A_EP, T0)
    assert not cache.should_try_relay(PEER, T0)


def test_rule_b_more_than_ten_recent_failures() -> None:
    cache = ConnectionCache()
    for i in range(10):
        cache.record_failure(PEER, PUB4 if i % 2 else PUB6, T0 + 60 * i)
    assert not cache.should_try_relay(PEER, T0 + 600)  # exactly 10: not more than 10
    cache.record_failure(PEER, PUB4, T0 + 600)
    assert cache.should_try_relay(PEER, T0 + 600)  # 11, across two endpoints


def test_rule_b_only_counts_the_last_30_minutes() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)  # will be 30 min old
    for i in range(10):
        cache.record_failure(PEER, PUB4, T0 + 1000 + i)
    assert cache.should_try_relay(PEER, T0 + 1799)
    assert not cache.should_try_relay(PEER, T0 + 1800)  # the first is now 30 min old


def test_rule_b_ignores_relay_failures() -> None:
    cache = ConnectionCache()
    for i in range(11):
        cache.record_relay_failure(PEER, RELAY_A, RELAY_A_EP, T0 + i)
    assert not cache.should_try_relay(PEER, T0 + 11)


# ---------------------------------------------------------------- relay bookkeeping


def test_record_relay_success_bookkeeping() -> None:
    cache = ConnectionCache()
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0)
    e = relay_entry(cache, PEER, RELAY_A)
    assert e.endpoint_type is EndpointType.RELAY
    assert e.endpoint == RELAY_A_EP
    assert (e.relay_success_count, e.last_relay_success) == (1, T0)
    assert e.status is ConnectionStatus.SUCCESS
    # direct fields stay untouched on a relay entry
    assert (e.success_count, e.last_success) == (0, None)

    moved: Endpoint = ("203.0.113.101", 51821)
    cache.record_relay_success(PEER, RELAY_A, moved, T0 + 10)
    e = relay_entry(cache, PEER, RELAY_A)
    assert (e.relay_success_count, e.last_relay_success, e.endpoint) == (2, T0 + 10, moved)
    assert len(cache.entries(PEER)) == 1

    cache.record_relay_success(PEER, RELAY_B, RELAY_B_EP, T0 + 20)
    assert len(cache.entries(PEER)) == 2
    assert relay_entry(cache, PEER, RELAY_B).relay_success_count == 1
    assert relay_entry(cache, PEER, RELAY_A).relay_success_count == 2


def test_relay_entries_are_not_direct_candidates() -> None:
    cache = ConnectionCache()
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0)
    assert cache.ordered_candidates(PEER, [PUB4], T0) == [PUB4]


# ---------------------------------------------------------------- API


def test_unknown_endpoint_measurement_is_ignored() -> None:
    cache = ConnectionCache()
    cache.record_quality(PEER, PUB4, T0, latency_ms=10.0)
    assert cache.entries(PEER) == []
    assert not cache.dirty


def test_now_must_be_finite() -> None:
    with pytest.raises(ValueError, match="now"):
        ConnectionCache().record_failure(PEER, PUB4, float("inf"))


def test_entries_are_copies() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    cache.entries(PEER)[0].recent_failures.append(T0 + 1)
    cache.entries(PEER)[0].failure_count = 99
    assert direct(cache, PEER, PUB4).recent_failures == [T0]
    assert direct(cache, PEER, PUB4).failure_count == 1


# ---------------------------------------------------------------- prune


def test_prune_by_age() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    cache.record_success(PEER, PUB6, T0 + 86400)
    cache.record_relay_success(OTHER, RELAY_A, RELAY_A_EP, T0)
    assert cache.prune(T0 + 7 * 86400 + 1) == 2
    assert [e.endpoint for e in cache.entries(PEER)] == [PUB6]
    assert cache.peers() == [PEER]
    assert cache.prune(T0 + 7 * 86400 + 1) == 0


def test_prune_keeps_what_worked_then_the_freshest() -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, ("203.0.113.1", 1), T0)  # oldest, but worked
    for i in range(2, 7):
        cache.record_failure(PEER, ("203.0.113.1", i), T0 + i)
    assert cache.prune(T0 + 10, max_entries_per_peer=3) == 3
    assert sorted(e.endpoint[1] for e in cache.entries(PEER)) == [1, 5, 6]


def test_prune_drops_old_failure_times() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    cache.flush()
    assert not cache.dirty
    assert cache.prune(T0 + 1900) == 0
    assert direct(cache, PEER, PUB4).recent_failures == []
    assert direct(cache, PEER, PUB4).failure_count == 1
    assert cache.dirty


def test_entries_per_peer_are_bounded_without_prune() -> None:
    cache = ConnectionCache()
    for i in range(100):
        cache.record_failure(PEER, ("203.0.113.1", i + 1), T0 + i)
    assert len(cache.entries(PEER)) == 64
    assert direct(cache, PEER, ("203.0.113.1", 100)).failure_count == 1


# ---------------------------------------------------------------- the module's names


def test_model_names_stay_importable_from_cache() -> None:
    """Callers and tools import the model from wgrelay.mesh.cache; the split kept it."""
    assert cache.CachedEndpoint is cache_entry.CachedEndpoint
    assert cache.ConnectionStatus is cache_entry.ConnectionStatus
    assert cache.quality_score is cache_entry.quality_score
    assert cache.RECENT_FAILURE_WINDOW_S == cache_entry.RECENT_FAILURE_WINDOW_S == 30 * 60.0
    assert cache.history_points is cache_score.history_points
    assert cache.EndpointType is addresses.EndpointType
    assert cache.classify is addresses.classify
    assert cache.normalize_endpoint is addresses.normalize_endpoint
    assert all(hasattr(cache, name) for name in cache.__all__)
