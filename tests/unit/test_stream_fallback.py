"""StreamFallback on a fake clock: when a relay is tried over TCP/TLS, and when it comes back.

The core is driven by hand exactly as ``RelayManager`` drives it: requests
sent over UDP (``sent_udp``), datagrams heard back (``heard_udp``), stream
outcomes (``connected``/``closed``) and ``handle_timer`` at ``next_timer()``.
Every deadline asserted is exact.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from wgrelay.client.fallback import (
    Carrier,
    Connect,
    Disconnect,
    FallbackAction,
    FallbackConfig,
    Moved,
    ProbeUdp,
    StreamFallback,
)
from wgrelay.endpoint import Endpoint

R1: Endpoint = ("192.0.2.1", 51820)
R2: Endpoint = ("192.0.2.2", 51820)
CFG = FallbackConfig()  # silence 2 s, 3 requests, probes 5 s doubling to 60 s
TCP_CONNECT = Connect(R1, Carrier.TCP, CFG.tcp_connect_timeout_s)
TLS_CONNECT = Connect(R1, Carrier.TLS, CFG.tls_connect_timeout_s)


def _silent(fb: StreamFallback, addr: Endpoint, times: list[float]) -> None:
    for t in times:
        fb.sent_udp(addr, t)


def _timer(fb: StreamFallback, now: float) -> list[FallbackAction]:
    fb.handle_timer(now)
    return fb.actions()


def _on_tcp(fb: StreamFallback, addr: Endpoint = R1, at: float = 2.5) -> None:
    """``addr`` silent from 0 (three requests), moved to TCP at ``at``."""
    _silent(fb, addr, [0.0, 0.5, 1.0])
    assert _timer(fb, 2.0) == [Connect(addr, Carrier.TCP, CFG.tcp_connect_timeout_s)]
    fb.connected(addr, Carrier.TCP, at)
    assert fb.actions() == [Moved(addr, Carrier.TCP)]


# ------------------------------------------------------------ when to leave UDP


def test_silence_needs_both_enough_requests_and_enough_time() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5])
    assert fb.next_timer() == math.inf  # two unanswered: a lossy path, not a block
    fb.sent_udp(R1, 1.0)
    assert fb.next_timer() == 2.0  # the first request + udp_silence_s
    assert _timer(fb, 1.999) == []
    assert _timer(fb, 2.0) == [TCP_CONNECT]
    assert fb.next_timer() == math.inf  # connecting: nothing more until it ends
    assert fb.carrier(R1) == Carrier.UDP  # nothing moved yet


def test_an_answer_restarts_the_count() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5])
    assert not fb.heard_udp({R1}, 0.6)
    _silent(fb, R1, [1.0, 1.5])
    assert fb.next_timer() == math.inf
    fb.sent_udp(R1, 2.0)
    assert fb.next_timer() == 3.0  # counted from the first request after the answer


def test_silence_is_per_relay() -> None:
    """A relay that answers is never tried over a stream; the silent one is."""
    fb = StreamFallback()
    for t in (0.0, 0.5, 1.0):
        fb.sent_udp(R1, t)
        fb.sent_udp(R2, t)
        fb.heard_udp({R2}, t + 0.01)
    assert _timer(fb, 2.0) == [TCP_CONNECT]
    assert fb.next_timer() == math.inf


def test_disabled_never_falls_back() -> None:
    fb = StreamFallback(FallbackConfig(enabled=False))
    _silent(fb, R1, [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    assert fb.next_timer() == math.inf
    assert _timer(fb, 10.0) == []


# ------------------------------------------------------------ TCP, then TLS


def test_tls_follows_a_failed_tcp_connect() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5, 1.0])
    assert _timer(fb, 2.0) == [TCP_CONNECT]
    fb.closed(R1, Carrier.TCP, 4.0, "timed out")
    assert fb.actions() == [TLS_CONNECT]  # at once: networks that let only 443 out
    assert fb.last_error(R1) == "tcp: timed out"
    fb.connected(R1, Carrier.TLS, 4.5)
    assert fb.actions() == [Moved(R1, Carrier.TLS)]
    assert fb.carrier(R1) == Carrier.TLS
    assert fb.last_error(R1) is None  # connected: old errors are done with
    assert fb.fallbacks == 1


def test_failed_tls_retries_later_only_while_the_relay_is_written_to() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5, 1.0])
    assert _timer(fb, 2.0) == [TCP_CONNECT]
    fb.closed(R1, Carrier.TCP, 2.1, "connection refused")
    assert fb.actions() == [TLS_CONNECT]
    fb.closed(R1, Carrier.TLS, 2.2, "connection refused")
    assert fb.actions() == []
    assert fb.last_error(R1) == "tls: connection refused"
    # the agent keeps writing (heartbeats, retransmits): a retry is due at 2.2 + 10
    assert fb.next_timer() == math.inf  # last sent at 1.0: 1.0 + 4 < 12.2
    for t in (3.0, 5.0, 7.0, 9.0, 11.0):
        fb.sent_udp(R1, t)
    assert fb.next_timer() == 2.2 + CFG.stream_retry_s
    assert _timer(fb, 12.0) == []
    assert _timer(fb, 2.2 + CFG.stream_retry_s) == [TCP_CONNECT]


def test_a_relay_no_longer_written_to_is_not_retried() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5, 1.0])
    _timer(fb, 2.0)
    fb.closed(R1, Carrier.TCP, 2.1, "refused")
    fb.closed(R1, Carrier.TLS, 2.2, "refused")
    fb.actions()
    fb.sent_udp(R1, 3.0)  # one last request, then the agent gave up on it
    assert fb.next_timer() == math.inf
    assert _timer(fb, 100.0) == []


def test_a_dead_relay_never_moves() -> None:
    """Both connects fail, again and again: the link stays on UDP with the errors."""
    fb = StreamFallback()
    t = 0.0
    connects: list[Carrier] = []
    while t < 60.0:
        fb.sent_udp(R1, t)
        if fb.next_timer() <= t:
            for action in _timer(fb, t):
                assert isinstance(action, Connect)
                connects.append(action.carrier)
                fb.closed(R1, action.carrier, t, "connection refused")
                for follow in fb.actions():
                    assert isinstance(follow, Connect)
                    connects.append(follow.carrier)
                    fb.closed(R1, follow.carrier, t, "connection refused")
        assert fb.actions() == []
        assert fb.carrier(R1) == Carrier.UDP
        t += 0.5
    assert connects[:4] == [Carrier.TCP, Carrier.TLS, Carrier.TCP, Carrier.TLS]
    assert len(connects) == 12  # at 2 s, then every stream_retry_s: 2, 12, ... 52
    assert not fb.udp_blocked
    assert fb.fallbacks == 0
    assert fb.last_error(R1) == "tls: connection refused"


def test_udp_answer_while_connecting_abandons_the_stream() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5, 1.0])
    assert _timer(fb, 2.0) == [TCP_CONNECT]
    assert fb.heard_udp({R1}, 2.1)
    assert fb.actions() == [Disconnect(R1)]
    # the connect was already on its way and completes: not wanted
    fb.connected(R1, Carrier.TCP, 2.2)
    assert fb.actions() == [Disconnect(R1)]
    assert fb.carrier(R1) == Carrier.UDP
    assert not fb.udp_blocked
    assert fb.next_timer() == math.inf


# ------------------------------------------------------------ on a stream, probing UDP


def test_connected_moves_and_probes_udp_with_backoff() -> None:
    fb = StreamFallback()
    assert not fb.udp_blocked
    _on_tcp(fb, at=2.5)
    assert fb.udp_blocked
    assert fb.carrier(R1) == Carrier.TCP
    assert fb.fallbacks == 1
    when = 2.5
    gaps = []
    for _ in range(7):
        nxt = fb.next_timer()
        assert _timer(fb, nxt - 0.001) == []
        assert _timer(fb, nxt) == [ProbeUdp(R1)]
        gaps.append(nxt - when)
        when = nxt
    assert gaps == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert fb.carrier(R1) == Carrier.TCP


def test_probe_answered_moves_back_and_closes_after_grace() -> None:
    fb = StreamFallback()
    _on_tcp(fb, at=2.5)
    assert _timer(fb, 7.5) == [ProbeUdp(R1)]
    assert fb.heard_udp({R1}, 7.6)
    assert fb.actions() == [Moved(R1, Carrier.UDP)]
    assert fb.carrier(R1) == Carrier.UDP
    assert not fb.udp_blocked
    assert fb.next_timer() == 7.6 + CFG.switch_grace_s  # no probes any more
    assert _timer(fb, 10.5) == []
    assert _timer(fb, 7.6 + CFG.switch_grace_s) == [Disconnect(R1)]
    assert fb.next_timer() == math.inf
    fb.closed(R1, Carrier.TCP, 10.7, None)  # the close we asked for: nothing
    assert fb.actions() == []


def test_udp_shut_again_during_the_grace_reconnects_when_it_ends() -> None:
    """Back on UDP, and UDP is silent again before the old stream's grace is
    over: the stream cannot be asked for while one is up, so it is asked for
    at the end of the grace, in the same timer (a due time left behind in the
    past made the shell wake at once, again)."""
    fb = StreamFallback()
    _on_tcp(fb, at=2.5)
    fb.heard_udp({R1}, 3.0)
    assert fb.actions() == [Moved(R1, Carrier.UDP)]
    _silent(fb, R1, [3.1, 3.6, 4.1])  # silent from 3.1: a stream due at 5.1...
    assert fb.next_timer() == 3.0 + CFG.switch_grace_s  # ...but the old one is still up
    assert _timer(fb, 6.0) == [Disconnect(R1), TCP_CONNECT]
    assert fb.next_timer() == math.inf


def test_probe_backoff_restarts_after_a_return() -> None:
    fb = StreamFallback()
    _on_tcp(fb, at=2.5)
    _timer(fb, 7.5)
    _timer(fb, 17.5)  # the interval is 20 s now
    fb.heard_udp({R1}, 18.0)
    _timer(fb, 21.0)
    fb.actions()
    # blocked again: the first probe comes udp_retry_s after the new stream
    _silent(fb, R1, [30.0, 30.5, 31.0])
    assert _timer(fb, 32.0) == [TCP_CONNECT]
    fb.connected(R1, Carrier.TCP, 32.5)
    assert fb.actions() == [Moved(R1, Carrier.TCP)]
    assert fb.next_timer() == 32.5 + CFG.udp_retry_s
    assert fb.fallbacks == 2


def test_a_carrying_stream_that_drops_goes_back_to_udp_and_reconnects() -> None:
    fb = StreamFallback()
    _on_tcp(fb, at=2.5)
    fb.closed(R1, Carrier.TCP, 2.5 + CFG.stream_retry_s, "connection reset by peer")
    assert fb.actions() == [Moved(R1, Carrier.UDP), TCP_CONNECT]
    assert fb.carrier(R1) == Carrier.UDP
    assert not fb.udp_blocked
    fb.connected(R1, Carrier.TCP, 12.6)
    assert fb.actions() == [Moved(R1, Carrier.TCP)]
    assert fb.carrier(R1) == Carrier.TCP


def test_a_stream_cut_off_as_soon_as_it_is_up_is_a_failed_connect() -> None:
    """A relay at its stream limit accepts and closes at once (so do some
    middleboxes): TCP cut off -> TLS; TLS cut off -> stream_retry_s later.
    Reconnecting the same way at once made thousands of connections a second."""
    fb = StreamFallback()
    _on_tcp(fb, at=2.5)
    fb.closed(R1, Carrier.TCP, 2.6, "connection reset by peer")
    assert fb.actions() == [Moved(R1, Carrier.UDP), TLS_CONNECT]
    fb.connected(R1, Carrier.TLS, 2.7)
    assert fb.actions() == [Moved(R1, Carrier.TLS)]
    fb.closed(R1, Carrier.TLS, 2.8, None)
    assert fb.actions() == [Moved(R1, Carrier.UDP)]
    for t in (3.0, 3.5, 4.0, 6.0, 8.0, 10.0, 12.0):  # the agent writes over UDP again
        fb.sent_udp(R1, t)
    assert fb.next_timer() == 2.8 + CFG.stream_retry_s
    assert _timer(fb, 2.8 + CFG.stream_retry_s) == [TCP_CONNECT]


def test_a_dropped_tls_stream_reconnects_over_tls() -> None:
    fb = StreamFallback()
    _silent(fb, R1, [0.0, 0.5, 1.0])
    _timer(fb, 2.0)
    fb.closed(R1, Carrier.TCP, 2.1, "refused")
    fb.actions()
    fb.connected(R1, Carrier.TLS, 2.2)
    fb.actions()
    fb.closed(R1, Carrier.TLS, 30.0, None)
    assert fb.actions() == [Moved(R1, Carrier.UDP), TLS_CONNECT]


def test_probes_go_to_every_stream_relay() -> None:
    fb = StreamFallback()
    for r in (R1, R2):
        _silent(fb, r, [0.0, 0.5, 1.0])
    assert _timer(fb, 2.0) == [
        Connect(R1, Carrier.TCP, CFG.tcp_connect_timeout_s),
        Connect(R2, Carrier.TCP, CFG.tcp_connect_timeout_s),
    ]
    fb.connected(R1, Carrier.TCP, 2.5)
    fb.connected(R2, Carrier.TCP, 2.6)
    assert fb.actions() == [Moved(R1, Carrier.TCP), Moved(R2, Carrier.TCP)]
    assert fb.fallbacks == 1  # one fallback of the agent, two links moved
    assert fb.next_timer() == 7.5
    assert _timer(fb, 7.5) == [ProbeUdp(R1), ProbeUdp(R2)]
    fb.heard_udp({R1}, 7.6)
    assert fb.actions() == [Moved(R1, Carrier.UDP)]
    assert fb.on_streams  # R2 still on its stream: probes go on for it
    assert not fb.udp_blocked  # but this network passes UDP (R1 answered over it)
    assert fb.next_timer() == 7.6 + CFG.switch_grace_s
    assert _timer(fb, 7.6 + CFG.switch_grace_s) == [Disconnect(R1)]
    assert fb.next_timer() == 17.5
    assert _timer(fb, 17.5) == [ProbeUdp(R2)]


def test_idle_paths_are_forgotten() -> None:
    fb = StreamFallback()
    fb.sent_udp(R1, 0.0)
    fb.sent_udp(R1, 0.5)
    _on_tcp(fb, addr=R2)
    fb.closed(R1, Carrier.TCP, 1.0, "refused")  # not connecting: only remembered
    assert fb.last_error(R1) == "tcp: refused"
    _timer(fb, 599.0)
    assert fb.last_error(R1) == "tcp: refused"
    _timer(fb, 601.0)
    assert fb.last_error(R1) is None  # nothing written to it for 600 s
    assert fb.carrier(R2) == Carrier.TCP  # a relay with a stream is kept
    # the forgotten relay starts its count afresh
    _silent(fb, R1, [700.0, 700.5])
    assert fb.next_timer() != 702.0
    fb.sent_udp(R1, 701.0)
    assert Connect(R1, Carrier.TCP, CFG.tcp_connect_timeout_s) in _timer(fb, 702.0)


# ------------------------------------------------------------ the timer never spins

_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["sent", "burst", "heard", "connected", "closed", "closed_err", "timer"]),
        st.sampled_from([R1, R2]),
        st.sampled_from([Carrier.TCP, Carrier.TLS]),
        # steps around the config's times (0.5 s requests, 2 s silence, 3 s
        # grace, 5 s probes), and anything in between
        st.one_of(
            st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0]),
            st.floats(min_value=0.0, max_value=8.0, allow_nan=False),
        ),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(_EVENTS)
def test_handle_timer_leaves_no_deadline_in_the_past(
    events: list[tuple[str, Endpoint, Carrier, float]],
) -> None:
    """After ``handle_timer(now)``, ``next_timer()`` is after ``now``: a past
    deadline the timer does nothing about would re-arm a zero-delay timer for
    ever (the shell's busy loop). Streams answer as a real shell's would:
    only a connect asked for completes, only an open stream closes."""
    fb = StreamFallback()
    now = 0.0
    connecting: dict[Endpoint, Carrier] = {}
    up: dict[Endpoint, Carrier] = {}

    def pump() -> None:
        for action in fb.actions():
            if isinstance(action, Connect):
                up.pop(action.addr, None)
                connecting[action.addr] = action.carrier
            elif isinstance(action, Disconnect):
                connecting.pop(action.addr, None)
                up.pop(action.addr, None)

    for kind, addr, carrier, dt in events:
        now += dt
        if kind == "sent":
            fb.sent_udp(addr, now)
        elif kind == "burst":  # a request retransmitted: enough to count as silence
            for _ in range(3):
                fb.sent_udp(addr, now)
                now += 0.5
        elif kind == "heard":
            fb.heard_udp({addr}, now)
        elif kind == "connected" and connecting.get(addr) is not None:
            carrier = connecting.pop(addr)
            up[addr] = carrier
            fb.connected(addr, carrier, now)
        elif kind in ("closed", "closed_err") and (addr in connecting or addr in up):
            carrier = connecting.pop(addr) if addr in connecting else up.pop(addr)
            fb.closed(addr, carrier, now, "refused" if kind == "closed_err" else None)
        elif kind == "timer":
            # the shell wakes at the deadline (or later, when the loop was busy)
            now = max(now, min(fb.next_timer(), now + 120.0))
        pump()
        if fb.next_timer() <= now:
            fb.handle_timer(now)
            pump()
            assert fb.next_timer() > now, (now, fb.next_timer())
        assert fb.on_streams == any(fb.carrier(r) != Carrier.UDP for r in (R1, R2))


class _World:
    """A shell and a network around the core: an agent that writes to two
    relays every ``TICK`` (R2 is dead: it answers nothing, takes no stream),
    connects that finish one tick after they are asked for, as the network
    allows, and probes answered when UDP passes."""

    TICK = 0.5

    def __init__(self) -> None:
        self.fb = StreamFallback()
        self.now = 0.0
        self.udp = self.tcp = self.tls = True
        self.quiet_until = 0.0
        self.connecting: dict[Endpoint, Carrier] = {}
        self.up: dict[Endpoint, Carrier] = {}
        self.probed: set[Endpoint] = set()

    def apply(self) -> None:
        for action in self.fb.actions():
            if isinstance(action, Connect):
                self.up.pop(action.addr, None)  # (the shell closes the old one first)
                self.connecting[action.addr] = action.carrier
            elif isinstance(action, Disconnect):
                self.connecting.pop(action.addr, None)
                self.up.pop(action.addr, None)
            elif isinstance(action, ProbeUdp):
                self.probed.add(action.addr)
            elif action.carrier != Carrier.UDP:  # Moved onto a stream: it is up
                assert self.up.get(action.addr) == action.carrier
        for r in (R1, R2):
            carrier = self.fb.carrier(r)
            assert carrier == Carrier.UDP or self.up.get(r) == carrier
        assert self.fb.carrier(R2) == Carrier.UDP  # a dead relay never moves

    def timers_until(self, t: float) -> None:
        while (due := self.fb.next_timer()) <= t:
            self.now = max(self.now, due)
            self.fb.handle_timer(self.now)
            self.apply()
            assert self.fb.next_timer() > self.now, (self.now, self.fb.next_timer())
        self.now = t

    def tick(self) -> None:
        self.timers_until(self.now + self.TICK)
        for addr, carrier in list(self.connecting.items()):
            del self.connecting[addr]
            if addr == R1 and (self.tls if carrier == Carrier.TLS else self.tcp):
                self.up[addr] = carrier
                self.fb.connected(addr, carrier, self.now)
            else:
                self.fb.closed(addr, carrier, self.now, "timed out")
            self.apply()
        heard = {R1} if self.udp and R1 in self.probed else set()
        self.probed.clear()
        if self.now >= self.quiet_until:
            for r in (R1, R2):
                if self.fb.carrier(r) == Carrier.UDP:
                    self.fb.sent_udp(r, self.now)
                    if r == R1 and self.udp:
                        heard.add(r)
        if heard:
            self.fb.heard_udp(heard, self.now)
        self.apply()

    def drop(self, addr: Endpoint) -> None:
        carrier = self.up.pop(addr, None)
        if carrier is not None:
            self.fb.closed(addr, carrier, self.now, "connection reset by peer")
            self.apply()


_WORLD_STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["udp", "tcp", "tls"]), st.booleans()),
        st.tuples(st.just("run"), st.integers(min_value=1, max_value=30)),
        st.tuples(st.just("quiet"), st.integers(min_value=1, max_value=30)),
        st.tuples(st.just("drop"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_WORLD_STEPS, st.booleans(), st.booleans())
def test_a_network_that_changes_under_an_agent(
    steps: list[tuple[str, int | bool]], tcp_at_end: bool, tls_at_end: bool
) -> None:
    """UDP, TCP and TLS open and shut in any order, streams break, the agent
    pauses: no timer is left in the past, a link is only ever on a stream that
    is up, the dead relay stays on UDP, and at the end the agent settles where
    the network lets it (on a stream while UDP is shut, back on UDP once it
    opens)."""
    w = _World()
    for kind, value in steps:
        if kind in ("udp", "tcp", "tls"):
            setattr(w, kind, value)
        elif kind == "run":
            for _ in range(int(value)):
                w.tick()
        elif kind == "quiet":
            w.quiet_until = w.now + int(value) * w.TICK
        else:
            w.drop(R1)
    w.udp, w.tcp, w.tls = False, tcp_at_end, tls_at_end
    allowed = {Carrier.TCP: tcp_at_end, Carrier.TLS: tls_at_end}
    if R1 in w.up and not allowed[w.up[R1]]:
        w.drop(R1)  # the network shut breaks what it no longer lets through
    for _ in range(120):  # a minute: silence noticed, connects made or retried
        w.tick()
    carrier = w.fb.carrier(R1)
    if tcp_at_end or tls_at_end:  # on a stream the network lets through
        assert carrier != Carrier.UDP
        assert allowed[carrier]
        assert w.fb.udp_blocked
    else:
        assert carrier == Carrier.UDP
        assert not w.fb.udp_blocked
    w.udp = True
    for _ in range(2 * 160):  # the longest probe interval and the grace
        w.tick()
    assert w.fb.carrier(R1) == Carrier.UDP
    assert not w.fb.udp_blocked
    assert R1 not in w.up
    assert R1 not in w.connecting  # (the dead R2 is still retried: it is written to)
