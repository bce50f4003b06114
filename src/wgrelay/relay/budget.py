"""The operator's byte budget (``start-relay --budget 500GB/month``).

A volunteer relay states its terms: so many bytes per calendar period (UTC
day, ISO week starting Monday, or month). Everything the relay forwards counts
against it, both directions, whatever the path: framed frames, port mode's
session ports and the kernel offload's counters all end in the sessions' byte
counts, which the core adds up once a second (``RelayCoreState.count_budget``).

When the budget is spent the relay refuses new sessions (RESOURCE_LIMIT,
quota ``budget``) and closes the ones it carries: a WireGuard session never
ends by itself while its tunnel is used (keepalives keep it from idling), so
letting sessions finish would let one tunnel spend the operator's bandwidth
for the rest of the period. The overshoot is at most about one second of
traffic (the accounting tick, and the offload counters' poll). The relay
announces what is left (``budget_left_pct``, capability BUDGET) so agents
choose other relays before they are refused.

The count survives restarts: ``BudgetStore`` keeps it in ``budget.db`` in
the state directory (the shell saves it every few seconds and at exit). A
stored count of another period, or of another period unit, is not carried
over: a new period starts at zero.

Sans-I/O: the meter is given the wall clock, it never reads it.
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from wgrelay.errors import ConfigError
from wgrelay.storage import open_store

BUDGET_APPLICATION_ID = 0x77677242  # "wgrB": a relay's byte budget
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    period TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    used INTEGER NOT NULL
)
"""
SAVE_INTERVAL_S = 5.0
"""How often the shell writes the count (and once more at exit): a crash
forgets at most this long of traffic."""

MAX_BUDGET_BYTES = 10**18
"""1 EB: far beyond any real budget, and well inside SQLite's integers."""


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
_BUDGET = re.compile(r"([0-9]{1,15})(?:\.([0-9]{1,6}))?\s*([a-z]*)\s*/\s*([a-z]+)")


@dataclass(frozen=True, slots=True)
class Budget:
    bytes: int
    period: Period

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)}/{self.period}"


def parse_budget(text: str) -> Budget:
    """``SIZE/PERIOD``: ``500GB/month``, ``20GB/day``, ``1.5TB/week``.

    SI units (B, kB, MB, GB, TB, PB: powers of 1000); ``ValueError`` with
    one line saying what is wrong."""
    m = _BUDGET.fullmatch(text.strip().lower()) if text.isascii() else None
    if m is None:
        raise ValueError(f"{text!r} is not SIZE/PERIOD (for example 500GB/month)")
    whole, frac, unit, period = m.groups()
    if unit not in _UNITS:
        raise ValueError(f"{text!r}: unit {unit or '(none)'!r} is not one of B, kB, MB, GB, TB, PB")
    try:
        per = Period(period)
    except ValueError:
        raise ValueError(f"{text!r}: the period is day, week or month, not {period!r}") from None
    frac = frac or ""
    n = (int(whole) * 10 ** len(frac) + int(frac or "0")) * _UNITS[unit] // 10 ** len(frac)
    if n < 1:
        raise ValueError(f"{text!r} is no budget at all (leave --budget out for none)")
    if n > MAX_BUDGET_BYTES:
        raise ValueError(f"{text!r} is more than 1000PB")
    return Budget(n, per)


def format_bytes(n: int) -> str:
    """The largest SI unit that shows ``n`` exactly (``500GB``), else bytes."""
    for unit in ("PB", "TB", "GB", "MB", "kB"):
        size = _UNITS[unit.lower()]
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def period_bounds(period: Period, wall: float) -> tuple[int, int]:
    """(start, end) of the UTC calendar period holding ``wall``, Unix seconds."""
    t = datetime.fromtimestamp(math.floor(wall), UTC)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        start, end = day, day + timedelta(days=1)
    elif period is Period.WEEK:
        start = day - timedelta(days=day.weekday())  # Monday (ISO 8601)
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    return int(start.timestamp()), int(end.timestamp())


class BudgetMeter:
    """Bytes relayed in the current period against the budget."""

    def __init__(self, budget: Budget, wall: float, used: int = 0) -> None:
        self.budget = budget
        self.period_start, self.period_end = period_bounds(budget.period, wall)
        self.used = used

    def roll(self, wall: float) -> bool:
        """Follow the calendar: True when ``wall`` is in another period (the
        count starts again). A clock stepped back across a boundary starts
        a period too: the period is always the one the clock says."""
        start, end = period_bounds(self.budget.period, wall)
        if start == self.period_start:
            return False
        self.period_start, self.period_end = start, end
        self.used = 0
        return True

    def add(self, nbytes: int, wall: float) -> None:
        self.roll(wall)
        self.used += nbytes

    @property
    def left(self) -> int:
        return max(0, self.budget.bytes - self.used)

    @property
    def spent(self) -> bool:
        return self.used >= self.budget.bytes

    @property
    def left_pct(self) -> int:
        """0..100, rounded up: 0 only when nothing is left at all."""
        return -(-self.left * 100 // self.budget.bytes)

    def spent_detail(self) -> str:
        """Why a session is refused, for the agent (an ERROR's detail)."""
        until = datetime.fromtimestamp(self.period_end, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"budget {self.budget} spent until {until}"


class BudgetStore:
    """``STATE_DIR/budget.db``: the current period's count, one row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_store(path, SCHEMA, SCHEMA_VERSION, BUDGET_APPLICATION_ID)

    def restore(self, meter: BudgetMeter) -> bool:
        """Take the stored count if it is of the meter's period; True if taken."""
        try:
            row = self._conn.execute(
                "SELECT period, period_start, used FROM budget WHERE id = 1"
            ).fetchone()
        except sqlite3.Error as e:
            raise ConfigError(f"cannot read the budget from {self.path}: {e}") from None
        if row is None:
            return False
        period, start, used = row
        if (
            period != meter.budget.period
            or start != meter.period_start
            or not isinstance(used, int)
            or used < 0
        ):
            return False
        meter.used = used
        return True

    def save(self, meter: BudgetMeter) -> None:
        try:
            with self._conn:
                self._conn.execute(
                    "INSERT OR REPLACE INTO budget VALUES (1, ?, ?, ?)",
                    (str(meter.budget.period), meter.period_start, meter.used),
                )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot save the budget to {self.path}: {e}") from None

    def close(self) -> None:
        self._conn.close()
