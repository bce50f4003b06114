"""Token buckets and bounded per-key rate limiters (sans-I/O: time is passed in)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
B = TypeVar("B", bound="TokenBucket")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    Used per packet on the relay's data path, so it is a handful of float
    operations with no allocation.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True

    def copy_to(self, other: B) -> B:
        """``other`` with this bucket's rate, burst and tokens now."""
        other.rate, other.burst, other.tokens, other.stamp = (
            self.rate,
            self.burst,
            self.tokens,
            self.stamp,
        )
        return other


class MeteredBucket(TokenBucket):
    """A TokenBucket that also counts what passed (``taken``): how the relay
    measures each direction's demand under ``--capacity`` (contention.py).
    Sessions have one only while a capacity is set: the count costs each
    packet some 5 % of the framed data path, which a relay without one
    does not pay."""

    __slots__ = ("taken",)

    def __init__(self, rate: float, burst: float, now: float) -> None:
        super().__init__(rate, burst, now)
        self.taken = 0.0

    def take(self, amount: float, now: float) -> bool:
        # (TokenBucket.take's body again: a call to it would cost more than the count)
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        self.taken += amount
        return True


class KeyedRateLimiter(Generic[K]):
    """One token bucket per key, at most ``max_entries`` keys (least recently used go).

    The table is the only state an unauthenticated packet can touch on the relay,
    and its size is fixed: a flood from many sources evicts old entries instead
    of growing memory. An evicted key starts again with a full bucket, which is
    the price of the bound.
    """

    def __init__(self, rate: float, burst: float, max_entries: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def allow(self, key: K, now: float, cost: float = 1.0) -> bool:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_entries:
                self._buckets.popitem(last=False)
            b = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return b.take(cost, now)

    def __len__(self) -> int:
        return len(self._buckets)


class WindowCounter:
    """Counts events in the current one-second window (for 'under load' decisions)."""

    __slots__ = ("_count", "_window_start", "window_s")

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._window_start = 0.0
        self._count = 0

    def add(self, now: float, n: int = 1) -> int:
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._count = 0
        self._count += n
        return self._count

    def value(self, now: float) -> int:
        if now - self._window_start >= self.window_s:
            return 0
        return self._count
