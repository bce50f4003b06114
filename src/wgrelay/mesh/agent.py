"""The agent's decisions per peer: direct, or relayed (sans-I/O).

Theory of operation
-------------------
``AgentCore`` holds one ``PeerPath`` per peer of the WireGuard interface. The
daemon calls ``observe(info, now, wall)`` with a fresh snapshot of the interface
about once a second, and reports relay outcomes (``on_relayed``,
``on_relay_lost``, ``on_relay_failed``). Each call returns ``Action`` values the
daemon carries out (kick a handshake, move the endpoint to the local proxy or
back, ask the relay manager for a path). The core never touches WireGuard, a
socket or a clock, so its rules run under a fake clock in unit tests.

Per-peer states::

    PROBING --handshake newer than the probe--> DIRECT
    PROBING --no handshake for direct_probe_s--> RELAY_PENDING (StartRelay)
    RELAY_PENDING --on_relayed--> RELAYED (UseProxy)
    RELAY_PENDING --on_relay_failed--> RELAY_PENDING (retry with backoff)
    RELAYED --on_relay_lost--> RELAY_PENDING (StartRelay: next relay)
    DIRECT --WireGuard sending but hearing nothing, no handshake--> PROBING
    any --incoming relay session accepted--> RELAYED

Direct attempts: WireGuard only starts a handshake when it has something to
send, so a probe *kicks* one (persistent keepalive switched on; see
``WireGuardBackend.set_keepalive``). ``direct_probe_s`` is shorter than
WireGuard's 5 s handshake retry on purpose: when the direct attempt fails, the
endpoint is on the proxy before WireGuard's next retry, so the relayed
handshake completes about 5 s after the agent started.

Who asks for the session: both ends usually notice at about the same time.
The peer with the smaller public key asks at once; the other waits
``initiate_delay_s`` for the incoming session before asking itself (the relay
also joins two requests for the same pair into one session).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from wgrelay.keys import PublicKey
from wgrelay.mesh.backend.base import InterfaceInfo, PeerInfo
from wgrelay.proto.buffer import Endpoint, endpoint_str

log = logging.getLogger(__name__)


class PathKind(StrEnum):
    PROBING = "probing"
    DIRECT = "direct"
    RELAY_PENDING = "relay-pending"
    RELAYED = "relayed"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    relay_enabled: bool = True
    direct_probe_s: float = 3.0
    """How long a kicked direct handshake may take before we relay."""
    initiate_delay_s: float = 2.0
    handshake_fresh_s: float = 180.0
    """A handshake younger than this (WireGuard's REJECT_AFTER_TIME) proves a path."""
    broken_after_s: float = 15.0
    """Sending without any answer for this long on a direct path: it broke."""
    keepalive_s: int = 25
    """Persistent keepalive the agent sets on peers it manages (0: leave alone)."""
    relay_retry_initial_s: float = 5.0
    relay_retry_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Kick:
    peer: PublicKey
    keepalive_s: int


@dataclass(frozen=True, slots=True)
class UseProxy:
    peer: PublicKey


@dataclass(frozen=True, slots=True)
class UseDirect:
    peer: PublicKey
    endpoint: Endpoint | None
    keepalive_s: int | None


@dataclass(frozen=True, slots=True)
class StartRelay:
    peer: PublicKey


@dataclass(frozen=True, slots=True)
class CloseRelay:
    peer: PublicKey


Action = Kick | UseProxy | UseDirect | StartRelay | CloseRelay


@dataclass(slots=True)
class PeerPath:
    key: PublicKey
    kind: PathKind
    since: float
    reason: str
    original_endpoint: Endpoint | None
    original_keepalive: int | None
    direct_endpoint: Endpoint | None
    """The best known direct candidate: where the peer goes back to."""
    relay: PublicKey | None = None
    probe_started_wall: float = 0.0
    probe_deadline: float = 0.0
    relay_requested: bool = False
    relay_retry_at: float = 0.0
    relay_backoff_s: float = 0.0
    latest_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    silent_since: float | None = None
    """When tx last grew while rx did not (a direct path that may be dead)."""
    history: list[str] = field(default_factory=list)


class AgentCore:
    def __init__(self, own_key: PublicKey, config: AgentConfig) -> None:
        self.own_key = own_key
        self.config = config
        self.peers: dict[PublicKey, PeerPath] = {}
        self.proxy_endpoints: set[Endpoint] = set()
        """Endpoints that are our proxies (never a direct candidate)."""

    # ------------------------------------------------------------ helpers

    def _set(self, p: PeerPath, kind: PathKind, now: float, reason: str) -> None:
        if p.kind != kind or p.reason != reason:
            log.info("peer %s: %s (%s)", p.key.short(), kind.value, reason)
            p.history.append(f"{kind.value}: {reason}")
            del p.history[:-10]
        p.kind = kind
        p.since = now
        p.reason = reason

    def _fresh(self, hs: float | None, wall: float) -> bool:
        return hs is not None and wall - hs < self.config.handshake_fresh_s

    def _probe(self, p: PeerPath, now: float, wall: float, reason: str) -> list[Action]:
        self._set(p, PathKind.PROBING, now, reason)
        p.probe_started_wall = wall
        p.probe_deadline = now + self.config.direct_probe_s
        if self.config.keepalive_s:
            return [Kick(p.key, self.config.keepalive_s)]
        return []

    def _want_relay(self, p: PeerPath, now: float, reason: str) -> list[Action]:
        self._set(p, PathKind.RELAY_PENDING, now, reason)
        p.relay_requested = False
        p.relay_backoff_s = self.config.relay_retry_initial_s
        # the smaller key asks first; the other gives it a moment (see module doc)
        delay = 0.0 if self.own_key.raw < p.key.raw else self.config.initiate_delay_s
        p.relay_retry_at = now + delay
        return self._maybe_start_relay(p, now)

    def _maybe_start_relay(self, p: PeerPath, now: float) -> list[Action]:
        if p.kind != PathKind.RELAY_PENDING or p.relay_requested or now < p.relay_retry_at:
            return []
        if not self.config.relay_enabled:
            return []
        p.relay_requested = True
        return [StartRelay(p.key)]

    # ------------------------------------------------------------ inputs

    def observe(self, info: InterfaceInfo, now: float, wall: float) -> list[Action]:
        actions: list[Action] = []
        seen = set()
        for peer in info.peers:
            seen.add(peer.public_key)
            p = self.peers.get(peer.public_key)
            if p is None:
                actions += self._new_peer(peer, now, wall)
            else:
                actions += self._update(p, peer, now, wall)
        for key in [k for k in self.peers if k not in seen]:
            log.info("peer %s left the interface", key.short())
            p = self.peers.pop(key)
            if p.kind == PathKind.RELAYED or p.relay_requested:
                actions.append(CloseRelay(key))
        return actions

    def _new_peer(self, peer: PeerInfo, now: float, wall: float) -> list[Action]:
        ep = peer.endpoint
        ours = ep in self.proxy_endpoints or (ep is not None and ep[0] == "127.0.0.1")
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
        )
        self.peers[peer.public_key] = p
        if not ours and self._fresh(peer.latest_handshake, wall):
            self._set(p, PathKind.DIRECT, now, f"recent handshake via {_ep(ep)}")
            return []
        if p.direct_endpoint is None:
            if not self.config.relay_enabled:
                self._set(p, PathKind.PROBING, now, "no direct endpoint; relay disabled")
                return []
            return self._want_relay(p, now, "no direct endpoint to try")
        return self._probe(p, now, wall, f"trying direct {_ep(p.direct_endpoint)}")

    def _update(self, p: PeerPath, peer: PeerInfo, now: float, wall: float) -> list[Action]:
        hs = peer.latest_handshake
        new_handshake = hs is not None and (p.latest_handshake is None or hs > p.latest_handshake)
        tx_grew = peer.tx_bytes > p.tx_bytes
        rx_grew = peer.rx_bytes > p.rx_bytes
        p.latest_handshake, p.rx_bytes, p.tx_bytes = hs, peer.rx_bytes, peer.tx_bytes
        ep = peer.endpoint
        if ep is not None and ep not in self.proxy_endpoints and ep[0] != "127.0.0.1":
            p.direct_endpoint = ep  # WireGuard roamed, or the operator set it
        actions: list[Action] = []
        if p.kind == PathKind.PROBING:
            if hs is not None and hs >= p.probe_started_wall and _on_direct(peer, self):
                self._set(p, PathKind.DIRECT, now, f"handshake via {_ep(peer.endpoint)}")
            elif now >= p.probe_deadline:
                if self.config.relay_enabled:
                    actions += self._want_relay(
                        p,
                        now,
                        f"no handshake within {self.config.direct_probe_s:.0f} s "
                        f"of trying {_ep(p.direct_endpoint)}",
                    )
                else:
                    actions += self._probe(p, now, wall, "direct failed; relay disabled, retrying")
                    p.probe_deadline = now + max(self.config.keepalive_s, 5)
        elif p.kind == PathKind.DIRECT:
            if rx_grew or new_handshake:
                p.silent_since = None
            elif tx_grew and p.silent_since is None:
                p.silent_since = now
            # WireGuard itself re-handshakes after 15 s of sending unanswered;
            # silence for that long, with no new handshake, means the path broke
            if p.silent_since is not None and now - p.silent_since >= self.config.broken_after_s:
                p.silent_since = None
                actions += self._probe(p, now, wall, "direct path went silent")
        elif p.kind == PathKind.RELAY_PENDING:
            actions += self._maybe_start_relay(p, now)
        return actions

    def on_relayed(
        self, peer: PublicKey, relay: PublicKey, incoming: bool, now: float
    ) -> list[Action]:
        p = self.peers.get(peer)
        if p is None:
            return [CloseRelay(peer)]  # not (or no longer) ours
        p.relay = relay
        p.relay_requested = False
        how = "accepted a session from the peer" if incoming else "session open"
        self._set(p, PathKind.RELAYED, now, f"via relay {relay.short()} ({how})")
        return [UseProxy(peer)]

    def on_relay_lost(self, peer: PublicKey, reason: str, now: float) -> list[Action]:
        p = self.peers.get(peer)
        if p is None or p.kind != PathKind.RELAYED:
            return []
        lost = p.relay.short() if p.relay else "?"
        return self._want_relay(p, now, f"relay {lost} path ended ({reason}); finding another")

    def on_relay_failed(self, peer: PublicKey, error: str, now: float) -> list[Action]:
        p = self.peers.get(peer)
        if p is None or p.kind != PathKind.RELAY_PENDING:
            return []
        p.relay_requested = False
        p.relay_retry_at = now + p.relay_backoff_s
        self._set(p, PathKind.RELAY_PENDING, now, f"{error}; retry in {p.relay_backoff_s:.0f} s")
        p.relay_backoff_s = min(p.relay_backoff_s * 2, self.config.relay_retry_max_s)
        return []

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


def _on_direct(peer: PeerInfo, core: AgentCore) -> bool:
    return peer.endpoint is not None and peer.endpoint not in core.proxy_endpoints


def _ep(ep: Endpoint | None) -> str:
    return "no endpoint" if ep is None else endpoint_str(ep)
