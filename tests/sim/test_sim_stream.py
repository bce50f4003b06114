"""Simulated TCP/TLS streams (wgrelay.sim.stream): NATs, failures, TLS
mismatches, ordering, back-pressure, breaks and determinism, all through the
``Runtime`` seam the production shells use."""

from __future__ import annotations

import errno
import itertools
import ssl

import pytest

from tests.sim.simhelpers import Recorder
from wgrelay.sim import LinkSpec, NatBehavior, NatKind, Simulation
from wgrelay.sim.stream import (
    DROP_SEND_BUFFER_FULL,
    RECEIVE_WINDOW_BYTES,
    STREAM_BREAK_TIMEOUT_S,
    STREAM_CLOSE,
    STREAM_DELIVER,
    SimStream,
    SimStreamListener,
)
from wgrelay.sim.topology import Host
from wgrelay.transport.base import Addr, StreamOptions, StreamTransport

CLIENT_DELAY_S = 0.020
SERVER_DELAY_S = 0.010
RTT_S = 2 * (CLIENT_DELAY_S + SERVER_DELAY_S)
ONE_WAY_S = RTT_S / 2


class Ends:
    """A ``StreamReceiver`` that records everything, optionally echoing."""

    def __init__(self, sim: Simulation, echo: StreamTransport | None = None) -> None:
        self.sim = sim
        self.echo = echo
        self.connected_at: float | None = None
        self.frames: list[tuple[float, bytes]] = []
        self.batches: list[int] = []
        self.closed: list[tuple[float, str | None]] = []
        self._batch = 0

    def stream_connected(self) -> None:
        assert self.connected_at is None
        self.connected_at = self.sim.now()

    def frame_received(self, data: bytes) -> None:
        assert not self.closed
        self.frames.append((self.sim.now(), data))
        self._batch += 1
        if self.echo is not None:
            self.echo.send_frame(data)

    def frames_done(self) -> None:
        assert not self.closed
        self.batches.append(self._batch)
        self._batch = 0

    def stream_closed(self, error: str | None) -> None:
        assert not self.closed, "stream_closed twice"
        self.closed.append((self.sim.now(), error))

    @property
    def payloads(self) -> list[bytes]:
        return [d for _, d in self.frames]


class Server:
    """A listener that records (and echoes, with ``echo``) each accepted stream."""

    def __init__(self, sim: Simulation, *, echo: bool = True) -> None:
        self.sim = sim
        self.echo = echo
        self.accepted: list[tuple[Addr, SimStream, Ends]] = []

    def accept(self, addr: Addr, stream: StreamTransport) -> Ends:
        assert isinstance(stream, SimStream)
        ends = Ends(self.sim, stream if self.echo else None)
        self.accepted.append((addr, stream, ends))
        return ends


def assert_closed(ends: Ends, at: float, error: str | None) -> None:
    """``ends`` was closed exactly once, at virtual time ``at``, with ``error``."""
    assert len(ends.closed) == 1, ends.closed
    t, got = ends.closed[0]
    assert got == error
    assert t == pytest.approx(at), (t, at)


def world(
    sim: Simulation, behind: NatKind | NatBehavior = NatKind.NONE, *, link: LinkSpec | None = None
) -> tuple[Host, Host]:
    server = sim.add_host("server", link=LinkSpec(delay_s=SERVER_DELAY_S))
    client = sim.add_host("client", behind=behind, link=link or LinkSpec(delay_s=CLIENT_DELAY_S))
    return server, client


def listen(
    sim: Simulation, host: Host, port: int, server: Server, *, tls: bool = False
) -> SimStreamListener:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if tls else None
    listener = sim.run(host.runtime().listen_stream("0.0.0.0", port, server.accept, tls=ctx))
    assert isinstance(listener, SimStreamListener)
    return listener


def connect(
    host: Host, to: Host, port: int, ends: Ends, options: StreamOptions | None = None
) -> SimStream:
    return host.runtime().connect_stream(to.address, port, ends, options or StreamOptions())


# ---------------------------------------------------------------- NATs


@pytest.mark.parametrize("kind", list(NatKind), ids=lambda k: k.value)
def test_echo_through_every_nat_kind(sim: Simulation, kind: NatKind) -> None:
    server_host, client_host = world(sim, kind)
    server = Server(sim)
    listen(sim, server_host, 443, server)
    ends = Ends(sim)
    stream = connect(client_host, server_host, 443, ends)
    sim.run_until(lambda: ends.connected_at is not None, timeout_s=5)
    assert ends.connected_at == pytest.approx(RTT_S)  # TCP's handshake: one RTT
    t_send = sim.now()
    for i in range(5):
        assert stream.send_frame(b"frame %d" % i)
    sim.run_until(lambda: len(ends.frames) == 5, timeout_s=5)
    assert ends.payloads == [b"frame %d" % i for i in range(5)]
    assert [t for t, _ in ends.frames] == [pytest.approx(t_send + RTT_S)] * 5  # echoed
    ((source, _, server_ends),) = server.accepted
    nat = client_host.nat
    if nat is None:
        assert source == (client_host.address, stream.local[1])
    else:
        assert source[0] == nat.public_ip  # the listener sees the box, not the LAN
        assert client_host.address.startswith("10.")
    assert server_ends.connected_at == pytest.approx(RTT_S + ONE_WAY_S)
    assert server_ends.batches == [5]  # one wake-up, one frames_done
    t_close = sim.now()
    stream.close()
    sim.run_for(1)
    assert_closed(ends, t_close, None)
    assert_closed(server_ends, t_close + ONE_WAY_S, None)  # the FIN
    assert not sim.streams.connections  # both ends gone: mappings released


def test_udp_blocked_passes_streams_but_not_udp(sim: Simulation) -> None:
    server_host, client_host = world(sim, NatKind.UDP_BLOCKED)
    rec = Recorder(sim)
    server_host.runtime().open_udp("0.0.0.0", 51820, rec)
    sock = client_host.runtime().open_udp("0.0.0.0", 0, Recorder(sim))
    sock.sendto(b"over udp", (server_host.address, 51820))
    server = Server(sim)
    listen(sim, server_host, 51820, server)
    ends = Ends(sim)
    stream = connect(client_host, server_host, 51820, ends)
    sim.run_until(lambda: ends.connected_at is not None, timeout_s=5)
    stream.send_frame(b"over tcp")
    sim.run_until(lambda: bool(ends.frames), timeout_s=5)
    assert ends.payloads == [b"over tcp"]
    assert rec.got == []
    assert sim.drops == {"nat_udp_blocked": 1}


def test_tcp_443_only_lets_only_https_out(sim: Simulation) -> None:
    server_host, client_host = world(sim, NatKind.TCP_443_ONLY)
    server = Server(sim)
    listen(sim, server_host, 443, server, tls=True)
    listen(sim, server_host, 8443, server, tls=True)
    opts = StreamOptions(tls=True, connect_timeout_s=3.0)
    on_443, on_8443 = Ends(sim), Ends(sim)
    s443 = connect(client_host, server_host, 443, on_443, opts)
    connect(client_host, server_host, 8443, on_8443, opts)
    sim.run_for(4)
    assert on_443.connected_at == pytest.approx(2 * RTT_S)  # TLS 1.3: one RTT more
    assert on_8443.connected_at is None
    assert_closed(on_8443, 3.0, "timed out")  # the SYN was dropped: connect timeout
    s443.send_frame(b"x")
    sim.run_until(lambda: bool(on_443.frames), timeout_s=5)
    assert len(server.accepted) == 1


def test_refused_after_one_rtt_timed_out_after_the_connect_timeout(sim: Simulation) -> None:
    server_host, client_host = world(sim)
    boxed = sim.add_host("boxed", behind=NatBehavior(tcp_blocked=True))
    natted = sim.add_host("natted", behind=NatKind.FULL_CONE)
    assert natted.nat is not None
    listen(sim, natted, 443, Server(sim))  # behind a NAT without a forward
    nobody, blocked, inbound = Ends(sim), Ends(sim), Ends(sim)
    opts = StreamOptions(connect_timeout_s=2.5)
    connect(client_host, server_host, 443, nobody, opts)
    connect(boxed, server_host, 443, blocked, opts)
    client_host.runtime().connect_stream(natted.nat.public_ip, 443, inbound, opts)
    sim.run_for(3)
    assert_closed(nobody, RTT_S, "connection refused")
    assert_closed(blocked, 2.5, "timed out")
    assert_closed(inbound, 2 * CLIENT_DELAY_S, "connection refused")
    assert None in (nobody.connected_at, blocked.connected_at, inbound.connected_at)
    assert not sim.streams.connections


def test_tls_mismatches_fail_like_the_real_transport(sim: Simulation) -> None:
    server_host, client_host = world(sim)
    plain, tls = Server(sim), Server(sim)
    listen(sim, server_host, 80, plain)
    listen(sim, server_host, 443, tls, tls=True)
    opts_tls = StreamOptions(tls=True, connect_timeout_s=2.0)
    tls_to_plain, plain_to_tls = Ends(sim), Ends(sim)
    connect(client_host, server_host, 80, tls_to_plain, opts_tls)
    s = connect(client_host, server_host, 443, plain_to_tls)
    sim.run_until(lambda: plain_to_tls.connected_at is not None, timeout_s=1)
    s.send_frame(b"not a ClientHello")
    sim.run_for(3)
    # a TLS client waits for a ServerHello that never comes; the plain
    # listener had accepted it and sees a clean close
    assert tls_to_plain.connected_at is None
    assert_closed(tls_to_plain, 2.0, "timed out")
    ((_, _, accepted),) = plain.accepted
    assert accepted.frames == []
    assert_closed(accepted, 2.0 + ONE_WAY_S, None)
    # a plain client connects, and the TLS listener drops it at its first
    # frame, never accepting it
    assert plain_to_tls.connected_at == pytest.approx(RTT_S)
    assert plain_to_tls.closed[0][1] is None
    assert plain_to_tls.closed[0][0] > RTT_S
    assert tls.accepted == []


# ---------------------------------------------------------------- frames


def test_order_survives_loss_and_jitter(sim: Simulation) -> None:
    lossy = LinkSpec(delay_s=CLIENT_DELAY_S, jitter_s=0.015, loss=0.1)
    server_host, client_host = world(sim, NatKind.SYMMETRIC, link=lossy)
    server = Server(sim)
    listen(sim, server_host, 443, server)
    ends = Ends(sim)
    stream = connect(client_host, server_host, 443, ends)
    sim.run_until(lambda: ends.connected_at is not None, timeout_s=5)
    sent = [i.to_bytes(2, "big") * 100 for i in range(300)]
    for i, frame in enumerate(sent):
        sim.run_for(0.001 * (i % 3))
        assert stream.send_frame(frame)
    sim.run_until(lambda: len(ends.frames) == len(sent), timeout_s=60)
    assert ends.payloads == sent  # nothing lost, nothing reordered (TCP)
    times = [t for t, _ in ends.frames]
    assert times == sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) > 0.2  # a retransmission timeout held the line up
    assert sim.drops == {}  # streams never show up as datagram drops


def test_paused_reader_fills_the_senders_buffer(sim: Simulation) -> None:
    server_host, client_host = world(sim)
    server = Server(sim, echo=False)
    listen(sim, server_host, 443, server)
    ends = Ends(sim)
    limit = 64 * 1024
    stream = connect(client_host, server_host, 443, ends, StreamOptions(send_buffer_bytes=limit))
    sim.run_until(lambda: len(server.accepted) == 1, timeout_s=5)
    (_, far, far_ends) = server.accepted[0]
    far.pause_reading()
    frame = bytes(1400)
    accepted = 0
    while stream.send_frame(frame):
        accepted += 1
        sim.run_for(0.001)
    # the window (unacknowledged) and then the send buffer took it all
    assert accepted * 1402 == pytest.approx(RECEIVE_WINDOW_BYTES + limit, abs=2 * 1402)
    assert stream.frames_dropped == 1
    assert not stream.send_frame(frame)
    assert stream.frames_dropped == 2
    assert sim.streams.drops == {DROP_SEND_BUFFER_FULL: 2}
    sim.run_for(5)
    assert far_ends.frames == []  # nothing read while paused
    far.resume_reading()
    sim.run_until(lambda: len(far_ends.frames) == accepted, timeout_s=10)
    sim.run_for(RTT_S)  # the acknowledgements come back
    assert stream.unsent() == 0
    assert stream.send_frame(frame)


def test_bandwidth_drains_the_send_buffer_at_the_link_rate(sim: Simulation) -> None:
    slow = LinkSpec(delay_s=CLIENT_DELAY_S, bandwidth_bps=1_000_000)
    server_host, client_host = world(sim, NatKind.UDP_BLOCKED, link=slow)
    server = Server(sim, echo=False)
    listen(sim, server_host, 443, server)
    ends = Ends(sim)
    stream = connect(client_host, server_host, 443, ends, StreamOptions(send_buffer_bytes=20_000))
    sim.run_until(lambda: len(server.accepted) == 1, timeout_s=5)
    t0 = sim.now()
    sent = sum(stream.send_frame(bytes(1000)) for _ in range(100))
    assert sent < 100  # 1 Mbit/s drains 125 bytes a millisecond: the buffer fills at once
    assert stream.frames_dropped == 100 - sent
    far_ends = server.accepted[0][2]
    sim.run_until(lambda: len(far_ends.frames) == sent, timeout_s=10)
    wire = 1002 + 40  # frame, length prefix, IP and TCP headers
    assert sim.now() - t0 >= sent * wire * 8 / 1_000_000


# ---------------------------------------------------------------- breaks


def test_partition_breaks_the_stream_after_the_break_timeout(sim: Simulation) -> None:
    server_host, client_host = world(sim, NatKind.PORT_RESTRICTED_CONE)
    server = Server(sim)
    listen(sim, server_host, 443, server)
    ends = Ends(sim)
    stream = connect(client_host, server_host, 443, ends)
    sim.run_until(lambda: bool(server.accepted), timeout_s=5)
    t = sim.now()
    sim.partition([client_host], [server_host])  # an idle stream: no frame in flight
    sim.run_for(STREAM_BREAK_TIMEOUT_S + 1)
    far_ends = server.accepted[0][2]
    assert_closed(ends, t + STREAM_BREAK_TIMEOUT_S, "timed out")
    assert_closed(far_ends, t + STREAM_BREAK_TIMEOUT_S, "timed out")
    assert not stream.send_frame(b"late")
    closes = [r for r in sim.trace if r.kind == STREAM_CLOSE]
    assert [r.verdict for r in closes] == ["timed out", "timed out"]


def test_a_healed_partition_delivers_what_was_held(sim: Simulation) -> None:
    server_host, client_host = world(sim)
    server = Server(sim)
    listen(sim, server_host, 443, server)
    ends = Ends(sim)
    stream = connect(client_host, server_host, 443, ends)
    sim.run_until(lambda: bool(server.accepted), timeout_s=5)
    part = sim.partition([client_host], [server_host])
    for i in range(3):
        stream.send_frame(b"held %d" % i)
    sim.run_for(2)
    assert ends.frames == []
    part.heal()
    sim.run_for(STREAM_BREAK_TIMEOUT_S)
    assert ends.payloads == [b"held 0", b"held 1", b"held 2"]
    assert ends.closed == []
    assert stream.send_frame(b"after")
    sim.run_until(lambda: len(ends.frames) == 4, timeout_s=2)


def test_a_dead_host_times_out_and_a_rebooted_one_resets(sim: Simulation) -> None:
    server_host, client_host = world(sim)
    listen(sim, server_host, 443, Server(sim))
    first, second = Ends(sim), Ends(sim)
    connect(client_host, server_host, 443, first)
    sim.run_until(lambda: first.connected_at is not None, timeout_s=5)
    t = sim.now()
    server_host.crash()
    sim.run_for(STREAM_BREAK_TIMEOUT_S + 1)
    assert_closed(first, t + STREAM_BREAK_TIMEOUT_S, "timed out")
    server_host.restore()
    listen(sim, server_host, 443, Server(sim))
    connect(client_host, server_host, 443, second)
    sim.run_until(lambda: second.connected_at is not None, timeout_s=5)
    server_host.crash()
    sim.run_for(0.1)
    server_host.restore()  # back before the break timeout, without the connection
    sim.run_for(5)
    assert [e for _, e in second.closed] == ["connection reset by peer"]


# ---------------------------------------------------------------- the seam


def test_listen_errors_and_ipv6(sim: Simulation) -> None:
    server_host = sim.add_host("server", ipv6=True, link=LinkSpec(delay_s=SERVER_DELAY_S))
    client_host = sim.add_host("client", behind=NatKind.UDP_BLOCKED, ipv6=True)
    server = Server(sim)
    rt = server_host.runtime()
    listener = sim.run(rt.listen_stream("::", 443, server.accept))
    assert listener.local_address == ("::", 443, 0, 0)
    with pytest.raises(OSError, match="in use") as busy:
        sim.run(rt.listen_stream("::", 443, server.accept))
    assert busy.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError, match="not an address") as foreign:
        sim.run(rt.listen_stream("192.0.2.1", 443, server.accept))
    assert foreign.value.errno == errno.EADDRNOTAVAIL
    ephemeral = sim.run(rt.listen_stream("0.0.0.0", 0, server.accept))
    assert ephemeral.local_address[1] >= 32768
    ends = Ends(sim)
    v6 = server_host.ipv6_addresses[0]
    client_host.runtime().connect_stream(v6, 443, ends, StreamOptions())
    sim.run_until(lambda: bool(server.accepted), timeout_s=5)
    assert server.accepted[0][0][0] == client_host.ipv6_addresses[0]  # routed, not translated
    listener.close()
    late = Ends(sim)
    client_host.runtime().connect_stream(v6, 443, late, StreamOptions())
    sim.run_for(1)
    assert [e for _, e in late.closed] == ["connection refused"]


def test_a_raising_receiver_fails_the_scenario(sim: Simulation) -> None:
    from wgrelay.sim import SimulationError

    server_host, client_host = world(sim)

    def accept(addr: Addr, stream: StreamTransport) -> Ends:
        raise RuntimeError("a bug in accept")

    sim.run(server_host.runtime().listen_stream("0.0.0.0", 443, accept))
    ends = Ends(sim)
    connect(client_host, server_host, 443, ends)
    with pytest.raises(SimulationError):
        sim.run_for(1)


def _scenario(seed: int) -> tuple[str, list[bytes]]:
    with Simulation(seed=seed) as sim:
        lossy = LinkSpec(delay_s=CLIENT_DELAY_S, jitter_s=0.02, loss=0.05)
        server_host, client_host = world(sim, NatKind.SYMMETRIC, link=lossy)
        server = Server(sim)
        listen(sim, server_host, 443, server)
        ends = Ends(sim)
        stream = connect(client_host, server_host, 443, ends)
        sim.run_until(lambda: ends.connected_at is not None, timeout_s=5)
        for i in range(50):
            stream.send_frame(b"%d" % i)
            sim.run_for(0.003)
        sim.run_for(10)
        assert any(r.kind == STREAM_DELIVER for r in sim.trace)
        return sim.trace_digest(), ends.payloads


def test_same_seed_same_trace() -> None:
    a, b, c = _scenario(5), _scenario(5), _scenario(6)
    assert a == b
    assert a[1] == c[1] == [b"%d" % i for i in range(50)]
    assert a[0] != c[0]  # other draws: other times in the trace


def test_no_connect_proxy_runs_in_a_simulation(sim: Simulation) -> None:
    server_host, client_host = world(sim)
    listen(sim, server_host, 443, Server(sim))
    listen(sim, server_host, 3128, Server(sim))  # not a proxy: never answers CONNECT
    via_listener, via_nobody = Ends(sim), Ends(sim)
    proxied = StreamOptions(proxy=(server_host.address, 3128), connect_timeout_s=2.0)
    connect(client_host, server_host, 443, via_listener, proxied)
    nowhere = StreamOptions(proxy=(server_host.address, 8080), connect_timeout_s=2.0)
    connect(client_host, server_host, 443, via_nobody, nowhere)
    sim.run_for(3)
    assert_closed(via_listener, 2.0, "timed out")
    assert_closed(via_nobody, RTT_S, "connection refused")
