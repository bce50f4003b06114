"""The documented MTU numbers and the agent's warning."""

from __future__ import annotations

import logging

import pytest

from wgrelay.discovery.registry import RelayRegistry
from wgrelay.keys import PrivateKey, RelayIdentity
from wgrelay.mesh.backend.fake import FakeBackend
from wgrelay.mesh.mtu import mtu_advice, mtu_warning, relayed_packet_size
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement


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
        mtu_warning(backend, "wg0", reg, lambda _ep: True)
    assert ("set the MTU to" in caplog.text) is warned


def dual_stack_registry() -> RelayRegistry:
    """One relay announcing IPv4 first, then IPv6."""
    ident = RelayIdentity.generate()
    info = RelayNodeInfo(ident.public, (("203.0.113.10", 51821), ("2001:db8::10", 51821)))
    raw = encode_announcement(info, 1_700_000_000_000, 600, ident)
    reg = RelayRegistry()
    assert reg.register_relay(decode_announcement(raw))
    return reg


@pytest.mark.parametrize(
    ("family", "warned"), [(4, False), (6, True), (None, False)], ids=["v4-only", "v6-only", "both"]
)
def test_the_warning_follows_the_family_this_host_reaches(
    caplog: pytest.LogCaptureFixture, family: int | None, warned: bool
) -> None:
    """MTU 1420 fits relayed IPv4 (1490 bytes), not IPv6 (1510): an IPv6-only
    host is told, an IPv4-only one is not, and neither is a dual-stack one: it
    reaches this relay at its first endpoint, the IPv4 one."""
    backend = FakeBackend()
    backend.add_interface("wg0", private_key=PrivateKey.generate(), mtu=1420)

    def reachable(ep: tuple[str, int]) -> bool:
        return family is None or (":" in ep[0]) == (family == 6)

    with caplog.at_level(logging.WARNING):
        mtu_warning(backend, "wg0", dual_stack_registry(), reachable)
    assert ("1510 bytes over IPv6" in caplog.text) is warned
    assert "over IPv4" not in caplog.text


def test_mtu_advice_per_relay_address() -> None:
    assert mtu_advice(1420, ("203.0.113.10", 51821)) is None
    assert mtu_advice(1420, ("2001:db8::10", 51821)) == (
        "relayed packets are 1510 bytes over IPv6, more than a 1500-byte path carries"
        " unfragmented; set the MTU to 1410 or less"
    )
    assert mtu_advice(1410, ("2001:db8::10", 51821)) is None
