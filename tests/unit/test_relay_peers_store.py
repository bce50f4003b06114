"""What a relay remembers of the federation across restarts (relay/peers_store.py)."""

from __future__ import annotations

from pathlib import Path

from wgrelay.discovery.registry import RegistryStore
from wgrelay.keys import RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement
from wgrelay.relay.access import OpenPolicy
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.peers_store import load_known_relays
from wgrelay.testkit import WALL0


def test_a_relay_whose_announcement_lapsed_is_still_contacted(tmp_path: Path) -> None:
    """Down for longer than announcements live, its bootstrap relays gone,
    a relay still knows where the others were: it contacts them like
    bootstrap relays and rejoins (the lapsed announcements are not taken)."""
    fresh, lapsed = RelayIdentity.generate(), RelayIdentity.generate()
    store = RegistryStore(tmp_path / "relays.db")
    registry = store.load()
    for ident, age_s, n in ((fresh, 10, 2), (lapsed, 3600, 3)):
        info = RelayNodeInfo(ident.public, ((f"203.0.113.{n}", 51821),))
        raw = encode_announcement(info, int((WALL0 - age_s) * 1000), 600, ident)
        registry.register_relay(decode_announcement(raw))
    store.save(registry)
    store.close()

    core = RelayCore(
        RelayIdentity.generate(),
        RelayConfig(),
        OpenPolicy(),
        now=0.0,
        wall=WALL0,
        announce_endpoints=(("203.0.113.1", 51821),),
    )
    store = RegistryStore(tmp_path / "relays.db")
    try:
        load_known_relays(store, core, [], 0.0)
    finally:
        store.close()
    fed = core.federation
    assert fed.directory.get(fresh.public) is not None
    assert fed.directory.get(lapsed.public) is None
    assert fed._bootstrap == {lapsed.public: ("203.0.113.3", 51821)}
