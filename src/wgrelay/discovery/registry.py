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
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from wgrelay.keys import PublicKey
from wgrelay.proto.announce import Announcement
from wgrelay.proto.buffer import Endpoint
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


class RelayRegistry:
    def __init__(self) -> None:
        self._relays: dict[PublicKey, KnownRelay] = {}

    def add_bootstrap(self, key: PublicKey, endpoint: Endpoint) -> KnownRelay:
        old = self._relays.get(key)
        endpoints = (endpoint, *(e for e in (old.endpoints if old else ()) if e != endpoint))
        relay = (
            replace(old, endpoints=endpoints, bootstrap=True)
            if old
            else KnownRelay(key=key, endpoints=(endpoint,), bootstrap=True)
        )
        self._relays[key] = relay
        return relay

    def remove(self, key: PublicKey) -> bool:
        return self._relays.pop(key, None) is not None

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
        self._relays[info.key] = replace(
            base,
            endpoints=endpoints,
            region=info.region,
            capabilities=info.capabilities,
            load_pct=info.load_pct,
            max_sessions=info.max_sessions,
            announcement=ann.raw,
            issued_ms=ann.issued_ms,
            expires_ms=ann.expires_ms(),
        )
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
            del self._relays[k]
        return gone

    def record_rtt(self, key: PublicKey, rtt_ms: float) -> None:
        r = self._relays.get(key)
        if r is not None:
            # smoothed like TCP's SRTT so one slow answer does not reorder relays
            srtt = rtt_ms if r.rtt_ms is None else 0.75 * r.rtt_ms + 0.25 * rtt_ms
            self._relays[key] = replace(r, rtt_ms=srtt)

    def record_failure(self, key: PublicKey) -> None:
        r = self._relays.get(key)
        if r is not None:
            self._relays[key] = replace(r, failures=r.failures + 1)

    def record_success(self, key: PublicKey) -> None:
        r = self._relays.get(key)
        if r is not None:
            self._relays[key] = replace(r, successes=r.successes + 1, failures=0)

    def all(self) -> list[KnownRelay]:
        return list(self._relays.values())

    def __len__(self) -> int:
        return len(self._relays)


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


class RegistryStore:
    """The registry's SQLite file (``STATE_DIR/relays.db``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection = open_store(path, SCHEMA, SCHEMA_VERSION)

    def load(self) -> RelayRegistry:
        reg = RelayRegistry()
        rows = self._conn.execute(
            "SELECT key, endpoints, bootstrap, region, capabilities, load_pct, max_sessions,"
            " announcement, issued_ms, expires_ms, rtt_ms, failures, successes FROM relays"
        ).fetchall()
        for row in rows:
            try:
                relay = KnownRelay(
                    key=PublicKey.from_base64(row[0]),
                    endpoints=tuple((str(h), int(p)) for h, p in json.loads(row[1])),
                    bootstrap=bool(row[2]),
                    region=row[3],
                    capabilities=row[4],
                    load_pct=row[5],
                    max_sessions=row[6],
                    announcement=row[7],
                    issued_ms=row[8],
                    expires_ms=row[9],
                    rtt_ms=row[10],
                    failures=row[11],
                    successes=row[12],
                )
            except (ValueError, TypeError) as e:
                log.warning("%s: skipping a bad relay row: %s", self.path, e)
                continue
            reg._relays[relay.key] = relay
        return reg

    def save(self, reg: RelayRegistry) -> None:
        """Replace the stored registry in one transaction (all or nothing)."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM relays")
            self._conn.executemany(
                "INSERT INTO relays VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
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
                    for r in reg.all()
                ],
            )

    def close(self) -> None:
        self._conn.close()
