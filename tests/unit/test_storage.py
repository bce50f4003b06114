"""SQLite stores: what is moved aside, what is refused, never lost (issue 8, findings 9, 13)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from wgrelay.errors import ConfigError
from wgrelay.state import ensure_state_dir
from wgrelay.storage import open_store

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER)"


def store(path: Path) -> sqlite3.Connection:
    return open_store(path, SCHEMA, 1)


@pytest.mark.parametrize("name", ["relays.db", "relays.db-wal", "relays.db-shm"])
@pytest.mark.parametrize("target", ["elsewhere.db", "missing-dir/x.db"])
def test_a_symlinked_store_file_is_refused_never_followed(
    tmp_path: Path, name: str, target: str
) -> None:
    state = ensure_state_dir(tmp_path / "state")
    outside = tmp_path / target
    (state / name).symlink_to(outside)
    with pytest.raises(ConfigError, match="symbolic link"):
        store(state / "relays.db")
    assert not outside.exists()
    assert sorted(p.name for p in state.iterdir()) == [name]  # nothing moved aside


def test_a_store_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "relays.db").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        store(tmp_path / "relays.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relays.db"]


def test_files_moved_aside_in_the_same_second_never_overwrite_each_other(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    # earlier broken files under every name this second (and the next few) could get
    now = time.time()
    earlier = {}
    for dt in range(-1, 6):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now + dt))
        old = tmp_path / f"relays.db.broken-{stamp}"
        old.write_bytes(f"earlier {dt}".encode())
        earlier[old] = old.read_bytes()
    for n in range(3):
        path.write_bytes(f"garbage {n} ".encode() * 100)
        store(path).close()
    for old, content in earlier.items():
        assert old.read_bytes() == content
    moved = sorted(p.read_bytes()[:9] for p in tmp_path.glob("relays.db.broken-*"))
    assert moved.count(b"garbage 0") == moved.count(b"garbage 1") == moved.count(b"garbage 2") == 1


def test_a_busy_store_is_an_error_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "relays.db"
    store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ConfigError, match=str(path)):
            open_store(path, SCHEMA, 1, busy_timeout_s=0.05)
    finally:
        holder.close()
    assert not list(tmp_path.glob("*.broken-*"))


def test_state_dir_checks(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o770)
    with pytest.raises(ConfigError, match=f"chmod 700 {loose}"):
        ensure_state_dir(loose)
    loose.chmod(0o755)  # readable by others is fine: nothing secret is readable there
    assert ensure_state_dir(loose) == loose


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_state_dir_of_another_user_is_refused_roots_is_fine(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 4242, 4242)
    with pytest.raises(ConfigError, match="owned by uid 4242"):
        ensure_state_dir(other)
    os.chown(other, 0, 0)
    assert ensure_state_dir(other) == other
