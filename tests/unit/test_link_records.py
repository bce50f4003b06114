"""What a relay link takes from a LOCATION record in an answer to its lookup."""

from __future__ import annotations

import pytest

from wgrelay.client.link import LinkConfig, RelayLink
from wgrelay.keys import PrivateKey, RelayIdentity
from wgrelay.proto.location import encode_location
from wgrelay.proto.messages import DiscoveryResponse, PeerLocation
from wgrelay.testkit import WALL0

NOW_MS = int(WALL0 * 1000)


@pytest.mark.parametrize(
    ("issued_ms", "reason"),
    [
        (NOW_MS - 10_000, None),  # current
        (NOW_MS - 200_000, "location_expired"),  # 120 s records, issued 200 s ago
        (NOW_MS + 200_000, "location_future"),  # beyond the 120 s skew window
    ],
)
def test_a_record_must_be_current(issued_ms: int, reason: str | None) -> None:
    home = RelayIdentity.generate()
    peer = PrivateKey.generate().public_key()
    link = RelayLink(PrivateKey.generate(), home.public, LinkConfig(), now=0.0, wall=WALL0)
    record = encode_location(peer, issued_ms, 120, home)
    body = DiscoveryResponse(1, (), PeerLocation(home.public, ("203.0.113.1", 51821)), record)
    places = link._places(body, peer, NOW_MS)
    if reason is None:
        assert [p.location.relay for p in places] == [home.public]
    else:
        assert places == ()
        assert link.counters.drops[reason] == 1
