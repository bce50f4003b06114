"""Choosing the home relay and keeping a standby (plan.py has the theory of
operation): measure the best known relays, register at the best that answers,
keep the next best registered as standby, promote it when the home is lost."""

from __future__ import annotations

import logging

from wgrelay.client.events import (
    HomeChanged,
    RelayMeasured,
    RttMeasured,
)
from wgrelay.client.link import LinkState, Role
from wgrelay.client.plan_links import LinkPool
from wgrelay.client.plan_state import Homing
from wgrelay.endpoint import endpoint_str
from wgrelay.keys import PublicKey

log = logging.getLogger(__name__)


class HomePlanner(LinkPool):
    def _choose_home(self, now: float) -> None:
        if self._closed or self._homing is not None:
            return
        relays = self.available(now)
        if not relays:
            log.warning("no relay known: add one with add-bootstrap-relay or --relay")
            self._set_home(None, now)
            self._rehome_at = now + self._rehome_backoff()
            return
        measure = relays[: self.config.measure_count]
        homing = Homing(measuring=set(), measure_deadline=now + self.config.measure_timeout_s)
        self._homing = homing
        for relay in measure:
            link = self._link(relay.key, now)
            if link is None:
                continue
            link.ping(now)
            homing.measuring.add(relay.key)
        if not homing.measuring:
            self._register_next_home(now)

    def _on_pong(self, key: PublicKey, ev: RttMeasured, now: float) -> None:
        homing = self._homing
        if homing is not None and key in homing.measuring:
            homing.measuring.discard(key)
            if not homing.measuring:
                self._register_next_home(now)
        carried = self._carried(key)
        if carried:
            self._events.append(RelayMeasured(key, ev.rtt_s, carried))

    def _register_next_home(self, now: float) -> None:
        homing = self._homing
        if homing is None:
            return
        for relay in self.available(now):
            if relay.key in homing.tried:
                continue
            link = self._link(relay.key, now)
            if link is None:
                continue
            homing.tried.add(relay.key)
            homing.trying = relay.key
            homing.deadline = now + self.config.connect_timeout_s
            if link.state == LinkState.REGISTERED:
                self._homing = None
                self._set_home(relay.key, now)
            else:
                link.set_role(Role.HOME, now)
                link.connect(now)
            return
        self._homing = None
        self._set_home(None, now)
        log.warning("no home relay reachable; retrying in %.0f s", self.config.rehome_retry_s)
        self._rehome_at = now + self._rehome_backoff()

    def _promote_standby(self, now: float) -> bool:
        """The home is down: the standby, already registered, takes over."""
        key = self.standby
        link = self.link(key) if key is not None else None
        if key is None or link is None or link.state != LinkState.REGISTERED:
            return False
        log.warning(
            "home relay %s down; standby %s takes over",
            self.home.short() if self.home else "?",
            key.short(),
        )
        self.standby = None
        self._set_home(key, now)
        return True

    def _choose_standby(self, now: float) -> None:
        """Register at the best relay that is not home, for failover."""
        if self._closed or self.home is None or not self.config.standby:
            return
        for relay in self.available(now):
            if relay.key == self.home:
                continue
            link = self._link(relay.key, now)
            if link is None or link.state in (LinkState.LOST, LinkState.REJECTED):
                continue
            self.standby = relay.key
            log.info("standby relay %s", relay.key.short())
            link.set_role(Role.STANDBY, now)
            link.connect(now)
            self._touch(relay.key, now)
            return

    def _rehome_backoff(self) -> float:
        """Exponential with jitter, so a mesh restarting at once does not
        stampede its bootstrap relays in step (the seed's risk table)."""
        c = self.config
        delay: float = min(c.rehome_retry_s * 2.0**self._rehome_failures, c.rehome_retry_max_s)
        self._rehome_failures += 1
        jitter = int.from_bytes(self._rng(2), "big") / 65535.0  # 0..1
        return delay * (1.0 - c.retry_jitter + 2 * c.retry_jitter * jitter)

    def _home_failed(self, key: PublicKey, why: str, now: float) -> None:
        log.info("relay %s unusable as home: %s", key.short(), why)
        self.registry.record_failure(key)
        if why == "no answer":
            self._next_endpoint(key)
        link = self.link(key)
        if link is not None:
            link.set_role(Role.UNLISTED, now)
        homing = self._homing
        if homing is not None:
            homing.trying = None
            self._register_next_home(now)

    def _set_home(self, key: PublicKey | None, now: float) -> None:
        if key is not None:
            self._rehome_failures = 0
        if key == self.home:
            return
        old = self.link(self.home) if self.home is not None else None
        if old is not None:
            old.set_role(Role.UNLISTED, now)  # lookups no longer lead there
        self.home = key
        if key is not None:
            home = self.link(key)
            if home is not None:
                home.set_role(Role.HOME, now)  # the relay signs our record as home
            addr = self.relay_addr(key)  # where we reach it, not its first endpoint
            where = endpoint_str(addr) if addr else "?"
            log.info("home relay %s at %s", key.short(), where)
            self._touch(key, now)
            self._ask_announcements(now)
            if self.standby in (None, key):
                self.standby = None
                self._choose_standby(now)
            if self._next_measure == float("inf"):
                self._next_measure = now + self.config.measure_interval_s
        self._events.append(HomeChanged(key))

    def _ask_announcements(self, now: float, page: int = 0) -> None:
        """The relays our home knows, page by page (``DiscoveryAnswered.more``)."""
        if page == 0:
            self._next_announcements = now + self.config.announcements_interval_s
        if self.home is None:
            return
        link = self.link(self.home)
        if link is not None and link.state == LinkState.REGISTERED:
            link.query(now, want_relays=True, page=page)
