"""The agent daemon's relay-path actions: point WireGuard at the relay
(port mode or the proxy), restart it to re-latch, let the relay see how our
NAT maps WireGuard's socket, and feed WireGuard's counters to the relay link.
A mixin of ``Agent`` (daemon.py): the same state, kept apart to stay readable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from wgrelay.client.manager import RelayManager
from wgrelay.client.proxy import ProxyTable
from wgrelay.errors import BackendError
from wgrelay.keys import PublicKey
from wgrelay.mesh.actions import Action, Kick, UseProxy
from wgrelay.mesh.agent import AgentCore, PathKind
from wgrelay.mesh.backend.base import InterfaceInfo, WireGuardBackend
from wgrelay.mesh.port_mode import PortModePaths
from wgrelay.proto.messages import mapping_probe
from wgrelay.transport.base import Runtime

log = logging.getLogger(__name__)

MAPPING_PROBE_INTERVAL_S = 5.0


class RelayPaths:
    """What ``Agent`` has that these actions use."""

    iface: str
    backend: WireGuardBackend
    core: AgentCore
    manager: RelayManager
    proxies: ProxyTable
    port_mode: PortModePaths
    runtime: Runtime
    _info: InterfaceInfo
    _clock: Callable[[], float]
    _polled_at: float
    _mapping_probed: dict[tuple[PublicKey, bytes], float]
    _mapping_probe_failed: bool

    if TYPE_CHECKING:
        # Agent's (daemon.py): carries out the core's actions in order

        def _run(self, actions: list[Action]) -> None: ...

    def _use_relay_path(self, peer: PublicKey) -> None:
        """Point the peer's WireGuard at its relay path: the session port
        (port mode) or the local proxy (framed; created here either way, it
        is the fallback)."""
        proxy = self.proxies.ensure(peer)
        port = self.port_mode.endpoint(peer)
        self.proxies.hold(peer, self.port_mode.holding(peer))
        self._sync_relay_endpoints()
        keepalive = self.core.config.keepalive_s
        info = self._info.peer(peer)
        if port is not None:
            # the latch clock starts now, whatever the backend says: a call
            # that failed ends framed after the latch time, not never
            self.port_mode.switched(peer, info, self._clock())
        if port is not None and info is not None and self.port_mode.needs_restart(peer):
            # WireGuard's session is current: it would not handshake through
            # the port for minutes; restarted, it does at once
            ka = keepalive or info.persistent_keepalive or 0
            self.backend.restart_peer(self.iface, info, port, ka)
            return
        self.backend.set_endpoint(self.iface, peer, port or proxy)
        if port is not None:
            if keepalive:  # send now: the handshake that latches the port
                self.backend.set_keepalive(self.iface, peer, keepalive, kick=True)
        elif keepalive:
            self.backend.set_keepalive(self.iface, peer, keepalive)

    def _probe_mapping(self, peer: PublicKey, relay: PublicKey, now: float) -> None:
        """Let the relay see WireGuard's socket towards its main port too: it
        compares that mapping with its session port's latch and tells both
        sides whether our NAT maps per destination (then a direct try
        between two such NATs is skipped). Two copies, at most every 5 s
        per session."""
        sid = self.port_mode.session_id(peer)
        relay_addr = self.manager.planner.relay_addr(relay)
        port = self._info.listen_port
        if not sid or relay_addr is None or not port:
            return
        if now - self._mapping_probed.get((peer, sid), float("-inf")) < MAPPING_PROBE_INTERVAL_S:
            return
        self._mapping_probed[(peer, sid)] = now
        probe = mapping_probe(sid)
        try:
            for _ in range(2):
                self.runtime.send_from_port(port, probe, relay_addr)
        except (OSError, ValueError) as e:
            if not self._mapping_probe_failed:
                self._mapping_probe_failed = True
                log.info("cannot send from WireGuard's port (NAT kind stays unknown): %s", e)

    def _relatch(self, peer: PublicKey) -> None:
        """The relay sees WireGuard reach our session port from a source the
        port is not latched to: our NAT gave WireGuard's socket a new mapping.
        Only a handshake re-latches, and WireGuard would send its next one
        only after 15 s of unanswered data: restart the peer now."""
        ep = self.port_mode.relatch(peer, self._clock())
        if ep is None:
            return
        info = self._info.peer(peer)
        p = self.core.peers.get(peer)
        if info is None or p is None or p.probing_back:
            return  # (a direct try owns the endpoint now)
        log.info("peer %s: our NAT rebound WireGuard's socket; handshaking again", peer.short())
        try:
            ka = self.core.config.keepalive_s or info.persistent_keepalive or 0
            self.backend.restart_peer(self.iface, info, ep, ka)
        except BackendError as e:
            log.warning("cannot restart %s to re-latch the relay port: %s", peer.short(), e)

    def _carrier_changed(self, relay: PublicKey, carrier: str) -> None:
        """Our link to ``relay`` moved to a stream (UDP to it is blocked): the
        peers it carries in port mode go through the proxy, framed, over that
        stream. (Back on UDP they stay framed until their next session.)"""
        addr = self.manager.planner.relay_addr(relay)
        if carrier == "udp" or addr is None:
            return
        why = f"{carrier}: UDP to the relay gets no answer; framed over the stream"
        for peer in self.port_mode.at_host(str(addr[0])):
            p = self.core.peers.get(peer)
            if self.port_mode.to_framed(peer, why) and p is not None and p.kind == PathKind.RELAYED:
                self._use_relay_path(peer)  # (else when it is relayed again)

    def _drop_relay_path(self, peer: PublicKey) -> None:
        for key in [k for k in self._mapping_probed if k[0] == peer]:
            del self._mapping_probed[key]
        self.proxies.remove(peer)
        self.port_mode.forget(peer, self._clock())
        self._sync_relay_endpoints()

    def _sync_relay_endpoints(self) -> None:
        """The endpoints that are our relay paths: never a direct candidate."""
        self.core.proxy_endpoints = self.proxies.endpoints() | self.port_mode.endpoints()
        self.core.retired_endpoints = self.port_mode.retired_endpoints(self._clock())

    def _check_port_mode(self, info: InterfaceInfo) -> None:
        """A session port that did not latch in time: back to the proxy (framed)."""
        now = self._clock()
        for peer in info.peers:
            p = self.core.peers.get(peer.public_key)
            if p is None or p.kind != PathKind.RELAYED or p.probing_back:
                continue
            if self.port_mode.observe(peer, now):
                self._run([UseProxy(peer.public_key)])
                continue
            if self.port_mode.needs_refresh(peer, now):  # before traffic() notes tx
                keepalive = self.core.config.keepalive_s or 25
                self._run([Kick(peer.public_key, keepalive)])
            # WireGuard's counters say what happened since the last look, not
            # when: what we sent is dated at the start of the interval, a
            # reply at its end (so a reply in the same interval never looks
            # owed), and a relay that stopped answering makes the link wait
            # (and probe) from the start of the first interval without replies
            sent, heard = self.port_mode.traffic(peer)
            if heard:
                self.manager.note_heard(peer.public_key, at=now)
            if sent:
                self.manager.note_sent(peer.public_key, at=min(now, self._polled_at + 1e-3))
