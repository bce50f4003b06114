"""ConnectionCache: the seed's relay rules, scoring, quality, persistence, kill -9."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError
from wgrelay.keys import PublicKey
from wgrelay.mesh.cache import (
    CachedEndpoint,
    ConnectionCache,
    ConnectionStatus,
    EndpointType,
    classify,
    history_points,
    normalize_endpoint,
    quality_score,
)

T0 = 1_700_000_000.0
PEER = PublicKey(b"\x01" * 32)
OTHER = PublicKey(b"\x02" * 32)
RELAY_A = PublicKey(b"\xaa" * 32)
RELAY_B = PublicKey(b"\xbb" * 32)
RELAY_A_EP: Endpoint = ("203.0.113.100", 51821)
RELAY_B_EP: Endpoint = ("198.51.100.100", 51821)

PUB4: Endpoint = ("203.0.113.7", 51820)
PUB4B: Endpoint = ("198.51.100.7", 51820)
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


# ---------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("203.0.113.1", EndpointType.PUBLIC_V4),  # documentation ranges: our "internet"
        ("198.51.100.1", EndpointType.PUBLIC_V4),
        ("192.0.2.1", EndpointType.PUBLIC_V4),
        ("8.8.8.8", EndpointType.PUBLIC_V4),
        ("10.1.2.3", EndpointType.PRIVATE_V4),
        ("172.16.0.1", EndpointType.PRIVATE_V4),
        ("172.32.0.1", EndpointType.PUBLIC_V4),
        ("192.168.0.1", EndpointType.PRIVATE_V4),
        ("100.64.0.1", EndpointType.PRIVATE_V4),  # CGNAT
        ("100.128.0.1", EndpointType.PUBLIC_V4),
        ("127.0.0.1", EndpointType.PRIVATE_V4),
        ("169.254.1.1", EndpointType.PRIVATE_V4),
        ("2001:db8::1", EndpointType.PUBLIC_V6),
        ("2606:4700::1111", EndpointType.PUBLIC_V6),
        ("fd12:3456::1", EndpointType.PRIVATE_V6),  # ULA
        ("fe80::1", EndpointType.PRIVATE_V6),
        ("fe80::1%eth0", EndpointType.PRIVATE_V6),
        ("::1", EndpointType.PRIVATE_V6),
        ("::ffff:10.0.0.1", EndpointType.PRIVATE_V4),  # mapped: it is an IPv4 host
        ("::ffff:203.0.113.1", EndpointType.PUBLIC_V4),
    ],
)
def test_classify(host: str, kind: EndpointType) -> None:
    assert classify((host, 51820)) is kind


@pytest.mark.parametrize("ep", [("example.com", 51820), ("10.0.0.1", 0), ("10.0.0.1", 70000)])
def test_non_ip_endpoints_are_rejected(ep: Endpoint) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        ConnectionCache().record_attempt(PEER, ep, T0)


def test_endpoints_are_canonical() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, ("2001:DB8:0::7", 51820), T0)
    cache.record_failure(PEER, PUB6, T0 + 1)
    assert [e.endpoint for e in cache.entries(PEER)] == [PUB6]
    assert direct(cache, PEER, PUB6).failure_count == 2


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


def test_best_relay() -> None:
    cache = ConnectionCache()
    assert cache.best_relay(PEER) is None
    cache.record_relay_failure(PEER, RELAY_B, RELAY_B_EP, T0)
    assert cache.best_relay(PEER) is None  # never worked
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0 + 1)
    cache.record_relay_success(PEER, RELAY_B, RELAY_B_EP, T0 + 2)
    assert cache.best_relay(PEER) == (RELAY_B, RELAY_B_EP)  # most recent
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0 + 3)
    assert cache.best_relay(PEER) == (RELAY_A, RELAY_A_EP)
    cache.record_relay_failure(PEER, RELAY_A, RELAY_A_EP, T0 + 4)
    assert cache.best_relay(PEER) == (RELAY_B, RELAY_B_EP)  # A failed since


def test_last_path() -> None:
    cache = ConnectionCache()
    assert cache.last_path(PEER) is None
    cache.record_failure(PEER, PUB4, T0)
    assert cache.last_path(PEER) is None  # nothing worked yet
    cache.record_success(PEER, PUB4, T0 + 100)
    assert cache.last_path(PEER) == "direct"
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0 + 200)
    assert cache.last_path(PEER) == "relay"
    cache.record_success(PEER, PUB6, T0 + 300)
    assert cache.last_path(PEER) == "direct"
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0 + 300)
    assert cache.last_path(PEER) == "direct"  # a tie goes to direct


# ---------------------------------------------------------------- scoring


def test_untried_candidates_by_type_then_text() -> None:
    cache = ConnectionCache()
    known = [PRIV6, PRIV4, PUB6, PUB4B, PUB4, PUB4]
    assert cache.ordered_candidates(PEER, known, T0) == [PUB4B, PUB4, PUB6, PRIV4, PRIV6]


def test_recent_success_first_failed_last_none_dropped() -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, PRIV6, T0 - 3 * 86400)  # worked days ago
    cache.record_success(PEER, PRIV4, T0 - 60)  # worked a minute ago
    for i in range(3):
        cache.record_failure(PEER, PUB4B, T0 - 5000 + i)  # failed repeatedly
    order = cache.ordered_candidates(PEER, [PUB4, PUB6, PUB4B], T0)
    assert order == [PRIV4, PRIV6, PUB4, PUB6, PUB4B]


def test_more_successes_and_fewer_failures_rank_higher() -> None:
    cache = ConnectionCache()
    for _ in range(3):
        cache.record_success(PEER, PUB6, T0 - 7200)
    cache.record_success(PEER, PUB4, T0 - 7200)
    assert cache.ordered_candidates(PEER, [], T0)[0] == PUB6  # same recency, more successes
    cache.record_failure(PEER, PUB6, T0)
    assert cache.ordered_candidates(PEER, [], T0)[0] == PUB4


def test_a_failure_ranks_below_a_never_tried_endpoint() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, PUB4, T0)
    assert cache.ordered_candidates(PEER, [PRIV6], T0 + 7200) == [PRIV6, PUB4]


def test_latency_breaks_ties_within_a_type() -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, PUB4, T0, latency_ms=80.0)
    cache.record_success(PEER, PUB4B, T0, latency_ms=20.0)
    assert cache.ordered_candidates(PEER, [], T0 + 1) == [PUB4B, PUB4]


def test_history_points() -> None:
    e = CachedEndpoint(endpoint=PUB4, endpoint_type=EndpointType.PUBLIC_V4)
    assert history_points(None, T0) == 0
    assert history_points(e, T0) == 0
    e.last_success, e.success_count = T0 - 30, 3
    assert history_points(e, T0) == 40 + 3
    assert history_points(e, T0 + 3600) == 20 + 3
    assert history_points(e, T0 + 10 * 86400) == 10 + 3
    e.recent_failures, e.failure_count = [T0], 2
    assert history_points(e, T0) == 43 - 10 - 10


_POOL: list[Endpoint] = [
    PUB4,
    PUB4B,
    ("192.0.2.1", 1),
    PUB6,
    ("2001:db8::1:0", 65535),
    PRIV4,
    ("10.0.0.1", 51820),
    ("100.64.3.4", 51820),
    PRIV6,
    ("fe80::1%eth0", 51820),
]
_ops = st.lists(
    st.tuples(
        st.sampled_from(["attempt", "success", "failure", "quality", "relay"]),
        st.integers(0, len(_POOL) - 1),
        st.floats(0, 4000),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, known=st.lists(st.integers(0, len(_POOL) - 1), max_size=8))
def test_ordered_candidates_is_a_permutation(
    ops: list[tuple[str, int, float]], known: list[int]
) -> None:
    cache = ConnectionCache()
    now = T0
    for op, i, dt in ops:
        now += dt
        ep = _POOL[i]
        if op == "attempt":
            cache.record_attempt(PEER, ep, now)
        elif op == "success":
            cache.record_success(PEER, ep, now, latency_ms=dt / 100)
        elif op == "failure":
            cache.record_failure(PEER, ep, now)
        elif op == "quality":
            cache.record_quality(PEER, ep, now, latency_ms=dt / 10, loss_pct=dt / 40)
        else:
            cache.record_relay_success(PEER, RELAY_A, ep, now)
    known_eps = [_POOL[i] for i in known]
    cached = {e.endpoint for e in cache.entries(PEER) if e.endpoint_type is not EndpointType.RELAY}
    order = cache.ordered_candidates(PEER, known_eps, now)
    assert len(order) == len(set(order))
    assert set(order) == {normalize_endpoint(ep) for ep in known_eps} | cached
    assert order == cache.ordered_candidates(PEER, reversed(known_eps), now)  # deterministic
    # never tried ranks above only-ever-failed
    by_ep = {e.endpoint: e for e in cache.entries(PEER) if e.relay_pubkey is None}
    untried = [i for i, ep in enumerate(order) if ep not in by_ep]
    failed = [
        i
        for i, ep in enumerate(order)
        if ep in by_ep and by_ep[ep].success_count == 0 and by_ep[ep].failure_count > 0
    ]
    assert all(u < f for u in untried for f in failed)


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


def test_unknown_endpoint_measurement_is_ignored() -> None:
    cache = ConnectionCache()
    cache.record_quality(PEER, PUB4, T0, latency_ms=10.0)
    assert cache.entries(PEER) == []
    assert not cache.dirty


@pytest.mark.parametrize(
    "kw",
    [{"latency_ms": -1.0}, {"latency_ms": float("nan")}, {"loss_pct": 101.0}, {"loss_pct": -0.5}],
)
def test_bad_measurements_are_rejected(kw: dict[str, float]) -> None:
    cache = ConnectionCache()
    cache.record_success(PEER, PUB4, T0)
    with pytest.raises(ValueError, match=r"out of range|finite"):
        cache.record_quality(PEER, PUB4, T0, **kw)


def test_now_must_be_finite() -> None:
    with pytest.raises(ValueError, match="now"):
        ConnectionCache().record_failure(PEER, PUB4, float("inf"))


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


# ---------------------------------------------------------------- persistence


def _full_cache(path: Path | None) -> ConnectionCache:
    """A cache in which every field of CachedEndpoint differs from its default."""
    cache = ConnectionCache(path)
    cache.record_attempt(PEER, PUB6, T0)
    cache.record_success(PEER, PUB6, T0 + 1, latency_ms=12.5)
    cache.record_failure(PEER, PUB6, T0 + 2)
    cache.record_attempt(PEER, PUB6, T0 + 3)  # left pending
    cache.record_quality(PEER, PUB6, T0 + 4, latency_ms=17.25, loss_pct=3.5)
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0 + 5)
    cache.record_relay_failure(OTHER, RELAY_B, RELAY_B_EP, T0 + 6)
    cache.record_failure(OTHER, ("fe80::9%lo", 51820), T0 + 7)
    return cache


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "cache-wg0.db"
    cache = _full_cache(path)
    before = {p: cache.entries(p) for p in cache.peers()}
    cache.close()
    again = ConnectionCache(path)
    assert {p: again.entries(p) for p in again.peers()} == before
    again.close()
    # the test is only worth something if every field was exercised
    every = [e for entries in before.values() for e in entries]
    for f in dataclasses.fields(CachedEndpoint):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert any(getattr(e, f.name) != default for e in every), f.name


def test_flush_is_atomic_per_change_and_skipped_when_clean(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = ConnectionCache(path)
    cache.record_failure(PEER, PUB4, T0)
    cache.record_failure(OTHER, PUB4, T0)
    assert cache.dirty
    cache.flush()
    assert not cache.dirty
    # change the file behind the cache's back: a clean flush must not rewrite it
    with sqlite3.connect(path) as side:
        side.execute("DELETE FROM endpoints")
    side.close()
    cache.flush()
    assert ConnectionCache(path).peers() == []
    # one changed peer: only its rows are written again
    cache.record_success(PEER, PUB4, T0 + 1)
    cache.flush()
    reopened = ConnectionCache(path)
    assert reopened.peers() == [PEER]
    assert reopened.entries(PEER) == cache.entries(PEER)
    reopened.close()
    cache.forget(PEER)
    cache.close()  # close flushes
    assert ConnectionCache(path).peers() == []


def test_in_memory_cache_and_closed_cache() -> None:
    cache = _full_cache(None)
    cache.flush()
    assert not cache.dirty
    cache.close()
    cache.close()
    with pytest.raises(LocalProtocolError):
        cache.flush()


def test_a_failed_flush_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.db"
    cache = ConnectionCache(path)
    cache.record_failure(PEER, PUB4, T0)
    assert cache._store is not None
    conn = cache._store._conn
    assert conn is not None
    conn.execute("PRAGMA query_only=1")  # stands in for a full or read-only disk
    with caplog.at_level(logging.WARNING):
        cache.flush()
        cache.flush()
    assert caplog.text.count("could not save the connection cache") == 1
    assert cache.dirty
    conn.execute("PRAGMA query_only=0")
    cache.flush()
    assert not cache.dirty
    cache.close()
    assert ConnectionCache(path).peers() == [PEER]


def test_bad_rows_are_skipped_and_cleaned_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.db"
    _full_cache(path).close()
    with sqlite3.connect(path) as side:
        row = side.execute("SELECT * FROM endpoints WHERE peer = ?", (str(OTHER),)).fetchone()
        bad: list[dict[str, object]] = [
            {"peer": "not a key"},
            {"host": "example.com"},
            {"status": "maybe"},
            {"recent_failures": "{not json"},
            {"success_count": -1},
            {"packet_loss_pct": 250.0},
            {"endpoint_type": "relay", "relay_pubkey": None},
        ]
        names = [d[0] for d in side.execute("SELECT * FROM endpoints").description]
        insert = f"INSERT INTO endpoints VALUES ({', '.join('?' * len(names))})"  # noqa: S608
        for change in bad:
            values: dict[str, object] = dict(zip(names, row, strict=True))
            values.update(change)
            side.execute(insert, [values[n] for n in names])
    side.close()
    with caplog.at_level(logging.WARNING):
        cache = ConnectionCache(path)
    assert "skipping a bad cache row" in caplog.text
    assert "skipped 7 bad cache rows" in caplog.text
    assert len(cache.entries(OTHER)) == 2  # the good rows are all there
    assert len(cache.entries(PEER)) == 2
    assert cache.dirty
    cache.close()  # deletes the bad rows
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ConnectionCache(path).close()
    assert caplog.text == ""


def test_garbage_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache-wg0.db"
    path.write_bytes(b"\x00garbage, not SQLite\xff" * 500)
    with caplog.at_level(logging.WARNING):
        cache = ConnectionCache(path)
    assert cache.peers() == []
    assert "moved it to" in caplog.text
    broken = list(tmp_path.glob("cache-wg0.db.broken-*"))
    assert len(broken) == 1
    assert broken[0].read_bytes().startswith(b"\x00garbage")
    cache.record_success(PEER, PUB4, T0)  # and the rebuilt file works
    cache.close()
    assert ConnectionCache(path).peers() == [PEER]


def test_foreign_sqlite_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache-wg0.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE endpoints (x)")
        other.execute("INSERT INTO endpoints VALUES (1)")
    other.close()
    with caplog.at_level(logging.WARNING):
        cache = ConnectionCache(path)
    assert cache.peers() == []
    cache.close()
    assert "not a wgrelay file" in caplog.text
    assert list(tmp_path.glob("cache-wg0.db.broken-*"))


# ---------------------------------------------------------------- kill -9

WRITER = Path(__file__).with_name("cache_writer.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _check_generation(path: Path) -> int:
    """The generation the file holds; fails unless it holds one whole generation."""
    cache = ConnectionCache(path)
    try:
        entries = [e for p in cache.peers() for e in cache.entries(p)]
    finally:
        cache.close()
    assert len(cache.peers()) == 40
    assert len(entries) == 40 * 10
    generations = {e.last_success for e in entries}
    assert len(generations) == 1, f"partial generation: {sorted(map(str, generations))}"
    (g,) = generations
    assert g is not None
    assert all(e.success_count == int(g) for e in entries)
    return int(g)


def test_kill_9_during_flush_keeps_the_last_completed_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache-wg0.db"
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    held = 0
    for round_no in range(8):
        with subprocess.Popen(
            [sys.executable, str(WRITER), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            first = proc.stdout.readline()
            assert first, f"writer died: {proc.stderr.read()}"
            # a random moment: mostly inside a flush, since flushing is all it does
            time.sleep(rng.uniform(0.0, 0.06))
            os.kill(proc.pid, signal.SIGKILL)
            printed = [int(line) for line in [first, *proc.stdout.read().split()] if line.strip()]
            assert proc.wait() == -signal.SIGKILL
        with caplog.at_level(logging.WARNING):
            g = _check_generation(path)
        # every flush that returned is on disk; at most one more finished unannounced
        assert max(printed) <= g <= max(printed) + 1, (seed, round_no, printed, g)
        assert g > held
        held = g
    assert not list(tmp_path.glob("*.broken-*"))
    assert caplog.text == ""


def test_flush_from_another_thread_is_a_bug_not_a_disk_error(tmp_path: Path) -> None:
    cache = ConnectionCache(tmp_path / "cache.db")
    cache.record_failure(PEER, PUB4, T0)
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            cache.flush()
        except sqlite3.ProgrammingError as e:
            errors.append(e)

    worker = threading.Thread(target=flush)
    worker.start()
    worker.join()
    assert len(errors) == 1
    cache.close()
