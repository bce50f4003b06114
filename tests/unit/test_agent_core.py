"""AgentCore's per-peer rules under a fake clock (no WireGuard, no sockets)."""

from __future__ import annotations

from dataclasses import replace

from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.agent import (
    AgentConfig,
    AgentCore,
    CloseRelay,
    Kick,
    PathKind,
    StartRelay,
    UseDirect,
    UseProxy,
)
from wgrelay.mesh.backend.base import InterfaceInfo, PeerInfo

WALL0 = 1_700_000_000.0
RELAY = PrivateKey.generate().public_key()


def keys_ordered() -> tuple[PublicKey, PublicKey]:
    """(smaller, larger) public keys: the smaller one initiates relay sessions."""
    k1, k2 = PrivateKey.generate().public_key(), PrivateKey.generate().public_key()
    return (k1, k2) if k1.raw < k2.raw else (k2, k1)


def iface(*peers: PeerInfo) -> InterfaceInfo:
    return InterfaceInfo("wg0", None, None, 51820, None, peers)


def peer(key: PublicKey, **kw: object) -> PeerInfo:
    base = PeerInfo(
        public_key=key,
        endpoint=("198.51.100.9", 51820),
        allowed_ips=("10.0.0.2/32",),
        latest_handshake=None,
        rx_bytes=0,
        tx_bytes=0,
        persistent_keepalive=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_fresh_handshake_means_direct_and_nothing_to_do() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    acts = core.observe(iface(peer(other, latest_handshake=WALL0 - 30)), now=0.0, wall=WALL0)
    assert acts == []
    assert core.peers[other].kind == PathKind.DIRECT


def test_no_handshake_probes_then_relays_after_the_probe_time() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig(direct_probe_s=3.0))
    p = peer(other)
    assert core.observe(iface(p), now=0.0, wall=WALL0) == [Kick(other, 25)]
    assert core.peers[other].kind == PathKind.PROBING
    assert core.observe(iface(p), now=2.9, wall=WALL0 + 2.9) == []
    assert core.observe(iface(p), now=3.0, wall=WALL0 + 3.0) == [StartRelay(other)]
    assert core.peers[other].kind == PathKind.RELAY_PENDING
    # asked once, not on every observation
    assert core.observe(iface(p), now=4.0, wall=WALL0 + 4.0) == []


def test_larger_key_waits_for_the_other_side_before_asking() -> None:
    small, large = keys_ordered()
    core = AgentCore(large, AgentConfig(direct_probe_s=3.0, initiate_delay_s=2.0))
    p = peer(small)
    core.observe(iface(p), now=0.0, wall=WALL0)
    assert core.observe(iface(p), now=3.0, wall=WALL0 + 3) == []
    assert core.tick(4.9) == []
    assert core.tick(5.0) == [StartRelay(small)]


def test_incoming_session_while_waiting_wins() -> None:
    small, large = keys_ordered()
    core = AgentCore(large, AgentConfig(direct_probe_s=3.0, initiate_delay_s=2.0))
    core.observe(iface(peer(small)), now=0.0, wall=WALL0)
    core.observe(iface(peer(small)), now=3.0, wall=WALL0 + 3)
    assert core.on_relayed(small, RELAY, incoming=True, now=3.5) == [UseProxy(small)]
    assert core.tick(10.0) == []
    assert core.peers[small].kind == PathKind.RELAYED


def test_handshake_during_probe_means_direct() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    core.observe(iface(peer(other)), now=0.0, wall=WALL0)
    acts = core.observe(iface(peer(other, latest_handshake=WALL0 + 1)), now=1.0, wall=WALL0 + 1)
    assert acts == []
    assert core.peers[other].kind == PathKind.DIRECT


def test_peer_without_endpoint_is_relayed_at_once() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    acts = core.observe(iface(peer(other, endpoint=None)), now=0.0, wall=WALL0)
    assert acts == [StartRelay(other)]


def test_relay_disabled_never_relays() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig(relay_enabled=False))
    p = peer(other)
    for t in range(0, 120, 1):
        acts = core.observe(iface(p), now=float(t), wall=WALL0 + t)
        assert not any(isinstance(a, StartRelay) for a in acts)
    assert core.peers[other].kind == PathKind.PROBING


def test_lost_relay_path_asks_again_and_failures_back_off() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig(relay_retry_initial_s=5.0, relay_retry_max_s=20.0))
    core.observe(iface(peer(other, endpoint=None)), now=0.0, wall=WALL0)
    core.on_relayed(other, RELAY, incoming=False, now=0.5)
    assert core.on_relay_lost(other, "idle", now=10.0) == [StartRelay(other)]
    assert core.on_relay_failed(other, "no relay", now=11.0) == []
    assert core.tick(15.9) == []
    assert core.tick(16.0) == [StartRelay(other)]
    core.on_relay_failed(other, "no relay", now=16.5)
    assert core.tick(26.4) == []
    assert core.tick(26.5) == [StartRelay(other)]  # 10 s: doubled


def test_direct_path_gone_silent_is_probed_again() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig(broken_after_s=15.0))
    hs = WALL0 - 170  # handshake about to age out
    core.observe(iface(peer(other, latest_handshake=hs, tx_bytes=100)), now=0.0, wall=WALL0)
    assert core.peers[other].kind == PathKind.DIRECT
    acts = []
    for t in range(1, 20):
        # WireGuard keeps sending (tx grows) but nothing comes back
        acts = core.observe(
            iface(peer(other, latest_handshake=hs, tx_bytes=100 + t * 148)),
            now=float(t),
            wall=WALL0 + t,
        )
        if acts:
            break
    assert acts == [Kick(other, 25)]
    assert core.peers[other].kind == PathKind.PROBING


def test_restore_puts_back_the_direct_endpoint_and_keepalive() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    core.observe(iface(peer(other, persistent_keepalive=None)), now=0.0, wall=WALL0)
    core.observe(iface(peer(other)), now=3.0, wall=WALL0 + 3)
    core.on_relayed(other, RELAY, incoming=False, now=3.1)
    core.proxy_endpoints = {("127.0.0.1", 40000)}
    # WireGuard now shows the proxy: it must not be taken for a direct endpoint
    core.observe(iface(peer(other, endpoint=("127.0.0.1", 40000))), now=4.0, wall=WALL0 + 4)
    assert core.restore_actions() == [UseDirect(other, ("198.51.100.9", 51820), 0)]


def test_peer_leaving_the_interface_closes_its_relay() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    core.observe(iface(peer(other, endpoint=None)), now=0.0, wall=WALL0)
    core.on_relayed(other, RELAY, incoming=False, now=0.5)
    assert core.observe(iface(), now=1.0, wall=WALL0 + 1) == [CloseRelay(other)]
    assert other not in core.peers


def test_session_for_an_unknown_peer_is_closed() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    assert core.on_relayed(other, RELAY, incoming=True, now=0.0) == [CloseRelay(other)]
