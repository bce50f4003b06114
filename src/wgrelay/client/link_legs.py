"""A relay link that also asks its relay which relays it carries legs to, and
how far each is (LEG_RTT_QUERY, proto/leg_rtts.py; sans-I/O).

The planner asks its home (``ask_leg_rtts``) when it becomes home and at
every measuring round; the answer is kept here as the relay's state, like
its load from a PONG: ``leg_rtts`` (relay -> RTT in ms, None: not measured
yet) and when it came. An answer naming a relay the home has not measured
yet is asked again after ``LEG_RTT_RETRY_S``, a few times (the home starts
pinging a relay once an agent asks about it), so a figure is there before
the first peer needs a path, not a measuring round later.

It also keeps ``via`` true: a session the peer asked for here (its offer)
is over this relay alone, even if our own request through another relay
was out at the time (the relay joined it to the peer's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from wgrelay.client.link import LinkState, RelayLink
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import MsgType
from wgrelay.proto.leg_rtts import LegRttQuery, LegRttReply
from wgrelay.proto.messages import Body, SessionOffer

LEG_RTT_RETRY_S = 2.0
LEG_RTT_RETRIES = 3


class LegsLink(RelayLink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leg_rtts: dict[PublicKey, float | None] = {}
        """The relays this relay carries legs to now, and its RTT to each (ms)."""
        self.leg_rtts_at = -math.inf
        """When it last told us (-inf: never)."""
        self._leg_retry_at = math.inf
        self._leg_retries = 0

    def _handler_table(self) -> dict[type[Body], Callable[[Any, float], None]]:
        table = super()._handler_table()
        table[LegRttReply] = self._on_leg_rtts
        return table

    def _on_session_offer(self, body: SessionOffer, now: float) -> None:
        super()._on_session_offer(body, now)
        if self.sessions.get(body.session_id) == body.initiator:
            # the peer's own request here: whatever we asked through another
            # relay meanwhile was joined to it, or is answered by it (a
            # relay holds one session per pair, and one with a leg refuses
            # the side at the other relay: legs.py): one relay, ours
            self.via.pop(body.initiator, None)

    def ask_leg_rtts(self, now: float) -> None:
        """Ask the relay for its legs (one request in flight at a time)."""
        if self.state != LinkState.REGISTERED:
            return
        if any(t == MsgType.LEG_RTT_QUERY for t, _ in self._requests):
            return
        qid = self._new_id()
        self._start(LegRttQuery(qid), qid, now)

    def _on_leg_rtts(self, body: LegRttReply, now: float) -> None:
        if self._finish(MsgType.LEG_RTT_QUERY, body.query_id) is None:
            return
        self.leg_rtts = body.rtts_ms()
        self.leg_rtts_at = now
        if None in self.leg_rtts.values() and self._leg_retries < LEG_RTT_RETRIES:
            self._leg_retries += 1
            self._leg_retry_at = now + LEG_RTT_RETRY_S
        else:
            self._leg_retries = 0

    def next_timer(self) -> float:
        return min(super().next_timer(), self._leg_retry_at)

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        if now >= self._leg_retry_at:
            self._leg_retry_at = math.inf
            self.ask_leg_rtts(now)
