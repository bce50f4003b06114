"""The relay's asyncio shell: transports, one timer, policy reloads, shutdown.

The logic is in core.py; this file only pumps. Sockets come from the
``Runtime`` (real ones in production, simulated ones in ``wgrelay.sim``), whose
drain loop hands every datagram to ``datagram_received``. Data frames go
straight to ``RelayCore.forward_data`` and back out with ``send_deferred`` (the
fast path: no allocation beyond the received bytes, no logging; on the batched
transport a wake-up's datagrams leave together in one ``sendmmsg`` per 64);
control messages go through the core, and its output is flushed once per burst
(``batch_done``) and after every timer, through the same queue so that
everything leaves in the order the core decided it.

Nothing that goes wrong in here may stop the relay: the transport catches a
receiver's exceptions, the core counts a failing message as ``internal_error``,
and the timer and the policy reload log and carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from wgrelay.aio import stop_on_signals
from wgrelay.errors import ConfigError
from wgrelay.proto.constants import MsgType
from wgrelay.relay.core import Addr, RelayCore
from wgrelay.relay.offload import OffloadPath
from wgrelay.relay.ports import PathChange, PortPair, PortPool
from wgrelay.relay.stats import DropReason
from wgrelay.relay.streams import RelayStreams, StreamLimits
from wgrelay.transport.base import (
    DatagramTransport,
    DeferredSender,
    QueueingSender,
    Runtime,
    StreamListener,
)

log = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
POLICY_REFRESH_S = 5.0
_DATA = int(MsgType.DATA)

Send = Callable[[bytes, Addr], object]
_NO_QUEUES: dict[int, QueueingSender] = {}
_NO_PORT: dict[int, DatagramTransport] = {}
OFFLOAD_POLL_S = 1.0
"""How often the kernel offload's counters are read (activity, metrics)."""


class Offload(Protocol):
    """What the server needs of a kernel offload (offload.KernelOffload)."""

    def install(
        self, path: OffloadPath, *, a_local: str | None = None, b_local: str | None = None
    ) -> None: ...
    def remove(self, path_id: int) -> None: ...
    def counters(self) -> Mapping[int, PathCountersLike]: ...
    def paths(self) -> set[int]: ...
    def close(self) -> None: ...


class PathCountersLike(Protocol):
    @property
    def ab_packets(self) -> int: ...
    @property
    def ab_bytes(self) -> int: ...
    @property
    def ba_packets(self) -> int: ...
    @property
    def ba_bytes(self) -> int: ...
    @property
    def dropped_packets(self) -> int: ...
    @property
    def unrouted_packets(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int
    optional: bool = False
    """Failing to bind it is logged, not fatal (IPv6 on a host without it)."""

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _PortReceiver:
    """One session port's sockets deliver here (port mode)."""

    __slots__ = ("port", "server")

    def __init__(self, server: RelayServer, port: int) -> None:
        self.server = server
        self.port = port

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.server.port_datagram(self.port, data, addr)  # (the port data path)

    def batch_done(self) -> None:
        self.server.batch_done()


class RelayServer:
    def __init__(
        self,
        core: RelayCore,
        runtime: Runtime,
        binds: list[BindAddress],
        policy_refresh_s: float = POLICY_REFRESH_S,
        offload: Offload | None = None,
    ) -> None:
        """``policy_refresh_s`` 0: the policy never changes (no reload task).
        ``offload``: the kernel takes fully latched port-mode sessions."""
        if not binds:
            raise ConfigError("no address to listen on")
        self.core = core
        self.runtime = runtime
        self._binds = binds
        self._policy_refresh_s = policy_refresh_s
        self.transports: list[DatagramTransport] = []
        self._send_by_addr_len: dict[int, Send] = {}
        """Where a datagram to an address of that tuple length leaves: the
        transport's ``send_deferred`` where it has one, else ``sendto``."""
        self._stop = asyncio.Event()
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._timer_when = float("inf")
        """Our own record of the armed deadline: uvloop's call_later returns a
        plain Handle without .when() for delays under 0.5 ms."""
        self._control_pending = False
        self._port_transports: dict[int, dict[int, DatagramTransport]] = {}
        """Session port -> {address tuple length: transport} (port mode)."""
        self._port_queues: dict[int, dict[int, QueueingSender]] = {}
        """The same, for the transports that queue (the real UDP ones)."""
        self._now = runtime.now
        self._charge = core.config.packet_overhead_bytes
        self._queued: dict[int, QueueingSender] = {}
        """Port transports holding datagrams until the receiving batch ends."""
        self.offload = offload
        self._offload_poll_at = 0.0
        self._offload_errors = 0
        self._unrouted_seen = 0
        self._unrouted_warned = False
        self.streams: RelayStreams | None = None
        self._listeners: list[tuple[str, StreamListener]] = []

    # ------------------------------------------------------------ sockets

    def open(self) -> None:
        """Bind every address (all or none). With port 0 the first bind picks
        the port and the others reuse it, so both families share one number."""
        port = self._binds[0].port
        try:
            for bind in self._binds:
                host_port = bind.port or port
                try:
                    t = self.runtime.open_udp(
                        bind.host, host_port, self, buffer_bytes=SOCKET_BUFFER_BYTES
                    )
                except OSError as e:
                    if bind.optional:
                        log.info("not listening on %s: %s", bind, e.strerror)
                        continue
                    raise ConfigError(f"cannot bind UDP {bind}: {e.strerror}") from None
                self.transports.append(t)
                port = int(t.local_address[1])
        except ConfigError:
            self.close_transports()
            raise
        if not self.transports:
            raise ConfigError("could not listen on any address")
        for t in self.transports:
            send: Send = t.send_deferred if isinstance(t, DeferredSender) else t.sendto
            self._send_by_addr_len[2 if t.family == socket.AF_INET else 4] = send
        self.core.set_own_addresses(t.local_address for t in self.transports)
        port_range = self.core.config.port_range
        if port_range is not None:
            self.core.enable_port_mode(PortPool(*port_range, self._open_port, self._close_port))
            log.info("port mode: session ports %d-%d", *port_range)
        io_paths = {t.io_path for t in self.transports if isinstance(t, DeferredSender)}
        if io_paths:
            log.info("UDP I/O: %s", "; ".join(sorted(io_paths)))

    async def open_streams(
        self,
        binds: list[tuple[str, BindAddress]],
        tls: ssl.SSLContext | None,
        limits: StreamLimits | None = None,
    ) -> None:
        """Listen for agents over streams: ``binds`` are ("tcp"|"tls", address)."""
        streams = RelayStreams(
            self.datagram_received, self.batch_done, self.core.stats, self._now, limits
        )
        for kind, bind in binds:
            admit, release = streams.admitter(kind)
            try:
                listener = await self.runtime.listen_stream(
                    bind.host,
                    bind.port,
                    streams.acceptor(kind),
                    tls=tls if kind == "tls" else None,
                    admit=admit,
                    release=release,
                )
            except OSError as e:
                if bind.optional:
                    log.info("not listening on %s %s: %s", kind.upper(), bind, e.strerror)
                    continue
                self.close_streams()
                raise ConfigError(f"cannot listen on {kind.upper()} {bind}: {e.strerror}") from None
            self._listeners.append((kind, listener))
        self.streams = streams
        self._send_by_addr_len[3] = streams.send
        ports = {kind: int(listener.local_address[1]) for kind, listener in self._listeners}
        self.core.stream_ports = (ports.get("tcp", 0), ports.get("tls", 0))

    def close_streams(self) -> None:
        for _, listener in self._listeners:
            listener.close()
        self._listeners.clear()
        if self.streams is not None:
            self.streams.close()
        self._send_by_addr_len.pop(3, None)

    def local_addresses(self) -> list[str]:
        out = []
        for t in self.transports:
            host, port = t.local_address[:2]
            out.append(f"[{host}]:{port}" if t.family == socket.AF_INET6 else f"{host}:{port}")
        for kind, listener in self._listeners:
            host, port = listener.local_address[:2]
            where = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
            out.append(f"{kind} {where}")
        return out

    @property
    def port(self) -> int:
        return int(self.transports[0].local_address[1])

    def close_transports(self) -> None:
        self.close_streams()
        for t in self.transports:
            t.close()
        self.transports.clear()
        self._send_by_addr_len.clear()
        for port in list(self._port_transports):
            self._close_port(port)

    # ------------------------------------------------------------ session ports (port mode)

    def _open_port(self, port: int) -> bool:
        """Bind session port ``port`` on every address we listen on (all or none)."""
        opened: dict[int, DatagramTransport] = {}
        receiver = _PortReceiver(self, port)
        try:
            for t in self.transports:
                pt = self.runtime.open_udp(
                    t.local_address[0], port, receiver, buffer_bytes=SOCKET_BUFFER_BYTES
                )
                opened[2 if t.family == socket.AF_INET else 4] = pt
        except OSError as e:
            for pt in opened.values():
                pt.close()
            log.debug("session port %d not available: %s", port, e.strerror)
            return False
        self._port_transports[port] = opened
        # decided once per socket, not per datagram: an isinstance check
        # against a runtime-checkable Protocol costs microseconds
        self._port_queues[port] = {n: t for n, t in opened.items() if isinstance(t, QueueingSender)}
        return True

    def _close_port(self, port: int) -> None:
        self._port_queues.pop(port, None)
        for pt in self._port_transports.pop(port, {}).values():
            pt.close()

    def port_datagram(self, port: int, data: bytes, addr: Addr) -> None:
        ports = self.core.ports
        if ports is None:
            return
        # the port table directly (RelayCore.forward_port's work, without
        # its call): this runs once per relayed datagram
        res = ports.forward(port, data, addr, self._now(), self._charge)
        if res is not None:
            out_port, dst = res
            q = self._port_queues.get(out_port, _NO_QUEUES).get(len(dst))
            if q is not None:
                # leaves with the rest of this wake-up's datagrams for that
                # port (one sendmmsg), when the receiving socket's batch ends
                q.queue(data, dst)
                self._queued[id(q)] = q
            else:
                t = self._port_transports.get(out_port, _NO_PORT).get(len(dst))
                if t is not None:
                    t.sendto(data, dst)
        if ports.out or ports.changes or ports.notices or ports.mapped:
            if ports.notices or ports.mapped:  # PORT_NOT_LATCHED, PUNCH: sealed by the core
                self.core.port_notices(self._now())
                self._control_pending = True
            self._flush_ports()

    def _flush_ports(self) -> None:
        for port, data, dst in self.core.port_output():
            if port == 0:
                self._send(bytes(data), dst)
                continue
            t = self._port_transports.get(port, {}).get(len(dst))
            if t is not None:
                t.sendto(data, dst)
        ports = self.core.ports
        if ports is not None and ports.changes:
            changes = ports.changes[:]
            ports.changes.clear()
            self._apply_path_changes(changes)

    def _apply_path_changes(self, changes: list[PathChange]) -> None:
        """Fully latched sessions go to the kernel, and leave it when a side
        re-latches, goes framed or the session ends. A path the kernel refuses
        stays in userspace (the sockets still serve it), said once in a while."""
        offload = self.offload
        if offload is None:
            return
        for change in changes:
            try:
                if change.pair is None:
                    offload.remove(change.path_id)
                    continue
                path = self._offload_path(change.path_id, change.pair)
                if path is None:
                    # one side IPv4, the other IPv6: nftables rewrites addresses
                    # within a family only (no NAT46), so userspace carries it
                    offload.remove(change.path_id)
                    log.info(
                        "session port %d not offloaded: its sides are of two address "
                        "families (IPv4 and IPv6), which nftables cannot translate; "
                        "userspace forwards it",
                        change.path_id,
                    )
                else:
                    # replies leave from the address the session sockets are
                    # bound to, as in userspace (by default: the route's)
                    local = self._bound_host(path.family)
                    offload.install(path, a_local=local, b_local=local)
            except Exception as e:  # nftables said no: userspace carries it
                self._offload_errors += 1
                if self._offload_errors <= 3 or self._offload_errors % 100 == 0:
                    log.warning("kernel offload of session port %d: %s", change.path_id, e)
                with contextlib.suppress(Exception):
                    offload.remove(change.path_id)
        self.core.stats.offloaded_paths = len(offload.paths())

    def _bound_host(self, family: int) -> str | None:
        """The address we listen on for that family, None if a wildcard."""
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        for t in self.transports:
            if t.family == af:
                host = str(t.local_address[0])
                return None if host in ("0.0.0.0", "::") else host
        return None

    def _offload_path(self, path_id: int, pair: PortPair) -> OffloadPath | None:
        a, b = pair.a.latched, pair.b.latched
        if a is None or b is None or len(a) != len(b):
            return None
        return OffloadPath(
            path_id=path_id,
            family=4 if len(a) == 2 else 6,
            a_port=pair.a.port,
            a_addr=(str(a[0]), int(a[1])),
            b_port=pair.b.port,
            b_addr=(str(b[0]), int(b[1])),
            max_bytes_per_s=self.core.offload_rate(pair),  # the cap, or its share
        )

    def _poll_offload(self, now: float) -> None:
        """The kernel's counters into the core: offloaded sessions are active
        (idle timeout) and counted (metrics) although no socket sees them."""
        if self.offload is None or now < self._offload_poll_at:
            return
        self._offload_poll_at = now + OFFLOAD_POLL_S
        try:
            counters = self.offload.counters()
        except Exception as e:
            log.warning("cannot read the kernel offload's counters: %s", e)
            return
        unrouted = 0
        for path_id, c in counters.items():
            self.core.kernel_counts(
                path_id,
                (c.ab_packets, c.ab_bytes, c.ba_packets, c.ba_bytes, c.dropped_packets),
            )
            unrouted += c.unrouted_packets
        # cumulative over the paths installed now: count what is new
        if unrouted > self._unrouted_seen:
            new = unrouted - self._unrouted_seen
            self.core.stats.drops[DropReason.OFFLOAD_UNROUTED] += new
            if not self._unrouted_warned:
                self._unrouted_warned = True
                log.warning(
                    "kernel offload: %d packets taken but never sent (no route, or a forward "
                    'chain drops them); see wgrelay_drops_total{reason="offload_unrouted"}',
                    new,
                )
        self._unrouted_seen = unrouted

    # ------------------------------------------------------------ receiving (DatagramReceiver)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if data and data[0] == _DATA:
            dst = self.core.forward_data(data, addr, self.runtime.now())
            if dst is not None:
                send = self._send_by_addr_len.get(len(dst))
                if send is not None:
                    send(data, dst)
            else:
                ports = self.core.ports
                if ports is not None and (ports.out or ports.changes):
                    self._flush_ports()  # the other side is in port mode
            return
        self.core.receive_control(data, addr, self.runtime.now())
        self._control_pending = True

    def batch_done(self) -> None:
        if self._queued:
            queued = list(self._queued.values())
            self._queued.clear()
            for t in queued:
                t.flush()
        if self._control_pending:
            self._control_pending = False
            self._flush()

    # ------------------------------------------------------------ pump

    def _send(self, data: bytes, dst: Addr) -> None:
        if len(dst) == 2 and ":" in str(dst[0]):
            # an IPv6 endpoint as announced, (host, port): the IPv6 socket's
            # form (the IPv4 one cannot send it; it was dropped there)
            dst = (dst[0], dst[1], 0, 0)
        send = self._send_by_addr_len.get(len(dst))
        if send is not None:
            send(data, dst)

    def flush(self) -> None:
        """Send what the core has to send now (after an API call into it)."""
        self._flush()

    def _flush(self) -> None:
        for data, dst in self.core.datagrams_to_send():
            self._send(data, dst)
        self._flush_ports()  # closed sessions free their ports
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.core.next_timer()
        if self._timer is not None:
            if self._timer_when <= when + 1e-3:
                return  # the armed timer comes first; it re-arms when it fires
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.runtime.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = float("inf")
        now = self.runtime.now()
        try:
            self.core.sync_wall(now, self.runtime.wall())
            self._poll_offload(now)
            if self.streams is not None and self.streams.conns:
                regs = self.core.table.regs.values()
                self.streams.sweep(now, {r.addr for r in regs if len(r.addr) == 3})
            self.core.handle_timer(now)
            self._flush()
        except Exception:  # the core counts its own bugs; this is the last net
            log.exception("relay timer failed; carrying on")
        finally:
            if self._timer is None:
                self._arm_timer_safely()

    def _arm_timer_safely(self) -> None:
        try:
            self._arm_timer()
        except Exception:
            log.exception("cannot re-arm the relay timer; retrying in 1 s")
            self._timer_when = self.runtime.now() + 1.0
            self._timer = self.runtime.loop.call_at(self._timer_when, self._on_timer)

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()

    async def _refresh_policy(self) -> None:
        while True:
            await asyncio.sleep(self._policy_refresh_s)
            try:
                await self._refresh_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a policy glitch end the reloads
                log.exception("access policy refresh failed; keeping the previous policy")

    async def _refresh_once(self) -> None:
        # reading a file or a WireGuard interface blocks: not on the loop
        await asyncio.to_thread(self.core.policy.refresh)
        self.core.policy_changed(self.runtime.now())
        self._flush()

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        if not self.transports:
            self.open()
        self.core.sync_wall(self.runtime.now(), self.runtime.wall())
        self._arm_timer()
        refresher = asyncio.create_task(self._refresh_policy()) if self._policy_refresh_s else None
        if on_ready is not None:
            on_ready()
        try:
            with stop_on_signals(self._stop.set):
                await self._stop.wait()
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            log.info("shutting down: telling sessions and registrations")
            self.core.shutdown(self.runtime.now())
            for data, dst in self.core.datagrams_to_send():
                self._send(data, dst)
            self._flush_ports()  # the sessions' paths leave the kernel
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.close_transports()
            if self.offload is not None:
                self.offload.close()  # and the table goes
