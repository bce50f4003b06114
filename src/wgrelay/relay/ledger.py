"""The credit ledger: verified receipts and operator claims, and balances.

Theory of operation
-------------------
Relaying earns credit for the mesh member who runs the relay; being relayed
spends it. Nothing is taken on a relay's word:

* A **receipt** (proto/receipts.py) is signed by the peer a relay served,
  with its WireGuard key (XEdDSA): "relay R carried N bytes of session S for
  me, counting both directions, as of request number seq". N is cumulative
  for the session, so only the newest receipt per (relay, peer, session)
  counts, and a receipt is stored only if it moves that record forward (a
  higher seq, and never fewer bytes): a replayed or older receipt adds
  nothing and is refused (counted by reason).
* An **operator claim** is signed by a member ("I run relay R") and endorsed
  by R's own key (the relay was started with it: ``start-relay
  --operator-claim``). The newest claim per relay wins (a relay changing
  hands).

**Balance** of a member, over the last ``window_days`` (30) of receipts by
their signing time (older ones are forgotten, which also bounds the file)::

    earned = sum over each signer S of
                 min(cap, bytes S acknowledged to the relays the member runs)
    used   = bytes in the receipts the member signed
    balance = earned - used

Each side of a session signs for the whole session (what it sent plus what
it received), so a relay that carries a session between two members who
both sign earns the session's bytes once for each member it served, and
each of them pays for it: credit moves between members, the sum of all
balances is zero but for the caps.

**Cheap anti-abuse.** A receipt counts only if its signer is allowed by this
relay's access policy (a key outside the mesh cannot mint credit), and
``cap`` limits what one signer can give one member per window, however many
relays that member runs (relay keys cost nothing: a cap per relay would let
an operator of k relays take k caps from each friend), so two colluding
keys (an operator and a sock puppet signing made-up receipts) can move at
most ``cap`` a window. The cap is filled relay by relay in key order, so
each relay's share and the total agree at every relay.

**Sums in memory.** A statement reads no receipt: the ledger keeps, per
(relay, signer), the sum of the signer's receipts there (each at most
``cap``) and their number, and per signer what it used, loaded once when the
file is opened and moved by every receipt stored, replaced or forgotten.
Summed in SQL at each lookup, one balance of the operator of a relay with
1,000 receipts cost 1.6 ms (16 ms at 10,000), and contention looks up every
session's members every 10 s and any allowed key may ask (CREDIT_QUERY):
the relay's event loop stalled for that long. Now a statement costs one
dict entry per signer of the member's relays.

Sums that can grow past 2^63 are taken in Python integers, and counts and
times are bounded on the way in (``MAX_BYTES``, ``MAX_TIME_MS``): SQLite stores signed 64-bit
integers and its ``sum()`` raises on overflow, so a signer's huge counts
would otherwise make every statement that includes them fail.
docs/ARCHITECTURE.md lists what this does not stop.

The ledger is sans-I/O except for its SQLite file (``STATE_DIR/credits.db``,
or in memory for the simulator): time is given, never read.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from wgrelay.errors import ConfigError
from wgrelay.keys import PublicKey
from wgrelay.proto.receipts import Claim, Receipt
from wgrelay.storage import open_store

CREDITS_APPLICATION_ID = 0x77677243 + 0x10  # "wgrS": the credit ledger
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    relay BLOB NOT NULL,
    peer BLOB NOT NULL,
    session BLOB NOT NULL,
    seq INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (relay, peer, session)
);
CREATE INDEX IF NOT EXISTS receipts_by_peer ON receipts (peer);
CREATE TABLE IF NOT EXISTS claims (
    relay BLOB PRIMARY KEY,
    member BLOB NOT NULL,
    issued_ms INTEGER NOT NULL,
    member_signature BLOB NOT NULL,
    relay_signature BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_by_member ON claims (member);
"""
WINDOW_DAYS = 30
DAY_MS = 86_400_000
MAX_CREDIT_PER_SIGNER = 100 * 10**9
"""What one signer can credit one member in a window (100 GB, over all the
relays the member runs): a generous month of one member's relayed traffic,
and the most two colluding keys can mint per window."""
MAX_BYTES = 2**56
"""The most a receipt can acknowledge (72 PB: years of a 1 Gbit/s session);
more is refused (implausible): no count a peer signs can overflow the store."""
MAX_TIME_MS = 2**62
"""Times beyond this (the year 146 million) are refused as from the future
even before the ledger knows the time (SQLite integers are signed 64-bit)."""
MAX_FUTURE_MS = 600_000
"""A receipt signed more than 10 minutes ahead of our clock is refused (it
would outlive the window)."""


class Refusal(StrEnum):
    """Why a receipt or claim was not stored (metrics: credits_refused_total)."""

    BAD_SIGNATURE = "bad_signature"
    WRONG_RELAY = "wrong_relay"
    """Not about the relay that handed it to us (or an unknown relay)."""
    NOT_ALLOWED = "not_allowed"
    """Signed by a key this relay's access policy does not allow."""
    REPLAYED = "replayed"
    """Not newer than the receipt held for its session (seq)."""
    LOWER_COUNT = "lower_count"
    """Newer, but acknowledging fewer bytes than before."""
    IMPLAUSIBLE = "implausible"
    """Acknowledging more than ``MAX_BYTES``."""
    OVER_CLAIM = "over_claim"
    """More bytes, or another request, than we asked the peer to sign."""
    EXPIRED = "expired"
    FUTURE = "future"
    MISDATED = "misdated"
    """From the peer itself, but not signed within the clock skew of now."""
    PRIVATE = "private"
    """About a session this relay carries on a private path (never receipted)."""
    STALE_CLAIM = "stale_claim"
    """A claim older than the one held for its relay."""
    DUPLICATE = "duplicate"
    """Exactly what we hold (gossip brings records more than once): not
    stored, and not counted as a refusal (``duplicates``)."""


@dataclass(frozen=True, slots=True)
class Earning:
    relay: PublicKey
    nbytes: int
    receipts: int


@dataclass(frozen=True, slots=True)
class Statement:
    """A member's balance and how it came about (``wgrelay credits``)."""

    member: PublicKey
    earned: int
    used: int
    used_receipts: int
    relays: tuple[Earning, ...]

    @property
    def balance(self) -> int:
        return self.earned - self.used


class Ledger:
    """Verified receipts and claims, in ``credits.db`` (``path``) or in memory."""

    def __init__(
        self,
        path: Path | None,
        allows: Callable[[bytes], bool] = lambda _key: True,
        window_days: int = WINDOW_DAYS,
        cap: int = MAX_CREDIT_PER_SIGNER,
    ) -> None:
        self.path = path
        self.allows = allows
        """The relay's access policy: only receipts its members sign count."""
        self.window_days = window_days
        self.cap = cap
        self.refused: Counter[str] = Counter()
        self.stored = 0
        self.duplicates = 0
        """Receipts we already held exactly (gossip brings them more than once)."""
        self._now_ms = 0
        self._balances: dict[bytes, int] = {}
        self._earned: dict[bytes, dict[bytes, list[int]]] = {}
        """relay -> signer -> [its receipts' bytes there, each at most cap; their number]."""
        self._used: dict[bytes, list[int]] = {}
        """signer -> [bytes of the receipts it signed; their number]."""
        if path is None:
            self._conn = sqlite3.connect(":memory:", isolation_level=None)
            self._conn.executescript(SCHEMA)
        else:
            self._conn = open_store(path, SCHEMA, SCHEMA_VERSION, CREDITS_APPLICATION_ID)
            # a receipt is stored on the relay's event loop: WAL with NORMAL
            # syncs at checkpoints, not at each receipt. A power cut may
            # lose the last receipts, which the next ones supersede (they
            # are cumulative); an application crash loses nothing
            self._conn.execute("PRAGMA synchronous=NORMAL")
        for relay, peer, nbytes in self._conn.execute("SELECT relay, peer, bytes FROM receipts"):
            self._count(bytes(relay), bytes(peer), int(nbytes), 1)

    def _count(self, relay: bytes, peer: bytes, nbytes: int, sign: int) -> None:
        """A receipt row stored (``sign`` 1) or gone (-1): the sums follow."""
        at = self._earned.setdefault(relay, {}).setdefault(peer, [0, 0])
        at[0] += sign * min(nbytes, self.cap)
        at[1] += sign
        if not at[1]:
            del self._earned[relay][peer]
            if not self._earned[relay]:
                del self._earned[relay]
        used = self._used.setdefault(peer, [0, 0])
        used[0] += sign * nbytes
        used[1] += sign
        if not used[1]:
            del self._used[peer]

    # ------------------------------------------------------------ time

    def tick(self, now_ms: int) -> int:
        """Follow the wall clock; forget receipts that left the window.
        Returns how many were forgotten."""
        self._now_ms = now_ms
        cut = now_ms - self.window_days * DAY_MS
        try:
            with self._conn:
                # (not DELETE ... RETURNING: SQLite 3.35, newer than some
                # distributions' Python has; only this process writes)
                gone = self._conn.execute(
                    "SELECT relay, peer, bytes FROM receipts WHERE time_ms < ?", (cut,)
                ).fetchall()
                if gone:
                    self._conn.execute("DELETE FROM receipts WHERE time_ms < ?", (cut,))
        except sqlite3.Error as e:
            raise ConfigError(f"cannot update the credit ledger {self.path}: {e}") from None
        for relay, peer, nbytes in gone:
            self._count(bytes(relay), bytes(peer), int(nbytes), -1)
        n = len(gone)
        if n:
            self._balances.clear()
        return max(n, 0)

    # ------------------------------------------------------------ receipts

    def check_receipt(self, r: Receipt) -> Refusal | None:
        """Everything but the record's place in its session's history."""
        if self._future(r.time_ms):
            return Refusal.FUTURE
        if self._now_ms and r.time_ms < self._now_ms - self.window_days * DAY_MS:
            return Refusal.EXPIRED
        if r.nbytes > MAX_BYTES:
            return Refusal.IMPLAUSIBLE
        if not self.allows(r.peer.raw):
            return Refusal.NOT_ALLOWED
        if not r.verify():
            return Refusal.BAD_SIGNATURE
        return None

    def _future(self, time_ms: int) -> bool:
        if time_ms > MAX_TIME_MS:
            return True
        return bool(self._now_ms) and time_ms > self._now_ms + MAX_FUTURE_MS

    def held(self, r: Receipt) -> tuple[int, int] | None:
        """(seq, bytes) of the receipt held for ``r``'s session, if any."""
        row = self._conn.execute(
            "SELECT seq, bytes FROM receipts WHERE relay = ? AND peer = ? AND session = ?",
            (r.relay.raw, r.peer.raw, r.session_id),
        ).fetchone()
        return (int(row[0]), int(row[1])) if row is not None else None

    def add_receipt(self, r: Receipt) -> Refusal | None:
        """Verify and store; None when stored (news), else why not (counted;
        an exact copy of what we hold is DUPLICATE, counted apart)."""
        held = self.held(r)
        if held is not None and held == (r.seq, r.nbytes):
            self.duplicates += 1
            return Refusal.DUPLICATE
        refusal = self.check_receipt(r)
        if refusal is None and held is not None:
            if r.seq <= held[0]:
                refusal = Refusal.REPLAYED
            elif r.nbytes < held[1]:
                refusal = Refusal.LOWER_COUNT
        if refusal is not None:
            self.refused[refusal] += 1
            return refusal
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.relay.raw,
                        r.peer.raw,
                        r.session_id,
                        r.seq,
                        r.nbytes,
                        r.time_ms,
                        r.signature,
                    ),
                )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot update the credit ledger {self.path}: {e}") from None
        if held is not None:
            self._count(r.relay.raw, r.peer.raw, held[1], -1)
        self._count(r.relay.raw, r.peer.raw, r.nbytes, 1)
        self.stored += 1
        self._balances.clear()
        return None

    def refuse(self, refusal: Refusal) -> None:
        """Count a refusal decided before the ledger saw the receipt."""
        self.refused[refusal] += 1

    def receipts_count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM receipts").fetchone()[0])

    # ------------------------------------------------------------ claims

    def add_claim(self, c: Claim) -> Refusal | None:
        row = self._conn.execute(
            "SELECT issued_ms FROM claims WHERE relay = ?", (c.relay.raw,)
        ).fetchone()
        if row is not None and int(row[0]) >= c.issued_ms:
            if int(row[0]) > c.issued_ms:
                self.refused[Refusal.STALE_CLAIM] += 1
                return Refusal.STALE_CLAIM
            return Refusal.DUPLICATE
        if self._future(c.issued_ms):
            # (one issued far ahead could never be replaced by the relay's
            # next owner, and past 2^63 it does not fit the store)
            self.refused[Refusal.FUTURE] += 1
            return Refusal.FUTURE
        if not c.verify():
            self.refused[Refusal.BAD_SIGNATURE] += 1
            return Refusal.BAD_SIGNATURE
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                    (
                        c.relay.raw,
                        c.member.raw,
                        c.issued_ms,
                        c.member_signature,
                        c.relay_signature,
                    ),
                )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot update the credit ledger {self.path}: {e}") from None
        self._balances.clear()
        return None

    def operator_of(self, relay: PublicKey) -> PublicKey | None:
        row = self._conn.execute("SELECT member FROM claims WHERE relay = ?", (relay.raw,))
        found = row.fetchone()
        return PublicKey(bytes(found[0])) if found is not None else None

    def claims(self) -> list[Claim]:
        rows = self._conn.execute("SELECT member, relay, issued_ms, member_signature,"
                                  " relay_signature FROM claims ORDER BY relay")  # fmt: skip
        return [
            Claim(PublicKey(bytes(m)), PublicKey(bytes(r)), int(t), bytes(ms), bytes(rs))
            for m, r, t, ms, rs in rows
        ]

    # ------------------------------------------------------------ balances

    def statement(self, member: bytes) -> Statement:
        relays: list[Earning] = []
        left: dict[bytes, int] = {}  # signer -> what it can still give member
        for (relay,) in self._conn.execute(
            "SELECT relay FROM claims WHERE member = ? ORDER BY relay", (member,)
        ).fetchall():
            earned = n = 0
            for peer, (nbytes, count) in self._earned.get(bytes(relay), {}).items():
                room = left.get(peer, self.cap)
                take = min(room, nbytes)
                left[peer] = room - take
                earned += take
                n += count
            relays.append(Earning(PublicKey(bytes(relay)), earned, n))
        used, n_used = self._used.get(member, (0, 0))
        relays.sort(key=lambda e: (-e.nbytes, e.relay.raw))
        return Statement(
            PublicKey(member), sum(e.nbytes for e in relays), used, n_used, tuple(relays)
        )

    def balance(self, member: bytes) -> int:
        """Bytes earned by the relays ``member`` runs minus bytes it used,
        over the window (cached until the ledger changes): the contention
        code's CreditSource."""
        b = self._balances.get(member)
        if b is None:
            b = self._balances[member] = self.statement(member).balance
        return b

    def close(self) -> None:
        self._conn.close()
