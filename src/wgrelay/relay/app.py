"""``wgrelay start-relay``: wire configuration, key, policy, sockets and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wgrelay.credits_cli import load_claim_file
from wgrelay.discovery.registry import RegistryStore, RelayRegistry
from wgrelay.endpoint import Endpoint, endpoint_str
from wgrelay.errors import ConfigError
from wgrelay.keys import PublicKey, load_or_create_relay_identity, relay_x25519_public
from wgrelay.proto.constants import MAX_ENDPOINTS, MAX_REGION_LEN
from wgrelay.relay.access import AccessPolicy, AllowFilePolicy, OpenPolicy, PeersOfInterfacePolicy
from wgrelay.relay.budget import SAVE_INTERVAL_S as BUDGET_SAVE_INTERVAL_S
from wgrelay.relay.budget import BudgetMeter, BudgetStore
from wgrelay.relay.config import RelayConfig
from wgrelay.relay.core import RelayCore
from wgrelay.relay.ledger import Ledger
from wgrelay.relay.localaddrs import local_announce_endpoints
from wgrelay.relay.metrics import make_registry, serve_metrics
from wgrelay.relay.offload import KernelOffload, OffloadUnavailable, delete_stale_table
from wgrelay.relay.peers_store import SAVE_INTERVAL_S, load_known_relays, save_known_relays
from wgrelay.relay.reload import reloads_on_sighup
from wgrelay.relay.server import POLICY_REFRESH_S, BindAddress, RelayServer
from wgrelay.relay.tls import stream_ports, tls_context
from wgrelay.state import ensure_state_dir
from wgrelay.transport.udp import AsyncioRuntime

if TYPE_CHECKING:
    from wgrelay.config_file import Reloadable

log = logging.getLogger(__name__)

DEFAULT_PORT = 51821


@dataclass(slots=True)
class RelayOptions:
    state_dir: Path
    port: int = DEFAULT_PORT
    binds: list[str] = field(default_factory=list)
    key_file: Path | None = None
    open: bool = False
    allow_file: Path | None = None
    allow_peers_of: str | None = None
    metrics: str | None = None
    region: str = ""
    announce: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    """Other relays to contact first, ENDPOINT=PUB_KEY (remembered in the state dir)."""
    config: RelayConfig = field(default_factory=RelayConfig)
    kernel_offload: str = "off"
    """auto: forward fully latched port-mode sessions in the kernel when the
    relay may; on: refuse to start without it; off: userspace only."""
    tcp_port: int | None = None
    """Agents over TCP (networks that block UDP): None = the UDP port's number, 0 = off."""
    tls_port: int | None = None
    """TLS (typically 443, where such networks let traffic out): None = 443 when a
    certificate is configured, 0 = off."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    operator_claim: Path | None = None
    """The member who runs this relay (``wgrelay credits claim``): it earns the credit."""
    reload: Reloadable[RelayOptions] | None = None
    """How to make these options again on SIGHUP (relay/reload.py); None: no reloads."""


def parse_relay_spec(text: str, what: str) -> tuple[Endpoint, PublicKey]:
    """``ENDPOINT=PUB_KEY``: a relay's address and its (Ed25519) key."""
    endpoint, sep, key = text.partition("=")
    if not sep:
        raise ConfigError(f"{what} {text!r}: expected ENDPOINT=PUB_KEY")
    # base64 keys end in '=', so split at the first '=' after the endpoint
    relay_key = PublicKey.from_base64(key, f"{what} key")
    relay_x25519_public(relay_key)  # a WireGuard key pasted by mistake almost never is one
    return parse_destination(endpoint, f"{what} endpoint"), relay_key


def parse_endpoint(text: str, what: str = "endpoint") -> Endpoint:
    """HOST:PORT or [V6]:PORT with a literal IP address."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            # "::1:5" could be [::1]:5 or the address ::1:5 without a port
            raise ConfigError(f"{what} {text!r}: write an IPv6 address with a port as [ADDR]:PORT")
    # ASCII only: str.isdigit() also takes other scripts' digits and superscripts
    if not sep or not host or not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise ConfigError(f"{what} {text!r} is not HOST:PORT (IPv6 as [ADDR]:PORT)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: {host!r} is not an IP address") from None
    p = int(port)
    if not 0 < p < 65536:
        raise ConfigError(f"{what} {text!r}: port out of range")
    return str(ip), p


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")


def parse_destination(text: str, what: str = "endpoint") -> Endpoint:
    """An endpoint others send to (an announced or bootstrap relay address).

    Unspecified, "this network", multicast and broadcast addresses can never
    reach one relay: announcing one would point peers at nothing, or at everyone.
    """
    host, port = parse_endpoint(text, what)
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        raise ConfigError(f"{what} {text!r}: an unspecified address cannot be sent to")
    if ip.is_multicast:
        raise ConfigError(f"{what} {text!r}: a multicast address is not one relay")
    if ip == _BROADCAST:
        raise ConfigError(f"{what} {text!r}: a broadcast address is not one relay")
    return host, port


def check_options(opts: RelayOptions) -> tuple[tuple[Endpoint, ...], Endpoint | None]:
    """Everything the wire must carry, checked before any side effect.

    Returns the parsed announce endpoints and the metrics endpoint.
    """
    if len(opts.announce) > MAX_ENDPOINTS:
        raise ConfigError(f"at most {MAX_ENDPOINTS} --announce (an announcement carries that many)")
    announce = tuple(parse_destination(a, "--announce") for a in opts.announce)
    try:
        region_len = len(opts.region.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError("--region is not valid UTF-8") from None
    if region_len > MAX_REGION_LEN:
        raise ConfigError(f"--region is {region_len} bytes; at most {MAX_REGION_LEN} (UTF-8)")
    metrics_ep = parse_endpoint(opts.metrics, "--metrics") if opts.metrics else None
    return announce, metrics_ep


def build_policy(opts: RelayOptions) -> AccessPolicy:
    chosen = [opts.open, opts.allow_file is not None, opts.allow_peers_of is not None]
    if sum(chosen) != 1:
        raise ConfigError(
            "choose exactly one of --open, --allow-file FILE, --allow-peers-of INTERFACE"
        )
    if opts.open:
        return OpenPolicy()
    if opts.allow_file is not None:
        return AllowFilePolicy(opts.allow_file)
    iface = opts.allow_peers_of
    if iface is None:  # for the type checker; excluded above
        raise ConfigError("no access policy")
    from wgrelay.mesh.backend.detect import detect_backend

    def read_peers() -> frozenset[bytes]:
        info = detect_backend(iface).read(iface)
        return frozenset(p.public_key.raw for p in info.peers)

    try:
        return PeersOfInterfacePolicy(iface, read_peers)
    except Exception as e:
        raise ConfigError(f"--allow-peers-of {iface}: {e}") from None


def bind_addresses(opts: RelayOptions) -> list[BindAddress]:
    """Where to listen: the --bind addresses, or every IPv4 and (if the host
    has it) every IPv6 address, on one port number."""
    if not opts.binds:
        return [BindAddress("0.0.0.0", opts.port), BindAddress("::", opts.port, optional=True)]
    binds = []
    for b in opts.binds:
        try:
            binds.append(BindAddress(str(ipaddress.ip_address(b.strip("[]"))), opts.port))
        except ValueError:
            raise ConfigError(f"--bind {b!r} is not an IP address") from None
    return binds


def open_offload(opts: RelayOptions) -> KernelOffload | None:
    """The kernel offload as --kernel-offload asks: ``auto`` uses it when the
    host allows and says why not otherwise, ``on`` refuses to start without."""
    if opts.config.port_range is None and opts.kernel_offload == "on":
        raise ConfigError("--kernel-offload on needs port mode (not --port-range off)")
    if opts.config.port_range is None or opts.kernel_offload == "off":
        if opts.config.port_range is not None:
            log.info("port mode in userspace (--kernel-offload off)")
        _delete_stale_table()
        return None
    try:
        offload = KernelOffload.open()
    except OffloadUnavailable as e:
        if opts.kernel_offload == "on":
            raise ConfigError(f"--kernel-offload on: {e}") from None
        log.info("port mode in userspace: %s", e)
        _delete_stale_table()
        return None
    if offload.forward_drops and opts.kernel_offload == "auto":
        # the kernel would forward into a chain that drops by default (a
        # Docker host, say): every offloaded packet would die there
        chains = ", ".join(offload.forward_drops)
        offload.close()
        log.info(
            "port mode in userspace: forward chain(s) %s drop by default; "
            "--kernel-offload on offloads anyway (make them accept the relay's traffic)",
            chains,
        )
        return None
    log.info("%s", offload.describe())
    return offload


def raise_fd_limit(port_range: tuple[int, int] | None) -> None:
    """Session ports cost sockets (one per port and address family): take the
    file descriptors the hard limit allows, and say when the range needs more
    (the ports beyond the limit go framed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if port_range is not None:
        need = 2 * (port_range[1] - port_range[0] + 1) + 256
        if need > soft:
            log.warning(
                "--port-range %d-%d needs up to %d file descriptors (both address families) "
                "and the limit is %d: sessions beyond it relay framed (raise LimitNOFILE)",
                port_range[0], port_range[1], need, soft,
            )  # fmt: skip


def _delete_stale_table() -> None:
    if delete_stale_table():
        log.info("deleted nftables table inet wgrelay left by an earlier run")


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def _serve(opts: RelayOptions) -> None:
    # validate everything before the first side effect (a key file, a socket)
    announce, metrics_ep = check_options(opts)
    bootstrap = [parse_relay_spec(b, "--bootstrap") for b in opts.bootstrap]
    policy = build_policy(opts)
    binds = bind_addresses(opts)
    tls_wanted = opts.tls_self_signed or opts.tls_cert is not None or opts.tls_key is not None
    tcp_port, tls_port = stream_ports(opts.port, opts.tcp_port, opts.tls_port, tls_wanted)
    state = ensure_state_dir(opts.state_dir)
    tls = tls_context(opts.tls_cert, opts.tls_key, opts.tls_self_signed, state)
    key_file = opts.key_file or state / "relay.key"
    identity, created = load_or_create_relay_identity(key_file)
    claim = load_claim_file(opts.operator_claim, identity.public) if opts.operator_claim else None
    runtime = AsyncioRuntime()
    core = RelayCore(
        identity,
        opts.config,
        policy,
        now=runtime.now(),
        wall=runtime.wall(),
        region=opts.region,
        announce_endpoints=announce,
    )
    ledger = Ledger(state / "credits.db", allows=lambda key: core.policy.allows(key))
    core.enable_credits(ledger, claim, runtime.now())
    server = RelayServer(
        core,
        runtime,
        binds,
        # (a reload may swap an open policy for one that must be refreshed)
        policy_refresh_s=0.0
        if isinstance(policy, OpenPolicy) and opts.reload is None
        else POLICY_REFRESH_S,
    )
    raise_fd_limit(opts.config.port_range)
    server.open()
    try:
        server.offload = open_offload(opts)  # once the sockets are ours
        tcp = server.port if tcp_port is None else tcp_port
        stream_binds = [
            (kind, BindAddress(b.host, port, b.optional))
            for kind, port in (("tcp", tcp), ("tls", tls_port))
            if port
            for b in binds
        ]
        await server.open_streams(stream_binds, tls)
    except BaseException:
        server.close_transports()
        raise
    if created:
        log.info("generated relay key %s in %s", identity.public, key_file)
    if not announce:
        core.announce_endpoints = local_announce_endpoints(server.port, MAX_ENDPOINTS)
        if core.announce_endpoints:
            log.info(
                "announcing %s (this host's global addresses; --announce to say otherwise)",
                ", ".join(endpoint_str(e) for e in core.announce_endpoints),
            )
        else:
            log.warning(
                "no address to announce: other relays cannot learn this one and agents can "
                "use it only as a bootstrap relay (give --announce ADDR:PORT)"
            )
    budget = open_budget(state, core.table.budget)
    store = RegistryStore(state / "relays.db")
    known = load_known_relays(store, core, bootstrap, runtime.now())
    saver = asyncio.create_task(_save_known_relays_every(store, known, core))
    budget_saver = None
    if budget is not None:
        budget_saver = asyncio.create_task(_save_budget_every(*budget))
    metrics_server = None
    try:
        if metrics_ep is not None:
            try:
                metrics_server = await serve_metrics(make_registry(core.get_stats), *metrics_ep)
            except OSError as e:
                raise ConfigError(f"cannot serve metrics on {opts.metrics}: {e.strerror}") from None

        def ready() -> None:
            addrs = ", ".join(server.local_addresses())
            print(f"relay {identity.public} listening on {addrs}", flush=True)
            log.info(
                "access: %s; max %d sessions, %d KB/s per connection",
                policy.description,
                opts.config.max_connections,
                opts.config.max_bandwidth_kbps,
            )

        async with reloads_on_sighup(opts.reload, core, server):
            await server.serve(ready)
    finally:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        if budget is not None and budget_saver is not None:
            budget_saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await budget_saver
            core.count_budget(runtime.now())  # the last second's traffic too
            _save_budget(*budget)
            budget[0].close()
        try:
            save_known_relays(store, known, core)
        except Exception as e:  # a full disk must not turn a clean exit into a crash
            log.warning("could not save the relays this relay knows: %s", e)
        store.close()
        server.close_transports()
        ledger.close()
        if server.offload is not None:
            server.offload.close()  # idempotent: serve() closes it on a clean stop
        if metrics_server is not None:
            metrics_server.close()
            await metrics_server.wait_closed()


async def _save_known_relays_every(
    store: RegistryStore, registry: RelayRegistry, core: RelayCore
) -> None:
    while True:
        await asyncio.sleep(SAVE_INTERVAL_S)
        # on the loop thread: the store's SQLite connection belongs to it, and
        # the directory changes under any other thread (a few rows, once in
        # a while: the agent saves its registry the same way)
        try:
            save_known_relays(store, registry, core)
        except Exception as e:  # keep relaying; try again next time
            log.warning("could not save the relays this relay knows: %s", e)


def open_budget(state: Path, meter: BudgetMeter | None) -> tuple[BudgetStore, BudgetMeter] | None:
    """The budget's store, with this period's count taken from it."""
    if meter is None:
        return None
    store = BudgetStore(state / "budget.db")
    restored = store.restore(meter)
    log.info(
        "budget %s: %d bytes used this period%s, %d%% left",
        meter.budget,
        meter.used,
        " (carried over)" if restored else "",
        meter.left_pct,
    )
    return store, meter


def _save_budget(store: BudgetStore, meter: BudgetMeter) -> None:
    try:
        store.save(meter)
    except ConfigError as e:  # keep relaying: the count is still enforced in memory
        log.warning("%s", e)


async def _save_budget_every(store: BudgetStore, meter: BudgetMeter) -> None:
    while True:
        await asyncio.sleep(BUDGET_SAVE_INTERVAL_S)
        _save_budget(store, meter)  # one small row, on the loop (as the registry's)


def run_relay(opts: RelayOptions) -> int:
    loop_name = install_uvloop()
    log.debug("event loop: %s", loop_name)
    asyncio.run(_serve(opts))
    sys.stdout.flush()
    return 0
