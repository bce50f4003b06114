"""Address classification for the cache: public or private, v4 or v6; canonical endpoints."""

from __future__ import annotations

import pytest

from wgrelay.endpoint import Endpoint
from wgrelay.keys import PublicKey
from wgrelay.mesh.addresses import EndpointType, classify
from wgrelay.mesh.cache import CachedEndpoint, ConnectionCache

T0 = 1_700_000_000.0
PEER = PublicKey(b"\x01" * 32)

PUB6: Endpoint = ("2001:db8::7", 51820)


def direct(cache: ConnectionCache, peer: PublicKey, ep: Endpoint) -> CachedEndpoint:
    found = [e for e in cache.entries(peer) if e.endpoint == ep and e.relay_pubkey is None]
    assert len(found) == 1
    return found[0]


# ---------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("203.0.113.1", EndpointType.PUBLIC_V4),  # documentation ranges: our "internet"
        ("198.51.100.1", EndpointType.PUBLIC_V4),
        ("192.0.2.1", EndpointType.PUBLIC_V4),
        ("8.8.8.8", EndpointType.PUBLIC_V4),
        ("10.1.2.3", EndpointType.PRIVATE_V4),
        ("172.16.0.1", EndpointType.PRIVATE_V4),
        ("172.32.0.1", EndpointType.PUBLIC_V4),
        ("192.168.0.1", EndpointType.PRIVATE_V4),
        ("100.64.0.1", EndpointType.PRIVATE_V4),  # CGNAT
        ("100.128.0.1", EndpointType.PUBLIC_V4),
        ("127.0.0.1", EndpointType.PRIVATE_V4),
        ("169.254.1.1", EndpointType.PRIVATE_V4),
        ("2001:db8::1", EndpointType.PUBLIC_V6),
        ("2606:4700::1111", EndpointType.PUBLIC_V6),
        ("fd12:3456::1", EndpointType.PRIVATE_V6),  # ULA
        ("fe80::1", EndpointType.PRIVATE_V6),
        ("fe80::1%eth0", EndpointType.PRIVATE_V6),
        ("::1", EndpointType.PRIVATE_V6),
        ("::ffff:10.0.0.1", EndpointType.PRIVATE_V4),  # mapped: it is an IPv4 host
        ("::ffff:203.0.113.1", EndpointType.PUBLIC_V4),
    ],
)
def test_classify(host: str, kind: EndpointType) -> None:
    assert classify((host, 51820)) is kind


@pytest.mark.parametrize("ep", [("example.com", 51820), ("10.0.0.1", 0), ("10.0.0.1", 70000)])
def test_non_ip_endpoints_are_rejected(ep: Endpoint) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        ConnectionCache().record_attempt(PEER, ep, T0)


def test_endpoints_are_canonical() -> None:
    cache = ConnectionCache()
    cache.record_failure(PEER, ("2001:DB8:0::7", 51820), T0)
    cache.record_failure(PEER, PUB6, T0 + 1)
    assert [e.endpoint for e in cache.entries(PEER)] == [PUB6]
    assert direct(cache, PEER, PUB6).failure_count == 2
