"""RelayRegistry: the relays an agent knows about (the seed's discovery.rs).

Relays enter the registry in two ways: as **bootstrap relays** the operator
added (`wgrelay add-bootstrap-relay ENDPOINT PUB_KEY` or `up --relay`), which
never expire, and from **signed announcements** learned through discovery
responses, which expire at ``issued + ttl``. A newer announcement of the same
relay replaces an older one; an older or forged one is ignored. What the agent
measures (RTT, failures, successes) is kept beside each entry, so selection
can prefer relays that worked.

The registry is in memory and sans-I/O (time is passed in); ``RegistryStore``
persists it in SQLite under the state directory.

Several processes share one ``relays.db``: every agent (one per interface) and
``add-bootstrap-relay``, which an operator runs while agents are up. So a save
never replaces the table with one process's copy: the registry remembers what
this process changed (per relay, which facts) and removed, and the store merges
exactly that into the rows as they are now, in one transaction. Operator entries
are never lost: a relay once made a bootstrap relay stays one (only ``remove``
deletes it), and its operator-given endpoint stays first.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path

from wgrelay.endpoint import Endpoint
from wgrelay.errors import ConfigError, InvalidKey
from wgrelay.keys import PublicKey
from wgrelay.proto.announce import Announcement
from wgrelay.storage import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KnownRelay:
    key: PublicKey
    endpoints: tuple[Endpoint, ...]
    bootstrap: bool = False
    region: str = ""
    capabilities: int = 0
    load_pct: int | None = None
    max_sessions: int | None = None
    budget_left_pct: int | None = None
    """Percent of its operator's byte budget left, as last announced (None: no
    budget, or not announced since we started: not stored, it changes)."""
    announcement: bytes | None = None
    issued_ms: int | None = None
    expires_ms: int | None = None
    rtt_ms: float | None = None
    failures: int = 0
    successes: int = 0

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[0]

    def expired(self, now_ms: int) -> bool:
        return not self.bootstrap and self.expires_ms is not None and now_ms >= self.expires_ms


# What a process changed about a relay: the store merges these facts only.
BOOTSTRAP = "bootstrap"
"""The operator added it: its endpoint (first) and the bootstrap flag."""
ANNOUNCED = "announced"
"""A newer signed announcement: endpoints, region, capabilities, load, expiry."""
RTT = "rtt"
"""Our measurements: RTT, and the load a PONG reported."""
COUNTS = "counts"
"""failures and successes"""


@dataclass(frozen=True, slots=True)
class RegistryChanges:
    """What to write: the facts changed per relay, and the relays removed
    (``None``: on purpose; a time in ms: expired then, unless refreshed since)."""

    changed: dict[PublicKey, frozenset[str]] = field(default_factory=dict)
    removed: dict[PublicKey, int | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


class RelayRegistry:
    def __init__(self) -> None:
        self._relays: dict[PublicKey, KnownRelay] = {}
        self._changed: dict[PublicKey, set[str]] = {}
        self._removed: dict[PublicKey, int | None] = {}
        self._reached: dict[PublicKey, Endpoint] = {}
        """Where each relay last answered us (``reached_at``)."""

    def _touch(self, key: PublicKey, what: str) -> None:
        self._changed.setdefault(key, set()).add(what)
        self._removed.pop(key, None)

    def _drop(self, key: PublicKey, expired_at_ms: int | None) -> None:
        del self._relays[key]
        self._changed.pop(key, None)
        self._removed[key] = expired_at_ms

    def pending_changes(self) -> RegistryChanges:
        """What changed since the last ``saved`` (what a store must merge)."""
        return RegistryChanges(
            {k: frozenset(v) for k, v in self._changed.items()}, dict(self._removed)
        )

    def saved(self, changes: RegistryChanges) -> None:
        """``changes`` are stored; anything changed after they were taken stays pending."""
        for key, facts in changes.changed.items():
            left = self._changed.get(key, set()) - facts
            if left:
                self._changed[key] = left
            else:
                self._changed.pop(key, None)
        for key, when in changes.removed.items():
            if key in self._removed and self._removed[key] == when:
                del self._removed[key]

    def add_bootstrap(self, key: PublicKey, endpoint: Endpoint) -> KnownRelay:
        old = self._relays.get(key)
        endpoints = (endpoint, *(e for e in (old.endpoints if old else ()) if e != endpoint))
        relay = (
            replace(old, endpoints=endpoints, bootstrap=True)
            if old
            else KnownRelay(key=key, endpoints=(endpoint,), bootstrap=True)
        )
        self._relays[key] = relay
        self._touch(key, BOOTSTRAP)
        return relay

    def learn_endpoint(self, key: PublicKey, endpoint: Endpoint, expires_ms: int) -> bool:
        """A relay we only know by where a lookup said a peer is registered:
        usable until ``expires_ms`` (or until its announcement arrives), and
        not saved (nothing signed vouches for it). False if already known."""
        if key in self._relays:
            return False
        self._relays[key] = KnownRelay(key=key, endpoints=(endpoint,), expires_ms=expires_ms)
        return True

    def remove(self, key: PublicKey) -> bool:
        """Forget a relay, bootstrap or not (the store deletes it too)."""
        if key not in self._relays:
            return False
        self._drop(key, None)
        return True

    def register_relay(self, ann: Announcement) -> bool:
        """Learn from a verified announcement; True if it changed anything."""
        info = ann.info
        old = self._relays.get(info.key)
        if old is not None and old.issued_ms is not None and old.issued_ms >= ann.issued_ms:
            return False
        base = old or KnownRelay(key=info.key, endpoints=info.endpoints)
        endpoints = info.endpoints
        if old is not None and old.bootstrap:
            # keep the operator's endpoint first: it is known to be reachable
            endpoints = old.endpoints[:1] + tuple(e for e in info.endpoints if e != old.endpoint)
        endpoints = _first(endpoints, self._reached.get(info.key))
        self._relays[info.key] = replace(
            base,
            endpoints=endpoints,
            region=info.region,
            capabilities=info.capabilities,
            load_pct=info.load_pct,
            max_sessions=info.max_sessions,
            budget_left_pct=info.budget_left_pct,
            announcement=ann.raw,
            issued_ms=ann.issued_ms,
            expires_ms=ann.expires_ms(),
        )
        self._touch(info.key, ANNOUNCED)
        return True

    def get(self, key: PublicKey) -> KnownRelay | None:
        return self._relays.get(key)

    def get_available_relays(
        self, now_ms: int, region: str = "", required_caps: int = 0
    ) -> list[KnownRelay]:
        out = []
        for r in self._relays.values():
            if r.expired(now_ms):
                continue
            if region and r.region and r.region != region:
                continue
            if r.capabilities & required_caps != required_caps and not r.bootstrap:
                continue
            out.append(r)
        return out

    def expire(self, now_ms: int) -> list[PublicKey]:
        gone = [k for k, r in self._relays.items() if r.expired(now_ms)]
        for k in gone:
            self._drop(k, now_ms)
        return gone

    def record_rtt(self, key: PublicKey, rtt_ms: float) -> None:
        r = self._relays.get(key)
        if r is not None:
            # smoothed like TCP's SRTT so one slow answer does not reorder relays
            srtt = rtt_ms if r.rtt_ms is None else 0.75 * r.rtt_ms + 0.25 * rtt_ms
            self._relays[key] = replace(r, rtt_ms=srtt)
            self._touch(key, RTT)

    def record_load(self, key: PublicKey, load_pct: int) -> None:
        """The load a relay reported in a PONG: fresher than its announcement's
        (kept with the RTT: both are measurements of ours)."""
        r = self._relays.get(key)
        if r is not None and r.load_pct != load_pct:
            self._relays[key] = replace(r, load_pct=load_pct)
            self._touch(key, RTT)

    def reached_at(self, key: PublicKey, endpoint: Endpoint) -> None:
        """The relay answered at ``endpoint``: put it first, here and in later
        announcements, so what names a relay's address (status, metrics, MTU
        advice, the next start) names the one that works, not the first one
        announced. Saved with the next change of the relay's endpoints."""
        r = self._relays.get(key)
        if r is None or endpoint not in r.endpoints:
            return
        self._reached[key] = endpoint
        if r.endpoints[0] != endpoint:
            self._relays[key] = replace(r, endpoints=_first(r.endpoints, endpoint))

    def record_failure(self, key: PublicKey) -> None:
        r = self._relays.get(key)
        if r is not None:
            self._relays[key] = replace(r, failures=r.failures + 1)
            self._touch(key, COUNTS)

    def record_success(self, key: PublicKey) -> None:
        r = self._relays.get(key)
        if r is not None:
            self._relays[key] = replace(r, successes=r.successes + 1, failures=0)
            self._touch(key, COUNTS)

    def all(self) -> list[KnownRelay]:
        return list(self._relays.values())

    def __len__(self) -> int:
        return len(self._relays)


def _first(endpoints: tuple[Endpoint, ...], first: Endpoint | None) -> tuple[Endpoint, ...]:
    if first is None or first not in endpoints:
        return endpoints
    return (first, *(e for e in endpoints if e != first))


# ---------------------------------------------------------------- persistence

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS relays (
    key TEXT PRIMARY KEY,
    endpoints TEXT NOT NULL,
    bootstrap INTEGER NOT NULL,
    region TEXT NOT NULL,
    capabilities INTEGER NOT NULL,
    load_pct INTEGER,
    max_sessions INTEGER,
    announcement BLOB,
    issued_ms INTEGER,
    expires_ms INTEGER,
    rtt_ms REAL,
    failures INTEGER NOT NULL,
    successes INTEGER NOT NULL
)
"""


_COLUMNS = (
    "key, endpoints, bootstrap, region, capabilities, load_pct, max_sessions,"
    " announcement, issued_ms, expires_ms, rtt_ms, failures, successes"
)


class RegistryStore:
    """The registry's SQLite file (``STATE_DIR/relays.db``), shared by processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection = open_store(path, SCHEMA, SCHEMA_VERSION)

    def load(self) -> RelayRegistry:
        """Every usable row; a bad one is skipped and named (file, row, key, why)."""
        reg = RelayRegistry()
        try:
            rows = self._conn.execute(f"SELECT rowid, {_COLUMNS} FROM relays").fetchall()  # noqa: S608 (constant)
        except sqlite3.Error as e:  # open_store checked the file; this is I/O or a lock
            raise ConfigError(f"cannot read relays from {self.path}: {e}") from None
        for rowid, *row in rows:
            try:
                relay = relay_from_row(tuple(row))
            except ValueError as e:
                log.warning(
                    "%s: skipping relay row %d (key %.48r): %s", self.path, rowid, row[0], e
                )
                continue
            reg._relays[relay.key] = relay
        return reg

    def save(self, reg: RelayRegistry) -> None:
        """Merge what ``reg`` changed into the file, in one transaction.

        Rows this process did not change or remove are left as they are, so a
        bootstrap relay added by another process meanwhile survives.
        """
        changes = reg.pending_changes()
        if not changes:
            return
        try:
            self._merge(reg, changes)
        except sqlite3.Error as e:  # rolled back: the file holds what it held
            raise ConfigError(f"cannot save relays to {self.path}: {e}") from None
        reg.saved(changes)

    def _merge(self, reg: RelayRegistry, changes: RegistryChanges) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for key, expired_at in changes.removed.items():
                if expired_at is None:
                    self._conn.execute("DELETE FROM relays WHERE key = ?", (str(key),))
                else:  # unless it became a bootstrap relay or was refreshed meanwhile
                    self._conn.execute(
                        "DELETE FROM relays WHERE key = ? AND bootstrap = 0"
                        " AND expires_ms IS NOT NULL AND expires_ms <= ?",
                        (str(key), expired_at),
                    )
            for key, facts in changes.changed.items():
                ours = reg.get(key)
                if ours is None:
                    continue
                row = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM relays WHERE key = ?",  # noqa: S608 (constant)
                    (str(key),),
                ).fetchone()
                merged = ours if row is None else merge_relay(row, ours, facts)
                self._conn.execute(
                    "INSERT OR REPLACE INTO relays VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    relay_to_row(merged),
                )

    def close(self) -> None:
        self._conn.close()


def merge_relay(row: tuple[object, ...], ours: KnownRelay, facts: frozenset[str]) -> KnownRelay:
    """The stored row with the facts this process changed laid over it."""
    try:
        stored = relay_from_row(row)
    except ValueError:  # a bad row of the same key: ours replaces it, keeping its flag
        return replace(ours, bootstrap=ours.bootstrap or row[2] == 1)
    merged = stored
    endpoints = stored.endpoints
    if ANNOUNCED in facts and (stored.issued_ms or -1) < (ours.issued_ms or -1):
        merged = replace(
            merged,
            region=ours.region,
            capabilities=ours.capabilities,
            load_pct=ours.load_pct,
            max_sessions=ours.max_sessions,
            announcement=ours.announcement,
            issued_ms=ours.issued_ms,
            expires_ms=ours.expires_ms,
        )
        endpoints = ours.endpoints
        if stored.bootstrap:  # the operator's endpoint stays first
            endpoints = (stored.endpoint, *(e for e in endpoints if e != stored.endpoint))
    if BOOTSTRAP in facts:  # ours carries the endpoint the operator just gave first
        endpoints = (*ours.endpoints, *(e for e in endpoints if e not in ours.endpoints))
    if RTT in facts:
        merged = replace(merged, rtt_ms=ours.rtt_ms, load_pct=ours.load_pct)
    if COUNTS in facts:
        merged = replace(merged, failures=ours.failures, successes=ours.successes)
    return replace(merged, endpoints=endpoints, bootstrap=stored.bootstrap or ours.bootstrap)


def relay_to_row(r: KnownRelay) -> tuple[object, ...]:
    return (
        str(r.key),
        json.dumps([list(e) for e in r.endpoints]),
        int(r.bootstrap),
        r.region,
        r.capabilities,
        r.load_pct,
        r.max_sessions,
        r.announcement,
        r.issued_ms,
        r.expires_ms,
        r.rtt_ms,
        r.failures,
        r.successes,
    )


def relay_from_row(row: tuple[object, ...]) -> KnownRelay:
    """Decode a row, checking every column (SQLite stores any type anywhere);
    ``ValueError`` says which column is wrong."""
    if len(row) != 13:
        raise ValueError(f"{len(row)} columns, expected 13")
    key, endpoints, bootstrap, region, caps, load, max_sessions, ann, issued, expires = row[:10]
    rtt, failures, successes = row[10:]
    if not isinstance(key, str):
        raise ValueError("key is not text")
    try:
        public = PublicKey.from_base64(key, "key")
    except InvalidKey as e:
        raise ValueError(str(e)) from None
    if not isinstance(region, str):
        raise ValueError("region is not text")
    if ann is not None and not isinstance(ann, bytes):
        raise ValueError("announcement is not a blob")
    if rtt is not None and (not isinstance(rtt, int | float) or not math.isfinite(rtt) or rtt < 0):
        raise ValueError(f"rtt_ms {rtt!r} is not a time")
    return KnownRelay(
        key=public,
        endpoints=_endpoints(endpoints),
        bootstrap=_int(bootstrap, "bootstrap") != 0,
        region=region,
        capabilities=_int(caps, "capabilities"),
        load_pct=_opt_int(load, "load_pct"),
        max_sessions=_opt_int(max_sessions, "max_sessions"),
        announcement=ann,
        issued_ms=_opt_int(issued, "issued_ms"),
        expires_ms=_opt_int(expires, "expires_ms"),
        rtt_ms=None if rtt is None else float(rtt),
        failures=_int(failures, "failures"),
        successes=_int(successes, "successes"),
    )


def _int(value: object, column: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{column} {value!r} is not an integer")
    return value


def _opt_int(value: object, column: str) -> int | None:
    return None if value is None else _int(value, column)


def _endpoints(text: object) -> tuple[Endpoint, ...]:
    try:
        items = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        items = None
    if not isinstance(items, list) or not items:
        raise ValueError(f"endpoints {text!r:.60} is not a list of [address, port]")
    out: list[Endpoint] = []
    for item in items:
        ok = isinstance(item, list) and len(item) == 2
        host, port = item if ok else (None, None)
        try:
            ok = ok and isinstance(host, str) and bool(ipaddress.ip_address(host))
        except ValueError:
            ok = False
        if not ok or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"endpoints: {item!r:.60} is not [address, port]")
        out.append((str(host), port))
    return tuple(out)
