"""Relay first, and going back to direct while relayed (mesh/upgrade.py):
coordinated tries through the relay, NAT kinds, the fallbacks."""

from __future__ import annotations

from tests.unit.test_agent_core import (
    RELAY,
    RELAY_EP,
    WALL0,
    iface,
    keys_ordered,
    peer,
)
from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.actions import AskPunch, CheckMapping, HoldProxy, Kick, StartRelay, UseProxy
from wgrelay.mesh.agent import AgentConfig, AgentCore, PathKind
from wgrelay.mesh.nat import TryDirect
from wgrelay.proto.constants import MappingKind

PORT: Endpoint = ("203.0.113.10", 52000)
MINE: Endpoint = ("198.51.100.9", 40001)
THEIRS: Endpoint = ("203.0.113.77", 61820)
IND, DEP, UNK = MappingKind.INDEPENDENT, MappingKind.DEPENDENT, MappingKind.UNKNOWN
HS = WALL0 - 10  # a relayed session that has settled


def relayed(port_mode: bool = True) -> tuple[AgentCore, PublicKey]:
    """The smaller key's core, its peer relayed at t=1 (port mode: a session port)."""
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    core.observe(iface(peer(other, latest_handshake=None)), 0.0, WALL0)
    core.on_relayed(other, RELAY, False, 1.0, WALL0 + 1, RELAY_EP, port_mode=port_mode)
    core.proxy_endpoints = {PORT}
    core.observe(iface(peer(other, endpoint=PORT, latest_handshake=HS)), 1.1, WALL0 + 1.1)
    return core, other


def test_a_peer_without_a_handshake_is_relayed_at_once() -> None:
    me, other = keys_ordered()
    core = AgentCore(me, AgentConfig())
    assert core.observe(iface(peer(other)), 0.0, WALL0) == []  # the start grace
    assert core.peers[other].kind == PathKind.RELAY_PENDING
    assert "relaying at once" in core.peers[other].reason
    assert StartRelay(other) in core.tick(AgentConfig().start_grace_s)


def test_the_mappings_bring_the_first_coordinated_try_and_go_starts_it() -> None:
    core, other = relayed()
    assert core.on_punch(other, 0, False, MINE, THEIRS, 1.2, WALL0 + 1.2) == []
    p = core.peers[other]
    assert p.next_probe_back <= 1.2 + 0.5 + 1e-9
    acts = core.observe(iface(peer(other, endpoint=PORT, latest_handshake=HS)), 1.8, WALL0 + 1.8)
    asks = [a for a in acts if isinstance(a, AskPunch)]
    assert len(asks) == 1
    acts = core.on_punch(other, asks[0].nonce, True, MINE, THEIRS, 1.9, WALL0 + 1.9)
    assert acts[0] == HoldProxy(other, True)
    assert TryDirect(other, THEIRS) in acts
    assert any(isinstance(a, Kick) for a in acts)
    assert p.probing_back
    # nothing from the peer within the try: back to the relay, the wait doubles
    acts = core.observe(iface(peer(other, endpoint=THEIRS, latest_handshake=HS)), 2.0, WALL0 + 2)
    assert any(isinstance(a, Kick) for a in acts)  # sends at every look meanwhile
    acts = core.observe(iface(peer(other, endpoint=THEIRS, latest_handshake=HS)), 2.8, WALL0 + 2.8)
    assert UseProxy(other) in acts
    assert HoldProxy(other, False) in acts
    assert p.probe_back_interval_s == 2 * AgentConfig().probe_back_s
    assert p.last_upgrade is not None
    assert "no answer within 0.8 s" in p.last_upgrade


def test_the_peer_answering_on_its_mapping_makes_the_path_direct() -> None:
    core, other = relayed()
    core.on_punch(other, 5, True, MINE, THEIRS, 1.2, WALL0 + 1.2)
    core.observe(iface(peer(other, endpoint=THEIRS, latest_handshake=HS)), 1.3, WALL0 + 1.3)
    acts = core.observe(
        iface(peer(other, endpoint=THEIRS, latest_handshake=HS, rx_bytes=500)), 1.5, WALL0 + 1.5
    )
    assert core.peers[other].kind == PathKind.DIRECT
    assert HoldProxy(other, False) in acts


def test_both_nats_per_destination_skip_the_tries_and_recheck_the_kind() -> None:
    core, other = relayed()
    core.on_punch(other, 0, False, MINE, THEIRS, 1.2, WALL0 + 1.2, (DEP, DEP))
    p = core.peers[other]
    acts = core.observe(iface(peer(other, endpoint=PORT, latest_handshake=HS)), 2.0, WALL0 + 2)
    assert CheckMapping(other) in acts
    assert not any(isinstance(a, AskPunch | TryDirect) for a in acts)
    assert p.last_upgrade is not None
    assert "skipped" in p.last_upgrade
    # a late PUNCH saying "unknown" for the same mappings does not undo it
    core.on_punch(other, 0, False, MINE, THEIRS, 2.1, WALL0 + 2.1, (UNK, UNK))
    assert (p.nat_mine, p.nat_peer) == (DEP, DEP)
    # the peer's NAT opens (a new latch, then its kind): a try soon
    core.on_punch(other, 0, False, MINE, ("203.0.113.77", 51820), 9.0, WALL0 + 9, (DEP, IND))
    assert p.next_probe_back <= 9.0 + AgentConfig().first_upgrade_s


def test_without_a_go_the_agent_tries_alone_after_two_asks() -> None:
    core, other = relayed()
    core.on_punch(other, 0, False, MINE, THEIRS, 1.2, WALL0 + 1.2)
    p = core.peers[other]
    t = 1.8
    kinds = []
    for _ in range(3):
        acts = core.observe(iface(peer(other, endpoint=PORT, latest_handshake=HS)), t, WALL0 + t)
        kinds.append([type(a).__name__ for a in acts if not isinstance(a, Kick)])
        t = p.next_probe_back + 0.01
    assert kinds[0] == ["AskPunch"]
    assert kinds[1] == ["AskPunch"]
    assert "TryDirect" in kinds[2]


def test_a_new_relay_session_forgets_the_last_ones_mappings() -> None:
    core, other = relayed()
    core.on_punch(other, 0, False, MINE, THEIRS, 1.2, WALL0 + 1.2, (DEP, DEP))
    core.on_relayed(other, RELAY, False, 50.0, WALL0 + 50, RELAY_EP, port_mode=True)
    p = core.peers[other]
    assert p.mapping_peer is None
    assert (p.nat_mine, p.nat_peer) == (UNK, UNK)


def test_a_try_waits_for_the_relayed_session_to_settle() -> None:
    """WireGuard's initiator confirms new keys with its next packet: a try
    right after a handshake would send it astray."""
    core, other = relayed()
    fresh = WALL0 + 1.7
    core.on_punch(other, 0, False, MINE, THEIRS, 1.2, WALL0 + 1.2)
    acts = core.observe(iface(peer(other, endpoint=PORT, latest_handshake=fresh)), 1.8, WALL0 + 1.8)
    assert not any(isinstance(a, AskPunch) for a in acts)
    assert core.on_punch(other, 3, True, MINE, THEIRS, 1.9, WALL0 + 1.9) == []
