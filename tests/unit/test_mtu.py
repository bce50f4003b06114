"""The documented MTU numbers and the agent's warning."""

from __future__ import annotations

import logging

import pytest

from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, RelayIdentity
from wgrelay.mesh.backend.fake import FakeBackend
from wgrelay.mesh.mtu import mtu_warning, relayed_packet_size


def test_default_mtu_fits_ipv4_not_ipv6() -> None:
    assert relayed_packet_size(1420) == 1490  # 1420 + 32 WireGuard + 10 relay + 28 IPv4/UDP
    assert relayed_packet_size(1430) == 1500
    assert relayed_packet_size(1410, ipv6=True) == 1500
    assert relayed_packet_size(1420, ipv6=True) == 1510


@pytest.mark.parametrize(
    ("mtu", "relay_ip", "warned"),
    [(1420, "203.0.113.1", False), (1440, "203.0.113.1", True), (1420, "2001:db8::1", True)],
)
def test_agent_warns_when_relayed_packets_would_not_fit(
    caplog: pytest.LogCaptureFixture, mtu: int, relay_ip: str, warned: bool
) -> None:
    backend = FakeBackend()
    backend.add_interface("wg0", private_key=PrivateKey.generate(), mtu=mtu)
    reg = RelayRegistry()
    reg.add_bootstrap(RelayIdentity.generate().public, (relay_ip, 51821))
    with caplog.at_level(logging.WARNING):
        mtu_warning(backend, "wg0", reg)
    assert ("set the MTU to" in caplog.text) is warned
