"""What the agent writes to its status file (``wgrelay status`` reads it):
one document per interface, per peer its path, why, RTT, relay and mode."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.keys import PublicKey
from wgrelay.mesh.backend.base import InterfaceInfo
from wgrelay.mesh.peer_path import PathKind

if TYPE_CHECKING:
    from wgrelay.mesh.daemon import Agent


def status_steady(agent: Agent, info: InterfaceInfo) -> object:
    """What a reader cares about, cheap to compare: the document is rewritten
    at once when it changes (byte counters and handshake times move all the
    time and are refreshed only now and then)."""
    by_key = {p.public_key: p for p in info.peers}
    return (
        tuple(
            (
                key.raw,
                p.kind,
                p.reason,
                p.since,
                len(p.history),
                p.direct_endpoint,
                p.relay,
                p.relay_endpoint,
                agent.manager.planner.exit_relay(key),
                wg.endpoint if (wg := by_key.get(key)) else None,
                agent.port_mode.describe(key),
                (p.nat_mine, p.nat_peer, p.mapping_mine, p.mapping_peer, p.last_upgrade),
            )
            for key, p in agent.core.peers.items()
        ),
        agent.manager.home,
        agent.manager.standby,
        agent.core.relay_enabled,
        agent.manager.fallback.udp_blocked,
    )


def status_document(
    agent: Agent, info: InterfaceInfo, now: float, wall: float
) -> dict[str, object]:
    by_key = {p.public_key: p for p in info.peers}
    peers = []
    for key, p in sorted(agent.core.peers.items(), key=lambda kv: str(kv[0])):
        wg = by_key.get(key)
        relay = agent.registry.get(p.relay) if p.relay and p.kind == PathKind.RELAYED else None
        exit_relay = agent.manager.planner.exit_relay(key)  # multi-hop: the second relay
        rtt_ms, rtt_source = _rtt(agent, key, p.kind, relay.endpoint if relay else None)
        mode, mode_reason = agent.port_mode.describe(key) if relay else (None, None)
        if relay and mode is None:
            mode, mode_reason = "framed", "framed: the relay offered no session port"
        carrier = agent.manager.carrier(relay.key) if relay else "udp"
        if carrier != "udp":
            mode = str(carrier)
            mode_reason = (
                f"{carrier}: UDP to relays gets no answer from this network; WireGuard's "
                f"packets go through the agent's proxy over {str(carrier).upper()}"
            )
        peers.append(
            {
                "public_key": str(key),
                "path": p.kind.value,
                "reason": p.reason,
                "since": round(wall - (now - p.since)),
                "rtt_ms": rtt_ms,
                "rtt_source": rtt_source,
                "history": list(p.history),
                "endpoint": endpoint_str(wg.endpoint) if wg and wg.endpoint else None,
                "direct_endpoint": endpoint_str(p.direct_endpoint) if p.direct_endpoint else None,
                "relay": str(p.relay) if relay else None,
                "relay_endpoint": endpoint_str(relay.endpoint) if relay else None,
                "exit_relay": str(exit_relay) if relay and exit_relay else None,
                "relay_mode": mode,
                "relay_mode_reason": mode_reason,
                "latest_handshake": wg.latest_handshake if wg else None,
                "rx_bytes": wg.rx_bytes if wg else None,
                "tx_bytes": wg.tx_bytes if wg else None,
                "nat": {
                    "ours": p.nat_mine.name.lower(),
                    "peer": p.nat_peer.name.lower(),
                    "ours_mapping": endpoint_str(p.mapping_mine) if p.mapping_mine else None,
                    "peer_mapping": endpoint_str(p.mapping_peer) if p.mapping_peer else None,
                },
                "candidates": [endpoint_str(c) for c in agent.core.candidates(p.key, wall)],
                "upgrade_tries": p.upgrades,
                "last_upgrade": p.last_upgrade,
                # --private: relayed only over two relays; why there is no such
                # path now (not while relayed: the peer may have opened one)
                "private": agent.manager.planner.config.private.covers(key),
                "private_blocked": None
                if relay
                else agent.manager.planner.private_blocked.get(key),
            }
        )
    home = agent.registry.get(agent.manager.home) if agent.manager.home else None
    standby = agent.manager.standby
    return {
        "interface": agent.iface,
        "backend": agent.backend.name,
        "pid": os.getpid(),
        "relay_enabled": agent.core.relay_enabled,
        "home_relay": str(home.key) if home else None,
        "home_relay_endpoint": endpoint_str(home.endpoint) if home else None,
        "standby_relay": str(standby) if standby else None,
        "home_relay_carrier": str(agent.manager.carrier(home.key)) if home else None,
        "udp_blocked": agent.manager.fallback.udp_blocked,
        "peers": peers,
        "updated": round(wall, 3),
    }


def _rtt(
    agent: Agent, key: PublicKey, kind: PathKind, relay_ep: Endpoint | None
) -> tuple[float | None, str | None]:
    """The RTT we measured for the path in use, and how (None: not measured)."""
    for e in agent.cache.entries(key):
        if e.latency_ms is None:
            continue
        if kind == PathKind.RELAYED and relay_ep is not None and e.endpoint == relay_ep:
            return round(e.latency_ms, 3), "relay echo (our leg to the relay)"
        if kind == PathKind.DIRECT and e.endpoint == agent.core.peers[key].direct_endpoint:
            return round(e.latency_ms, 3), "handshake"
    return None, None
