"""The agent's port-mode decisions (mesh/port_mode.py) under a fake clock."""

from __future__ import annotations

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PrivateKey
from wgrelay.mesh.backend.base import PeerInfo
from wgrelay.mesh.port_mode import FAILED_FOR_S, LATCH_S, Mode, PortModePaths

PEER = PrivateKey.generate().public_key()
RELAY: Endpoint = ("203.0.113.10", 51821)
PORT_EP: Endpoint = ("203.0.113.10", 52000)
WALL = 1_800_000_000.0


def _info(
    endpoint: Endpoint | None = None, hs: float | None = None, rx: int = 0, tx: int = 0
) -> PeerInfo:
    return PeerInfo(PEER, endpoint, ("10.0.0.2/32",), hs, rx, tx, 25)


def test_a_fresh_peer_tries_the_port_and_latches_on_a_new_handshake() -> None:
    pm = PortModePaths()
    pm.offered(PEER, RELAY, 52000, _info(), 0.0, WALL)
    assert pm.endpoint(PEER) == PORT_EP
    assert pm.holding(PEER)
    pm.switched(PEER, _info(PORT_EP), now=10.0)
    assert not pm.observe(_info(PORT_EP), now=11.0)
    assert pm.describe(PEER)[0] == Mode.TRYING.value
    assert not pm.observe(_info(PORT_EP, hs=WALL + 2), now=12.0)
    assert pm.describe(PEER)[0] == "port"
    assert PORT_EP in pm.endpoints()


def test_no_handshake_through_the_port_in_time_falls_back_to_framed() -> None:
    pm = PortModePaths()
    pm.offered(PEER, RELAY, 52000, _info(), 0.0, WALL)
    pm.switched(PEER, _info(PORT_EP), now=10.0)
    assert not pm.observe(_info(PORT_EP, tx=148), now=10.0 + LATCH_S - 0.1)
    assert pm.observe(_info(PORT_EP, tx=296), now=10.0 + LATCH_S)  # the proxy now
    mode, why = pm.describe(PEER)
    assert mode == "framed"
    assert why is not None
    assert "no handshake" in why
    assert pm.endpoint(PEER) is None
    assert not pm.holding(PEER)
    assert not pm.observe(_info(PORT_EP), now=100.0)  # said once


def test_wireguard_is_restarted_once_to_handshake_through_the_port() -> None:
    pm = PortModePaths()
    pm.offered(PEER, RELAY, 52000, _info(hs=WALL - 30), 0.0, WALL)
    assert pm.endpoint(PEER) == PORT_EP
    assert pm.needs_restart(PEER)
    assert not pm.needs_restart(PEER)  # once
    # no session either: WireGuard may have sent an initiation elsewhere just
    # before, and would not send the next for 5 s (REKEY_TIMEOUT)
    pm.offered(PEER, RELAY, 52002, _info(hs=None), 0.0, WALL)
    assert pm.needs_restart(PEER)


def test_a_relay_address_where_port_mode_failed_is_framed_from_then_on() -> None:
    pm = PortModePaths()
    pm.offered(PEER, RELAY, 52000, _info(), 0.0, WALL)
    pm.switched(PEER, _info(PORT_EP), now=10.0)
    assert pm.observe(_info(PORT_EP), now=10.0 + LATCH_S)
    pm.offered(PEER, RELAY, 52002, _info(hs=WALL - 1), 20.0, WALL)  # the next session there
    assert pm.endpoint(PEER) is None
    assert not pm.needs_restart(PEER)
    mode, why = pm.describe(PEER)
    assert mode == "framed"
    assert why is not None
    assert "did not latch" in why
    pm.offered(PEER, ("198.51.100.77", 51821), 52000, _info(), 20.0, WALL)  # another relay: try
    assert pm.endpoint(PEER) == ("198.51.100.77", 52000)
    pm.offered(PEER, RELAY, 52004, _info(), 10.0 + LATCH_S + FAILED_FOR_S, WALL)
    assert pm.endpoint(PEER) == ("203.0.113.10", 52004)  # tried again, some time later


def test_the_same_session_announced_again_changes_nothing() -> None:
    pm = PortModePaths()
    pm.offered(PEER, RELAY, 52000, _info(), 0.0, WALL, b"s1")
    pm.switched(PEER, _info(PORT_EP), now=1.0)
    assert not pm.observe(_info(PORT_EP, hs=WALL + 2), now=2.0)
    assert pm.describe(PEER)[0] == "port"
    pm.offered(PEER, RELAY, 52000, _info(hs=WALL + 2), 3.0, WALL + 3, b"s1")
    assert pm.describe(PEER)[0] == "port"
    assert not pm.needs_restart(PEER)


def test_no_port_no_relay_endpoint_or_disabled_means_framed() -> None:
    for pm, port, relay in (
        (PortModePaths(), 0, RELAY),
        (PortModePaths(), 52000, None),
        (PortModePaths(enabled=False), 52000, RELAY),
    ):
        pm.offered(PEER, relay, port, _info(), 0.0, WALL)
        assert pm.endpoint(PEER) is None
        assert pm.describe(PEER) == (None, None)


def test_traffic_through_the_port_is_reported_for_the_carrier_check() -> None:
    pm = PortModePaths()
    pm.offered(PEER, RELAY, 52000, _info(), 0.0, WALL)
    assert pm.traffic(_info(PORT_EP, rx=0, tx=0)) == (False, False)  # first look
    assert pm.traffic(_info(PORT_EP, rx=0, tx=100)) == (True, False)
    assert pm.traffic(_info(PORT_EP, rx=50, tx=100)) == (False, True)
    assert pm.traffic(_info(PORT_EP, rx=0, tx=32)) == (True, False)  # restarted: from 0
    # elsewhere (a direct retry moved the endpoint): not the relay's traffic
    assert pm.traffic(_info(("198.51.100.9", 51820), rx=90, tx=200)) == (False, False)
    pm.forget(PEER, 1.0)
    assert pm.traffic(_info(PORT_EP, rx=900, tx=900)) == (False, False)
