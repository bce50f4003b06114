"""Going back to direct while relayed: the agent's upgrade rules (sans-I/O).

A relayed peer is tried direct again in the background ("probe-back"), first
``first_upgrade_s`` after the relayed path came up, then with backoff. A try
points WireGuard at a direct candidate for ``upgrade_probe_s`` and holds the
relay's frames meanwhile (WireGuard would roam straight back to the relay), so
a failed try costs the tunnel that long and no more.

Two kinds of try:

* **Coordinated** (port mode, both session ports latched): the relay has told
  both sides each WireGuard's public mapping as its session ports see it
  (PUNCH without GO). The side whose try is due asks the relay (``AskPunch``);
  the relay tells both sides GO at the same moment, and both point WireGuard
  at the other's mapping and send every poll while the try runs
  (simultaneous open): each side's first packets open its own NAT for the
  other's, so two NATs that map WireGuard's socket the same way towards every
  destination (cone NATs, also when they change the port) end direct. The
  side whose try was not due takes part as well: a GO is for both.
* **Alone** (framed, no mappings known): the peer's known direct endpoints in
  turn, each for ``upgrade_probe_s``.

A try that fails doubles the wait before the next (up to
``probe_back_max_s``); ``last_upgrade`` says what happened, for ``status``.
"""

from __future__ import annotations

import logging
import time

from wgrelay.endpoint import Endpoint, endpoint_str, is_loopback
from wgrelay.keys import PublicKey
from wgrelay.mesh.actions import Action, AskPunch, CheckMapping, HoldProxy, Kick, UseProxy
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.nat import NatTraverse, TryDirect
from wgrelay.mesh.peer_path import AgentConfig, PathKind, PeerPath
from wgrelay.proto.constants import MappingKind

log = logging.getLogger(__name__)
path_log = logging.getLogger("wgrelay.mesh.agent")
"""Path changes are the agent's decisions, logged under its name."""

MAPPINGS_WAIT_S = 12.0
"""How long a relayed peer in port mode waits for the relay's mappings
before trying direct alone (port mode latches within LATCH_S, 11 s, or
falls back to framed)."""
HANDSHAKE_SETTLE_S = 2.0
"""A try waits until WireGuard's latest handshake is this old (``_session_settled``)."""
MAX_UNANSWERED_ASKS = 2
"""Asks for a coordinated try without a GO before trying alone (framed, or
the relay's session ports never both latched)."""
MAPPINGS_SETTLE_S = 0.5
"""The first coordinated try, this long after the mappings came."""


def _hopeless(p: PeerPath) -> bool:
    """Whether no direct try can work: both sides' NATs map per destination."""
    return p.nat_mine is MappingKind.DEPENDENT and p.nat_peer is MappingKind.DEPENDENT


def _session_settled(p: PeerPath, wall: float, age_s: float) -> bool:
    """Whether WireGuard's relayed session is at least ``age_s`` old (or
    there is none, so nothing to spoil): its
    initiator confirms new keys with the packet right after the handshake,
    which a try moving WireGuard elsewhere would send astray (leaving the
    responder unable to send until the next data, up to a keepalive later)."""
    hs = p.latest_handshake
    return hs is None or wall - hs >= age_s


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(wall)) if wall else "-"


class UpgradeRules:
    """State and helpers shared by ``AgentCore``'s rules, and the upgrade rules."""

    own_key: PublicKey
    config: AgentConfig
    cache: ConnectionCache
    nat: NatTraverse
    peers: dict[PublicKey, PeerPath]
    proxy_endpoints: set[Endpoint]
    retired_endpoints: set[Endpoint]
    relay_enabled: bool
    udp_blocked: bool
    _nonce: int

    # ------------------------------------------------------------ helpers

    def _set(self, p: PeerPath, kind: PathKind, now: float, reason: str) -> None:
        if p.kind != kind or p.reason != reason:
            path_log.info("peer %s: %s (%s)", p.key.short(), kind.value, reason)
            p.history.append(f"{kind.value}: {reason}")
            del p.history[:-10]
        if kind == PathKind.DIRECT and p.kind != PathKind.DIRECT:
            p.direct_since = now
        p.kind = kind
        p.since = now
        p.reason = reason

    def _candidates(self, p: PeerPath, wall: float) -> list[Endpoint]:
        # where WireGuard points now comes first: it may have followed the peer
        # to a direct address (roaming) just before we looked
        # (right after the peer left the relay for a direct path, it stays
        # first whatever the cache says: WireGuard followed the peer). The peer's
        # mapping towards the relay is one only if its NAT keeps it for
        # every destination
        mapped = p.mapping_peer if p.nat_peer is not MappingKind.DEPENDENT else None
        known = [
            e
            for e in (p.wg_endpoint, p.direct_endpoint, p.original_endpoint, mapped)
            if e and not is_loopback(e) and not self.relay_path(e)
        ]
        cands = self.cache.ordered_candidates(p.key, known, wall)
        if p.roamed_first and known and known[0] == p.wg_endpoint:
            cands = [known[0], *(c for c in cands if c != known[0])]
        return [e for e in cands if not is_loopback(e) and not self.relay_path(e)]

    def relay_path(self, ep: Endpoint | None) -> bool:
        """Whether WireGuard pointing at ``ep`` is a relay path (our proxy, a
        session port, or one we left lately): never a direct one."""
        return ep in self.proxy_endpoints or ep in self.retired_endpoints

    def candidates(self, peer: PublicKey, wall: float) -> list[Endpoint]:
        """The peer's direct candidates, best first (for ``status``)."""
        p = self.peers.get(peer)
        return self._candidates(p, wall) if p is not None else []

    def _try(self, tries: list[TryDirect], wall: float) -> list[Action]:
        out: list[Action] = []
        for t in tries:
            self.cache.record_attempt(t.peer, t.endpoint, wall)
            out.append(t)
            if self.config.keepalive_s:
                out.append(Kick(t.peer, self.config.keepalive_s))
        return out

    # ------------------------------------------------------------ timers

    def probing(self) -> bool:
        """Whether a direct attempt is running (the daemon then polls faster)."""
        return not self.nat.is_finished()

    def next_timer(self) -> float:
        """The earliest moment a rule may act (the daemon observes then).

        Every rule acts on a fresh observation of the interface, so this is
        when to look again at the latest: a direct candidate's time is up, a
        relay retry or a probe-back is due. (Silence is not a timer: it needs
        new counters to count, and the daemon's regular reads bring them.)
        Only deadlines a rule will act on when they pass are named, so a
        passed deadline never asks for a look again and again.
        """
        t = self.nat.next_timer()
        for p in self.peers.values():
            if p.kind == PathKind.RELAY_PENDING:
                due = not p.relay_requested and self.relay_enabled
                t = min(t, p.relay_retry_at) if due else t
            elif p.kind == PathKind.RELAYED:
                due = not p.probing_back and self.relay_enabled
                t = min(t, p.next_probe_back) if due else t
            elif p.kind == PathKind.PROBING and p.key not in self.nat.remaining:
                t = min(t, p.next_probe_back)
        return t

    # ------------------------------------------------------------ upgrade rules

    def _probe_offset(self, p: PeerPath) -> float:
        """Both ends would try alone at the same moment and spoil each other's
        try (each holds its relay frames, each points elsewhere): the one with
        the larger key waits until the other's try is over. (A coordinated
        try is one for both: the other's GO reschedules this side too.)"""
        return 0.0 if self.own_key.raw < p.key.raw else self.config.direct_probe_s + 2.0

    def _probe_back(self, p: PeerPath, now: float, wall: float) -> list[Action]:
        if self.udp_blocked:
            # our network drops UDP (relays over TCP/TLS): a try only costs an
            # outage; looked at again with backoff, when UDP may be back
            p.probe_back_interval_s = min(p.probe_back_interval_s * 2, self.config.probe_back_max_s)
            p.next_probe_back = now + p.probe_back_interval_s
            p.last_upgrade = f"{_clock(wall)}: skipped (UDP is blocked here; relayed over a stream)"
            return []
        if p.mapping_peer is None and now < p.mappings_due:
            p.next_probe_back = p.mappings_due  # (or soon after they come)
            return []
        if not _session_settled(p, wall, HANDSHAKE_SETTLE_S):
            p.next_probe_back = now + 1.0  # the relayed session first
            return []
        if p.mappings_due and p.unanswered_asks < MAX_UNANSWERED_ASKS:
            # port mode: ask the relay to start a try on both sides at once;
            # its GO (which carries the mappings too) starts ours, on_punch
            if _hopeless(p) and now < p.hopeless_until:
                # both NATs map per destination: a try towards the mappings
                # cannot work. Only our NAT's behaviour is looked at again
                # (the relay tells both sides when a kind changes); the
                # configured endpoints get a try now and then (hopeless_until)
                p.probe_back_interval_s = min(
                    p.probe_back_interval_s * 2, self.config.probe_back_max_s
                )
                p.next_probe_back = now + p.probe_back_interval_s
                p.last_upgrade = (
                    f"{_clock(wall)}: skipped (both NATs map per destination); "
                    f"next check in {p.probe_back_interval_s:.0f} s"
                )
                return [CheckMapping(p.key)]
            if _hopeless(p):
                p.hopeless_until = now + self.config.probe_back_max_s
            self._nonce = self._nonce % 0xFFFFFFFF + 1
            p.unanswered_asks += 1  # (a GO answers; two lost asks: alone)
            p.next_probe_back = now + p.probe_back_interval_s
            return [AskPunch(p.key, self._nonce)]
        # alone (framed, or the relay did not answer): the peer's known
        # direct endpoints
        cands = self._candidates(p, wall)
        if not cands:
            p.next_probe_back = now + p.probe_back_interval_s
            return []
        p.probing_back = True
        p.punch_nonce = 0
        p.upgrades += 1
        shown = ", ".join(endpoint_str(c) for c in cands[:3])
        p.last_upgrade = f"{_clock(wall)}: trying {shown} alone (no mappings from the relay)"
        log.info("peer %s: trying direct again (%s) while relayed", p.key.short(), shown)
        tries = self.nat.add(p.key, cands, now, wall, p.rx_bytes, self.config.upgrade_probe_s)
        return [HoldProxy(p.key, True), *self._try(tries, wall)]

    def on_punch(
        self,
        peer: PublicKey,
        nonce: int,
        go: bool,
        mine: Endpoint,
        theirs: Endpoint,
        now: float,
        wall: float,
        kinds: tuple[MappingKind, MappingKind] = (MappingKind.UNKNOWN, MappingKind.UNKNOWN),
    ) -> list[Action]:
        """The relay's PUNCH: both WireGuard mappings and how both NATs map
        (``kinds``: ours, the peer's); with ``go``, try now."""
        p = self.peers.get(peer)
        if p is None:
            return []
        mine_kind, peer_kind = kinds
        if (mine, theirs) == (p.mapping_mine, p.mapping_peer):
            # the same mappings: an UNKNOWN is an older PUNCH that arrived
            # late and does not undo what we know (a relay forgets a kind
            # only with the mapping it was learned on)
            mine_kind = mine_kind if mine_kind is not MappingKind.UNKNOWN else p.nat_mine
            peer_kind = peer_kind if peer_kind is not MappingKind.UNKNOWN else p.nat_peer
        if (mine_kind, peer_kind) != (p.nat_mine, p.nat_peer):
            was_hopeless = _hopeless(p)
            was_open = MappingKind.INDEPENDENT in (p.nat_mine, p.nat_peer)
            p.nat_mine, p.nat_peer = mine_kind, peer_kind
            log.info(
                "peer %s: NAT mapping: ours %s, the peer's %s",
                peer.short(),
                mine_kind.name.lower(),
                peer_kind.name.lower(),
            )
            opened = MappingKind.INDEPENDENT in (mine_kind, peer_kind) and not was_open
            if opened and p.kind == PathKind.RELAYED:
                # a NAT changed its ways: try soon, not after the backoff
                p.next_probe_back = min(p.next_probe_back, now + self.config.first_upgrade_s)
            if _hopeless(p) and not was_hopeless:
                # the configured endpoints only, and not before long
                p.hopeless_until = now + self.config.probe_back_max_s
        if (p.mapping_mine, p.mapping_peer) != (mine, theirs):
            log.info(
                "peer %s: WireGuard mappings seen by the relay: ours %s, the peer's %s",
                peer.short(),
                endpoint_str(mine),
                endpoint_str(theirs),
            )
        first_mappings = p.mapping_peer is None
        p.mapping_mine, p.mapping_peer = mine, theirs
        if first_mappings and p.kind == PathKind.RELAYED and not p.upgrades:
            # the first try, now that it can be a coordinated one
            soon = now + MAPPINGS_SETTLE_S + self._probe_offset(p)
            p.next_probe_back = min(p.next_probe_back, soon)
        if not go:
            return []
        p.unanswered_asks = 0
        if p.kind != PathKind.RELAYED or p.probing_back or not self.relay_enabled:
            return []
        if not _session_settled(p, wall, HANDSHAKE_SETTLE_S / 2):
            return []  # our relayed session first (the peer's try is then alone)
        if _hopeless(p):
            # both NATs map per destination: the peer's mapping towards the
            # relay is no way in, but an endpoint the operator configured
            # may be (a port forward, a public address)
            cands = self._candidates(p, wall)
            how = "both NATs map per destination: its known endpoints"
        else:
            cands, how = [theirs], "its mapping"
        if not cands:
            # nothing can work: no try, and the next ask waits longer
            p.probe_back_interval_s = min(p.probe_back_interval_s * 2, self.config.probe_back_max_s)
            p.next_probe_back = now + p.probe_back_interval_s + self._probe_offset(p)
            p.last_upgrade = (
                f"{_clock(wall)}: skipped (both NATs map per destination, no other "
                f"candidate); next in {p.probe_back_interval_s:.0f} s"
            )
            return []
        p.probing_back = True
        p.punch_nonce = nonce
        p.upgrades += 1
        shown = ", ".join(endpoint_str(c) for c in cands[:3])
        p.last_upgrade = f"{_clock(wall)}: coordinated try to {shown} ({how})"
        log.info("peer %s: coordinated direct try to %s (%s)", peer.short(), shown, how)
        # (the receive counter's baseline is taken at the next look, not the
        # last: relayed packets already on their way when the hold began
        # must not count as the direct path's)
        tries = self.nat.add(peer, cands, now, wall, None, self.config.upgrade_probe_s)
        return [HoldProxy(peer, True), *self._try(tries, wall)]

    def _punch_kicks(self, skip: set[PublicKey]) -> list[Action]:
        """During a coordinated try both sides send at every look: the first
        packets of one side are dropped by the other's NAT until that side
        has sent too, and WireGuard sends nothing more by itself."""
        if not self.config.keepalive_s:
            return []
        return [
            Kick(key, self.config.keepalive_s)
            for key in self.nat.remaining
            if key not in skip
            and (p := self.peers.get(key)) is not None
            and p.probing_back
            and p.punch_nonce
            and self.nat.current(key) is not None
        ]

    def _upgrade_failed(self, p: PeerPath, now: float, wall: float) -> list[Action]:
        """A try while relayed found nothing: back onto the relay, wait longer."""
        self.nat.mark_connected(p.key)
        p.probing_back = False
        p.punch_nonce = 0
        # what the try sent went to the candidate: the relay owes no answer
        p.silent_since = p.owed_since = None
        p.probe_back_interval_s = min(p.probe_back_interval_s * 2, self.config.probe_back_max_s)
        p.next_probe_back = now + p.probe_back_interval_s + self._probe_offset(p)
        p.last_upgrade = (
            f"{p.last_upgrade or '?'}: no answer within {self.config.upgrade_probe_s:g} s; "
            f"next try in {p.probe_back_interval_s:.0f} s"
        )
        self._set(
            p,
            PathKind.RELAYED,
            now,
            f"via relay {p.relay.short() if p.relay else '?'}; direct still failing, "
            f"next try in {p.probe_back_interval_s:.0f} s",
        )
        return [UseProxy(p.key), HoldProxy(p.key, False)]
