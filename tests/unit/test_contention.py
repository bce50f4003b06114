"""The contention rules as pure functions: credit weights, the bandwidth
shares (floors, then weighted water-filling), whose slot a request takes at
a full relay, and the option parsers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgrelay.relay.contention import (
    MAX_WEIGHT,
    Displacement,
    Flow,
    Slot,
    choose_victim,
    fair_shares,
    floors,
    reserve_slots,
    weight,
)
from wgrelay.relay.contention_options import parse_capacity, parse_min_share

GB = 1_000_000_000
EPS = 1e-6


# ---------------------------------------------------------------- weights


def test_weight_has_a_floor_of_one_and_grows_by_doublings() -> None:
    assert weight(-5 * GB) == weight(0) == 1.0
    assert weight(GB) == pytest.approx(2.0)
    assert weight(3 * GB) == pytest.approx(3.0)
    assert weight(10**18) == MAX_WEIGHT
    assert weight(GB // 2) < weight(GB) < weight(2 * GB)


@given(st.integers(-(10**15), 10**18), st.integers(-(10**15), 10**18))
def test_weight_is_monotonic_and_bounded(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert 1.0 <= weight(lo) <= weight(hi) <= MAX_WEIGHT


# ---------------------------------------------------------------- shares


def test_shares_example_contributor_gets_more_free_rider_keeps_its_floor() -> None:
    # capacity 100, two flows that each want 100: the floor is 12.5 each,
    # the other 75 go 7:1 by weight
    shares = fair_shares([Flow(100, 7.0), Flow(100, 1.0)], 100.0, 0.25)
    assert shares[0] == pytest.approx(12.5 + 75 * 7 / 8)
    assert shares[1] == pytest.approx(12.5 + 75 / 8)


def test_unused_share_goes_to_the_others() -> None:
    # a contributor that wants little leaves the rest to the free riders
    shares = fair_shares([Flow(5, 16.0), Flow(100, 1.0), Flow(100, 1.0)], 100.0, 0.25)
    assert shares[0] == pytest.approx(5)
    assert shares[1] == pytest.approx(47.5)
    assert shares[2] == pytest.approx(47.5)


flows_st = st.lists(
    st.builds(
        Flow,
        want=st.one_of(st.just(0.0), st.floats(0.0, 1e9, allow_nan=False)),
        weight=st.floats(1.0, MAX_WEIGHT),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(flows_st, st.floats(1.0, 1e10), st.floats(0.01, 0.5))
def test_shares_sum_within_capacity_and_every_flow_keeps_its_floor(
    flows: list[Flow], capacity: float, min_share: float
) -> None:
    shares = fair_shares(flows, capacity, min_share)
    base = floors(flows, capacity, min_share)
    assert sum(shares) <= capacity * (1 + EPS)
    active = sum(1 for f in flows if f.want > 0)
    for f, share, floor in zip(flows, shares, base, strict=True):
        assert -EPS <= share <= f.want * (1 + EPS) + EPS  # never more than it wants
        assert share >= floor * (1 - EPS) - EPS  # never less than its floor
        if f.want > 0:  # the floor: its part of the minimum share, or all it wants
            assert floor == pytest.approx(min(f.want, min_share * capacity / active))
    wanted = sum(f.want for f in flows)
    # work-conserving: what is wanted is given, up to the capacity
    assert sum(shares) == pytest.approx(min(wanted, capacity), rel=1e-6, abs=1e-3)
    # weighted max-min: flows held below what they want got the same level
    # above their floors per unit of weight, and no flow that got all it
    # wants is above that level
    held = [
        (s - b) / f.weight
        for f, s, b in zip(flows, shares, base, strict=True)
        if s < f.want * (1 - 1e-6) - 1e-6
    ]
    if held:
        level = max(held)
        assert min(held) == pytest.approx(level, rel=1e-6, abs=1e-6)
        for f, s, b in zip(flows, shares, base, strict=True):
            assert (s - b) / f.weight <= level * (1 + 1e-6) + 1e-6


@given(st.floats(1.0, MAX_WEIGHT), st.floats(1.0, MAX_WEIGHT), st.integers(0, 20))
def test_more_credit_never_gets_less(w1: float, w2: float, others: int) -> None:
    flows = [Flow(1e6, w1), Flow(1e6, w2)] + [Flow(1e6, 1.0)] * others
    shares = fair_shares(flows, 1e6, 0.25)
    if w1 >= w2:
        assert shares[0] >= shares[1] * (1 - 1e-9)
    else:
        assert shares[0] <= shares[1] * (1 + 1e-9)


# ---------------------------------------------------------------- slots


def _slots(weights: list[float]) -> list[Slot]:
    return [Slot(w, float(i), bytes([i])) for i, w in enumerate(weights)]


def test_reserve_is_the_rounded_up_fraction() -> None:
    assert reserve_slots(8, 0.25) == 2
    assert reserve_slots(10, 0.25) == 3
    assert reserve_slots(1, 0.25) == 1
    assert reserve_slots(100, 0.5) == 50
    # an odd count at 50 %: not more than half (3 of 5 would outnumber the rest)
    assert reserve_slots(5, 0.5) == 2
    assert reserve_slots(3, 0.5) == 1
    assert reserve_slots(2, 0.5) == 1


def test_a_contributor_takes_the_youngest_free_riders_slot() -> None:
    d = choose_victim(_slots([1.0] * 8), 8.0, reserve=2)
    assert d is not None
    assert d.victim == bytes([7])  # the youngest
    assert d.reason == "higher_credit"


def test_free_riders_keep_the_reserve() -> None:
    # two free riders left (the reserve): no contributor takes theirs
    assert choose_victim(_slots([1.0, 1.0] + [8.0] * 6), 8.0, reserve=2) is None
    # but one with more credit still outranks a contributor
    d = choose_victim(_slots([1.0, 1.0] + [8.0] * 6), 12.0, reserve=2)
    assert d is not None
    assert d.victim == bytes([7])


def test_near_equals_do_not_displace_each_other() -> None:
    assert choose_victim(_slots([3.0] * 8), 3.5, reserve=2) is None
    assert choose_victim(_slots([1.0] * 8), 1.0, reserve=2) is None


def test_a_newcomer_takes_a_slot_back_for_the_reserve() -> None:
    # a relay full of contributors: a free rider is not cut off
    d = choose_victim(_slots([8.0, 9.0, 8.0, 12.0]), 1.0, reserve=1)
    assert d is not None
    assert d.reason == "reserve"
    assert d.victim == bytes([2])  # the lowest credit above it, the youngest of those
    # once the free riders hold their reserve, another is refused
    assert choose_victim(_slots([1.0, 9.0, 8.0, 12.0]), 1.0, reserve=1) is None


@given(
    st.lists(st.sampled_from([1.0, 2.0, 5.0, 8.0, 16.0]), min_size=1, max_size=30),
    st.sampled_from([1.0, 2.0, 5.0, 8.0, 16.0]),
    st.floats(0.05, 0.5),
)
def test_displacement_never_breaks_the_reserve(
    weights: list[float], want: float, min_share: float
) -> None:
    slots = _slots(weights)
    reserve = reserve_slots(len(slots), min_share)
    d = choose_victim(slots, want, reserve)
    if d is None:
        return
    victim = next(s for s in slots if s.sid == d.victim)
    after = [s.weight for s in slots if s.sid != d.victim] + [want]
    if d.reason == "higher_credit":
        assert victim.weight + 1.0 <= want
        # at least ``reserve`` sessions at or below the victim's weight remain
        assert sum(1 for w in after if w <= victim.weight) >= reserve
    else:
        assert victim.weight > want
        assert sum(1 for w in weights if w <= want) < reserve


def _reference_victim(slots: list[Slot], want: float, reserve: int) -> Displacement | None:
    """The rule as the module's docstring states it, one weight level at a time."""
    if sum(1 for s in slots if s.weight <= want) < reserve:
        above = [s for s in slots if s.weight > want and s.movable]
        if not above:
            return None
        return Displacement(min(above, key=lambda s: (s.weight, -s.created)).sid, "reserve")
    candidates = [s for s in slots if s.weight + 1.0 <= want and s.movable]
    for level in sorted({s.weight for s in candidates}):
        if sum(1 for s in slots if s.weight <= level) > reserve:
            v = max((s for s in candidates if s.weight == level), key=lambda s: s.created)
            return Displacement(v.sid, "higher_credit")
    return None


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from([1.0, 1.5, 2.0, 5.0, 8.0, 16.0]), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from([1.0, 2.0, 3.0, 8.0, 16.0]),
    st.integers(0, 30),
)
def test_victim_is_the_rules(spec: list[tuple[float, bool]], want: float, reserve: int) -> None:
    slots = [Slot(w, float(i % 4), bytes([i]), movable) for i, (w, movable) in enumerate(spec)]
    assert choose_victim(slots, want, reserve) == _reference_victim(slots, want, reserve)


class _Counted(float):
    """A weight that counts how often it is compared."""

    comparisons = 0

    def __lt__(self, other: object) -> bool:
        _Counted.comparisons += 1
        return float(self) < float(other)  # type: ignore[arg-type]

    def __le__(self, other: object) -> bool:
        _Counted.comparisons += 1
        return float(self) <= float(other)  # type: ignore[arg-type]

    def __gt__(self, other: object) -> bool:
        _Counted.comparisons += 1
        return float(self) > float(other)  # type: ignore[arg-type]

    def __ge__(self, other: object) -> bool:
        _Counted.comparisons += 1
        return float(self) >= float(other)  # type: ignore[arg-type]


def test_choosing_a_victim_is_not_quadratic() -> None:
    # balances differ, so every session's weight is a level of its own: at a
    # full relay each request must not cost a pass over the slots per level
    n = 2000
    slots = [Slot(_Counted(1.0 + i * 7 / n), float(i), i.to_bytes(2, "big")) for i in range(n)]
    _Counted.comparisons = 0
    d = choose_victim(slots, 16.0, reserve_slots(n, 0.25))
    assert d is not None
    assert d.victim == (n // 4).to_bytes(2, "big")  # just above the reserve
    assert _Counted.comparisons < 25 * n  # (one count per level: over 10^6)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100Mbit/s", 12_500_000),
        ("100mbit", 12_500_000),
        ("12MB/s", 12_000_000),
        ("1.5GB/s", 1_500_000_000),
        ("800kbit/s", 100_000),
        ("500", 500_000),  # a bare number is KB/s, as --max-bandwidth
        ("64kB/s", 64_000),
        ("off", 0),
        ("0", 0),
    ],
)
def test_parse_capacity(text: str, rate: int) -> None:
    assert parse_capacity(text) == rate


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("fast", "is not a rate"),
        ("10 furlongs", "unit 'furlongs'"),
        ("10Mbps", "unit 'mbps'"),
        ("0.1bit/s", "less than a byte"),
        ("999999999999GB/s", "more than 100 GB/s"),
        ("\uff11\uff10MB", "is not a rate"),  # fullwidth digits
    ],
)
def test_parse_capacity_refuses_with_one_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as e:
        parse_capacity(text)
    assert "\n" not in str(e.value)


def test_parse_min_share() -> None:
    assert parse_min_share("0.25") == 0.25
    assert parse_min_share("10%") == pytest.approx(0.1)
    assert math.isclose(parse_min_share("50%"), 0.5)
    for bad in ("0", "0%", "60%", "0.75", "a lot", "-0.1", "nan"):
        with pytest.raises(ValueError, match=r"min|fraction"):
            parse_min_share(bad)
