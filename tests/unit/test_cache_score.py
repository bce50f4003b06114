"""Scoring: candidate order, history points, what worked last, the best relay."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.addresses import EndpointType, normalize_endpoint
from wgrelay.mesh.cache import CachedEndpoint, ConnectionCache
from wgrelay.mesh.cache_score import history_points

T0 = 1_700_000_000.0
PEER = PublicKey(b"\x01" * 32)
RELAY_A = PublicKey(b"\xaa" * 32)
RELAY_B = PublicKey(b"\xbb" * 32)
RELAY_A_EP: Endpoint = ("203.0.113.100", 51821)
RELAY_B_EP: Endpoint = ("198.51.100.100", 51821)

PUB4: Endpoint = ("203.0.113.7", 51820)
PUB4B: Endpoint = ("198.51.100.7", 51820)
PUB6: Endpoint = ("2001:db8::7", 51820)
PRIV4: Endpoint = ("192.168.1.7", 51820)
PRIV6: Endpoint = ("fd00::7", 51820)


# ---------------------------------------------------------------- what worked last


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
