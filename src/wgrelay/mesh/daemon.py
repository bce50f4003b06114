"""``wgrelay up INTERFACE``: the agent daemon, the asyncio shell around AgentCore.

One loop: read the interface (through the backend, in a thread), let the core
decide, carry out its actions, and feed relay events back. Everything slow or
blocking (backend calls) runs in a thread; everything per packet runs in the
proxies and relay clients, never here.

On SIGINT/SIGTERM every endpoint and keepalive the agent changed is put back
(the peer's last direct endpoint) before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from wgrelay.aio import stop_on_signals
from wgrelay.client.events import (
    HomeChanged,
    PeerPortNotLatched,
    PeerPunch,
    PeerRelayed,
    PeerRelayFailed,
    PeerRelayLost,
    RelayCarrierChanged,
    RelayMeasured,
    RelaysLearned,
)
from wgrelay.client.link import LinkConfig
from wgrelay.client.manager import ManagerEvent, RelayManager
from wgrelay.client.plan import PlanConfig
from wgrelay.client.proxy import ProxyTable
from wgrelay.client.receipts import Observed, ReceiptSigner
from wgrelay.client.streams import environ_proxy
from wgrelay.discovery.geoip import GeoPrior
from wgrelay.discovery.registry import RegistryStore, RelayRegistry
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import BackendError, ConfigError
from wgrelay.keys import PublicKey
from wgrelay.mesh.actions import (
    Action,
    AskPunch,
    CheckMapping,
    CloseRelay,
    HoldProxy,
    Kick,
    LeaveRelay,
    ReplaceRelay,
    StartRelay,
    UseDirect,
    UseProxy,
)
from wgrelay.mesh.agent import AgentConfig, AgentCore
from wgrelay.mesh.backend.base import InterfaceInfo, WireGuardBackend
from wgrelay.mesh.backend.detect import detect_backend
from wgrelay.mesh.cache import ConnectionCache
from wgrelay.mesh.metrics import serve_agent_metrics
from wgrelay.mesh.mtu import mtu_warning
from wgrelay.mesh.nat import TryDirect
from wgrelay.mesh.port_mode import PortModePaths
from wgrelay.mesh.relay_paths import RelayPaths
from wgrelay.mesh.reload import reloads_on_sighup
from wgrelay.mesh.status_doc import status_document, status_steady
from wgrelay.proto.constants import CloseReason, MappingKind
from wgrelay.proto.messages import MAX_HOLD_S
from wgrelay.settings import load_settings, settings_path
from wgrelay.state import ensure_state_dir
from wgrelay.transport.base import Runtime
from wgrelay.transport.udp import AsyncioRuntime

if TYPE_CHECKING:
    from wgrelay.config_file import Reloadable

log = logging.getLogger(__name__)


MIN_WAIT_S = 0.05


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The daemon's own timers (the decisions' timers are in AgentConfig,
    PlanConfig and LinkConfig)."""

    poll_interval_s: float = 1.0
    """How often the interface is read at the latest (the core's next_timer()
    may ask for an earlier look)."""
    probe_poll_interval_s: float = 0.2
    """Faster while a direct attempt runs: its verdict (and a probe-back's
    outage) should not wait for the next second."""
    port_poll_interval_s: float = 0.5
    """While WireGuard talks to a relay port: our traffic no longer passes
    the agent, and WireGuard's counters, read at each look, are all the relay
    link learns of it, so a dead relay is noticed this much later at worst."""
    cache_flush_interval_s: float = 10.0
    read_error_log_interval_s: float = 60.0
    status_refresh_s: float = 5.0
    """The status file is rewritten at once when a path or reason changes, else
    at most this often (byte counters and handshake times move all the time;
    writing them every second would wear the disk for nothing)."""


@dataclass(slots=True)
class AgentOptions:
    interface: str
    state_dir: Path
    backend: str | None = None
    relays: list[tuple[Endpoint, PublicKey]] = field(default_factory=list)
    config: AgentConfig = field(default_factory=AgentConfig)
    link_config: LinkConfig = field(default_factory=LinkConfig)
    plan_config: PlanConfig = field(default_factory=PlanConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    geoip_db: Path | None = None
    """A MaxMind City database: RTT priors for relays not yet measured."""
    port_mode: bool = True
    """Point WireGuard straight at the relay's session port when it has one
    (mesh/port_mode.py); False: always through the local proxy (framed)."""
    metrics: Endpoint | None = None
    """Serve Prometheus metrics (mesh/metrics.py) at http://ADDR:PORT/metrics."""
    reload: Reloadable[AgentOptions] | None = None
    """How to make these options again on SIGHUP (mesh/reload.py); None: no reloads."""


def status_path(state_dir: Path, interface: str) -> Path:
    return state_dir / f"status-{interface}.json"


def cache_path(state_dir: Path, interface: str) -> Path:
    return state_dir / f"cache-{interface}.db"


class Agent(RelayPaths):
    def __init__(
        self,
        opts: AgentOptions,
        backend: WireGuardBackend,
        info: InterfaceInfo,
        registry: RelayRegistry,
        store: RegistryStore | None,
        cache: ConnectionCache,
        runtime: Runtime | None = None,
    ) -> None:
        if info.private_key is None or info.listen_port is None:
            raise ConfigError(f"interface {info.name} has no private key or listen port configured")
        self.opts = opts
        self.iface = info.name
        self.backend = backend
        self.registry = registry
        self.store = store
        self.runtime = runtime if runtime is not None else AsyncioRuntime()
        self._clock = self.runtime.now
        self._wall = self.runtime.wall
        own = info.private_key.public_key()
        self.cache = cache
        self.core = AgentCore(own, opts.config, cache)
        self._peer_keys = {p.public_key for p in info.peers}
        for stray in sorted(opts.plan_config.private.peers - self._peer_keys, key=str):
            # a mistyped key leaves the peer it was meant for without a
            # private path, silently; say so (it applies once it is a peer)
            log.warning("--private-peer %s is not a peer of %s", stray, info.name)
        self.geo = GeoPrior(opts.geoip_db) if opts.geoip_db is not None else None
        self.receipts = ReceiptSigner(info.private_key, self._observed)
        """Signs what relays carried for us, no more than we saw (credits)."""
        self.manager = RelayManager(
            info.private_key,
            registry,
            # only peers of our interface, and only while relays are allowed
            accept_peer=lambda k: k in self._peer_keys and self.core.relay_enabled,
            on_event=self._on_manager_event,
            on_data=self._on_frame,
            link_config=opts.link_config,
            plan_config=self._plan_config(opts.plan_config),
            runtime=self.runtime,
            prior=self.geo,
            history=self._relay_failures,
            proxy=environ_proxy(),  # https_proxy: how streams leave when UDP is blocked
            receipts=self.receipts,
        )
        self.proxies = ProxyTable(
            info.listen_port,
            self.manager.routes,
            runtime=self.runtime,
            on_sent=self.manager.note_sent,
        )
        self.port_mode = PortModePaths(opts.port_mode)
        self._info = info
        """The latest snapshot of the interface."""
        self._polled_at = self._clock()
        """When the interface was read the time before."""
        self._stop = asyncio.Event()
        self._last_status: object = None
        self._settings_mtime: int | None = None
        self._read_error_logged = -1e9
        self._status_written = -1e9
        self._started = False
        self._next_flush = 0.0
        self._registry_dirty = False
        self._mapping_probed: dict[tuple[PublicKey, bytes], float] = {}
        self._mapping_probe_failed = False
        self._metrics: asyncio.Server | None = None

    def _set_peers(self, keys: set[PublicKey]) -> None:
        """The interface's peers now. Under --private, a peer added while we
        run joins the lookup groups (asked about alone, its lookups would
        name it); the groups are cut again in key order."""
        if keys == self._peer_keys:
            return
        self._peer_keys = keys
        planner = self.manager.planner
        planner.config = self._plan_config(planner.config)

    def _plan_config(self, config: PlanConfig) -> PlanConfig:
        """--private covers every peer: private lookups ask about all of
        them at once (client/plan_private.py), so name them."""
        private = config.private
        if not private.all_peers:
            return config
        return replace(config, private=replace(private, peers=frozenset(self._peer_keys)))

    @property
    def info(self) -> InterfaceInfo:
        """The latest snapshot of the interface (the metrics read it at scrape time)."""
        return self._info

    # ------------------------------------------------------------ data

    def _on_frame(self, peer: PublicKey, frame: bytes) -> None:
        self.proxies.deliver(peer, frame)

    def _observed(self, peer: PublicKey) -> Observed:
        """What we saw of a peer's relayed traffic, for its receipts: the
        proxy's counters (framed) and WireGuard's (port mode), cumulative."""
        c = self.proxies.counters(peer)
        p = self._info.peer(peer)
        return Observed(
            proxy_bytes=c.to_relay_bytes + c.to_wg_bytes if c is not None else 0,
            proxy_packets=c.to_relay_packets + c.to_wg_packets if c is not None else 0,
            wireguard_bytes=p.rx_bytes + p.tx_bytes if p is not None else 0,
        )

    # ------------------------------------------------------------ events

    def _on_manager_event(self, ev: ManagerEvent) -> None:
        now = self._clock()
        if isinstance(ev, PeerRelayed):
            self.receipts.session_started(ev.relay, ev.peer, ev.session_id, now)
            relay = self.registry.get(ev.relay)
            self.port_mode.offered(
                ev.peer,
                # where our link reaches the relay: the registry's first
                # endpoint may be another (family) than the one that works
                self.manager.planner.relay_addr(ev.relay),
                ev.port,
                self._info.peer(ev.peer),
                now,
                self._wall(),
                ev.session_id,
            )
            self._run(
                self.core.on_relayed(
                    ev.peer,
                    ev.relay,
                    ev.incoming,
                    now,
                    self._wall(),
                    relay.endpoint if relay else None,
                    port_mode=self.port_mode.endpoint(ev.peer) is not None,
                )
            )
        elif isinstance(ev, PeerPortNotLatched):
            self._relatch(ev.peer)
        elif isinstance(ev, RelayCarrierChanged):
            self._carrier_changed(ev.relay, ev.carrier)
        elif isinstance(ev, PeerPunch):
            t = ev.told
            kinds = (t.mine_kind, t.theirs_kind)
            wall = self._wall()
            self._run(self.core.on_punch(t.peer, t.nonce, t.go, t.mine, t.theirs, now, wall, kinds))
            if t.mine_kind is MappingKind.UNKNOWN:
                self._probe_mapping(t.peer, ev.relay, now)
        elif isinstance(ev, PeerRelayLost):
            self.receipts.session_ended(ev.relay, ev.peer, now)
            self._run(self.core.on_relay_lost(ev.peer, ev.reason, now, self._wall()))
        elif isinstance(ev, PeerRelayFailed):
            self._run(self.core.on_relay_failed(ev.peer, ev.error, now))
        elif isinstance(ev, RelayMeasured):
            self._record_measurement(ev)
        elif isinstance(ev, RelaysLearned):
            self._registry_dirty = True  # saved at the next loop turn
        elif isinstance(ev, HomeChanged) and ev.relay is not None:
            home = self.manager.planner.link(ev.relay)
            if self.geo is not None and home is not None and home.observed is not None:
                self.geo.origin = home.observed[0]  # our public address, for the prior
            relay = self.registry.get(ev.relay)
            where = endpoint_str(relay.endpoint) if relay else "?"
            log.info("registered at home relay %s (%s)", ev.relay.short(), where)

    def _record_measurement(self, ev: RelayMeasured) -> None:
        """A ping to a relay carrying peers: RTT and loss into the cache."""
        relay = self.registry.get(ev.relay)
        if relay is None:
            return
        wall = self._wall()
        for peer in ev.peers:
            self.cache.record_quality(
                peer,
                relay.endpoint,
                wall,
                latency_ms=None if ev.rtt_s is None else ev.rtt_s * 1000,
                loss_pct=100.0 if ev.rtt_s is None else 0.0,
            )

    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            try:
                self._apply(a)
            except (BackendError, OSError) as e:  # e.g. no socket left for a proxy
                log.warning("%s for %s failed: %s", type(a).__name__, a.peer.short(), e)

    def _apply(self, a: Action) -> None:
        # Backend calls are quick local exchanges (UAPI socket or wg); doing
        # them inline keeps actions ordered. Reads, which are larger, are
        # done in a thread by the poll loop.
        if isinstance(a, Kick):
            self.backend.set_keepalive(self.iface, a.peer, a.keepalive_s, kick=True)
        elif isinstance(a, TryDirect):
            self.backend.set_endpoint(self.iface, a.peer, a.endpoint)
        elif isinstance(a, HoldProxy):
            # in port mode the proxy holds for good: a framed frame given to
            # WireGuard would make it roam off the relay port; the relay holds
            # what it would send to the port (WireGuard roams back to it)
            self.proxies.hold(a.peer, a.hold or self.port_mode.holding(a.peer))
            if self.port_mode.endpoint(a.peer) is not None:
                # the longest hold: a try may go through several candidates,
                # and it always ends with a resume (HoldProxy(False))
                self.manager.hold_relay(a.peer, MAX_HOLD_S if a.hold else 0)
        elif isinstance(a, LeaveRelay):
            self.manager.close_connection(a.peer)
            self._drop_relay_path(a.peer)
        elif isinstance(a, UseProxy):
            self._use_relay_path(a.peer)
        elif isinstance(a, UseDirect):
            if a.endpoint is not None:
                self.backend.set_endpoint(self.iface, a.peer, a.endpoint)
            if a.keepalive_s is not None:
                self.backend.set_keepalive(self.iface, a.peer, a.keepalive_s)
            self.manager.close_connection(a.peer)
            self._drop_relay_path(a.peer)
        elif isinstance(a, StartRelay):
            self.manager.request_relay(a.peer)
        elif isinstance(a, ReplaceRelay):
            # the proxy stays WireGuard's endpoint in framed mode; a new
            # session (StartRelay follows) takes over behind it
            self.manager.close_connection(a.peer, CloseReason.REPLACED)
        elif isinstance(a, CloseRelay):
            self.manager.close_connection(a.peer)
            self._drop_relay_path(a.peer)
        elif isinstance(a, AskPunch):
            self.manager.punch(a.peer, a.nonce)
        elif isinstance(a, CheckMapping):
            relay = self.manager.planner.route_relay.get(a.peer)
            if relay is not None:
                self._probe_mapping(a.peer, relay, self._clock())

    # ------------------------------------------------------------ loop

    async def _read(self) -> InterfaceInfo | None:
        try:
            info = await self.runtime.run_blocking(lambda: self.backend.read(self.iface))
        except BackendError as e:
            # said once, then once a minute: the interface may be gone for a while
            now = self._clock()
            if now - self._read_error_logged >= self.opts.daemon.read_error_log_interval_s:
                self._read_error_logged = now
                log.warning("cannot read %s: %s", self.iface, e)
            return None
        if self._read_error_logged > -1e9:
            log.info("%s readable again", self.iface)
            self._read_error_logged = -1e9
        return info

    def _write_status(self, info: InterfaceInfo) -> None:
        # Decide from what is cheap to read whether anything a reader cares
        # about changed; the document itself (RTTs from the connection cache,
        # histories) is only built when it is written. (Built on every poll it
        # cost a third of an agent's CPU in the 1,000-agent simulation.)
        steady = status_steady(self, info)
        now = self._clock()
        if (
            steady == self._last_status
            and now - self._status_written < self.opts.daemon.status_refresh_s
        ):
            return
        self._last_status = steady
        self._status_written = now
        doc = status_document(self, info, now, self._wall())
        text = json.dumps(doc, indent=2, sort_keys=True)
        path = status_path(self.opts.state_dir, self.iface)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text + "\n")
            tmp.replace(path)
        except OSError as e:
            log.warning("cannot write %s: %s", path, e.strerror)

    def _relay_failures(self, peer: PublicKey, relay: PublicKey) -> int:
        """Relayed sessions to ``peer`` through ``relay`` that failed since the
        last one that worked (the connection cache): the planner's path cost
        counts them, so a relay that keeps failing for this peer is passed over."""
        for e in self.cache.entries(peer):
            if e.relay_pubkey == relay:
                return e.failure_count
        return 0

    def _check_settings(self) -> None:
        path = settings_path(self.opts.state_dir)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime == self._settings_mtime:
            return
        self._settings_mtime = mtime
        try:
            enabled = load_settings(self.opts.state_dir).relay_enabled_for(self.iface)
        except ConfigError as e:
            log.warning("settings not applied: %s", e)
            return
        self._run(self.core.set_relay_enabled(enabled, self._clock(), self._wall()))
        if enabled and self.manager.home is None and self._started:
            self.manager.begin()

    async def run(self, on_ready: Callable[[], None] | None = None) -> None:
        with stop_on_signals(self._stop.set):
            async with reloads_on_sighup(self.opts.reload, self):
                await self._run_loop(on_ready)

    async def _run_loop(self, on_ready: Callable[[], None] | None) -> None:
        try:
            if self.opts.metrics is not None:
                self._metrics = await serve_agent_metrics(self, self.opts.metrics)
            self._check_settings()
            if self.core.relay_enabled:
                await self.manager.start()
            else:
                log.info("relay fallback is disabled for %s (configure-relay)", self.iface)
            self._started = True
            if on_ready is not None:
                on_ready()
            while not self._stop.is_set():
                self._check_settings()
                info = await self._read()
                now = self._clock()
                if info is not None:
                    self._set_peers({p.public_key for p in info.peers})
                    if info.listen_port:
                        self.proxies.set_wg_port(info.listen_port)
                    self._info = info
                    self.core.udp_blocked = self.manager.fallback.udp_blocked
                    self._run(self.core.observe(info, now, self._wall()))
                    self._run(self.core.tick(now))
                    self._check_port_mode(info)
                    self._polled_at = now
                    self._write_status(info)
                if now >= self._next_flush:
                    self._next_flush = now + self.opts.daemon.cache_flush_interval_s
                    self._flush_cache()
                if self._registry_dirty:
                    self._save_registry()
                # one timer: the next poll, or earlier if a rule of the core
                # falls due before it
                d = self.opts.daemon
                interval = d.probe_poll_interval_s if self.core.probing() else d.poll_interval_s
                if self.port_mode.carrying():
                    interval = min(interval, d.port_poll_interval_s)
                # (never sooner than MIN_WAIT_S: a rule that let a deadline
                # pass without acting must not turn this into a busy loop)
                wake = max(min(now + interval, self.core.next_timer()), now + MIN_WAIT_S)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(max(wake, self._clock())):
                        await self._stop.wait()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _save_registry(self) -> None:
        """What the relays told us, on disk as it arrives: a crash loses
        seconds of learning, not the run. Inline, like the cache flush: one
        small transaction, and the registry is only ever touched from the
        loop's thread (SQLite connections are bound to theirs)."""
        self._registry_dirty = False
        if self.store is None:
            return
        try:
            self.store.save(self.registry)
        except Exception as e:  # a full disk must not stop the data path
            log.warning("could not save the relay registry: %s", e)

    def _flush_cache(self) -> None:
        try:
            self.cache.prune(self._wall())
            self.cache.flush()
        except Exception as e:  # a full disk must not stop the data path
            log.warning("could not save the connection cache: %s", e)

    async def _shutdown(self) -> None:
        log.info("stopping: restoring endpoints")
        for a in self.core.restore_actions():
            try:
                if isinstance(a, UseDirect):
                    if a.endpoint is not None:
                        self.backend.set_endpoint(self.iface, a.peer, a.endpoint)
                    if a.keepalive_s is not None and self.opts.config.keepalive_s:
                        self.backend.set_keepalive(self.iface, a.peer, a.keepalive_s)
            except BackendError as e:
                log.warning("could not restore %s: %s", a.peer.short(), e)
        await self.manager.close()
        self.proxies.close()
        self._flush_cache()
        self.cache.close()
        if self.geo is not None:
            self.geo.close()
        if self.store is not None:
            try:
                self.store.save(self.registry)
            except Exception as e:  # losing measurements must not block shutdown
                log.warning("could not save relay registry: %s", e)
            self.store.close()
        with contextlib.suppress(OSError):
            status_path(self.opts.state_dir, self.iface).unlink()
        if self._metrics is not None:
            self._metrics.close()
            await self._metrics.wait_closed()


async def _run_agent(opts: AgentOptions) -> int:
    state = ensure_state_dir(opts.state_dir)
    try:
        backend = detect_backend(opts.interface, opts.backend)
        info = await asyncio.to_thread(backend.read, opts.interface)
    except BackendError as e:
        raise ConfigError(str(e)) from None
    store = RegistryStore(state / "relays.db")
    registry = store.load()
    for endpoint, key in opts.relays:
        registry.add_bootstrap(key, endpoint)
    if not registry.all():
        store.close()
        raise ConfigError(
            "no relay known: add one with `wgrelay add-bootstrap-relay ENDPOINT PUB_KEY`"
            " or `wgrelay up --relay ENDPOINT=PUB_KEY`"
        )
    store.save(registry)
    mtu_warning(backend, opts.interface, registry)
    settings = load_settings(state)  # a broken settings file is an error at start
    opts.config = replace(opts.config, relay_enabled=settings.relay_enabled_for(opts.interface))
    cache = ConnectionCache(cache_path(state, opts.interface))
    agent = Agent(opts, backend, info, registry, store, cache)
    log.info(
        "agent for %s (%s backend, %d peers, relays %s)",
        opts.interface,
        backend.name,
        len(info.peers),
        "enabled" if opts.config.relay_enabled else "disabled",
    )

    def ready() -> None:
        home = agent.manager.home
        print(
            f"agent {opts.interface} up; home relay "
            f"{home if home is not None else 'none reachable yet'}",
            flush=True,
        )

    await agent.run(ready)
    return 0


def run_agent(opts: AgentOptions) -> int:
    return asyncio.run(_run_agent(opts))
