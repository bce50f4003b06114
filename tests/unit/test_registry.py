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


# ---------------------------------------------------------------- issue 8, finding 9


def _insert_raw(path: Path, *rows: tuple[object, ...]) -> None:
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO relays VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()


def _good_row(key: str, endpoint: str = "203.0.113.5", bootstrap: int = 1) -> tuple[object, ...]:
    return (key, f'[["{endpoint}", 51821]]', bootstrap, "", 0, None, None, None, None, None,
            None, 0, 0)  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (("notakey", *_good_row("x")[1:]), "44 base64"),
        ((str(RelayIdentity.generate().public), "[[", *_good_row("x")[2:]), "endpoints"),
        ((str(RelayIdentity.generate().public), "[]", *_good_row("x")[2:]), "endpoints"),
        ((str(RelayIdentity.generate().public), '[["nohost", 5]]', *_good_row("x")[2:]),
         "endpoints"),
        ((str(RelayIdentity.generate().public), '[["203.0.113.1", 0]]', *_good_row("x")[2:]),
         "endpoints"),
        ((*_good_row(str(RelayIdentity.generate().public))[:11], "many", 0), "failures"),
        ((*_good_row(str(RelayIdentity.generate().public))[:3], b"\xff", *_good_row("x")[4:]),
         "region"),
    ],
)  # fmt: skip
def test_a_bad_row_is_skipped_and_named_the_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: tuple[object, ...], why: str
) -> None:
    path = tmp_path / "relays.db"
    RegistryStore(path).close()
    good = RelayIdentity.generate().public
    _insert_raw(path, _good_row(str(good)), bad)
    store = RegistryStore(path)
    with caplog.at_level(logging.WARNING):
        reg = store.load()
    assert [r.key for r in reg.all()] == [good]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in warning
    assert "row 2" in warning
    assert why in warning
    # saving what this process changed leaves the bad row for the operator to see
    reg.add_bootstrap(RelayIdentity.generate().public, ("203.0.113.9", 51821))
    store.save(reg)
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM relays").fetchone()[0] == 3
    conn.close()


def test_saves_merge_another_process_bootstrap_relay_survives(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    seen, boot, old = (RelayIdentity.generate() for _ in range(3))
    first = RelayRegistry()
    first.add_bootstrap(old.public, ("203.0.113.1", 51821))
    RegistryStore(path).save(first)

    agent_store = RegistryStore(path)  # an agent: loads at start, saves at stop
    agent = agent_store.load()
    agent.register_relay(announcement(seen, NOW_MS))
    agent.record_rtt(old.public, 20.0)

    cli_store = RegistryStore(path)  # add-bootstrap-relay while the agent runs
    added = cli_store.load()
    added.add_bootstrap(boot.public, ("203.0.113.2", 51821))
    cli_store.save(added)
    cli_store.close()

    agent_store.save(agent)
    agent_store.close()
    again = RegistryStore(path).load()
    assert {r.key for r in again.all()} == {seen.public, boot.public, old.public}
    relay = again.get(old.public)
    assert relay is not None
    assert relay.bootstrap
    assert relay.rtt_ms == 20.0


def test_an_announcement_learned_meanwhile_keeps_the_operators_bootstrap(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    ident = RelayIdentity.generate()
    agent_store = RegistryStore(path)
    agent = agent_store.load()
    agent.register_relay(announcement(ident, NOW_MS))  # endpoint 203.0.113.7

    cli_store = RegistryStore(path)
    added = cli_store.load()
    added.add_bootstrap(ident.public, ("198.51.100.1", 51821))
    cli_store.save(added)
    cli_store.close()

    agent_store.save(agent)
    agent_store.close()
    relay = RegistryStore(path).load().get(ident.public)
    assert relay is not None
    assert relay.bootstrap
    assert relay.endpoints == (("198.51.100.1", 51821), ("203.0.113.7", 51821))
    assert relay.region == "eu"


def test_expiry_deletes_only_what_expired_and_never_a_bootstrap_relay(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    ident, gone = RelayIdentity.generate(), RelayIdentity.generate()
    seed = RelayRegistry()
    seed.register_relay(announcement(ident, NOW_MS, ttl_s=60))
    seed.register_relay(announcement(gone, NOW_MS, ttl_s=60))
    RegistryStore(path).save(seed)

    agent_store = RegistryStore(path)
    agent = agent_store.load()
    assert sorted(map(str, agent.expire(NOW_MS + 61_000))) == sorted(
        map(str, (ident.public, gone.public))
    )
    cli_store = RegistryStore(path)  # meanwhile the operator makes one a bootstrap relay
    added = cli_store.load()
    added.add_bootstrap(ident.public, ("198.51.100.1", 51821))
    cli_store.save(added)
    cli_store.close()

    agent_store.save(agent)
    agent_store.close()
    again = RegistryStore(path).load()
    assert [r.key for r in again.all()] == [ident.public]


def test_nothing_changed_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    reg = RelayRegistry()
    reg.add_bootstrap(RelayIdentity.generate().public, ("203.0.113.1", 51821))
    store = RegistryStore(path)
    store.save(reg)
    before = store.load()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM relays")  # someone else removed it; an unchanged save keeps that
    conn.commit()
    conn.close()
    store.save(before)
    store.save(reg)  # already saved: nothing pending
    assert len(store.load()) == 0
    store.close()
