"""Noticing a dead relay from the data path, in seconds (sans-I/O).

A relay that forwards our peers' traffic proves it is alive with every frame
it brings back; a relay that died shows it by silence *after we sent*. So the
watch starts when the shell reports the first data frame sent after the relay
was last heard from (``note_sent``); ``probe_s`` later it asks for a probe
(a bare PING), then every ``interval_s``; ``lost_after_s`` after that first
send, with ``probes`` probes unanswered, the relay is lost. Anything heard
from the relay (a data frame, any control message) ends the watch. A link
whose traffic is answered, or that sends nothing, costs no probe at all.
"""

from __future__ import annotations

from enum import Enum


class CarrierVerdict(Enum):
    NOTHING = "nothing"
    PROBE = "probe"
    LOST = "lost"


class CarrierWatch:
    def __init__(self, probe_s: float, interval_s: float, lost_after_s: float, probes: int) -> None:
        self.probe_s = probe_s
        self.interval_s = interval_s
        self.lost_after_s = lost_after_s
        self.probes_needed = probes
        self.sent_since = float("-inf")
        """The first frame sent after the relay was last heard from."""
        self._probes = 0
        self._probes_for = float("-inf")
        """The ``sent_since`` the probe count belongs to."""
        self._probe_at = float("inf")

    def note_sent(self, now: float, alive_at: float) -> bool:
        """A data frame went out; True if this starts a wait (the timer moved)."""
        if self.sent_since <= alive_at:
            self.sent_since = now
            return True
        return False

    def waiting(self, alive_at: float) -> bool:
        """Sent, and nothing heard since."""
        return self.sent_since > alive_at

    def next_timer(self, alive_at: float) -> float:
        if not self.waiting(alive_at):
            return float("inf")
        if self._probes_for != self.sent_since:
            return self.sent_since + self.probe_s
        t = self._probe_at
        if self._probes >= self.probes_needed:
            t = min(t, self.sent_since + self.lost_after_s)
        return t

    def check(self, now: float, alive_at: float) -> CarrierVerdict:
        """What is due at ``now`` (a probe counts as sent once returned)."""
        if not self.waiting(alive_at):
            return CarrierVerdict.NOTHING
        since = self.sent_since
        if self._probes_for != since:
            self._probes_for, self._probes = since, 0
            self._probe_at = since + self.probe_s
        if self._probes >= self.probes_needed and now >= since + self.lost_after_s:
            return CarrierVerdict.LOST
        if now >= self._probe_at:
            self._probes += 1
            self._probe_at = now + self.interval_s
            return CarrierVerdict.PROBE
        return CarrierVerdict.NOTHING
