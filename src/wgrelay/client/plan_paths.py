"""Whole-path choice over two relays (plan.py has the planner's theory of
operation; the cost is in discovery/selection.py).

A relayed peer's path is one relay where both are registered (the peer's
place: its home or standby), or, multi-hop, our home H and the peer's place
X joined by a leg: A-H-X-B. Before, a leg was used only when X was out of
our reach. Here it competes on cost: two relays near their peers, joined
by a fast link between them, beat one relay far from both.

* **What we know.** Our RTT to H (our pings), the peer's RTT to X (its
  signed location record), and H's RTT to X: H measures it itself (every
  PING relays send each other is timed, relay/relay_rtts.py) and tells us
  in LEG_RTT_REPLY, which lists only the relays H would open a leg to (its
  operator lists them, ``--leg-relay``). A relay H does not list, or has no
  figure for, is no two-relay path: nothing is guessed. We ask H when it
  becomes home (or announces MULTI_HOP) and at every measuring round
  (link_legs.py keeps the answer).
* **First choice** (``_candidates``): the cheapest two-relay path goes
  first (the home's "via" bridge) when it costs less than the cheapest
  place; else the usual order. A two-relay request that fails (the exit
  relay does not list H, a quota) costs that pair ``FAILURE_PENALTY_MS``
  for ``LEG_FAILURE_MEMORY_S``: no retry at every round.
* **Re-evaluation** (``_reconsider``, every ``measure_interval_s``): the
  current path's cost against every other, single or two relays, with the
  planner's hysteresis (``worth_switching``, once per ``SWITCH_HOLD_S``).
  Only to a path sharing no relay with the current one: a relay holds one
  session per pair, so a new path through it would meet the old session
  there (joined, or refused as busy). From A-H-X-B that leaves the single
  relays other than H and X; the rest waits for the path to end.
* **One side asks.** Only the agent with the smaller key weighs two relays
  (the one that asks for a relayed path at once, mesh/agent.py): two
  agents asking at once in opposite directions (both do when a path ends)
  would open crossing legs for the pair, which both relays refuse as busy.
  The other agent accepts the session it is offered, as ever; it still
  bridges to a relay out of its reach (plan_peers.py). Nor does it move a
  session it was offered: it cannot tell a leg's from a local one (the
  exit relay offers both alike), so it would weigh A-H-X-B as X alone, and
  ask H, which holds the pair's session and refuses it; the asker moves it.
* Peers covered by ``--private`` are never weighed here: their paths follow
  plan_private.py's rules.

Cost: one LEG_RTT_QUERY (4 bytes of body) and one reply (5 + 34 per leg
relay) per agent per measuring round, to its home only; the relays ping
the leg relays agents ask about every ``rtt_interval_s`` (federation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from wgrelay.client.events import DiscoveryAnswered, Place
from wgrelay.client.link import LinkState
from wgrelay.client.link_legs import LegsLink
from wgrelay.client.link_private import PrivateLink
from wgrelay.client.plan_peers import PeerPaths
from wgrelay.client.plan_state import Attempt, Phase
from wgrelay.discovery.selection import (
    FAILURE_PENALTY_MS,
    MAX_HISTORY_FAILURES,
    SWITCH_HOLD_S,
    worth_switching,
)
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import Capability

log = logging.getLogger(__name__)

LEG_FAILURE_MEMORY_S = 300.0
"""A failed two-relay request counts against its pair of relays this long."""
LEG_RTTS_FRESH_ROUNDS = 3
"""The home's leg RTTs are used for this many measuring rounds after its answer."""


@dataclass(frozen=True, slots=True)
class PathOption:
    """One way to relay a peer: ``entry`` (where our session is), and the
    peer's relay behind it for a path over two relays."""

    cost: float
    entry: PublicKey
    exit_relay: PublicKey | None = None

    @property
    def relays(self) -> set[PublicKey]:
        return {self.entry} if self.exit_relay is None else {self.entry, self.exit_relay}

    def describe(self) -> str:
        if self.exit_relay is None:
            return f"via {self.entry.short()}"
        return f"via {self.entry.short()} and {self.exit_relay.short()}"


class PathChoice(PeerPaths):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._leg_failures: dict[tuple[PublicKey, PublicKey], tuple[int, float]] = {}
        """(entry, exit) -> two-relay requests that failed, and the last one's time."""

    # ------------------------------------------------------------ views

    def exit_relay(self, peer: PublicKey) -> PublicKey | None:
        """The second relay of ``peer``'s path, when our session goes through two."""
        relay = self.route_relay.get(peer)
        link = self.link(relay) if relay is not None else None
        if link is None or peer not in link.session_of:
            return None
        if isinstance(link, PrivateLink) and peer in link.private_exit:
            return link.private_exit[peer]  # a private path: always two relays
        return link.via.get(peer)

    # ------------------------------------------------------------ asking the home

    def _ask_leg_rtts(self, now: float) -> None:
        """Ask our home which relays it carries legs to, and how far each is
        (only a home that announced multi-hop: another has no legs)."""
        home = self.home
        link = self.link(home) if home is not None else None
        relay = self.registry.get(home) if home is not None else None
        if (
            isinstance(link, LegsLink)
            and relay is not None
            and relay.capabilities & Capability.MULTI_HOP
        ):
            link.ask_leg_rtts(now)

    def _set_home(self, key: PublicKey | None, now: float) -> None:
        super()._set_home(key, now)
        self._ask_leg_rtts(now)

    def _on_discovery(self, key: PublicKey, ev: DiscoveryAnswered, now: float) -> None:
        super()._on_discovery(key, ev, now)
        link = self.link(key)
        if key == self.home and isinstance(link, LegsLink) and link.leg_rtts_at == -math.inf:
            self._ask_leg_rtts(now)  # its announcement may have come only now

    # ------------------------------------------------------------ costs

    def _two_relay_options(
        self, peer: PublicKey, places: tuple[Place, ...], now: float
    ) -> list[PathOption]:
        """Our home, then each place of the peer our home carries legs to
        and has measured, cheapest first (none if the peer asks first)."""
        if self.private_key.public_key().raw > peer.raw:
            return []
        home = self.home
        link = self.link(home) if home is not None else None
        entry = self.registry.get(home) if home is not None else None
        fresh_s = LEG_RTTS_FRESH_ROUNDS * self.config.measure_interval_s
        if (
            home is None
            or entry is None
            or not isinstance(link, LegsLink)
            or link.state != LinkState.REGISTERED
            or now - link.leg_rtts_at > fresh_s
        ):
            return []
        out = []
        for p in places:
            key = p.location.relay
            leg_rtt = link.leg_rtts.get(key)
            exit_relay = self.registry.get(key)
            if key == home or leg_rtt is None or exit_relay is None or not self._usable(key):
                continue
            caps = exit_relay.capabilities
            if caps and not caps & Capability.MULTI_HOP:
                continue  # it announced what it does, and legs are not among it
            cost = self.selector.two_relay_cost(entry, exit_relay, leg_rtt, p.peer_rtt_ms, peer)
            out.append(PathOption(cost + self._leg_penalty(home, key, now), home, key))
        return sorted(out, key=lambda o: o.cost)

    def _path_options(self, peer: PublicKey, now: float) -> list[PathOption]:
        places = self._places.get(peer, ())
        singles = [PathOption(c, key) for c, key in self._path_costs(peer, places)]
        return sorted(singles + self._two_relay_options(peer, places, now), key=lambda o: o.cost)

    def _leg_penalty(self, entry: PublicKey, exit_relay: PublicKey, now: float) -> float:
        failed = self._leg_failures.get((entry, exit_relay))
        if failed is None:
            return 0.0
        count, at = failed
        if now - at >= LEG_FAILURE_MEMORY_S:
            del self._leg_failures[(entry, exit_relay)]
            return 0.0
        return FAILURE_PENALTY_MS * min(count, MAX_HISTORY_FAILURES)

    # ------------------------------------------------------------ choosing

    def _candidates(self, attempt: Attempt, now: float) -> list[PublicKey]:
        """The usual order; the cheapest two-relay path goes first (as the
        home's bridge) when it costs less than every single relay."""
        out = super()._candidates(attempt, now)
        twos = self._two_relay_options(attempt.peer, attempt.places, now)
        if not twos or twos[0].exit_relay is None:
            return out
        best, exit_relay = twos[0], twos[0].exit_relay
        singles = self._path_costs(attempt.peer, attempt.places)
        single = singles[0][0] if singles else math.inf
        if best.cost < single and exit_relay not in (*attempt.bridges, *attempt.bridged):
            log.info(
                "peer %s: the path %s costs %.0f ms, the best over one relay %.0f ms",
                attempt.peer.short(),
                best.describe(),
                best.cost,
                single,
            )
            attempt.bridges.insert(0, exit_relay)
        return out

    def _connect_next(self, attempt: Attempt, now: float) -> None:
        if (
            attempt.phase is Phase.CONNECTING
            and attempt.via is not None
            and attempt.current
            and not self._private(attempt.peer)  # (plan_private.py's pairs, its reasons)
        ):
            # the request through two relays failed (refused, or no answer)
            count, _ = self._leg_failures.get((attempt.current, attempt.via), (0, 0.0))
            self._leg_failures[(attempt.current, attempt.via)] = (count + 1, now)
        super()._connect_next(attempt, now)

    def _reconsider(self, peer: PublicKey, relay: PublicKey, now: float) -> None:
        """Move a relayed peer to a clearly cheaper path, over one relay or
        two (selection.py's hysteresis), at most once per SWITCH_HOLD_S."""
        if peer in self._attempts or now - self._moved_at.get(peer, -1e18) < SWITCH_HOLD_S:
            return
        if self._private(peer):
            return  # (its path is chosen by plan_private.py's rules, not by cost)
        incoming = self._route_incoming.get(peer, (False, 0.0))[0]
        if incoming and self.private_key.public_key().raw > peer.raw:
            # the peer asked (it has the smaller key) and weighs the path,
            # over one relay or two; we cannot tell which: an exit relay
            # offers a leg's session like any other. Weighed as one relay
            # it looks dear, and the only move it allows, to the peer's
            # relay, meets the pair's session there (its entry side), which
            # refuses us (legs.py): a request for nothing every SWITCH_HOLD_S
            return
        via = self.exit_relay(peer)
        if via is not None:
            self._leg_failures.pop((relay, via), None)  # it works
        options = self._path_options(peer, now)
        current = next((o for o in options if (o.entry, o.exit_relay) == (relay, via)), None)
        if current is None:
            return  # (a peer that came to us, or a path through a former home)
        # never through a relay of the current path: it holds the pair's session
        others = [o for o in options if not o.relays & current.relays]
        if not others or not worth_switching(current.cost, others[0].cost):
            return
        to = others[0]
        log.info(
            "peer %s: the path %s costs %.0f ms, %s %.0f ms: moving",
            peer.short(),
            current.describe(),
            current.cost,
            to.describe(),
            to.cost,
        )
        self._moved_at[peer] = now
        attempt = Attempt(peer, Phase.CONNECTING, now, places=self._places.get(peer, ()))
        attempt.moving = True
        if to.exit_relay is None:
            attempt.candidates = [to.entry]
        else:
            attempt.bridges = [to.exit_relay]
        attempt.tried.add(relay)
        self._attempts[peer] = attempt
        self._connect_next(attempt, now)
