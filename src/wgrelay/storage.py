"""SQLite files under the state directory: atomic, crash-safe, never fatal.

Every store of wgrelay (relay registry, connection cache, agent settings) is one
SQLite file opened through ``open_store``:

* WAL journal and ``synchronous=FULL``: a committed transaction survives
  ``kill -9`` and power loss; a transaction cut short leaves the previous state.
* Each file carries our ``application_id`` and a schema version in
  ``user_version``. A file that is not SQLite, is corrupt, belongs to something
  else or has an unknown schema is moved aside as ``NAME.broken-<time>`` with a
  warning, and an empty store is created: the agent keeps running and only loses
  what it had learned, never the operator's configuration elsewhere.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from wgrelay.errors import ConfigError

log = logging.getLogger(__name__)

APPLICATION_ID = 0x77677231  # "wgr1": the relay registry
CACHE_APPLICATION_ID = 0x77677243  # "wgrC": a connection cache
"""Each kind of store has its own id, so one can never be opened as another."""


def _check(conn: sqlite3.Connection, schema_version: int, application_id: int) -> str | None:
    """Why the opened file is unusable, or None if it is ours and healthy."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and version == 0 and tables == 0:
        return None  # brand new
    if app_id != application_id:
        return f"not a wgrelay file (application_id {app_id:#x})"
    if version != schema_version:
        return f"schema version {version}, expected {schema_version}"
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        return f"integrity check failed: {result}"
    return None


def open_store(
    path: Path, schema: str, schema_version: int, application_id: int = APPLICATION_ID
) -> sqlite3.Connection:
    """Open (or create) a store; a broken file is moved aside, never fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path.parent}: {e.strerror}") from None
    for attempt in range(2):
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            problem = _check(conn, schema_version, application_id)
            if problem is None:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    _apply_schema(conn, schema)
                    conn.execute(f"PRAGMA application_id={application_id}")
                    conn.execute(f"PRAGMA user_version={schema_version}")
                return conn
        except sqlite3.DatabaseError as e:
            problem = f"unreadable: {e}"
        if conn is not None:
            conn.close()
        if attempt == 1:
            break
        _move_aside(path, problem)
    raise ConfigError(f"cannot create a usable store at {path}")


def _apply_schema(conn: sqlite3.Connection, schema: str) -> None:
    for statement in schema.split(";"):
        if statement.strip():
            conn.execute(statement)


def _move_aside(path: Path, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.broken-{stamp}")
    log.warning("%s: %s; moved it to %s and starting an empty one", path, problem, target.name)
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            try:
                src.replace(Path(str(target) + suffix))
            except OSError as e:
                raise ConfigError(f"cannot move broken {src} aside: {e.strerror}") from None
