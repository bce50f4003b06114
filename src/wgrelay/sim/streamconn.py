"""One simulated connection: its two ends (``SimStream``) and its path model.

``wgrelay.sim.stream`` has the theory of operation; this module is the
per-connection half of it: the handshake, frames in flight, the window and the
send buffer, and what a break does.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from wgrelay.transport.base import Addr, StreamOptions, StreamReceiver

if TYPE_CHECKING:
    from wgrelay.sim.link import Pipe
    from wgrelay.sim.stream import SimStreamListener, StreamNet, StreamRoute
    from wgrelay.sim.topology import Host

MAX_FRAME = 0xFFFF
TCP_MIN_RTO_S = 0.2
"""Linux's minimum retransmission timeout; a loss costs RTT + this."""
STREAM_BREAK_TIMEOUT_S = 15.0
"""A broken path (partition, dead host) closes its connections this long
after it broke, like TCP_USER_TIMEOUT with keepalives would."""
TLS_HANDSHAKE_TIMEOUT_S = 60.0
"""asyncio's default ``ssl_handshake_timeout`` of a TLS listener."""
RECEIVE_WINDOW_BYTES = 1024 * 1024
"""Unacknowledged bytes a sender may have out (a tuned Linux window)."""
MSS_BYTES = 1448
TCP_OVERHEAD_BYTES = {False: 40, True: 60}
"""IP + TCP headers per segment (IPv4, IPv6), counted for serialisation."""
TLS_RECORD_OVERHEAD_BYTES = 22
"""TLS 1.3 record header, content type and AEAD tag, per frame."""

ERR_REFUSED = "connection refused"
ERR_TIMED_OUT = "timed out"
ERR_RESET = "connection reset by peer"
ERR_UNREACHABLE = "network is unreachable"

# Trace kinds (records in the simulation's trace beside the datagram ones).
STREAM_CONNECT = "stream_connect"
"""A client started connecting: src its endpoint, dst the target; verdict tcp/tls."""
STREAM_CONNECTED = "stream_connected"
STREAM_ACCEPT = "stream_accept"
"""A listener accepted: src the source it sees, dst the listener."""
STREAM_DELIVER = "stream_deliver"
STREAM_DROP = "stream_drop"
"""``send_frame`` refused a frame; verdict the reason."""
STREAM_CLOSE = "stream_close"
"""An end reported ``stream_closed``; verdict the error or ``closed``."""

DROP_SEND_BUFFER_FULL = "send_buffer_full"
DROP_NOT_CONNECTED = "not_connected"
DROP_BAD_SIZE = "bad_size"

CONNECTING, OPEN, CLOSED = range(3)
"""States of an end."""
# What a handshake runs into (``Connection.mismatch``).
_MATCHED = ""
_TLS_TO_PLAIN = "tls_to_plain"
_PLAIN_TO_TLS = "plain_to_tls"
_NO_PROXY_REPLY = "no_proxy_reply"
_FIN = None
"""The end-of-stream marker in a direction's queue of arrivals."""


class SimStream:
    """``StreamTransport``: one end of a simulated connection."""

    def __init__(
        self,
        net: StreamNet,
        host: Host,
        receiver: StreamReceiver | None,
        send_buffer_bytes: int,
        remote: tuple[str, int],
        tls: bool,
    ) -> None:
        self.net = net
        self.host = host
        self.receiver = receiver
        self.limit = send_buffer_bytes
        self.remote = remote
        """The other end as this end sees it (``peer_address``)."""
        self.local: tuple[str, int] = ("", 0)
        self.route: StreamRoute | None = None
        self.tls = tls
        self.conn: Connection | None = None
        self.state = CONNECTING
        self.reported = False
        self.dead = False
        """Its host crashed: gone without a word."""
        self.paused = False
        self.accepted = True
        """False for a server end until its listener accepted it."""
        self.dropped = 0
        self.batch_pending = False
        # sending
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.serializing: deque[tuple[float, int]] = deque()
        self.serializing_bytes = 0
        self.serial_until = 0.0
        self.outstanding = 0
        self.last_arrival = 0.0
        self.pipes_out: tuple[Pipe, ...] = ()
        # receiving
        self.inbox: deque[bytes | None] = deque()
        self.held: deque[bytes | None] = deque()
        """Arrivals while the path was broken, retransmitted once it heals."""
        self.peer: SimStream | None = None

    # ------------------------------------------------------------ StreamTransport

    @property
    def peer_address(self) -> Addr:
        return self.remote

    @property
    def frames_dropped(self) -> int:
        return self.dropped

    def send_frame(self, data: bytes | memoryview) -> bool:
        n = len(data)
        if self.state != OPEN or self.peer is None:
            return self._refuse(n, DROP_NOT_CONNECTED)
        if not 0 < n <= MAX_FRAME:
            return self._refuse(n, DROP_BAD_SIZE)
        if self.unsent() > self.limit:
            return self._refuse(n, DROP_SEND_BUFFER_FULL)
        self.queue.append(bytes(data))
        self.queued_bytes += n + 2
        self.pump()
        return True

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.net.at(self.net.loop.time(), self.finish, None)
        self.shut()

    # ------------------------------------------------------------ test controls

    def pause_reading(self) -> None:
        """Stop reading (a stalled application): frames wait unacknowledged."""
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self.net.at(self.net.loop.time(), self.drain)

    def unsent(self) -> int:
        """Bytes not yet on the wire: waiting for window, or serialising."""
        now = self.net.loop.time()
        s = self.serializing
        while s and s[0][0] <= now:
            self.serializing_bytes -= s.popleft()[1]
        return self.queued_bytes + self.serializing_bytes

    # ------------------------------------------------------------ sending

    def _refuse(self, n: int, reason: str) -> bool:
        self.dropped += 1
        self.net.drop(self, n, reason)
        return False

    def pump(self) -> None:
        """Transmit what the window allows."""
        q = self.queue
        while q and (
            self.outstanding == 0 or self.outstanding + len(q[0]) + 2 <= RECEIVE_WINDOW_BYTES
        ):
            data = q.popleft()
            self.queued_bytes -= len(data) + 2
            self.transmit(data)

    def transmit(self, item: bytes | None) -> None:
        conn = self.conn
        peer = self.peer
        if conn is None or peer is None:
            return
        now = self.net.loop.time()
        t = now
        if item is not None:
            n = len(item) + 2
            segments = -(-n // MSS_BYTES)
            wire = n + segments * TCP_OVERHEAD_BYTES[conn.v6]
            if self.tls:
                wire += TLS_RECORD_OVERHEAD_BYTES
            bandwidth = min(
                (p.bandwidth_bps for p in self.pipes_out if p.bandwidth_bps is not None),
                default=None,
            )
            if bandwidth is not None:
                t = max(now, self.serial_until) + wire * 8.0 / bandwidth
                self.serial_until = t
                self.serializing.append((t, n))
                self.serializing_bytes += n
            self.outstanding += n
            extra = conn.loss_delay(self.pipes_out, segments)
            if extra >= STREAM_BREAK_TIMEOUT_S:
                # retransmitted in vain for the whole user timeout: the
                # connection dies (a link that loses everything)
                self.net.at(now + STREAM_BREAK_TIMEOUT_S, conn.give_up)
                return
            t += extra
        t += conn.one_way(self.pipes_out, jitter=True)
        t = max(t, self.last_arrival)
        self.last_arrival = t
        self.net.at(t, peer.arrive, item)

    def acked(self, n: int) -> None:
        self.outstanding -= n
        if self.state == OPEN:
            self.pump()

    def shut(self) -> None:
        """Stop this end (no report here): drop what was never sent, and if
        the TCP connection is up, send FIN after what is in flight."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.queue.clear()
        self.queued_bytes = 0
        if self.peer is not None:
            self.transmit(_FIN)
        if self.conn is not None:
            self.conn.maybe_done()
        elif self.route is not None:
            self.route.release()

    # ------------------------------------------------------------ receiving

    def arrive(self, item: bytes | None) -> None:
        conn = self.conn
        if self.state == CLOSED or conn is None:
            return
        if conn.stalled_at is not None or not conn.path_ok():
            conn.stall(self.net.loop.time())
            self.held.append(item)
            return
        if not self.accepted and (item is None or conn.mismatch == _PLAIN_TO_TLS):
            # never accepted: the client gave up, or a TLS listener read
            # our frame as a broken ClientHello and dropped the connection
            self.shut()
            return
        self.inbox.append(item)
        self.drain()

    def drain(self, _: object = None) -> None:
        inbox = self.inbox
        while inbox and not self.paused and self.accepted and self.state != CLOSED:
            item = inbox.popleft()
            if item is None:
                self.finish(None)
                return
            self.net.frames_delivered += 1
            self.net.trace(
                STREAM_DELIVER, self.remote, self.local, len(item), "delivered", self.host.name
            )
            if self.peer is not None:
                self.net.at(
                    self.net.loop.time() + self.conn_one_way(), self.peer.acked, len(item) + 2
                )
            if self.receiver is not None:
                try:
                    self.receiver.frame_received(item)
                except Exception as e:
                    self.net.receiver_failed(repr(self), e)
            if not self.batch_pending:
                self.batch_pending = True
                self.net.touched(self)

    def conn_one_way(self) -> float:
        return 0.0 if self.conn is None else self.conn.one_way(self.pipes_out, jitter=False)

    def flush_batch(self) -> None:
        if not self.batch_pending:
            return
        self.batch_pending = False
        if self.reported or self.receiver is None:
            return
        try:
            self.receiver.frames_done()
        except Exception as e:
            self.net.receiver_failed(repr(self), e)

    # ------------------------------------------------------------ lifecycle

    def established(self, _: object = None) -> None:
        if self.state != CONNECTING or self.peer is None:
            return  # closed meanwhile, or its SYN-ACK was lost in a break
        self.state = OPEN
        self.net.trace(
            STREAM_CONNECTED,
            self.local,
            self.remote,
            0,
            "tls" if self.tls else "tcp",
            self.host.name,
        )
        if self.receiver is not None:
            try:
                self.receiver.stream_connected()
            except Exception as e:
                self.net.receiver_failed(repr(self), e)

    def accept_by(self, listener: SimStreamListener) -> None:
        """The handshake reached the listener: it accepts this (server) end."""
        conn = self.conn
        if self.state == CLOSED or conn is None:
            return
        if listener.closed or conn.client.peer is None:
            # the listener went, or the client gave up before its SYN-ACK
            self.shut()
            return
        self.accepted = True
        listener.accepted += 1
        self.net.trace(
            STREAM_ACCEPT, self.remote, self.local, 0, "tls" if self.tls else "tcp", self.host.name
        )
        try:
            self.receiver = listener.accept(self.remote, self)
        except Exception as e:  # the seam's accept must not raise: record the bug
            self.net.receiver_failed(repr(listener), e)
            self.shut()
            return
        self.established()
        self.drain()

    def handshake_timeout(self, _: object) -> None:
        """A TLS listener gives up on a client that never sent a ClientHello."""
        if not self.accepted:
            self.shut()

    def fail(self, error: str) -> None:
        """Connecting failed (or the connection broke): shut and report."""
        if self.state == CLOSED:
            return
        self.shut()
        self.finish(error)

    def finish(self, error: str | None) -> None:
        """Report ``stream_closed`` (once; pending ``frames_done`` first)."""
        if self.state != CLOSED:
            self.shut()
        if self.reported:
            return
        self.flush_batch()
        self.reported = True
        self.net.trace(STREAM_CLOSE, self.local, self.remote, 0, error or "closed", self.host.name)
        if self.receiver is not None:
            try:
                self.receiver.stream_closed(error)
            except Exception as e:
                self.net.receiver_failed(repr(self), e)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closed")[self.state]
        return f"<SimStream {self.host.name} {self.local} -> {self.remote} {state}>"


class Connection:
    """Both ends of one connection, its route, its RNG and its break clock."""

    def __init__(
        self,
        net: StreamNet,
        client: SimStream,
        route: StreamRoute,
        options: StreamOptions,
        t0: float,
    ) -> None:
        self.net = net
        self.client = client
        self.server: SimStream | None = None
        self.route = route
        self.v6 = route.v6
        self.t0 = t0
        self.deadline = t0 + options.connect_timeout_s
        self.proxied = options.proxy is not None
        self.mismatch = _MATCHED
        src = route.source_inside
        self.rng = net.network.derive_rng(f"stream/{client.host.name}/{src[1]}/{t0!r}")
        self.rtt = self.one_way(route.pipes_out, jitter=False) + self.one_way(
            route.pipes_back, jitter=False
        )
        self.stalled_at: float | None = None
        self.retry_s = 0.0
        self.done = False
        client.conn = self
        client.pipes_out = route.pipes_out

    # ------------------------------------------------------------ the path

    def one_way(self, pipes: tuple[Pipe, ...], *, jitter: bool) -> float:
        t = 0.0
        for p in pipes:
            t += p.delay_s
            if jitter and p.spec.jitter_s:
                t += self.rng.random() * p.spec.jitter_s
        return t

    def loss_delay(self, pipes: tuple[Pipe, ...], segments: int) -> float:
        """Retransmission time of the frame's segments lost on the way."""
        delivered = 1.0
        for p in pipes:
            delivered *= 1.0 - p.spec.loss
        if delivered >= 1.0:
            return 0.0
        worst = 0.0
        for _ in range(segments):
            extra, rto = 0.0, self.rtt + TCP_MIN_RTO_S
            while self.rng.random() >= delivered and extra < STREAM_BREAK_TIMEOUT_S:
                extra += rto
                rto *= 2.0
            worst = max(worst, extra)
        return worst

    def path_ok(self) -> bool:
        """Both hosts up, both ends alive, no partition between them."""
        b = self.route.dst_host
        if b is None or not (self.client.host.is_up and b.is_up) or self.client.dead:
            return False
        if self.server is not None and self.server.dead:
            return False
        return self._hosts_connected()

    # ------------------------------------------------------------ the handshake

    def syn_arrived(self, _: object) -> None:
        net, client, route = self.net, self.client, self.route
        now = net.loop.time()
        dst = route.dst_host
        if client.state == CLOSED:
            self.maybe_done()
            return
        if dst is None or not self.path_ok():
            net.at(self.deadline, client.fail, ERR_TIMED_OUT)
            return
        listener = dst.find_stream_listener(self.v6, route.dst)
        if listener is None:
            net.at(now + self.one_way(route.pipes_back, jitter=False), client.fail, ERR_REFUSED)
            return
        server = SimStream(
            net, dst, None, listener.send_buffer_bytes, route.source_outside, listener.tls
        )
        server.local = route.dst
        server.route = route
        server.conn = self
        server.pipes_out = route.pipes_back
        server.accepted = False
        server.peer = client
        self.server = server
        if self.proxied:
            self.mismatch = _NO_PROXY_REPLY
        elif client.tls and not listener.tls:
            self.mismatch = _TLS_TO_PLAIN
        elif listener.tls and not client.tls:
            self.mismatch = _PLAIN_TO_TLS
        rtt = self.rtt
        one_way = self.one_way(route.pipes_out, jitter=False)
        tcp_up = self.t0 + rtt
        if tcp_up > self.deadline:
            net.at(self.deadline, client.fail, ERR_TIMED_OUT)
            return
        net.at(tcp_up, self.tcp_up)
        if self.mismatch in (_TLS_TO_PLAIN, _NO_PROXY_REPLY):
            # TCP is up, so a plain listener accepts; the client waits for a
            # TLS (or proxy) answer that never comes
            net.at(tcp_up + one_way, server.accept_by, listener)
            net.at(self.deadline, client.fail, ERR_TIMED_OUT)
        elif self.mismatch == _PLAIN_TO_TLS:
            net.at(tcp_up, client.established)
            net.at(tcp_up + one_way + TLS_HANDSHAKE_TIMEOUT_S, server.handshake_timeout)
        else:
            done = self.t0 + (2 if client.tls else 1) * rtt
            if done > self.deadline:
                net.at(self.deadline, client.fail, ERR_TIMED_OUT)
                return
            net.at(done, client.established)
            net.at(done + one_way, server.accept_by, listener)

    def tcp_up(self, _: object) -> None:
        """The SYN-ACK is back: the client's side of the connection exists."""
        client = self.client
        if client.state == CLOSED:
            return
        if not self.path_ok():
            # the SYN-ACK was lost in a break: the client times out
            self.net.at(max(self.net.loop.time(), self.deadline), client.fail, ERR_TIMED_OUT)
            return
        client.peer = self.server

    # ------------------------------------------------------------ breaks

    def stall(self, now: float) -> None:
        if self.stalled_at is None and not self.done:
            self.stalled_at = now
            self.retry_s = self.rtt + TCP_MIN_RTO_S
            self.net.at(now + self.retry_s, self.retry)

    def retry(self, _: object) -> None:
        """A retransmission (or keepalive probe) after a break."""
        stalled_at = self.stalled_at
        if self.done or stalled_at is None:
            return
        net = self.net
        now = net.loop.time()
        ends = [e for e in (self.client, self.server) if e is not None]
        if self.path_ok():
            # the retransmissions get through: what was held arrives now, in
            # order and before anything sent after it
            self.stalled_at = None
            for end in ends:
                held, end.held = end.held, deque()
                for item in held:
                    end.arrive(item)
            return
        live = [e for e in ends if not e.dead and e.state != CLOSED]
        dead = [e for e in ends if e.dead]
        if dead and all(e.host.is_up for e in dead) and self._hosts_connected():
            # the host came back without the connection: it answers with RST
            self.stalled_at = None
            for end in live:
                net.at(now + self.one_way(end.pipes_out, jitter=False), end.fail, ERR_RESET)
            return
        if now - stalled_at >= STREAM_BREAK_TIMEOUT_S or not live:
            for end in live:
                end.fail(ERR_TIMED_OUT)
            return
        self.retry_s *= 2.0
        net.at(min(now + self.retry_s, stalled_at + STREAM_BREAK_TIMEOUT_S), self.retry)

    def give_up(self, _: object) -> None:
        for end in (self.client, self.server):
            if end is not None and not end.dead:
                end.fail(ERR_TIMED_OUT)

    def _hosts_connected(self) -> bool:
        a, b = self.client.host, self.route.dst_host
        return b is not None and not any(
            (a in p.a and b in p.b) or (a in p.b and b in p.a) for p in self.net.network.partitions
        )

    def maybe_done(self) -> None:
        """Forget the connection once both ends are closed (its NAT mappings go)."""
        if self.done:
            return
        if self.client.state == CLOSED and (self.server is None or self.server.state == CLOSED):
            self.done = True
            self.net.connections.pop(self, None)
            self.route.release()
