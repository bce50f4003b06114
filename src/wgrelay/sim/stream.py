"""Simulated TCP and TLS streams: the ``Runtime`` stream seam on the simulator.

Theory of operation
-------------------
A connection is a reliable, in-order frame pipe between two simulated hosts;
production shells see exactly the seam of ``wgrelay.transport.base`` (frames,
``frames_done`` per wake-up, ``stream_closed`` once). Segments do not go
through the datagram engine (that one is UDP: a ``udp_blocked`` box must not
drop TCP); instead the route is walked once, at ``connect``, through the same
realms, NAT boxes and link pipes (``route_stream``):

* every outbound connection crosses every NAT kind unless the box has
  ``tcp_blocked`` (or ``tcp_443_only`` and another port): that is what
  ``udp_blocked`` boxes are for. The box maps the source to its public address
  and a port of its own TCP table, held for the connection's life (a TCP
  mapping of an open connection does not expire: RFC 5382 REQ-5 is hours).
* an inbound connection to a NAT's public address is refused (no forwarding).
* connect failures: nobody listening -> ``connection refused`` one RTT later;
  dropped by a box, no route, or a dead or partitioned host -> ``timed out``
  after ``options.connect_timeout_s``.
* handshakes: TCP takes one RTT (the client is connected when the SYN-ACK is
  back, the server accepts one way later, with the client's first data); TLS
  one more RTT (TLS 1.3). Mismatches behave as the real asyncio transport
  does (checked against it): a TLS client to a plain listener is accepted
  there (TCP is up) but never finishes its handshake, so it times out after
  ``connect_timeout_s`` and the listener side sees a clean close; a plain
  client to a TLS listener connects, and the listener drops it (never
  accepted) at its first frame or after asyncio's 60 s handshake timeout: the
  client sees a clean close (``error`` None).
* per frame: it leaves the sender after the bytes before it at the path's
  bottleneck bandwidth (if any link on the way has one; TCP's share of it is
  not taken from the UDP queues), arrives after the links' delays plus jitter,
  and never before the frame before it (TCP's in-order delivery, so head-of-
  line blocking is modelled). Link loss, per 1448-byte segment, costs a
  retransmission timeout of ``RTT + TCP_MIN_RTO_S``, doubling per further
  loss, drawn from the connection's own seeded RNG. Duplication and
  reordering are hidden by TCP and ignored.
* back-pressure: a sender may have ``RECEIVE_WINDOW_BYTES`` unacknowledged
  (acknowledged one way after the receiver *read* the frame); beyond that,
  frames wait in its send buffer, as do frames still serialising at the
  bottleneck. ``send_frame`` refuses (and counts) while more than
  ``send_buffer_bytes`` wait, exactly like the real transport. An end whose
  ``pause_reading()`` was called stops reading, so its sender's window and
  then buffer fill.
* breaks: a frame that arrives while the path is broken (a host down, the
  two hosts partitioned) is held, and so is the connection: it is retried at
  RTO, 2 RTO, ... As with ``TCP_USER_TIMEOUT``/keepalive, if the path is still
  broken ``STREAM_BREAK_TIMEOUT_S`` after it broke, each live end gets
  ``stream_closed("timed out")``; if it heals first the held frames arrive.
  A partition or crash starts that clock at once, so idle connections break
  too. A host that crashed and came back has forgotten the connection: the
  other end gets ``connection reset by peer`` at the next retry. A link that
  loses a frame for the whole timeout breaks the connection the same way.
* ``StreamOptions.proxy``: no HTTP CONNECT proxy runs in a simulation; the
  client connects to the proxy's address, and whatever listens there never
  answers the CONNECT, so the client times out (refused if nothing listens).
* TLS has no crypto here: a TLS listener and a TLS client only decide which
  handshake (and which mismatch) happens, and add a record's bytes per frame.

Trace records (``kind`` ``stream_connect``/``stream_connected``/
``stream_accept``/``stream_deliver``/``stream_drop``/``stream_close``) go
into the simulation's trace beside the datagram ones, so ``trace_digest``
covers streams too. ``SimStream.pause_reading``/``resume_reading`` let a test
stall a reader.

All events go through one heap ordered by (time, sequence), served by a single
asyncio timer, so runs are deterministic, frames keep their order, and every
end that got frames in one instant gets one ``frames_done``.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import ipaddress
import itertools
import logging
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wgrelay.sim.nat import Endpoint
from wgrelay.sim.streamconn import (
    CLOSED,
    DROP_BAD_SIZE,
    DROP_NOT_CONNECTED,
    DROP_SEND_BUFFER_FULL,
    ERR_REFUSED,
    ERR_RESET,
    ERR_TIMED_OUT,
    ERR_UNREACHABLE,
    RECEIVE_WINDOW_BYTES,
    STREAM_ACCEPT,
    STREAM_BREAK_TIMEOUT_S,
    STREAM_CLOSE,
    STREAM_CONNECT,
    STREAM_CONNECTED,
    STREAM_DELIVER,
    STREAM_DROP,
    TCP_MIN_RTO_S,
    TLS_HANDSHAKE_TIMEOUT_S,
    Connection,
    SimStream,
)
from wgrelay.sim.topology import Host, Nat
from wgrelay.transport.base import Accept, Addr, StreamOptions, StreamReceiver

if TYPE_CHECKING:
    from wgrelay.sim.engine import Network
    from wgrelay.sim.link import Pipe

__all__ = [
    "DROP_BAD_SIZE",
    "DROP_NOT_CONNECTED",
    "DROP_SEND_BUFFER_FULL",
    "ERR_REFUSED",
    "ERR_RESET",
    "ERR_TIMED_OUT",
    "ERR_UNREACHABLE",
    "RECEIVE_WINDOW_BYTES",
    "STREAM_ACCEPT",
    "STREAM_BREAK_TIMEOUT_S",
    "STREAM_CLOSE",
    "STREAM_CONNECT",
    "STREAM_CONNECTED",
    "STREAM_DELIVER",
    "STREAM_DROP",
    "TCP_MIN_RTO_S",
    "TLS_HANDSHAKE_TIMEOUT_S",
    "SimStream",
    "SimStreamListener",
    "StreamNet",
    "StreamRoute",
    "route_stream",
]

log = logging.getLogger(__name__)

Event = tuple[float, int, Callable[[Any], None], Any]


@dataclass(slots=True, eq=False)
class StreamRoute:
    """Where a connection goes: the topology walked once, at connect."""

    origin: Host
    v6: bool
    dst: Endpoint
    source_inside: Endpoint
    """The client's own address and port."""
    source_outside: Endpoint = ("", 0)
    """The source the listener sees (after every NAT on the way)."""
    dst_host: Host | None = None
    pipes_out: tuple[Pipe, ...] = ()
    pipes_back: tuple[Pipe, ...] = ()
    failure: str | None = None
    fail_after_s: float | None = None
    """When ``failure`` shows: None for the client's connect timeout."""
    nat_ports: list[tuple[Nat, int]] = field(default_factory=list)
    released: bool = False

    def release(self) -> None:
        """Free the client's port and the NAT mappings (idempotent)."""
        if not self.released:
            self.released = True
            ip, port = self.source_inside
            if port:
                self.origin.release_tcp_port(self.v6, ip, port)
            for nat, nat_port in self.nat_ports:
                nat.release_tcp_port(nat_port)


def route_stream(origin: Host, dst_ip: str, dst_port: int) -> StreamRoute:
    """The route of a new connection from ``origin`` (mappings taken), or
    why it fails. Mirrors the datagram engine's routing (engine.py) but with
    TCP's rules at each box."""
    v6 = ":" in dst_ip
    local = origin.is_local(dst_ip)
    own = origin.ipv6_addresses if v6 else origin.addresses
    src_ip = dst_ip if local else own[0] if own else ""
    route = StreamRoute(origin, v6, (dst_ip, dst_port), (src_ip, 0))
    if not src_ip:
        route.failure, route.fail_after_s = ERR_UNREACHABLE, 0.0
        return route
    try:
        port = origin.allocate_tcp_port(v6, src_ip)
    except OSError as e:
        route.failure, route.fail_after_s = str(e.strerror or e), 0.0
        return route
    route.source_inside = src = (src_ip, port)
    if local:
        route.dst_host = origin
        route.source_outside = src
        return route
    out: list[Pipe] = [origin.up_pipe]
    back: list[Pipe] = [origin.down_pipe]
    realm = origin.realm
    while True:
        target = realm.table.get(dst_ip)
        if type(target) is Host:
            out.append(target.down_pipe)
            back.append(target.up_pipe)
            route.dst_host = target
            break
        if type(target) is Nat:
            out.append(target.down_pipe)
            back.append(target.up_pipe)
            if v6:  # routed, not translated
                realm = target.inner
                continue
            # a box's own public address: nothing is forwarded (the box's
            # own stack answers the SYN with a RST)
            route.failure = ERR_REFUSED
            route.fail_after_s = 2.0 * sum(p.delay_s for p in out)
            return route
        nat = realm.nat
        if nat is None:
            route.failure = ERR_TIMED_OUT  # nobody has that address: the SYN is lost
            return route
        b = nat.behavior
        if b.tcp_blocked or (b.tcp_443_only and dst_port != 443):
            route.failure = ERR_TIMED_OUT  # a firewall drops the SYN
            return route
        if dst_ip == nat.public_ip:  # hairpin to its own address: no forward either
            route.failure = ERR_REFUSED
            route.fail_after_s = 2.0 * sum(p.delay_s for p in out)
            return route
        if not v6:
            nat_port = nat.allocate_tcp_port(src[1])
            if nat_port is None:
                route.failure = ERR_TIMED_OUT
                return route
            route.nat_ports.append((nat, nat_port))
            src = (nat.public_ip, nat_port)
        out.append(nat.up_pipe)
        back.append(nat.down_pipe)
        realm = nat.outer
    route.source_outside = src
    route.pipes_out = tuple(out)
    route.pipes_back = tuple(back)
    return route


class StreamNet:
    """Every simulated connection and listener of one simulation, and their events."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.loop = network.loop
        self.drops: dict[str, int] = {}
        """Frames ``send_frame`` refused, by reason."""
        self.frames_delivered = 0
        self.connections: dict[Connection, None] = {}
        self._heap: list[Event] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._running = False
        self._touched: list[SimStream] = []

    # ------------------------------------------------------------ events

    def at(self, t: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, arg))
        if not self._running and t < self._timer_at:
            self._arm(t)

    def _arm(self, t: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self.loop.call_at(t, self._run)

    def _run(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._running = True
        now = self.loop.time()
        heap = self._heap
        try:
            while heap and heap[0][0] <= now:
                while heap and heap[0][0] <= now:
                    _, _, fn, arg = heapq.heappop(heap)
                    fn(arg)
                touched, self._touched = self._touched, []
                for end in touched:
                    end.flush_batch()
        finally:
            self._running = False
        if heap:
            self._arm(heap[0][0])

    def touched(self, end: SimStream) -> None:
        self._touched.append(end)

    def receiver_failed(self, what: str, error: Exception) -> None:
        """A receiver broke the seam's contract (it must not raise): keep it
        where ``Simulation.run`` looks, so the scenario fails loudly."""
        errors = self.network.receiver_errors
        if len(errors) < 100:
            errors.append(error)
        log.error("stream receiver of %s raised", what, exc_info=error)

    def trace(self, kind: str, src: Any, dst: Any, size: int, verdict: str, at: str) -> None:
        trace = self.network.trace
        if trace.enabled:
            trace.raw.append((self.loop.time(), kind, src, dst, size, verdict, at))

    def drop(self, end: SimStream, n: int, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.trace(STREAM_DROP, end.local, end.remote, n, reason, end.host.name)

    # ------------------------------------------------------------ topology events

    def partitioned(self) -> None:
        """A partition began: the connections across it start breaking now."""
        now = self.loop.time()
        for conn in list(self.connections):
            if not conn.path_ok():
                conn.stall(now)

    def host_crashed(self, host: Host) -> None:
        """Its ends vanish silently (their process is gone); the other ends
        find out the way TCP would, by a timeout or a reset."""
        now = self.loop.time()
        for conn in list(self.connections):
            ends = [e for e in (conn.client, conn.server) if e is not None and e.host is host]
            for end in ends:
                end.dead = True
                end.state = CLOSED
                end.reported = True
            if ends:
                conn.stall(now)
                conn.maybe_done()
        for listener in list(host.stream_listeners.values()):
            listener.close()

    # ------------------------------------------------------------ the seam

    def connect(
        self, host: Host, ip: str, port: int, receiver: StreamReceiver, options: StreamOptions
    ) -> SimStream:
        now = self.loop.time()
        end = SimStream(self, host, receiver, options.send_buffer_bytes, (ip, port), options.tls)
        target = options.proxy or (ip, port)
        try:
            parsed = ipaddress.ip_address(target[0])
        except ValueError:
            self.at(now, end.fail, f"not an IP address: {target[0]!r}")
            return end
        if not host.is_up:
            self.at(now, end.fail, ERR_UNREACHABLE)
            return end
        if not 0 < int(target[1]) <= 0xFFFF:
            self.at(now, end.fail, f"port {target[1]} out of range")
            return end
        route = route_stream(host, str(parsed), int(target[1]))
        end.route = route
        end.local = route.source_inside
        self.trace(STREAM_CONNECT, end.local, end.remote, 0, "tls" if end.tls else "tcp", host.name)
        if route.failure is not None:
            delay = route.fail_after_s
            self.at(
                now + (options.connect_timeout_s if delay is None else delay),
                end.fail,
                route.failure,
            )
            return end
        conn = Connection(self, end, route, options, now)
        self.connections[conn] = None
        self.at(now + conn.one_way(route.pipes_out, jitter=False), conn.syn_arrived)
        return end

    def listen(
        self,
        host: Host,
        ip: str,
        port: int,
        accept: Accept,
        tls: ssl.SSLContext | None,
        send_buffer_bytes: int,
    ) -> SimStreamListener:
        if not host.is_up:
            raise OSError(errno.ENETDOWN, f"host {host.name} is down")
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise OSError(errno.EINVAL, f"not an IP address: {ip!r}") from None
        ip = str(addr)
        v6 = addr.version == 6
        if not addr.is_unspecified and not host.is_local(ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{ip} is not an address of {host.name}")
        if not 0 <= port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        if port == 0:
            port = host.allocate_tcp_port(v6, ip)
        elif not host.claim_tcp_port(v6, ip, port):
            raise OSError(errno.EADDRINUSE, "Address already in use")
        listener = SimStreamListener(host, ip, port, v6, accept, tls, send_buffer_bytes)
        host.add_stream_listener(listener)
        return listener


class SimStreamListener:
    """``StreamListener``: accepts simulated connections on one address."""

    def __init__(
        self,
        host: Host,
        ip: str,
        port: int,
        v6: bool,
        accept: Accept,
        tls: ssl.SSLContext | None,
        send_buffer_bytes: int,
    ) -> None:
        self.host = host
        self.ip = ip
        self.port = port
        self.v6 = v6
        self.accept = accept
        self.tls = tls is not None
        """TLS in a simulation is the same stream, no crypto; the flag only
        decides what a handshake with a plain (or TLS) client does."""
        self.send_buffer_bytes = send_buffer_bytes
        self.closed = False
        self.accepted = 0

    @property
    def local_address(self) -> Addr:
        return (self.ip, self.port, 0, 0) if self.v6 else (self.ip, self.port)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.remove_stream_listener(self)

    def __repr__(self) -> str:
        tls = " tls" if self.tls else ""
        return f"<SimStreamListener {self.host.name} {self.ip}:{self.port}{tls}>"
