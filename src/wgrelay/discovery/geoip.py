"""A GeoIP prior for relays we have not measured yet (``up --geoip-db FILE``).

Before an agent has pinged a relay it knows nothing of its distance, and
without a prior every unmeasured relay scores the same. With a MaxMind-format
City database (GeoLite2-City, DB-IP City Lite, or one of your own, read by the
``maxminddb`` package) the agent estimates the RTT from its own public address
(as its home relay sees it) to a relay's address::

    rtt_ms ~= 5 + 3 * great_circle_km / 200

(light covers about 200 km per ms in fibre; real routes are about 1.5 times
the great circle, there and back). A measurement always replaces the prior.
"""

from __future__ import annotations

import ipaddress
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from wgrelay.discovery.registry import KnownRelay
from wgrelay.errors import ConfigError

EARTH_RADIUS_KM = 6371.0
FIBRE_KM_PER_MS = 200.0
ROUTE_STRETCH = 1.5
BASE_MS = 5.0


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rtt_estimate_ms(a: tuple[float, float], b: tuple[float, float]) -> float:
    return BASE_MS + 2 * ROUTE_STRETCH * great_circle_km(a, b) / FIBRE_KM_PER_MS


class GeoPrior:
    """Callable as a ``selection.RttPrior``; ``origin`` is our public address."""

    def __init__(self, path: Path) -> None:
        try:
            import maxminddb
        except ImportError:
            raise ConfigError(
                "--geoip-db needs the maxminddb package: pip install 'wgrelay[geoip]'"
            ) from None
        try:
            self._reader: Any = maxminddb.open_database(str(path))
        except FileNotFoundError:
            raise ConfigError(f"GeoIP database {path} not found") from None
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            raise ConfigError(f"GeoIP database {path} is not a MaxMind database: {e}") from None
        self.origin: str | None = None
        self._coords = lru_cache(maxsize=4096)(self._lookup)

    def _lookup(self, ip: str) -> tuple[float, float] | None:
        try:
            ipaddress.ip_address(ip)
            rec = self._reader.get(ip)
        except ValueError:  # not an address, or one the database cannot hold
            return None
        loc = rec.get("location") if isinstance(rec, dict) else None
        if not isinstance(loc, dict):
            return None
        lat, lon = loc.get("latitude"), loc.get("longitude")
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            return None
        return float(lat), float(lon)

    def coords(self, ip: str) -> tuple[float, float] | None:
        return self._coords(ip)

    def __call__(self, relay: KnownRelay) -> float | None:
        if self.origin is None:
            return None
        here, there = self._coords(self.origin), self._coords(relay.endpoint[0])
        if here is None or there is None:
            return None
        return rtt_estimate_ms(here, there)

    def close(self) -> None:
        self._reader.close()
