"""The connection cache's SQLite file (``STATE_DIR/cache-IFACE.db``).

Persistence
-----------
``ConnectionCache(path)`` opens ``path`` through a ``CacheStore``, which uses
``storage.open_store`` (WAL, ``synchronous=FULL``; a corrupt, foreign or
unknown-version file is moved aside with a warning and an empty cache starts)
and loads every row; a bad row is skipped with a warning and deleted at the
next flush. ``flush()`` rewrites the rows of every peer changed since the last
flush inside one ``BEGIN IMMEDIATE`` transaction, so after ``kill -9`` the file
holds exactly the last completed flush. Nothing changed: ``flush()`` does not
touch the file. A failed flush (disk full, locked) is logged and retried at the
next one, never raised. The SQLite connection belongs to the thread that
created the cache: call ``flush()`` and ``close()`` from that thread.

The file: ``application_id`` ``CACHE_APPLICATION_ID`` ("wgrC"), ``user_version``
``SCHEMA_VERSION``, one table ``endpoints`` with one row per ``CachedEndpoint``
(its fields as columns, ``recent_failures`` as a JSON list). A direct entry's
``endpoint_type`` is not trusted on load: it is derived from the address again,
so it follows the current classification rules.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from wgrelay.errors import LocalProtocolError, WgRelayError
from wgrelay.keys import PublicKey
from wgrelay.mesh.addresses import EndpointType, classify, normalize_endpoint
from wgrelay.mesh.cache_entry import MAX_RECENT_FAILURES, CachedEndpoint, ConnectionStatus
from wgrelay.storage import CACHE_APPLICATION_ID, open_store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# (column, declaration): one list drives the schema, SELECT and INSERT, so they
# cannot drift apart.
_COLUMNS = (
    ("peer", "TEXT NOT NULL"),
    ("endpoint_type", "TEXT NOT NULL"),
    ("host", "TEXT NOT NULL"),
    ("port", "INTEGER NOT NULL"),
    ("last_success", "REAL"),
    ("success_count", "INTEGER NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("last_checked", "REAL"),
    ("failure_count", "INTEGER NOT NULL"),
    ("latency_ms", "REAL"),
    ("packet_loss_pct", "REAL"),
    ("handshake_success_rate", "REAL"),
    ("recent_failures", "TEXT NOT NULL"),  # JSON list of wall seconds
    ("jitter_ms", "REAL"),
    ("quality_score", "REAL"),
    ("last_quality_update", "REAL"),
    ("relay_pubkey", "TEXT"),
    ("relay_success_count", "INTEGER NOT NULL"),
    ("last_relay_success", "REAL"),
    ("attempts", "INTEGER NOT NULL"),
    ("attempt_pending", "INTEGER NOT NULL"),
    ("last_latency_sample_ms", "REAL"),
)
_COLUMN_NAMES = tuple(name for name, _ in _COLUMNS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS endpoints (
    {", ".join(f"{name} {decl}" for name, decl in _COLUMNS)}
);
CREATE INDEX IF NOT EXISTS endpoints_peer ON endpoints (peer)
"""

# Built from the constant column list above, never from data: no injection.
_SELECT = f"SELECT rowid, {', '.join(_COLUMN_NAMES)} FROM endpoints"  # noqa: S608
_INSERT = (
    f"INSERT INTO endpoints ({', '.join(_COLUMN_NAMES)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)

_BAD_ROWS_LOGGED = 5


class CacheStore:
    """The cache's file: load once, then save changed peers (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = open_store(
            path, SCHEMA, SCHEMA_VERSION, CACHE_APPLICATION_ID
        )
        self._bad_rowids: list[int] = []  # deleted with the next save
        self._failing = False

    @property
    def has_bad_rows(self) -> bool:
        """Rows that ``load`` skipped and the next successful ``save`` deletes."""
        return bool(self._bad_rowids)

    def load(self) -> dict[PublicKey, list[CachedEndpoint]]:
        """Every good row, per peer; a bad or duplicate row is skipped with a warning."""
        peers: dict[PublicKey, list[CachedEndpoint]] = {}
        try:
            rows = self._connection().execute(_SELECT).fetchall()
        except sqlite3.DatabaseError as e:
            # open_store's integrity check passed, so this is rare; run empty, never fatal
            log.warning("%s: cannot read the connection cache, starting empty: %s", self.path, e)
            return peers
        bad = 0
        for rowid, *values in rows:
            try:
                peer, entry = _decode(values)
                if any(_same_slot(entry, e) for e in peers.get(peer, ())):
                    raise ValueError("duplicate entry")
            except (ValueError, TypeError, WgRelayError) as e:
                bad += 1
                if bad <= _BAD_ROWS_LOGGED:
                    log.warning("%s: skipping a bad cache row: %s", self.path, e)
                self._bad_rowids.append(rowid)
                continue
            peers.setdefault(peer, []).append(entry)
        if bad > _BAD_ROWS_LOGGED:
            log.warning("%s: skipped %d bad cache rows in all", self.path, bad)
        return peers

    def save(self, changed: Mapping[PublicKey, Sequence[CachedEndpoint]]) -> bool:
        """Replace the rows of each peer in ``changed`` (no entries: delete them)
        and delete the bad rows, in one transaction; True if it committed.

        A database error is logged (once per run of failures) and rolled back,
        so the file keeps the last completed save; the caller keeps its changes
        for the next try. ``sqlite3.ProgrammingError`` (a bug, such as a call
        from another thread) is raised.
        """
        conn = self._connection()
        rows = [_encode(peer, e) for peer, entries in changed.items() for e in entries]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "DELETE FROM endpoints WHERE rowid = ?", [(r,) for r in self._bad_rowids]
                )
                conn.executemany(
                    "DELETE FROM endpoints WHERE peer = ?", [(str(p),) for p in changed]
                )
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.ProgrammingError:
            raise  # our bug (e.g. called from another thread), not the disk's
        except sqlite3.Error as e:
            if not self._failing:
                log.warning(
                    "%s: could not save the connection cache (will retry): %s", self.path, e
                )
            self._failing = True
            return False
        if self._failing:
            log.info("%s: saving the connection cache works again", self.path)
        self._failing = False
        self._bad_rowids.clear()
        return True

    def close(self) -> None:
        """Close the file (idempotent); nothing is saved."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LocalProtocolError(f"{self.path}: the cache store is closed")
        return self._conn


# ---------------------------------------------------------------- rows


def _same_slot(a: CachedEndpoint, b: CachedEndpoint) -> bool:
    """Whether two entries describe the same path (one peer holds one of each)."""
    if (a.endpoint_type is EndpointType.RELAY) != (b.endpoint_type is EndpointType.RELAY):
        return False
    if a.endpoint_type is EndpointType.RELAY:
        return a.relay_pubkey == b.relay_pubkey
    return a.endpoint == b.endpoint


def _encode(peer: PublicKey, e: CachedEndpoint) -> tuple[object, ...]:
    return (
        str(peer),
        e.endpoint_type.value,
        e.endpoint[0],
        e.endpoint[1],
        e.last_success,
        e.success_count,
        e.status.value,
        e.last_checked,
        e.failure_count,
        e.latency_ms,
        e.packet_loss_pct,
        e.handshake_success_rate,
        json.dumps(e.recent_failures),
        e.jitter_ms,
        e.quality_score,
        e.last_quality_update,
        None if e.relay_pubkey is None else str(e.relay_pubkey),
        e.relay_success_count,
        e.last_relay_success,
        e.attempts,
        int(e.attempt_pending),
        e.last_latency_sample_ms,
    )


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number: {value!r}")
    return float(value)


def _opt_float(value: object, name: str) -> float | None:
    return None if value is None else _float(value, name)


def _opt_sample(value: object, name: str, upper: float = math.inf) -> float | None:
    """A stored measurement: None, or a number in 0..upper."""
    if value is None:
        return None
    v = _float(value, name)
    if not 0.0 <= v <= upper:
        raise ValueError(f"{name} {v!r} is out of range")
    return v


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not text: {value!r}")
    return value


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is not a count: {value!r}")
    return value


def _decode(values: list[object]) -> tuple[PublicKey, CachedEndpoint]:
    """One row back into an entry; ValueError/TypeError/WgRelayError if it is bad."""
    row = dict(zip(_COLUMN_NAMES, values, strict=True))
    peer_text, host, port = row["peer"], row["host"], row["port"]
    if not isinstance(peer_text, str):
        raise ValueError("peer key is not text")
    peer = PublicKey.from_base64(peer_text)
    if not isinstance(host, str) or not isinstance(port, int):
        raise ValueError(f"bad endpoint {host!r} {port!r}")
    endpoint = normalize_endpoint((host, port))
    kind = EndpointType(_text(row["endpoint_type"], "endpoint_type"))
    relay_text = row["relay_pubkey"]
    relay_key: PublicKey | None = None
    if kind is EndpointType.RELAY:
        if not isinstance(relay_text, str):
            raise ValueError("relay entry without a relay key")
        relay_key = PublicKey.from_base64(relay_text)
    else:
        if relay_text is not None:
            raise ValueError("direct entry with a relay key")
        kind = classify(endpoint)  # derived: follows the current classification rules
    failures_json = row["recent_failures"]
    if not isinstance(failures_json, str):
        raise ValueError("recent_failures is not text")
    failures_raw = json.loads(failures_json)
    if not isinstance(failures_raw, list):
        raise ValueError("recent_failures is not a list")
    recent = [_float(t, "recent failure time") for t in failures_raw]
    entry = CachedEndpoint(
        endpoint=endpoint,
        endpoint_type=kind,
        last_success=_opt_float(row["last_success"], "last_success"),
        success_count=_count(row["success_count"], "success_count"),
        status=ConnectionStatus(_text(row["status"], "status")),
        last_checked=_opt_float(row["last_checked"], "last_checked"),
        failure_count=_count(row["failure_count"], "failure_count"),
        latency_ms=_opt_sample(row["latency_ms"], "latency_ms"),
        packet_loss_pct=_opt_sample(row["packet_loss_pct"], "packet_loss_pct", 100.0),
        handshake_success_rate=_opt_sample(
            row["handshake_success_rate"], "handshake_success_rate", 100.0
        ),
        recent_failures=recent[-MAX_RECENT_FAILURES:],
        jitter_ms=_opt_sample(row["jitter_ms"], "jitter_ms"),
        quality_score=_opt_sample(row["quality_score"], "quality_score", 100.0),
        last_quality_update=_opt_float(row["last_quality_update"], "last_quality_update"),
        relay_pubkey=relay_key,
        relay_success_count=_count(row["relay_success_count"], "relay_success_count"),
        last_relay_success=_opt_float(row["last_relay_success"], "last_relay_success"),
        attempts=_count(row["attempts"], "attempts"),
        attempt_pending=bool(_count(row["attempt_pending"], "attempt_pending")),
        last_latency_sample_ms=_opt_sample(row["last_latency_sample_ms"], "last_latency_sample_ms"),
    )
    return peer, entry
