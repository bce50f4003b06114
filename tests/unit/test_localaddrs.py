"""The addresses a relay announces when not told (relay/localaddrs.py)."""

from __future__ import annotations

import pytest

from wgrelay.relay import localaddrs


def test_public_addresses_come_first_and_unusable_ones_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        localaddrs, "_ipv4_addresses", lambda: ["127.0.0.1", "172.17.0.1", "8.8.8.8", "10.0.0.5"]
    )
    monkeypatch.setattr(
        localaddrs, "_ipv6_addresses", lambda: ["fd00::1", "2a00:1450::1", "fe80::1", "ff02::1"]
    )
    got = [h for h, _ in localaddrs.local_announce_endpoints(51821, 8)]
    assert got == ["8.8.8.8", "2a00:1450::1", "172.17.0.1", "10.0.0.5", "fd00::1"]
    assert len(localaddrs.local_announce_endpoints(51821, 2)) == 2
