"""The text of ``start-relay --capacity`` and ``--min-share`` (contention.py shares by them)."""

from __future__ import annotations

import re

MAX_MIN_SHARE = 0.5
"""Above half, the reserve would let free riders displace contributors."""

_RATE_UNITS = {
    "": 1000.0,  # a bare number: KB/s, as --max-bandwidth
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "bit": 1 / 8,
    "kbit": 1e3 / 8,
    "mbit": 1e6 / 8,
    "gbit": 1e9 / 8,
}
_RATE = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,6}))?\s*([a-z]*)(?:/s)?")
MAX_CAPACITY_BYTES_PER_S = 10**11
"""100 GB/s (800 Gbit/s): far beyond one relay."""


def parse_capacity(text: str) -> int:
    """``--capacity``: bytes per second; 0 for ``off``/``none``/``0``.

    A bare number is KB/s like ``--max-bandwidth``; units are SI bytes
    (``B``, ``kB``, ``MB``, ``GB``) or bits (``bit``, ``kbit``, ``Mbit``,
    ``Gbit``), with or without ``/s``. ``ValueError`` with one line."""
    low = text.strip().lower()
    if low in ("off", "none"):
        return 0
    m = _RATE.fullmatch(low) if low.isascii() else None
    if m is None:
        raise ValueError(f"{text!r} is not a rate (for example 100Mbit/s, 12MB/s, or KB/s alone)")
    whole, frac, unit = m.groups()
    if unit not in _RATE_UNITS:
        raise ValueError(
            f"{text!r}: unit {unit!r} is not one of B, kB, MB, GB (bytes) or bit, kbit, "
            "Mbit, Gbit (bits), per second"
        )
    n = int(float(f"{whole}.{frac or '0'}") * _RATE_UNITS[unit])
    if n > MAX_CAPACITY_BYTES_PER_S:
        raise ValueError(f"{text!r} is more than 100 GB/s")
    if n == 0 and (whole != "0" or (frac and int(frac))):
        raise ValueError(f"{text!r} is less than a byte per second")
    return n


def parse_min_share(text: str) -> float:
    """``--min-share``: a fraction (0.25) or a percentage (25%) in (0, 0.5]."""
    t = text.strip()
    pct = t.endswith("%")
    num = t[:-1] if pct else t
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,6})?", num):
        raise ValueError(f"{text!r} is not a fraction (0.25) or a percentage (25%)")
    value = float(num) / (100.0 if pct else 1.0)
    if not 0.0 < value <= MAX_MIN_SHARE:
        raise ValueError(f"{text!r}: the minimum share is above 0 and at most 50%")
    return value
