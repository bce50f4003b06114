"""Our RTT to other relays (sans-I/O), for agents that weigh a path over two
relays (LEG_RTT_QUERY, proto/leg_rtts.py; client/plan_paths.py).

Theory of operation
-------------------
Relays already ping each other: SWIM probes one relay a second, in shuffled
round robin, and indirect probes on another's behalf (federation_spread.py).
Every PING the federation sends is timed here (``sent``) and its PONG gives
a sample (``answered``), smoothed like TCP's SRTT but faster (weight 1/4: a
sample every few seconds, and a leg that gets slow should show within a
few). So a small federation measures every pair for free.

A large one probes a given relay only every N seconds, so the relays that
agents asked about (``want``, by LEG_RTT_QUERY: the relays this one carries
legs to) are pinged at least every ``interval_s`` while asked about in the
last ``WANTED_FOR_S``: one PING and PONG per leg relay per interval, only
while some agent weighs paths over them.

A PING whose channel had to fetch the other relay's cookie first is timed
from the repeat (the federation calls ``sent`` again for that PING only, the
one the cookie reply names), as an agent's link does: its first copy's
answer would be a round trip late. Other PINGs in flight keep their times:
a late cookie reply for another message says nothing about them. A relay
with no sample for ``STALE_S`` has no RTT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from wgrelay.keys import PublicKey
from wgrelay.proto.constants import RTT_UNKNOWN
from wgrelay.proto.leg_rtts import MAX_LEG_RTTS, LegRttReply

SRTT_WEIGHT = 0.25
"""Of a new sample in the smoothed RTT."""
WANTED_FOR_S = 3600.0
"""A relay agents asked about is measured this long after the last asking
(so the next agent to ask finds a figure, not a relay still to measure)."""
STALE_S = 600.0
"""A relay with no sample for this long has no RTT (a relay we no longer
hear from is no leg relay anyway: only live ones are listed)."""
PING_WAIT_S = 5.0
"""A PING not answered in this long is forgotten (SWIM declares its relay
suspect after one second: no sample is worth more)."""


class RelayRtts:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._srtt_s: dict[PublicKey, float] = {}
        self._sampled: dict[PublicKey, float] = {}
        self._pinged: dict[PublicKey, float] = {}
        """When we last sent each relay a PING (any: a probe counts)."""
        self._in_flight: dict[int, tuple[PublicKey, float]] = {}
        """echo id -> (relay, when sent)."""
        self._wanted: dict[PublicKey, float] = {}
        """relay -> until when agents want it measured."""

    # ------------------------------------------------------------ samples

    def sent(self, key: PublicKey, echo: int, now: float) -> None:
        self._in_flight[echo] = (key, now)
        self._pinged[key] = now

    def answered(self, key: PublicKey, echo: int, now: float) -> None:
        """A PONG from ``key``: a sample if it answers a PING of ours to it."""
        flight = self._in_flight.get(echo)
        if flight is None or flight[0] != key:
            return  # (not ours, or another relay's: ours stays in flight)
        del self._in_flight[echo]
        sample = now - flight[1]
        old = self._srtt_s.get(key)
        if old is not None and now - self._sampled[key] < STALE_S:
            sample = old + SRTT_WEIGHT * (sample - old)
        self._srtt_s[key] = sample
        self._sampled[key] = now

    def forget(self, key: PublicKey) -> None:
        """The relay left the federation."""
        for table in (self._srtt_s, self._sampled, self._pinged, self._wanted):
            table.pop(key, None)
        for echo in [e for e, (k, _) in self._in_flight.items() if k == key]:
            del self._in_flight[echo]

    def rtt_ms(self, key: PublicKey, now: float) -> float | None:
        srtt = self._srtt_s.get(key)
        if srtt is None or now - self._sampled[key] >= STALE_S:
            return None
        return srtt * 1000

    # ------------------------------------------------------------ asking

    def want(self, keys: Iterable[PublicKey], now: float) -> None:
        for key in keys:
            self._wanted[key] = now + WANTED_FOR_S

    def due(self, now: float) -> list[PublicKey]:
        """Wanted relays to ping now (not pinged for ``interval_s``); also
        drops what is old. Called at every federation timer (at least once a
        second: the probe interval)."""
        for echo, (_, at) in list(self._in_flight.items()):
            if now - at >= PING_WAIT_S:
                del self._in_flight[echo]
        out = []
        for key, until in list(self._wanted.items()):
            if now >= until:
                del self._wanted[key]
            elif now - self._pinged.get(key, -math.inf) >= self.interval_s:
                out.append(key)
        return out

    def reply(self, query_id: int, relays: Iterable[PublicKey], now: float) -> LegRttReply:
        """The answer to an agent's LEG_RTT_QUERY: ``relays`` (those we would
        open a leg to now), measured ones first, nearest first; each is
        wanted from now on, so the next answer has a figure for it."""
        keys = list(dict.fromkeys(relays))
        self.want(keys, now)

        def order(key: PublicKey) -> tuple[float, bytes]:
            rtt = self.rtt_ms(key, now)
            return (rtt if rtt is not None else math.inf, key.raw)

        out = []
        for key in sorted(keys, key=order)[:MAX_LEG_RTTS]:
            rtt = self.rtt_ms(key, now)
            out.append((key, RTT_UNKNOWN if rtt is None else min(round(rtt), RTT_UNKNOWN - 1)))
        return LegRttReply(query_id, tuple(out))
