"""Which relay carries which peer: the client's planning core (sans-I/O).

Theory of operation
-------------------
``RelayPlanner`` is everything an agent decides about relays: it owns one
``RelayLink`` per relay it talks to, chooses the **home relay** (where we stay
registered with "accept incoming sessions", so peers that cannot reach us
directly find us there), finds where a peer is registered, tries relays for a
peer in order, fails over, re-homes, measures, and forgets relays it no longer
needs. It never touches a socket or a clock, in the style of aioquic:

* inputs: ``start``, ``relay_peer``, ``drop_peer``, ``locate`` (API calls),
  ``receive(addr, data, now)`` (a control datagram from a relay's address),
  ``handle_timer(now)``;
* outputs: ``datagrams_to_send()`` as ``(relay address, bytes)``,
  ``next_event()`` (one channel for every outcome: ``PeerRelayed``,
  ``PeerRelayLost``, ``PeerRelayFailed``, ``HomeChanged``, ``PeerLocated``,
  ``RelayMeasured``, ``RelaysLearned``), and ``next_timer()``.

All links share the shell's one socket: a relay is told apart by its address,
a data frame by the relay it came from and its session id (``sessions_at``).

Home relay (plan_home.py). At start the best ``measure_count`` known relays
by score are pinged (at most ``measure_timeout_s``); then the planner
registers at the best one that answers, trying the next on refusal or silence
(``connect_timeout_s``). The next best is registered too, as **standby**
(REGISTER flag bit 1); when the home is lost the standby becomes home with
one REGISTER, else homing starts again, backing off from ``rehome_retry_s``
with jitter. Once home, the relay is asked for announcements, page by page.

Relaying a peer (plan_peers.py). ``relay_peer`` asks our home where the peer
accepts sessions (without a home, the best ``locate_fanout`` relays; if the
home does not know, ``locate_widen`` more), then tries, in order, the places
the answer named by whole-path cost, our home, and every other usable relay by
score: register there if needed (unlisted), then ask for a session
(``session_timeout_s`` per step). The first session wins (``PeerRelayed``); if
every relay fails, ``PeerRelayFailed`` says why, and the agent's backoff
decides when to ask again. A session the peer opens towards us arrives as
``PeerRelayed(incoming=True)``.

Scores and path costs (discovery/selection.py, docs/ARCHITECTURE.md)::

    score(R)    = rtt(R) (prior, or 1000 if never measured) + 250 * failures + 2 * load_pct
    cost(A-R-B) = score(R) + B's RTT to R (from its signed record)

Relays that carry sessions are pinged every ``measure_interval_s``
(``RelayMeasured``: RTT or a loss, for the connection cache), and a relayed
peer moves to a clearly cheaper path (hysteresis).

Two relays (plan_paths.py). A path A-H-X-B through our home H and the
peer's place X competes with the single relays on cost: H tells us the
relays it carries legs to and its measured RTT to each (LEG_RTT_QUERY),
and the cheapest path is tried first and re-evaluated like the others::

    cost(A-H-X-B) = score(H) + rtt_H(X) + rtt_B(X) + burden(X) + 10 ms

A link that is neither home
nor standby and has carried no session nor attempt for ``link_idle_s`` is shut
down: the relay expires our registration there.

Layout: ``plan_state.py`` (the configuration, per-attempt state),
``plan_links.py`` (``LinkPool``: links by key and address, usable relays),
``plan_home.py`` (``HomePlanner``), ``plan_peers.py`` (``PeerPaths``),
``plan_paths.py`` (``PathChoice``: paths over two relays), and this
module (``RelayPlanner``: the API, inputs, link events, measuring, idling),
each layer building on the one before.
"""

from __future__ import annotations

import logging

from wgrelay.client.events import (
    DiscoveryAnswered,
    LinkEvent,
    LinkLost,
    LinkRegistered,
    LinkRejected,
    PeerPortNotLatched,
    PeerPunch,
    PeerRelayed,
    PeerRelayLost,
    PingTimedOut,
    PlanEvent,
    PortNotLatched,
    PunchTold,
    QueryFailed,
    RelayMeasured,
    RttMeasured,
    SessionEnded,
    SessionEstablished,
    SessionFailed,
)
from wgrelay.client.link import RelayLink
from wgrelay.client.plan_paths import PathChoice
from wgrelay.client.plan_state import LinkSlot, Phase, PlanConfig
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.proto.constants import CloseReason

log = logging.getLogger(__name__)

CROSSING_WINDOW_S = 3.0
"""Two sessions for one peer this close together are a crossing (both sides
asked at once at two relays), not a replacement."""

__all__ = ["PlanConfig", "RelayPlanner"]


class RelayPlanner(PathChoice):
    def start(self, now: float) -> None:
        """Measure the known relays and choose a home among them."""
        self._started = True
        self._choose_home(now)

    def relay_peer(self, peer: PublicKey, now: float) -> None:
        """Give ``peer`` a relayed path; answered by PeerRelayed or PeerRelayFailed."""
        current = self._attempts.get(peer)
        if current is not None and not current.report_located:
            current.moving = False  # the agent waits for an answer now
            return
        relay = self.route_relay.get(peer)
        if relay is not None:
            lk = self._links.get(relay)
            if lk is not None and peer in lk.link.session_of:
                sid = lk.link.session_of[peer]
                port = lk.link.session_port.get(peer, 0)
                self._events.append(PeerRelayed(peer, relay, False, sid, port))
                return
        attempt = self._locating(peer, now)
        self._attempts[peer] = attempt
        if not attempt.queries:
            self._connect_next(attempt, now)

    def locate(self, peer: PublicKey, now: float) -> None:
        """Where is ``peer`` registered? Answered by PeerLocated."""
        if peer in self._attempts:
            return
        attempt = self._locating(peer, now)
        attempt.report_located = True
        self._attempts[peer] = attempt
        if not attempt.queries:
            self._finish_locate(attempt, now)

    def drop_peer(
        self, peer: PublicKey, now: float, reason: CloseReason = CloseReason.NORMAL
    ) -> None:
        """Close ``peer``'s relay session (NORMAL: we went direct; REPLACED:
        we want a new one) and forget any attempt for it."""
        self._attempts.pop(peer, None)
        self._places.pop(peer, None)
        self._moved_at.pop(peer, None)
        relay = self.route_relay.pop(peer, None)
        self._route_incoming.pop(peer, None)
        for key, lk in self._links.items():
            lk.link.wanted.discard(peer)
            if key == relay or peer in lk.link.session_of:
                lk.link.close_session(peer, now, reason)

    def shutdown(self, now: float) -> None:
        """Close every session and stop every link (the relays expire us)."""
        self._closed = True
        for lk in self._links.values():
            lk.link.shutdown(now)
        self._attempts.clear()
        self.route_relay.clear()
        self._homing = None
        self.standby = None
        self._rehome_at = self._next_measure = self._next_announcements = float("inf")

    def next_event(self) -> PlanEvent | None:
        return self._events.pop(0) if self._events else None

    def next_timer(self) -> float:
        t = min(self._rehome_at, self._next_measure, self._next_announcements)
        if self._homing is not None:
            t = min(t, self._homing.measure_deadline if self._homing.measuring else t)
            if self._homing.trying is not None:
                t = min(t, self._homing.deadline)
        for a in self._attempts.values():
            t = min(t, a.deadline)
        for lk in self._links.values():
            t = min(t, lk.link.next_timer())
            if self._idle_candidate(lk):
                t = min(t, lk.idle_since + self.config.link_idle_s)
        return t

    def receive(self, addr: Endpoint, data: bytes, now: float) -> bool:
        """A control datagram from ``addr``; False if no relay of ours is there."""
        key = self._by_addr.get(addr)
        if key is None:
            return False
        link = self._links[key].link
        link.receive(data, now)
        self._drain(key, link, now)
        return True

    def handle_timer(self, now: float) -> None:
        for key, lk in list(self._links.items()):
            lk.link.handle_timer(now)
            self._drain(key, lk.link, now)
        if now >= self._rehome_at:
            self._rehome_at = float("inf")
            self._choose_home(now)
        homing = self._homing
        if homing is not None:
            if homing.measuring and now >= homing.measure_deadline:
                homing.measuring.clear()
                self._register_next_home(now)
            elif homing.trying is not None and now >= homing.deadline:
                self._home_failed(homing.trying, "no answer", now)
        for attempt in list(self._attempts.values()):
            if now >= attempt.deadline:
                self._attempt_timed_out(attempt, now)
        if now >= self._next_measure:
            self._measure(now)
        if now >= self._next_announcements:
            self._ask_announcements(now)
        self._retire_idle_links(now)

    def _crossed_keeps_old(self, ev: SessionEstablished, old: PublicKey, now: float) -> bool:
        """Both sides asked at once, at two relays: each holds the session it
        opened and the one the peer opened. Both keep the one the smaller key
        opened (else each would send into its own and hear from the other's).
        Only a crossing: the old session came up moments ago and is still
        held. A session opened by the same side as the one we hold, or after
        a while (a failover, a move), replaces it."""
        attempt = self._attempts.get(ev.peer)
        if attempt is not None and attempt.moving:
            return False  # our deliberate move to a better relay
        route = self._route_incoming.get(ev.peer)
        old_link = self.link(old)
        if route is None or old_link is None or ev.peer not in old_link.session_of:
            return False
        old_incoming, since = route
        if old_incoming == ev.incoming or now - since > CROSSING_WINDOW_S:
            return False
        we_are_smaller = self.private_key.public_key().raw < ev.peer.raw
        # the old one was opened by the smaller key: by us if it is outgoing
        return (not old_incoming) == we_are_smaller

    def _drain(self, key: PublicKey, link: RelayLink, now: float) -> None:
        while (ev := link.next_event()) is not None:
            self._on_link_event(key, link, ev, now)

    def _on_link_event(self, key: PublicKey, link: RelayLink, ev: LinkEvent, now: float) -> None:
        if isinstance(ev, SessionEstablished):
            old = self.route_relay.get(ev.peer)
            if old is not None and old != key and self._crossed_keeps_old(ev, old, now):
                link.close_session(ev.peer, now, CloseReason.REPLACED)
                return
            self.route_relay[ev.peer] = key
            self._route_incoming[ev.peer] = (ev.incoming, now)
            self.registry.record_success(key)
            for other, lk in self._links.items():
                if other != key and ev.peer not in lk.link.session_of:
                    lk.link.forget_wanted(ev.peer)  # a lost link must not ask again
            attempt = self._attempts.get(ev.peer)
            if attempt is not None and not attempt.report_located:
                del self._attempts[ev.peer]
                if attempt.moving and old is not None and old != key:
                    self._leave_old_path(ev.peer, old, now)
            self._touch(key, now)
            self._events.append(PeerRelayed(ev.peer, key, ev.incoming, ev.session_id, ev.port))
        elif isinstance(ev, SessionFailed):
            attempt = self._attempts.get(ev.peer)
            if attempt is not None and attempt.current == key:
                attempt.errors.append(f"{key.short()}: {ev.status.name}")
                self._connect_next(attempt, now)
        elif isinstance(ev, PunchTold):
            if self.route_relay.get(ev.peer) == key:
                self._events.append(PeerPunch(ev, key))
        elif isinstance(ev, PortNotLatched):
            if self.route_relay.get(ev.peer) == key:
                self._events.append(PeerPortNotLatched(ev.peer, key))
        elif isinstance(ev, SessionEnded):
            if self.route_relay.get(ev.peer) == key:
                del self.route_relay[ev.peer]
                self._route_incoming.pop(ev.peer, None)
                self._events.append(PeerRelayLost(ev.peer, key, ev.reason.name.lower()))
        elif isinstance(ev, LinkRegistered):
            self._on_registered(key, link, now)
        elif isinstance(ev, LinkLost | LinkRejected):
            self._on_link_down(key, ev, now)
        elif isinstance(ev, RttMeasured):
            self.registry.record_rtt(key, ev.rtt_s * 1000)
            self.registry.record_load(key, ev.load_pct)
            self._on_pong(key, ev, now)
        elif isinstance(ev, DiscoveryAnswered):
            self._on_discovery(key, ev, now)
        elif isinstance(ev, QueryFailed):
            self._on_query_failed(key, ev, now)
        elif isinstance(ev, PingTimedOut):
            carried = self._carried(key)
            if carried:  # a loss, for the connection cache
                self._events.append(RelayMeasured(key, None, carried))

    def _on_registered(self, key: PublicKey, link: RelayLink, now: float) -> None:
        self._touch(key, now)
        addr = self.relay_addr(key)
        if addr is not None:
            self.registry.reached_at(key, addr)
        homing = self._homing
        if homing is not None and homing.trying == key:
            self._homing = None
            self.registry.record_success(key)
            self._set_home(key, now)
        for attempt in list(self._attempts.values()):
            if attempt.current == key and attempt.phase is Phase.CONNECTING:
                link.request_session(attempt.peer, now, attempt.via)
                attempt.deadline = now + self.config.session_timeout_s

    def _on_link_down(self, key: PublicKey, ev: LinkLost | LinkRejected, now: float) -> None:
        self.registry.record_failure(key)
        why = ev.reason
        if isinstance(ev, LinkLost):
            self._next_endpoint(key)  # it keeps knocking: at the next address
        homing = self._homing
        if homing is not None and homing.trying == key:
            self._home_failed(key, why, now)
        if key == self.standby:
            self.standby = None
        if key == self.home and not self._closed:
            if not self._promote_standby(now):
                log.warning("home relay %s down (%s); choosing another", key.short(), why)
                self._set_home(None, now)
                self._choose_home(now)
        elif key != self.home and self.standby is None:
            self._choose_standby(now)
        for attempt in list(self._attempts.values()):
            if attempt.current == key:
                attempt.errors.append(f"{key.short()}: {why}")
                if attempt.via is None:
                    self._unreachable(attempt, key)
                self._connect_next(attempt, now)
        if isinstance(ev, LinkRejected):
            self._drop_link(key)

    def _measure(self, now: float) -> None:
        self._next_measure = now + self.config.measure_interval_s
        self._ask_leg_rtts(now)  # for the next round's two-relay costs (plan_paths.py)
        if self.standby is None:
            self._choose_standby(now)  # the last one was lost, or none was known
        for peer, relay in list(self.route_relay.items()):
            self._reconsider(peer, relay, now)
        for key in dict.fromkeys(self.route_relay.values()):  # ordered, deduplicated
            link = self.link(key)
            if link is not None:
                link.ping(now)

    def _idle_candidate(self, lk: LinkSlot) -> bool:
        link = lk.link
        key = link.relay_key
        return not (
            key in (self.home, self.standby)
            or link.session_of
            or link.wanted
            or (self._homing is not None and self._homing.trying == key)
            or any(key in (a.current, *a.queries) for a in self._attempts.values())
        )

    def _retire_idle_links(self, now: float) -> None:
        for key, lk in list(self._links.items()):
            if self._idle_candidate(lk) and now >= lk.idle_since + self.config.link_idle_s:
                log.info("relay %s no longer needed; leaving it", key.short())
                lk.link.shutdown(now)  # it holds no session: nothing to send
                self._drop_link(key)
