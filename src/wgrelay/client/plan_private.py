"""Private paths on the planner's side (``--private``; plan.py has the theory
of operation, relay/private_legs.py the protocol's).

For a peer the privacy configuration covers, a relayed path always has two
relays: an **entry** relay we are registered at, and an **exit** relay where
the peer accepts sessions (its signed location record), asked for with a
sealed request so that the entry never learns the peer and the exit never
learns us. The rules:

* entry != exit; both announce PRIVATE_PATHS (if they announced anything);
* the lookup ("where is the peer?") goes to one relay that is not our home
  (the usual entry): the best other relay by score, and the same one next
  time. It is asked about every covered peer we know of at once, in key
  order (in groups of ``MAX_COVER``: the wanted peer's group), whichever
  of them we want now. Every relay asked about a peer
  learned that we look for it, so none of them is ever its entry or exit
  relay (``asked_about``, kept for the agent's run);
* the entry is our home if it may be, else another relay we register at,
  unlisted (no location record: it only carries our request);
* no such pair: no relayed path at all (fail closed), and the reason goes to
  ``wgrelay status``. Direct paths are unaffected: they reveal nothing to
  relays.

The plain flow (candidates, the "via" bridge, moving to a cheaper path) is
never used for a covered peer: a plain CONNECTION_REQUEST names the peer.
Each link also refuses to send one for a covered peer (link_private.py).
"""

from __future__ import annotations

import logging
from typing import Any

from wgrelay.client.events import PeerRelayFailed
from wgrelay.client.link import LinkState, RelayLink
from wgrelay.client.link_private import PrivateLink
from wgrelay.client.plan_home import HomePlanner
from wgrelay.client.plan_state import Attempt, Phase
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import Capability

log = logging.getLogger(__name__)

_PRIVATE_CAPS = Capability.PRIVATE_PATHS | Capability.MULTI_HOP
MAX_COVER = 16
"""Peers asked about in one private lookup (the one wanted among them)."""


class PrivatePaths(HomePlanner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked_about: dict[PublicKey, set[PublicKey]] = {}
        """Covered peer -> the relays we asked where it is (they know we look
        for it): never its entry or exit relay."""
        self.private_blocked: dict[PublicKey, str] = {}
        """Covered peers without a relayed path now, and why (for status)."""

    def _private(self, peer: PublicKey) -> bool:
        return self.config.private.covers(peer)

    def _link(self, key: PublicKey, now: float) -> RelayLink | None:
        link = super()._link(key, now)
        if isinstance(link, PrivateLink):
            # each link refuses a plain request for a covered peer itself:
            # the rule does not rest on every caller checking it
            link.covers = self._private
        return link

    def _private_capable(self, key: PublicKey) -> bool:
        """It announced private paths, or nothing yet (a bootstrap entry): the
        relay's answer tells then (it refuses what it does not know)."""
        r = self.registry.get(key)
        return r is not None and (
            not r.capabilities or r.capabilities & _PRIVATE_CAPS == _PRIVATE_CAPS
        )

    def _private_lookup(self, attempt: Attempt, now: float) -> None:
        """Ask one relay where ``attempt.peer`` is: one we asked before, else
        the best by score that is not our home (which we would rather keep
        as the entry relay); our home only if it is the only relay we know.
        The same relay is asked about every covered peer we know of, in one
        fixed order (``cover``), so that it cannot tell which of them we are
        about to connect to; each becomes a relay that knows we look for
        them all."""
        peer = attempt.peer
        asked = self.asked_about.setdefault(peer, set())
        known = [r.key for r in self.available(now)]
        lookup = next(
            (k for k in [*(k for k in known if k in asked), *known] if k != self.home), None
        )
        if lookup is None:
            lookup = self.home
        link = self._link(lookup, now) if lookup is not None else None
        if lookup is None or link is None or link.state == LinkState.REJECTED:
            return
        attempt.asked.add(lookup)
        for other in self.cover(peer):
            qid = link.query(now, locate=other, want_relays=False)
            self.asked_about.setdefault(other, set()).add(lookup)
            if other == peer:
                attempt.queries[lookup] = qid

    def cover(self, peer: PublicKey) -> list[PublicKey]:
        """The peers one private lookup asks about: the group of ``peer``
        among the covered peers we know of, cut in key order into groups of
        ``MAX_COVER``. Every peer of a group is asked about with the same
        set (a set of its own would name the one wanted)."""
        known = sorted(self.config.private.peers | {peer}, key=lambda k: k.raw)
        start = known.index(peer) // MAX_COVER * MAX_COVER
        return known[start : start + MAX_COVER]

    def _connect_private(self, attempt: Attempt, now: float) -> None:
        """Try the next (entry, exit) pair for a covered peer, or fail closed."""
        peer = attempt.peer
        asked = self.asked_about.setdefault(peer, set())
        asked.update(attempt.asked)
        why: list[str] = []
        # the places in the answer's order: the peer's home, then its standby
        exits = list(dict.fromkeys(p.location.relay for p in attempt.places))
        if not exits:
            why.append("its relay is not known")
        for exit_relay in exits:
            if exit_relay in asked:
                why.append(f"its relay {exit_relay.short()} was asked where it is")
                continue
            if not self._private_capable(exit_relay):
                why.append(f"its relay {exit_relay.short()} has no private paths")
                continue
            entry = self._private_entry(attempt, exit_relay, asked, now)
            if entry is None:
                why.append(f"no other relay to enter by for {exit_relay.short()}")
                continue
            self._ask_private(attempt, entry, exit_relay, now)
            return
        self._attempts.pop(peer, None)
        reason = "private: no two-relay path (" + "; ".join(why + attempt.errors) + ")"
        self.private_blocked[peer] = reason
        log.info("peer %s: %s", peer.short(), reason)
        self._events.append(PeerRelayFailed(peer, reason))

    def _private_entry(
        self, attempt: Attempt, exit_relay: PublicKey, asked: set[PublicKey], now: float
    ) -> PrivateLink | None:
        """Our home, else a relay we are registered at, else the best other
        relay (registered unlisted): not the exit, not one that was asked."""
        registered = [k for k, lk in self._links.items() if lk.link.state == LinkState.REGISTERED]
        order = [k for k in (self.home, self.standby) if k is not None]
        order += sorted((k for k in registered if k not in order), key=lambda k: k.raw)
        order += [r.key for r in self.available(now) if r.key not in order]
        for key in order:
            if key in (exit_relay, *asked) or key in attempt.tried:
                continue
            if not self._private_capable(key):
                continue
            link = self._link(key, now)
            if isinstance(link, PrivateLink) and link.state != LinkState.REJECTED:
                return link
        return None

    def _ask_private(
        self, attempt: Attempt, link: PrivateLink, exit_relay: PublicKey, now: float
    ) -> None:
        entry = link.relay_key
        attempt.phase = Phase.CONNECTING
        attempt.queries.clear()
        attempt.tried.add(entry)
        attempt.current = entry
        attempt.via = exit_relay
        self.private_blocked.pop(attempt.peer, None)
        self._touch(entry, now)
        log.info(
            "peer %s: private path through %s and %s",
            attempt.peer.short(),
            entry.short(),
            exit_relay.short(),
        )
        link.private_exit[attempt.peer] = exit_relay
        if link.state == LinkState.REGISTERED:
            link.request_private(attempt.peer, exit_relay, now)
            attempt.deadline = now + self.config.session_timeout_s
        else:
            link.connect(now)  # (unlisted: only the home places a record)
            attempt.deadline = now + self.config.connect_timeout_s
