"""The agent's decisions per peer: direct, or relayed, and back (sans-I/O).

Theory of operation
-------------------
``AgentCore`` holds one ``PeerPath`` per peer of the WireGuard interface. The
daemon calls ``observe(info, now, wall)`` with a fresh snapshot of the interface
(about once a second, five times a second while a direct attempt runs), and
reports relay outcomes (``on_relayed``, ``on_relay_lost``, ``on_relay_failed``).
Each call returns ``Action`` values for the daemon to carry out. The core never
touches WireGuard, a socket or a clock: its rules run under a fake clock in the
unit tests. What worked and what failed goes into the ``ConnectionCache``, which
orders the direct candidates, decides (with the seed's rules) when to stop
trying direct, and remembers across restarts which path worked last.

Per-peer states::

    (start, no recent handshake) --relay first--> RELAY_PENDING at once
    (start, relay disabled) --> PROBING
    PROBING --NatTraverse: handshake/traffic on a candidate--> DIRECT
    PROBING --candidates exhausted, or cache.should_try_relay--> RELAY_PENDING
    RELAY_PENDING --on_relayed--> RELAYED (endpoint: the relay's session port,
            or our 127.0.0.1 proxy when framed)
    RELAYED --on_relay_lost--> RELAY_PENDING (the manager tries the next relay)
    RELAYED --peer closed the session (it went direct)--> PROBING, checked at
            the next look where WireGuard points (it followed the peer)
    RELAYED --sending for relay_silent_s without hearing anything--> RELAY_PENDING
            (the session is replaced: the relay may have lost it without telling)
    RELAYED --a direct try succeeds--> DIRECT (relay session closed)
    RELAYED --peer reached us directly (WireGuard roamed, data flowing)--> DIRECT
    DIRECT --sending for broken_after_s without hearing anything--> PROBING

Direct attempts (``NatTraverse``) make a candidate the peer's endpoint and
*kick* a handshake: WireGuard only starts one when it has something to send,
and switching persistent keepalive on makes it send now. Each candidate gets
``direct_probe_s`` (3 s) when no relay carries the peer (relays disabled, or
a direct path that broke).

Going back to direct while relayed (mesh/upgrade.py has the rules): the first
try soon after relaying, coordinated through the relay in port mode (both
sides move to the other's public mapping at once: hole punching), each try
``upgrade_probe_s`` (0.8 s) with the relay's frames held; a failed try
doubles the interval, up to ``probe_back_max_s`` (15 min).

* Hysteresis: a peer that went back to direct and fell back to the relay within
  ``flap_window_s`` (5 min) counts a flap; its next try waits
  ``probe_back_s * 2**flaps`` (capped). Flaps are forgotten after a whole flap
  window on a direct path. So a flapping path costs a try now and then, not a
  bounce every minute.

Who asks for the relay session: the peer with the smaller public key asks at
once; the other waits ``initiate_delay_s`` for the incoming session first (and
the relay joins two requests for the same pair into one session anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from wgrelay.endpoint import Endpoint, endpoint_str, is_loopback
from wgrelay.keys import PublicKey
from wgrelay.mesh.actions import (
    Action,
    CloseRelay,
    HoldProxy,
    Kick,
    LeaveRelay,
    ReplaceRelay,
    StartRelay,
    UseDirect,
    UseProxy,
)
from wgrelay.mesh.backend.base import InterfaceInfo, PeerInfo
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.nat import DirectFailed, DirectSucceeded, NatTraverse, Observation
from wgrelay.mesh.peer_path import AgentConfig, PathKind, PeerPath
from wgrelay.mesh.upgrade import MAPPINGS_WAIT_S, UpgradeRules
from wgrelay.proto.constants import MappingKind

log = logging.getLogger(__name__)

__all__ = ["AgentConfig", "AgentCore", "PathKind", "PeerPath"]


class AgentCore(UpgradeRules):
    def __init__(
        self, own_key: PublicKey, config: AgentConfig, cache: ConnectionCache | None = None
    ) -> None:
        self.own_key = own_key
        self.config = config
        self.cache = cache if cache is not None else ConnectionCache(None)
        self.nat = NatTraverse(config.direct_probe_s, self.relay_path)
        self.peers: dict[PublicKey, PeerPath] = {}
        self.proxy_endpoints: set[Endpoint] = set()
        self.retired_endpoints: set[Endpoint] = set()
        """Relay ports we left lately (never a direct candidate, not ours now)."""
        """Endpoints that are our proxies (never a direct candidate)."""
        self.relay_enabled = config.relay_enabled
        self.udp_blocked = False
        """Our network drops UDP (relays reached over TCP/TLS): no direct try can work."""
        self._nonce = 0
        self._started_at = float("-inf")
        """The first look at the interface (start_grace_s counts from it)."""

    # ------------------------------------------------------------ helpers

    def _start_probing(self, p: PeerPath, now: float, wall: float, why: str) -> list[Action]:
        cands = self._candidates(p, wall)
        if not cands:
            if not self.relay_enabled:
                return self._pause_probing(p, now, f"{why}; no direct candidate; relay disabled")
            return self._want_relay(p, now, f"{why}; no direct candidate to try")
        if self.relay_enabled and self.cache.should_try_relay(p.key, wall):
            return self._want_relay(
                p, now, f"{why}; connection cache: direct has failed too often (seed rule)"
            )
        p.roamed_first = False
        shown = ", ".join(endpoint_str(c) for c in cands[:3]) + (", ..." if len(cands) > 3 else "")
        self._set(p, PathKind.PROBING, now, f"{why}; trying direct {shown}")
        return self._try(self.nat.add(p.key, cands, now, wall, p.rx_bytes), wall)

    def _want_relay(
        self, p: PeerPath, now: float, reason: str, at_once: bool = False
    ) -> list[Action]:
        self.nat.mark_connected(p.key)  # no more direct attempts for now
        self._set(p, PathKind.RELAY_PENDING, now, reason)
        p.relay_requested = False
        p.relay_backoff_s = self.config.relay_retry_initial_s
        # (at once: not again within a second of asking, whatever ended the
        # last session: a relay and two agents must never ask in a loop)
        delay = 0.0 if at_once or self.own_key.raw < p.key.raw else self.config.initiate_delay_s
        p.relay_retry_at = max(
            now + delay,
            self._started_at + self.config.start_grace_s,
            p.relay_asked_at + self.config.initiate_delay_s / 2,
        )
        return self._maybe_start_relay(p, now)

    def _maybe_start_relay(self, p: PeerPath, now: float) -> list[Action]:
        if p.kind != PathKind.RELAY_PENDING or p.relay_requested or now < p.relay_retry_at:
            return []
        if not self.relay_enabled:
            return []
        p.relay_requested = True
        p.relay_asked_at = now
        return [StartRelay(p.key)]

    def _to_direct(self, p: PeerPath, ep: Endpoint, now: float, reason: str) -> list[Action]:
        actions: list[Action] = []
        was_relayed = p.kind in (PathKind.RELAYED, PathKind.RELAY_PENDING)
        if was_relayed:
            actions.append(LeaveRelay(p.key))
            p.returned_direct_at = now
        p.direct_endpoint = ep
        p.probing_back = False
        p.relay = None
        p.relay_requested = False
        p.silent_since = None
        self.nat.mark_connected(p.key)
        self._set(p, PathKind.DIRECT, now, reason)
        return actions

    # ------------------------------------------------------------ inputs

    def observe(self, info: InterfaceInfo, now: float, wall: float) -> list[Action]:
        if self._started_at == float("-inf"):
            self._started_at = now
        actions: list[Action] = []
        seen: dict[PublicKey, Observation] = {}
        fresh: dict[PublicKey, PeerInfo] = {}
        for peer in info.peers:
            fresh[peer.public_key] = peer
            seen[peer.public_key] = Observation(peer.endpoint, peer.latest_handshake, peer.rx_bytes)
        for key in [k for k in self.peers if k not in fresh]:
            log.info("peer %s left the interface", key.short())
            p = self.peers.pop(key)
            self.nat.mark_connected(key)
            if p.kind in (PathKind.RELAYED, PathKind.RELAY_PENDING):
                actions.append(CloseRelay(key))
        # a peer whose path was decided in this round is not judged again in it
        settled: set[PublicKey] = set()
        for key, peer in fresh.items():
            if key not in self.peers:
                actions += self._new_peer(peer, now, wall)
                settled.add(key)
        deltas = {
            key: self._absorb(self.peers[key], peer, now)
            for key, peer in fresh.items()
            if key not in settled
        }
        tries, results = self.nat.step(now, wall, seen)
        actions += self._try(tries, wall)
        for r in results:
            actions += self._nat_result(r, now, wall)
            settled.add(r.peer)
        actions += self._punch_kicks({t.peer for t in tries})
        for key in self.nat.step_with_relay(
            lambda k: self.relay_enabled and self.cache.should_try_relay(k, wall)
        ):
            actions += self._nat_gave_up(self.peers[key], now, wall)
            settled.add(key)
        for key, peer in fresh.items():
            if key not in settled:
                actions += self._update(self.peers[key], peer, deltas[key], now, wall)
        return actions

    @staticmethod
    def _absorb(p: PeerPath, peer: PeerInfo, now: float) -> tuple[bool, bool, bool]:
        """Take the new counters; returns (new handshake, rx grew, tx grew)."""
        if peer.rx_bytes < p.rx_bytes or peer.tx_bytes < p.tx_bytes:
            # the peer was removed and added back (port mode restarts it to
            # get a handshake through the relay port): its counters start at 0
            p.rx_bytes = p.tx_bytes = p.tx_at_silence = 0
        hs = peer.latest_handshake
        new_handshake = hs is not None and (p.latest_handshake is None or hs > p.latest_handshake)
        delta = (new_handshake, peer.rx_bytes > p.rx_bytes, peer.tx_bytes > p.tx_bytes)
        p.tx_before = p.tx_bytes
        p.latest_handshake, p.rx_bytes, p.tx_bytes = hs, peer.rx_bytes, peer.tx_bytes
        p.wg_endpoint = peer.endpoint
        if delta[0] or delta[1]:
            p.last_heard = now
        return delta

    def _new_peer(self, peer: PeerInfo, now: float, wall: float) -> list[Action]:
        ep = peer.endpoint
        ours = self.relay_path(ep) or is_loopback(ep)
        p = PeerPath(
            key=peer.public_key,
            kind=PathKind.PROBING,
            since=now,
            reason="new",
            original_endpoint=None if ours else ep,
            original_keepalive=peer.persistent_keepalive,
            direct_endpoint=None if ours else ep,
            latest_handshake=peer.latest_handshake,
            rx_bytes=peer.rx_bytes,
            tx_bytes=peer.tx_bytes,
            probe_back_interval_s=self.config.probe_back_s,
        )
        self.peers[peer.public_key] = p
        last = self.cache.last_path(p.key)
        hs = peer.latest_handshake
        # a recent handshake proves the endpoint, unless we relayed last time:
        # then it came through the relay, and the endpoint is the one our
        # last run put back at its stop
        if (
            last != "relay"
            and not ours
            and ep is not None
            and hs is not None
            and wall - hs < self.config.handshake_fresh_s
        ):
            self.cache.record_success(p.key, ep, wall)
            self._set(p, PathKind.DIRECT, now, f"recent handshake via {endpoint_str(ep)}")
            return []
        if self.relay_enabled and (last == "relay" or self.config.relay_first):
            # a path within a second: the relay at once, direct tried in the
            # background once the relay told both sides the mappings
            best = self.cache.best_relay(p.key) if last == "relay" else None
            why = (
                f"cache: relayed last time{f' via {best[0].short()}' if best else ''}"
                if (last == "relay")
                else "no recent handshake"
            )
            # (the smaller key asks now, the other accepts its offer: asking
            # both at once could open two sessions at two relays)
            return self._want_relay(
                p, now, f"{why}; relaying at once, direct tried in the background"
            )
        why = "cache: direct last time" if last == "direct" else "no recent handshake"
        return self._start_probing(p, now, wall, why)

    def _nat_result(
        self, r: DirectSucceeded | DirectFailed, now: float, wall: float
    ) -> list[Action]:
        p = self.peers.get(r.peer)
        if p is None:
            return []
        if isinstance(r, DirectFailed):
            self.cache.record_failure(r.peer, r.endpoint, wall)
            return []
        self.cache.record_success(r.peer, r.endpoint, wall, latency_ms=r.latency_ms)
        actions: list[Action] = []
        if p.probing_back:
            actions.append(HoldProxy(p.key, False))
            p.last_upgrade = f"{p.last_upgrade or '?'}: direct ({r.proof})"
            reason = (
                f"direct path works again via {endpoint_str(r.endpoint)} ({r.proof}); "
                f"left relay {p.relay.short() if p.relay else '?'}"
            )
        else:
            reason = f"{r.proof} via {endpoint_str(r.endpoint)}"
        actions += self._to_direct(p, r.endpoint, now, reason)
        if self.config.keepalive_s and r.proof != "handshake":
            # (a handshake told both ends already) send on the new path at once,
            # so the peer sees it and WireGuard there follows
            actions.append(Kick(p.key, self.config.keepalive_s))
        return actions

    def _nat_gave_up(self, p: PeerPath, now: float, wall: float) -> list[Action]:
        if p.probing_back:
            return self._upgrade_failed(p, now, wall)
        if not self.relay_enabled:
            return self._pause_probing(p, now, "no direct candidate answered; relay disabled")
        return self._want_relay(p, now, self._give_up_reason(p, wall))

    def _pause_probing(self, p: PeerPath, now: float, reason: str) -> list[Action]:
        """Nothing else to do but try direct again later (relay disabled)."""
        self.nat.mark_connected(p.key)
        p.next_probe_back = now + p.probe_back_interval_s
        p.probe_back_interval_s = min(p.probe_back_interval_s * 2, self.config.probe_back_max_s)
        self._set(p, PathKind.PROBING, now, f"{reason}; next try in "
                  f"{p.next_probe_back - now:.0f} s")  # fmt: skip
        return []

    def _give_up_reason(self, p: PeerPath, wall: float) -> str:
        if self.nat.exhausted(p.key):
            return "no handshake on any direct candidate"
        return "connection cache: direct has failed too often (seed rule)"

    def _retry_paused(self, p: PeerPath, now: float, wall: float) -> list[Action]:
        if p.key in self.nat.remaining or now < p.next_probe_back:
            return []
        return self._start_probing(p, now, wall, "trying direct again")

    def _update(
        self,
        p: PeerPath,
        peer: PeerInfo,
        delta: tuple[bool, bool, bool],
        now: float,
        wall: float,
    ) -> list[Action]:
        new_handshake, rx_grew, tx_grew = delta
        ep = peer.endpoint
        actions: list[Action] = []
        if p.kind == PathKind.DIRECT:
            if ep is not None and not is_loopback(ep) and not self.relay_path(ep):
                p.direct_endpoint = ep  # WireGuard roamed, or the operator set it
            if new_handshake and ep is not None:
                self.cache.record_success(p.key, ep, wall)
            p.track_silence(rx_grew or new_handshake, tx_grew, now)
            if p.direct_since is not None and now - p.direct_since >= self.config.flap_window_s:
                p.flaps = 0  # stable long enough: forget old flaps
            if p.silent(now, self.config.broken_after_s, self.config.keepalive_s):
                p.silent_since = None
                if ep is not None and not is_loopback(ep):
                    self.cache.record_failure(p.key, ep, wall)
                actions += self._start_probing(p, now, wall, "direct path went silent")
        elif p.kind == PathKind.RELAYED and not p.probing_back:
            p.track_silence(rx_grew or new_handshake, tx_grew, now)
            if new_handshake and self.config.keepalive_s:
                # a second confirmation of the new keys: WireGuard's initiator
                # sends one packet after the handshake, and until one arrives
                # the responder cannot send (a lossy relay path would leave it
                # mute until the next keepalive); harmless on the responder
                actions.append(Kick(p.key, self.config.keepalive_s))
            if (
                p.silent(now, self.config.relay_silent_s, self.config.keepalive_s)
                and ep in self.proxy_endpoints
            ):
                # WireGuard sends (keepalives at least) and nothing comes back
                # through the relay: the session is gone there, whatever the
                # relay told us (a restart it hid, a lost SESSION_CLOSE)
                p.silent_since = None
                if p.relay is not None and p.relay_endpoint is not None:
                    self.cache.record_relay_failure(p.key, p.relay, p.relay_endpoint, wall)
                lost = p.relay.short() if p.relay else "?"
                actions.append(ReplaceRelay(p.key))
                return actions + self._want_relay(
                    p, now, f"nothing heard through relay {lost} for "
                    f"{self.config.relay_silent_s:.0f} s; asking for a new session"
                )  # fmt: skip
            if (
                ep is not None
                and not self.relay_path(ep)
                and not is_loopback(ep)
                and (rx_grew or new_handshake)
            ):
                # the peer got through to us directly and WireGuard followed it
                self.cache.record_success(p.key, ep, wall)
                actions += self._to_direct(
                    p, ep, now, f"peer reached us directly from {endpoint_str(ep)}"
                )
                if self.config.keepalive_s:
                    actions.append(Kick(p.key, self.config.keepalive_s))  # answer on the new path
            elif ep not in self.proxy_endpoints:
                actions.append(UseProxy(p.key))  # someone moved it; the relay is our path
            elif self.relay_enabled and now >= p.next_probe_back:
                actions += self._probe_back(p, now, wall)
        elif p.kind == PathKind.RELAY_PENDING:
            actions += self._maybe_start_relay(p, now)
        elif p.kind == PathKind.PROBING:
            direct = ep is not None and not self.relay_path(ep) and not is_loopback(ep)
            if p.roamed_first and direct and ep is not None and (rx_grew or new_handshake):
                # the peer left the relay for a direct path, and what it sent
                # since came from there: WireGuard follows it already
                p.roamed_first = False
                self.cache.record_success(p.key, ep, wall)
                return self._to_direct(p, ep, now, f"peer reached us directly from "
                                       f"{endpoint_str(ep)}")  # fmt: skip
            actions += self._retry_paused(p, now, wall)
        return actions

    def on_relayed(
        self,
        peer: PublicKey,
        relay: PublicKey,
        incoming: bool,
        now: float,
        wall: float = 0.0,
        relay_endpoint: Endpoint | None = None,
        port_mode: bool = False,
    ) -> list[Action]:
        """A relayed session for ``peer`` came up (``port_mode``: with a
        session port, whose latch will tell both sides the mappings)."""
        p = self.peers.get(peer)
        if p is None:
            return [CloseRelay(peer)]  # not (or no longer) ours
        if not self.relay_enabled:
            return [CloseRelay(peer)]
        if (
            p.kind == PathKind.DIRECT
            and incoming
            and p.last_heard is not None
            and now - p.last_heard < self.config.broken_after_s
        ):
            # our direct path works (we heard the peer on it just now); the peer
            # will see our traffic arrive directly and WireGuard will follow it
            return [CloseRelay(peer)]
        actions: list[Action] = []
        if p.kind == PathKind.PROBING:
            self.nat.mark_connected(peer)
        if p.probing_back:
            # a new session (after a failover, say) during a direct retry: the
            # retry ends here, and the proxy must stop holding the relay's
            # frames (else it drops them for good while we say "relayed")
            self.nat.mark_connected(peer)
            actions.append(HoldProxy(peer, False))
        if (
            p.returned_direct_at is not None
            and now - p.returned_direct_at < self.config.flap_window_s
        ):
            p.flaps += 1
        p.returned_direct_at = None
        p.relay = relay
        p.relay_endpoint = relay_endpoint
        p.relay_requested = False
        p.probing_back = False
        p.silent_since = None
        p.probe_back_interval_s = min(
            self.config.probe_back_s * (2**p.flaps), self.config.probe_back_max_s
        )
        # the first try soon (relayed first, direct may well work); later
        # ones after the backoff
        first = p.upgrades == 0 and not p.flaps
        wait = self.config.first_upgrade_s if first else p.probe_back_interval_s
        p.next_probe_back = now + wait + self._probe_offset(p)
        # what the last relay told is not this one's: its session ports
        # latch anew (and tell both sides), and asks start over
        p.mappings_due = now + MAPPINGS_WAIT_S if port_mode else 0.0
        p.mapping_mine = p.mapping_peer = None
        p.nat_mine = p.nat_peer = MappingKind.UNKNOWN
        p.unanswered_asks = 0
        p.hopeless_until = 0.0
        if relay_endpoint is not None:
            self.cache.record_relay_success(peer, relay, relay_endpoint, wall)
        how = "accepted a session from the peer" if incoming else "session open"
        damp = f"; flapped {p.flaps}x" if p.flaps else ""
        self._set(
            p,
            PathKind.RELAYED,
            now,
            f"via relay {relay.short()} ({how}); direct tried in {wait:.0f} s{damp}",
        )
        actions.append(UseProxy(peer))
        return actions

    def on_relay_lost(
        self, peer: PublicKey, reason: str, now: float, wall: float = 0.0
    ) -> list[Action]:
        p = self.peers.get(peer)
        if p is None or p.kind != PathKind.RELAYED:
            return []
        lost = p.relay.short() if p.relay else "?"
        if (
            p.relay is not None
            and p.relay_endpoint is not None
            and reason not in ("normal", "idle")
        ):
            self.cache.record_relay_failure(peer, p.relay, p.relay_endpoint, wall)
        actions: list[Action] = []
        trying = self.nat.current(peer) if p.probing_back else None
        if p.probing_back:
            self.nat.mark_connected(peer)
            p.probing_back = False
            actions.append(HoldProxy(peer, False))
        if reason == "normal" and trying is not None and p.punch_nonce:
            # the peer ends the session during our coordinated try: it got
            # our packets on this very path (its proof), and its answer may
            # be the keepalive we already counted. WireGuard stays where it
            # points; a path that does not answer is found silent as any
            p.last_upgrade = f"{p.last_upgrade or '?'}: direct (the peer's proof)"
            p.punch_nonce = 0
            self.cache.record_success(peer, trying, wall)
            actions += self._to_direct(p, trying, now, f"peer went direct on our try "
                                       f"towards {endpoint_str(trying)}")  # fmt: skip
            if self.config.keepalive_s:
                actions.append(Kick(peer, self.config.keepalive_s))
            return actions
        if reason == "normal":
            # the peer closed the session on purpose: it found a direct path
            # (usually WireGuard already followed it here); check before relaying
            actions.append(LeaveRelay(peer))
            p.relay = None
            p.returned_direct_at = now
            # the next look starts the direct tries, from where WireGuard
            # points then: it has most likely followed the peer's packets
            # to its address already, which the last look may not show (a
            # try moved now could point it back at a stale candidate)
            p.next_probe_back = now
            p.roamed_first = True
            self._set(p, PathKind.PROBING, now, f"peer left relay {lost}; checking direct")
            return actions
        # at once, whichever key is smaller: the side that noticed is usually
        # the one sending (the other only receives and may not notice for
        # seconds), and if both ask, the relay where the peer waits joins the
        # two requests into one session
        return actions + self._want_relay(
            p, now, f"relay {lost} path ended ({reason}); finding another", at_once=True
        )

    def on_relay_failed(self, peer: PublicKey, error: str, now: float) -> list[Action]:
        p = self.peers.get(peer)
        if p is None or p.kind != PathKind.RELAY_PENDING:
            return []
        p.relay_requested = False
        p.relay_retry_at = now + p.relay_backoff_s
        self._set(p, PathKind.RELAY_PENDING, now, f"{error}; retry in {p.relay_backoff_s:.0f} s")
        p.relay_backoff_s = min(p.relay_backoff_s * 2, self.config.relay_retry_max_s)
        return []

    def set_relay_enabled(self, enabled: bool, now: float, wall: float) -> list[Action]:
        """configure-relay changed: a disabled interface gives up every relay path."""
        if enabled == self.relay_enabled:
            return []
        self.relay_enabled = enabled
        log.info("relay fallback %s", "enabled" if enabled else "disabled")
        actions: list[Action] = []
        for p in self.peers.values():
            if enabled:
                if p.kind == PathKind.PROBING and self.nat.current(p.key) is None:
                    actions += self._want_relay(p, now, "relay fallback enabled")
                continue
            if p.kind in (PathKind.RELAYED, PathKind.RELAY_PENDING):
                actions += [HoldProxy(p.key, False), CloseRelay(p.key)]
                if p.direct_endpoint is not None:
                    actions.append(UseDirect(p.key, p.direct_endpoint, None))
                p.relay = None
                p.probing_back = False
                self.nat.mark_connected(p.key)
                actions += self._start_probing(p, now, wall, "relay fallback disabled")
        return actions

    def tick(self, now: float) -> list[Action]:
        """Timers that do not need a fresh snapshot (relay retries)."""
        actions: list[Action] = []
        for p in self.peers.values():
            actions += self._maybe_start_relay(p, now)
        return actions

    def restore_actions(self) -> list[Action]:
        """What puts every peer back as we found it (on shutdown)."""
        out: list[Action] = []
        for p in self.peers.values():
            endpoint = p.direct_endpoint or p.original_endpoint
            out.append(UseDirect(p.key, endpoint, p.original_keepalive or 0))
        return out

    def observations(self) -> Mapping[PublicKey, PeerPath]:
        return self.peers
