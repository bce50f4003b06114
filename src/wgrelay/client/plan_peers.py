"""Finding where a peer is and giving it a relayed path (plan.py has the theory
of operation): ask the home, weigh the whole path through each place the peer
accepts sessions, try candidates in order, move to a clearly cheaper path."""

from __future__ import annotations

import logging

from wgrelay.client.events import (
    DiscoveryAnswered,
    PeerLocated,
    PeerRelayFailed,
    Place,
    QueryFailed,
    RelaysLearned,
)
from wgrelay.client.link import LinkState
from wgrelay.client.plan_private import PrivatePaths
from wgrelay.client.plan_state import MAX_PAGES, Attempt, Phase
from wgrelay.discovery.rendezvous import DEFAULT_REPLICAS, holders
from wgrelay.discovery.selection import SWITCH_HOLD_S, worth_switching
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import Capability, CloseReason

log = logging.getLogger(__name__)


class PeerPaths(PrivatePaths):
    def _locating(self, peer: PublicKey, now: float) -> Attempt:
        """Ask our home where ``peer`` is (it asks the peer's holders for us:
        one request however many relays there are); without a home, the best
        ``locate_fanout`` relays."""
        attempt = Attempt(peer, Phase.LOCATING, now + self.config.locate_timeout_s)
        if self._private(peer):  # one relay, never our home (plan_private.py)
            self._private_lookup(attempt, now)
            return attempt
        home = self.link(self.home) if self.home is not None else None
        if home is not None and home.state == LinkState.REGISTERED:
            targets = [home.relay_key]
        else:
            targets = [r.key for r in self.available(now)[: self.config.locate_fanout]]
        self._ask_where(attempt, targets, now)
        return attempt

    def _ask_where(self, attempt: Attempt, targets: list[PublicKey], now: float) -> None:
        for key in targets:
            link = self._link(key, now)
            if link is not None and link.state != LinkState.REJECTED and key not in attempt.asked:
                attempt.asked.add(key)
                attempt.queries[key] = link.query(now, locate=attempt.peer, want_relays=False)

    def _widen(self, attempt: Attempt, now: float) -> bool:
        """Ask once more, elsewhere; True if any was asked. First the peer's
        holders themselves, found as the federation finds them (rendezvous
        over the relays we know: the same set while our list is current):
        k requests, what our home would have sent for us (it may be dead and
        not yet noticed). Only if we know none of them, the best others."""
        if attempt.widened or self._private(attempt.peer):
            return False  # (a private lookup tells one relay, not k more)
        attempt.widened = True
        known = [r.key for r in self.available(now)]
        targets = [
            k for k in holders(attempt.peer, known, DEFAULT_REPLICAS) if k not in attempt.asked
        ]
        if not targets:
            others = [k for k in known if k not in attempt.asked]
            targets = others[: self.config.locate_widen]
        self._ask_where(attempt, targets, now)
        attempt.deadline = now + self.config.locate_timeout_s
        return bool(attempt.queries)

    def _on_discovery(self, key: PublicKey, ev: DiscoveryAnswered, now: float) -> None:
        learned = tuple(a.info.key for a in ev.announcements if self.registry.register_relay(a))
        if learned:
            self._events.append(RelaysLearned(learned))
            if self.standby is None:
                self._choose_standby(now)  # a home's first answer names the others
        if ev.asked_for is None and ev.more and key == self.home and ev.page < MAX_PAGES:
            self._ask_announcements(now, ev.page + 1)
        peer = ev.asked_for
        attempt = self._attempts.get(peer) if peer is not None else None
        if attempt is None or attempt.phase is not Phase.LOCATING:
            return
        if attempt.queries.get(key) != ev.query_id:
            return
        del attempt.queries[key]
        places = tuple(p for p in ev.places if self._known_place(p, now))
        if places:
            self._places[attempt.peer] = places
            attempt.places = places
            attempt.located = places[0].location.relay
            attempt.queries.clear()
        if not attempt.queries:
            self._located(attempt, now)

    def _known_place(self, place: Place, now: float) -> bool:
        """A place is usable once its relay is in the registry (learned from
        the answer when it was not: its record is signed by it)."""
        key, endpoint = place.location.relay, place.location.endpoint
        if self.registry.get(key) is None:
            host, port = endpoint
            if port and host not in ("0.0.0.0", "::"):  # (a relay that announces nothing)
                expires = self._wall_ms(now) + int(self.config.located_relay_ttl_s * 1000)
                self.registry.learn_endpoint(key, endpoint, expires)
        return self.registry.get(key) is not None and self._usable(key)

    def _on_query_failed(self, key: PublicKey, ev: QueryFailed, now: float) -> None:
        peer = ev.asked_for
        attempt = self._attempts.get(peer) if peer is not None else None
        if attempt is None or attempt.queries.get(key) != ev.query_id:
            return
        del attempt.queries[key]
        if not attempt.queries:
            self._located(attempt, now)

    def _located(self, attempt: Attempt, now: float) -> None:
        if attempt.located is None and self._widen(attempt, now):
            return  # wait for the wider round
        if attempt.report_located:
            self._finish_locate(attempt, now)
        else:
            self._connect_next(attempt, now)

    def _finish_locate(self, attempt: Attempt, now: float) -> None:
        self._attempts.pop(attempt.peer, None)
        self._events.append(PeerLocated(attempt.peer, attempt.located))

    def _path_costs(
        self, peer: PublicKey, places: tuple[Place, ...]
    ) -> list[tuple[float, PublicKey]]:
        """Each place's whole-path cost (ours to the relay, the peer's from
        it, what relaying to this peer through it did before)."""
        out = []
        for p in places:
            relay = self.registry.get(p.location.relay)
            if relay is not None:
                out.append((self.selector.path_cost(relay, p.peer_rtt_ms, peer), relay.key))
        return sorted(out, key=lambda c: c[0])

    def _candidates(self, attempt: Attempt, now: float) -> list[PublicKey]:
        """Where the peer is, cheapest whole path first; our home; then every
        other usable relay by score."""
        out: list[PublicKey] = [key for _, key in self._path_costs(attempt.peer, attempt.places)]
        for key in (attempt.located, self.home):
            if key is not None and key not in out and self.registry.get(key) is not None:
                out.append(key)
        out += [r.key for r in self.available(now) if r.key not in out]
        # a relay whose link was just lost (dead, or unreachable) is the last
        # resort, not the first: the located relay may be the one that died
        lost = [k for k in out if (lk := self._links.get(k)) and lk.link.state == LinkState.LOST]
        return [k for k in out if k not in lost] + lost

    def _connect_next(self, attempt: Attempt, now: float) -> None:
        if self._private(attempt.peer):
            self._connect_private(attempt, now)
            return
        if attempt.phase is Phase.LOCATING:
            attempt.phase = Phase.CONNECTING
            attempt.queries.clear()
            attempt.candidates = self._candidates(attempt, now)
            for place in reversed(attempt.places):
                lk = self._links.get(place.location.relay)
                if lk is not None and lk.link.state == LinkState.LOST:
                    # out of our reach already (it never answered, or died):
                    # through our home first, the direct try after
                    self._unreachable(attempt, place.location.relay)
        while attempt.candidates or attempt.bridges:
            if attempt.bridges:
                if self._bridge(attempt, attempt.bridges.pop(0), now):
                    return
                continue
            key = attempt.candidates.pop(0)
            if key in attempt.tried:
                continue
            link = self._link(key, now)
            if link is None or link.state == LinkState.REJECTED:
                continue
            attempt.tried.add(key)
            attempt.current = key
            attempt.via = None
            self._touch(key, now)
            if link.state == LinkState.REGISTERED:
                link.request_session(attempt.peer, now)
                attempt.deadline = now + self.config.session_timeout_s
            else:
                link.connect(now)
                attempt.deadline = now + self.config.connect_timeout_s
            return
        self._attempts.pop(attempt.peer, None)
        if attempt.moving:
            log.info("peer %s stays where it is: %s", attempt.peer.short(), attempt.errors)
            return
        errors = "; ".join(attempt.errors) if attempt.errors else "no relay known"
        self._events.append(
            PeerRelayFailed(attempt.peer, f"no relay could reach {attempt.peer.short()} ({errors})")
        )

    def _unreachable(self, attempt: Attempt, key: PublicKey) -> None:
        """If ``key`` is where the peer accepts sessions but our link there
        never came up (our network lets nothing through to it), ask our home
        to go through it next (multi-hop: docs/PROTOCOL.md, section 6). Not
        for a relay we were registered at before: that one died (failover
        goes elsewhere), it is not out of our reach."""
        lk = self._links.get(key)
        here = {p.location.relay for p in attempt.places} | {attempt.located}
        if (
            key in here
            and key != self.home
            and key not in attempt.bridged
            and key not in attempt.bridges
            and lk is not None
            and lk.link.state != LinkState.REGISTERED
            and lk.link.epoch is None  # never registered there
        ):
            log.info("peer %s: relay %s is out of our reach", attempt.peer.short(), key.short())
            attempt.bridges.insert(0, key)

    def _bridge(self, attempt: Attempt, exit_relay: PublicKey, now: float) -> bool:
        """Ask our home for a session to the peer through ``exit_relay``."""
        attempt.bridged.add(exit_relay)
        home = self.home
        link = self.link(home) if home is not None else None
        if home is None or link is None or link.state != LinkState.REGISTERED:
            return False
        for key in (home, exit_relay):
            r = self.registry.get(key)
            if r is not None and r.capabilities and not r.capabilities & Capability.MULTI_HOP:
                return False  # it announced what it does, and this is not among it
        # (why: out of our reach, _unreachable; or cheaper, plan_paths.py)
        log.info(
            "peer %s: asking %s for a session through %s",
            attempt.peer.short(),
            home.short(),
            exit_relay.short(),
        )
        attempt.current = home
        attempt.via = exit_relay
        self._touch(home, now)
        link.request_session(attempt.peer, now, exit_relay)
        attempt.deadline = now + self.config.session_timeout_s
        return True

    def _attempt_timed_out(self, attempt: Attempt, now: float) -> None:
        if attempt.phase is Phase.LOCATING:
            attempt.queries.clear()
            self._located(attempt, now)
            return
        key = attempt.current
        if key is not None:
            attempt.errors.append(f"{key.short()}: no answer")
            if attempt.via is None:
                self._unreachable(attempt, key)
            link = self.link(key)
            if link is not None and self.route_relay.get(attempt.peer) != key:
                link.close_session(attempt.peer, now)  # stop asking there
        self._connect_next(attempt, now)

    def _reconsider(self, peer: PublicKey, relay: PublicKey, now: float) -> None:
        """Move a relayed peer to a clearly cheaper path (selection.py's
        hysteresis), at most once per SWITCH_HOLD_S."""
        places = self._places.get(peer, ())
        if peer in self._attempts or now - self._moved_at.get(peer, -1e18) < SWITCH_HOLD_S:
            return
        if self._private(peer):
            return  # (its path is chosen by plan_private.py's rules, not by cost)
        costs = self._path_costs(peer, places)
        current = next((c for c, key in costs if key == relay), None)
        if not costs or current is None or costs[0][1] == relay:
            return
        best, to = costs[0]
        if not worth_switching(current, best):
            return
        log.info(
            "peer %s: path via %s costs %.0f ms, via %s %.0f ms: moving",
            peer.short(),
            relay.short(),
            current,
            to.short(),
            best,
        )
        self._moved_at[peer] = now
        attempt = Attempt(peer, Phase.CONNECTING, now, places=places, moving=True)
        attempt.candidates = [to]
        attempt.tried.add(relay)
        self._attempts[peer] = attempt
        self._connect_next(attempt, now)

    def _leave_old_path(self, peer: PublicKey, old: PublicKey, now: float) -> None:
        link = self.link(old)
        if link is not None:
            link.close_session(peer, now, CloseReason.REPLACED)
