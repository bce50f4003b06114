"""The cache's SQLite file: round trip, one transaction per flush, bad rows and files, kill -9."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wgrelay.endpoint import Endpoint
from wgrelay.errors import LocalProtocolError
from wgrelay.keys import PublicKey
from wgrelay.mesh.cache import CachedEndpoint, ConnectionCache

T0 = 1_700_000_000.0
PEER = PublicKey(b"\x01" * 32)
OTHER = PublicKey(b"\x02" * 32)
RELAY_A = PublicKey(b"\xaa" * 32)
RELAY_B = PublicKey(b"\xbb" * 32)
RELAY_A_EP: Endpoint = ("203.0.113.100", 51821)
RELAY_B_EP: Endpoint = ("198.51.100.100", 51821)

PUB4: Endpoint = ("203.0.113.7", 51820)
PUB6: Endpoint = ("2001:db8::7", 51820)


# ---------------------------------------------------------------- persistence


def _full_cache(path: Path | None) -> ConnectionCache:
    """A cache in which every field of CachedEndpoint differs from its default."""
    cache = ConnectionCache(path)
    cache.record_attempt(PEER, PUB6, T0)
    cache.record_success(PEER, PUB6, T0 + 1, latency_ms=12.5)
    cache.record_failure(PEER, PUB6, T0 + 2)
    cache.record_attempt(PEER, PUB6, T0 + 3)  # left pending
    cache.record_quality(PEER, PUB6, T0 + 4, latency_ms=17.25, loss_pct=3.5)
    cache.record_relay_success(PEER, RELAY_A, RELAY_A_EP, T0 + 5)
    cache.record_relay_failure(OTHER, RELAY_B, RELAY_B_EP, T0 + 6)
    cache.record_failure(OTHER, ("fe80::9%lo", 51820), T0 + 7)
    return cache


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "cache-wg0.db"
    cache = _full_cache(path)
    before = {p: cache.entries(p) for p in cache.peers()}
    cache.close()
    again = ConnectionCache(path)
    assert {p: again.entries(p) for p in again.peers()} == before
    again.close()
    # the test is only worth something if every field was exercised
    every = [e for entries in before.values() for e in entries]
    for f in dataclasses.fields(CachedEndpoint):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert any(getattr(e, f.name) != default for e in every), f.name


def test_flush_is_atomic_per_change_and_skipped_when_clean(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    cache = ConnectionCache(path)
    cache.record_failure(PEER, PUB4, T0)
    cache.record_failure(OTHER, PUB4, T0)
    assert cache.dirty
    cache.flush()
    assert not cache.dirty
    # change the file behind the cache's back: a clean flush must not rewrite it
    with sqlite3.connect(path) as side:
        side.execute("DELETE FROM endpoints")
    side.close()
    cache.flush()
    assert ConnectionCache(path).peers() == []
    # one changed peer: only its rows are written again
    cache.record_success(PEER, PUB4, T0 + 1)
    cache.flush()
    reopened = ConnectionCache(path)
    assert reopened.peers() == [PEER]
    assert reopened.entries(PEER) == cache.entries(PEER)
    reopened.close()
    cache.forget(PEER)
    cache.close()  # close flushes
    assert ConnectionCache(path).peers() == []


def test_in_memory_cache_and_closed_cache() -> None:
    cache = _full_cache(None)
    cache.flush()
    assert not cache.dirty
    cache.close()
    cache.close()
    with pytest.raises(LocalProtocolError):
        cache.flush()


def test_a_failed_flush_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.db"
    cache = ConnectionCache(path)
    cache.record_failure(PEER, PUB4, T0)
    assert cache._store is not None
    conn = cache._store._conn
    assert conn is not None
    conn.execute("PRAGMA query_only=1")  # stands in for a full or read-only disk
    with caplog.at_level(logging.WARNING):
        cache.flush()
        cache.flush()
    assert caplog.text.count("could not save the connection cache") == 1
    assert cache.dirty
    conn.execute("PRAGMA query_only=0")
    cache.flush()
    assert not cache.dirty
    cache.close()
    assert ConnectionCache(path).peers() == [PEER]


def test_bad_rows_are_skipped_and_cleaned_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.db"
    _full_cache(path).close()
    with sqlite3.connect(path) as side:
        row = side.execute("SELECT * FROM endpoints WHERE peer = ?", (str(OTHER),)).fetchone()
        bad: list[dict[str, object]] = [
            {"peer": "not a key"},
            {"host": "example.com"},
            {"status": "maybe"},
            {"recent_failures": "{not json"},
            {"success_count": -1},
            {"packet_loss_pct": 250.0},
            {"endpoint_type": "relay", "relay_pubkey": None},
        ]
        names = [d[0] for d in side.execute("SELECT * FROM endpoints").description]
        insert = f"INSERT INTO endpoints VALUES ({', '.join('?' * len(names))})"  # noqa: S608
        for change in bad:
            values: dict[str, object] = dict(zip(names, row, strict=True))
            values.update(change)
            side.execute(insert, [values[n] for n in names])
    side.close()
    with caplog.at_level(logging.WARNING):
        cache = ConnectionCache(path)
    assert "skipping a bad cache row" in caplog.text
    assert "skipped 7 bad cache rows" in caplog.text
    assert len(cache.entries(OTHER)) == 2  # the good rows are all there
    assert len(cache.entries(PEER)) == 2
    assert cache.dirty
    cache.close()  # deletes the bad rows
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ConnectionCache(path).close()
    assert caplog.text == ""


def test_garbage_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache-wg0.db"
    path.write_bytes(b"\x00garbage, not SQLite\xff" * 500)
    with caplog.at_level(logging.WARNING):
        cache = ConnectionCache(path)
    assert cache.peers() == []
    assert "moved it to" in caplog.text
    broken = list(tmp_path.glob("cache-wg0.db.broken-*"))
    assert len(broken) == 1
    assert broken[0].read_bytes().startswith(b"\x00garbage")
    cache.record_success(PEER, PUB4, T0)  # and the rebuilt file works
    cache.close()
    assert ConnectionCache(path).peers() == [PEER]


def test_foreign_sqlite_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache-wg0.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE endpoints (x)")
        other.execute("INSERT INTO endpoints VALUES (1)")
    other.close()
    with caplog.at_level(logging.WARNING):
        cache = ConnectionCache(path)
    assert cache.peers() == []
    cache.close()
    assert "not a wgrelay file" in caplog.text
    assert list(tmp_path.glob("cache-wg0.db.broken-*"))


# ---------------------------------------------------------------- kill -9

WRITER = Path(__file__).with_name("cache_writer.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _check_generation(path: Path) -> int:
    """The generation the file holds; fails unless it holds one whole generation."""
    cache = ConnectionCache(path)
    try:
        entries = [e for p in cache.peers() for e in cache.entries(p)]
    finally:
        cache.close()
    assert len(cache.peers()) == 40
    assert len(entries) == 40 * 10
    generations = {e.last_success for e in entries}
    assert len(generations) == 1, f"partial generation: {sorted(map(str, generations))}"
    (g,) = generations
    assert g is not None
    assert all(e.success_count == int(g) for e in entries)
    return int(g)


def test_kill_9_during_flush_keeps_the_last_completed_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache-wg0.db"
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    held = 0
    for round_no in range(8):
        with subprocess.Popen(
            [sys.executable, str(WRITER), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            first = proc.stdout.readline()
            assert first, f"writer died: {proc.stderr.read()}"
            # a random moment: mostly inside a flush, since flushing is all it does
            time.sleep(rng.uniform(0.0, 0.06))
            os.kill(proc.pid, signal.SIGKILL)
            printed = [int(line) for line in [first, *proc.stdout.read().split()] if line.strip()]
            assert proc.wait() == -signal.SIGKILL
        with caplog.at_level(logging.WARNING):
            g = _check_generation(path)
        # every flush that returned is on disk; at most one more finished unannounced
        assert max(printed) <= g <= max(printed) + 1, (seed, round_no, printed, g)
        assert g > held
        held = g
    assert not list(tmp_path.glob("*.broken-*"))
    assert caplog.text == ""


def test_flush_from_another_thread_is_a_bug_not_a_disk_error(tmp_path: Path) -> None:
    cache = ConnectionCache(tmp_path / "cache.db")
    cache.record_failure(PEER, PUB4, T0)
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            cache.flush()
        except sqlite3.ProgrammingError as e:
            errors.append(e)

    worker = threading.Thread(target=flush)
    worker.start()
    worker.join()
    assert len(errors) == 1
    cache.close()
