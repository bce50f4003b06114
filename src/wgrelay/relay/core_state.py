"""The relay core's state and plumbing: clocks, its own addresses, the
output queue, sending and counting, and what it reports about itself (stats,
load, its announcement). The protocol's handlers build on it: core_sessions.py
(registrations and sessions), core.py (inputs, discovery, timers)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from wgrelay.keys import PublicKey, RelayIdentity
from wgrelay.proto.announce import RelayNodeInfo
from wgrelay.proto.constants import (
    Capability,
    MsgType,
)
from wgrelay.proto.messages import (
    Body,
)
from wgrelay.relay.access import AccessPolicy
from wgrelay.relay.addresses import OwnAddresses
from wgrelay.relay.admission import Addr, Admission, Inbound, KeyState
from wgrelay.relay.announcer import Announcer
from wgrelay.relay.budget import BudgetMeter
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.federation import Federation, FederationConfig
from wgrelay.relay.ports import PortPool, PortTable
from wgrelay.relay.sessions import (
    Registration,
    SessionTable,
)
from wgrelay.relay.stats import DropReason, RelayStats

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 60.0

log = logging.getLogger(__name__)


class RelayCoreState:
    def __init__(
        self,
        identity: RelayIdentity,
        config: RelayConfig,
        policy: AccessPolicy,
        now: float,
        wall: float,
        rng: Callable[[int], bytes] = os.urandom,
        region: str = "",
        announce_endpoints: tuple[tuple[str, int], ...] = (),
        federation: FederationConfig | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self.policy = policy
        self._rng = rng
        self.region = region
        self.announce_endpoints = announce_endpoints
        self._wall_offset = wall - now
        self.epoch = int.from_bytes(rng(8), "big")
        """Random per start; peers compare it to notice a restart."""
        self.stats = RelayStats()
        self._drops = self.stats.drops
        self._out: list[tuple[bytes, Addr]] = []
        self._admission = Admission(
            identity.x25519_public,
            identity.x25519_private,
            config,
            policy,
            self.stats,
            self._out,
            now,
            self._wall_at,
            rng,
        )
        self.table = SessionTable(config)
        if config.budget is not None:
            self.table.budget = BudgetMeter(config.budget, wall)
        self._budget_seen = 0
        """Bytes forwarded by this core already counted against the budget."""
        self.federation = Federation(
            identity, federation or FederationConfig(), self._out, now, self._wall_at, rng
        )
        self.sessions = self.table.sessions
        """Established sessions by id: the data path's only lookup."""
        self._own = OwnAddresses(announce_endpoints)
        self._next_housekeeping = now + config.housekeeping_interval_s
        self._closed_packets = 0
        self._closed_bytes = 0
        self._shutting_down = False
        self._announcer = Announcer(identity)
        self._error_logged = -1e9
        self._handlers = self._handler_table()
        self.ports: PortTable | None = None
        """Port mode's session ports (``enable_port_mode``); None: framed only."""
        self.stream_ports: tuple[int, int] = (0, 0)
        """(TCP, TLS) ports agents may connect to, 0 for none (announced)."""

    def _handler_table(self) -> dict[MsgType, Callable[[Inbound, Any], None]]:
        """The handler of each message type a relay takes (RelayCore's)."""
        return {}

    # ------------------------------------------------------------ clocks and addresses

    def _wall_at(self, now: float) -> float:
        return now + self._wall_offset

    def sync_wall(self, now: float, wall: float) -> None:
        """Follow the wall clock (NTP steps) without ever reading it ourselves."""
        self._wall_offset = wall - now

    def set_own_addresses(self, addresses: Iterable[Addr]) -> None:
        """The addresses the relay listens on: never a peer's address."""
        self._own.add(addresses)

    def usable_peer_address(self, addr: Addr) -> bool:
        """An address the relay may register a peer at (and so send to)."""
        return self._own.usable_peer_address(addr)

    def enable_port_mode(self, pool: PortPool) -> None:
        """Give sessions their own ports from ``pool`` (the shell binds them)."""
        self.ports = PortTable(pool, self._drops)

    # ------------------------------------------------------------ errors, admission lookups

    def _internal_error(self, now: float, what: str, *args: object) -> None:
        self._drops[DropReason.INTERNAL_ERROR] += 1
        if now - self._error_logged >= ERROR_LOG_INTERVAL_S:
            self._error_logged = now
            log.exception("internal error handling " + what + " (dropped)", *args)

    def _relay_endpoints(self, x25519: bytes) -> tuple[tuple[str, int], ...] | None:
        m = self.federation.directory.by_x25519(x25519)
        return m.announcement.info.endpoints if m is not None else None

    def _registered(self, key: bytes) -> tuple[KeyState, Addr] | None:
        reg = self.table.regs.get(key)
        return (reg.ks, reg.addr) if reg is not None else None

    # ------------------------------------------------------------ sending

    def _send(self, body: Body, reg: Registration, now: float) -> None:
        """To a registered (so proven) address."""
        self._out.append((self._admission.seal(body, reg.ks.keys, now), reg.addr))
        self.stats.control_sent += 1

    def _reply(self, inb: Inbound, body: Body) -> None:
        self._admission.reply(inb, body)

    def _drop(self, inb: Inbound, reason: DropReason) -> None:
        """Count a handled message as dropped, under this one reason."""
        self._drops[reason] += 1
        inb.dropped = True

    # ------------------------------------------------------------ outputs

    def has_output(self) -> bool:
        return bool(self._out)

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out = self._out[:]
        self._out.clear()  # the list is shared with Admission: keep the object
        return out

    def reconfigure(
        self, config: RelayConfig | None = None, policy: AccessPolicy | None = None
    ) -> None:
        """New limits and/or access policy (SIGHUP): every part of the core
        that holds them reads them at the moment it decides. Call
        ``policy_changed`` after a new policy, so peers it no longer allows go."""
        if config is not None:
            self.config = config
            self.table.config = config
            self._admission.config = config
        if policy is not None:
            self.policy = policy
            self._admission.policy = policy

    def count_budget(self, now: float) -> bool:
        """Add what was forwarded since the last call to the budget (each
        housekeeping tick); True when what the announcement says of it
        changed (a step of one point, spent, a new period)."""
        meter = self.table.budget
        if meter is None:
            return False
        total = self._closed_bytes + sum(s.bytes for s in self.sessions.values())
        before = meter.left_pct
        meter.add(total - self._budget_seen, self._wall_at(now))
        self._budget_seen = total
        return meter.left_pct != before

    # ------------------------------------------------------------ introspection

    def load_pct(self) -> int:
        busy = len(self.sessions) + len(self.table.pending)
        return min(100, busy * 100 // self.config.max_connections)

    def capabilities(self) -> int:
        caps = Capability.UDP_RELAY | Capability.DISCOVERY | Capability.GOSSIP
        if self.ports is not None:
            caps |= Capability.PORT_MODE
        if self.stream_ports[0]:
            caps |= Capability.TCP_FALLBACK
        if self.stream_ports[1]:
            caps |= Capability.TLS_FALLBACK
        if self.table.budget is not None:
            caps |= Capability.BUDGET
        return int(caps)

    def node_info(self) -> RelayNodeInfo | None:
        if not self.announce_endpoints:
            return None
        return RelayNodeInfo(
            key=self.identity.public,
            endpoints=self.announce_endpoints,
            region=self.region,
            capabilities=self.capabilities(),
            load_pct=self.load_pct(),
            max_sessions=self.config.max_connections,
            tcp_port=self.stream_ports[0],
            tls_port=self.stream_ports[1],
            budget_left_pct=None if self.table.budget is None else self.table.budget.left_pct,
        )

    def announcement(self, now: float, fresh: bool = False) -> bytes | None:
        """Our signed announcement (re-signed only when it changed or aged,
        or when ``fresh`` asks for a newer one)."""
        info = self.node_info()
        if info is None:
            return None
        return self._announcer.sign(info, self._wall_at(now), fresh)

    def is_registered(self, key: PublicKey) -> bool:
        return key.raw in self.table.regs

    def registered_addr(self, key: PublicKey) -> Addr | None:
        reg = self.table.regs.get(key.raw)
        return reg.addr if reg is not None else None

    def key_cache_size(self) -> int:
        return len(self._admission.key_cache)

    def get_stats(self) -> RelayStats:
        st = self.stats
        st.registrations = len(self.table.regs)
        st.sessions_active = len(self.sessions)
        st.sessions_pending = len(self.table.pending)
        st.packets_forwarded = self._closed_packets + sum(s.packets for s in self.sessions.values())
        st.bytes_forwarded = self._closed_bytes + sum(s.bytes for s in self.sessions.values())
        meter = self.table.budget
        if meter is not None:
            st.budget_bytes = meter.budget.bytes
            st.budget_used = meter.used
            st.budget_left = meter.left
            st.budget_period_end = meter.period_end
        fed = self.federation
        st.relays_known = len(fed.directory)
        st.relays_live = len(fed.directory.live())
        st.location_records = fed.record_count()
        st.federation = dict(fed.counters)
        if self.ports is not None:
            st.port_latches = self.ports.latches
            st.port_sessions = sum(1 for p in self.ports.by_sid.values() if p.established)
            st.port_sessions_offloaded = sum(1 for p in self.ports.by_sid.values() if p.offloaded)
            st.ports_free = len(self.ports.pool)
        for reason, n in fed.channel_drops.items():
            st.federation[f"answer_dropped_{reason}"] = n
        return st
