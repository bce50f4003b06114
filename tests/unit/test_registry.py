"""RelayRegistry rules and its SQLite store (round trip, broken files)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from wgrelay.discovery.registry import RegistryStore, RelayRegistry
from wgrelay.keys import RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo, decode_announcement, encode_announcement

NOW_MS = 1_700_000_000_000


def announcement(ident: RelayIdentity, issued_ms: int, ttl_s: int = 600, region: str = "eu"):  # type: ignore[no-untyped-def]
    info = RelayNodeInfo(key=ident.public, endpoints=(("203.0.113.7", 51821),), region=region)
    return decode_announcement(encode_announcement(info, issued_ms, ttl_s, ident))


def test_bootstrap_relays_never_expire_announced_ones_do() -> None:
    reg = RelayRegistry()
    boot, seen = RelayIdentity.generate(), RelayIdentity.generate()
    reg.add_bootstrap(boot.public, ("203.0.113.1", 51821))
    assert reg.register_relay(announcement(seen, NOW_MS, ttl_s=60))
    assert {r.key for r in reg.get_available_relays(NOW_MS + 59_000)} == {boot.public, seen.public}
    assert {r.key for r in reg.get_available_relays(NOW_MS + 61_000)} == {boot.public}
    assert reg.expire(NOW_MS + 61_000) == [seen.public]


def test_newer_announcement_replaces_older_never_the_reverse() -> None:
    reg = RelayRegistry()
    ident = RelayIdentity.generate()
    assert reg.register_relay(announcement(ident, NOW_MS, region="eu"))
    assert reg.register_relay(announcement(ident, NOW_MS + 1, region="us"))
    assert not reg.register_relay(announcement(ident, NOW_MS, region="eu"))
    relay = reg.get(ident.public)
    assert relay is not None
    assert relay.region == "us"


def test_region_filter_and_measurements() -> None:
    reg = RelayRegistry()
    eu, us = RelayIdentity.generate(), RelayIdentity.generate()
    reg.register_relay(announcement(eu, NOW_MS, region="eu"))
    reg.register_relay(announcement(us, NOW_MS, region="us"))
    assert [r.key for r in reg.get_available_relays(NOW_MS, region="eu")] == [eu.public]
    reg.record_rtt(eu.public, 10.0)
    reg.record_rtt(eu.public, 30.0)
    relay = reg.get(eu.public)
    assert relay is not None
    assert relay.rtt_ms == pytest.approx(15.0)  # smoothed, not the last sample
    reg.record_failure(eu.public)
    reg.record_success(eu.public)
    relay = reg.get(eu.public)
    assert relay is not None
    assert (relay.failures, relay.successes) == (0, 1)


def test_store_round_trip(tmp_path: Path) -> None:
    reg = RelayRegistry()
    boot, seen = RelayIdentity.generate(), RelayIdentity.generate()
    reg.add_bootstrap(boot.public, ("2001:db8::1", 51821))
    reg.register_relay(announcement(seen, NOW_MS))
    reg.record_rtt(seen.public, 12.5)
    store = RegistryStore(tmp_path / "relays.db")
    store.save(reg)
    store.close()
    again = RegistryStore(tmp_path / "relays.db").load()
    assert sorted(map(str, (r.key for r in again.all()))) == sorted(
        map(str, (boot.public, seen.public))
    )
    assert again.get(boot.public) == reg.get(boot.public)
    assert again.get(seen.public) == reg.get(seen.public)


def test_garbage_file_is_moved_aside_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "relays.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with caplog.at_level(logging.WARNING):
        store = RegistryStore(path)
    assert len(store.load()) == 0
    store.close()
    broken = list(tmp_path.glob("relays.db.broken-*"))
    assert broken
    assert broken[0].read_bytes().startswith(b"this is not")
    assert "moved it to" in caplog.text


def test_foreign_sqlite_file_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    store = RegistryStore(path)
    store.close()
    assert list(tmp_path.glob("relays.db.broken-*"))
