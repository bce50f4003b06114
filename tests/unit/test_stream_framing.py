"""Stream framing (``u16 length || message``) and the relay's table of stream connections.

``FrameReader`` must give the same frames however TCP splits the bytes;
``RelayStreams`` is driven through a fake ``StreamTransport`` whose close
reports back at once (a real one reports later: both orders must hold).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgrelay.relay.stats import DropReason, RelayStats
from wgrelay.relay.streams import RelayStreams, StreamLimits
from wgrelay.transport.base import Addr, StreamReceiver
from wgrelay.transport.stream import MAX_FRAME, FrameReader, FramingError, encode_frame

# ------------------------------------------------------------ framing

_MESSAGES = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


def test_frame_layout() -> None:
    assert encode_frame(b"\x04abc") == b"\x00\x04\x04abc"
    assert encode_frame(memoryview(b"x" * 258))[:2] == b"\x01\x02"
    assert FrameReader().feed(b"\x00\x01A\x00\x02BC\x00") == [b"A", b"BC"]


def test_encode_frame_bounds() -> None:
    assert len(encode_frame(b"z" * MAX_FRAME)) == MAX_FRAME + 2
    with pytest.raises(FramingError, match="1 to 65535 bytes, not 0"):
        encode_frame(b"")
    with pytest.raises(FramingError, match="not 65536"):
        encode_frame(b"z" * (MAX_FRAME + 1))


def test_largest_frame_round_trips() -> None:
    big = bytes(range(256)) * 255 + b"x" * 255
    assert len(big) == MAX_FRAME
    assert FrameReader().feed(encode_frame(big)) == [big]


def test_zero_length_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="empty frame"):
        FrameReader().feed(b"\x00\x00")
    reader = FrameReader()
    assert reader.feed(encode_frame(b"ok") + b"\x00") == [b"ok"]
    with pytest.raises(FramingError):
        reader.feed(b"\x00")  # the zero length completes in a later read


def test_pending_counts_an_incomplete_frame() -> None:
    reader = FrameReader()
    assert reader.feed(b"\x00\x05ab") == []
    assert reader.pending == 4
    assert reader.feed(b"cde\x00") == [b"abcde"]
    assert reader.pending == 1


@settings(max_examples=200, deadline=None)
@given(_MESSAGES, st.data())
def test_split_anywhere_gives_the_same_frames(messages: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(m) for m in messages)
    whole = FrameReader()
    assert whole.feed(wire) == messages
    assert whole.pending == 0

    byte_by_byte = FrameReader()
    got = [f for i in range(len(wire)) for f in byte_by_byte.feed(wire[i : i + 1])]
    assert got == messages

    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    chunked = FrameReader()
    assert [f for p in pieces for f in chunked.feed(p)] == messages
    assert chunked.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_framing_errors(wire: bytes) -> None:
    reader = FrameReader()
    try:
        frames = reader.feed(wire)
    except FramingError:
        return
    assert all(frames)
    assert sum(len(f) + 2 for f in frames) + reader.pending == len(wire)


# ------------------------------------------------------------ the relay's stream table


class FakeStream:
    """A ``StreamTransport`` whose buffer can be full and whose close reports at once."""

    def __init__(self, peer: Addr) -> None:
        self.peer_address = peer
        self.frames_dropped = 0
        self.receiver: StreamReceiver | None = None
        self.sent: list[bytes] = []
        self.full = False
        self.closed = False

    def send_frame(self, data: bytes | memoryview) -> bool:
        if self.closed or self.full:
            self.frames_dropped += 1
            return False
        self.sent.append(bytes(data))
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.receiver is not None:
                self.receiver.stream_closed(None)


class Relay:
    """``RelayStreams`` with what it delivers recorded and a clock set by hand."""

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.stats = RelayStats()
        self.now = 0.0
        self.delivered: list[tuple[bytes, Addr]] = []
        self.batches = 0
        self.streams = RelayStreams(
            lambda data, addr: self.delivered.append((data, addr)),
            self._batch,
            self.stats,
            lambda: self.now,
            limits,
        )

    def _batch(self) -> None:
        self.batches += 1

    def connect(self, host: str, port: int, kind: str = "tcp") -> FakeStream:
        """What a listener does: accept, then report the connection up."""
        stream = FakeStream((host, port))
        stream.receiver = self.streams.acceptor(kind)((host, port), stream)
        stream.receiver.stream_connected()
        return stream

    def drops(self, reason: DropReason) -> int:
        return self.stats.drops[reason]


def test_frames_are_delivered_from_the_streams_address() -> None:
    r = Relay()
    s = r.connect("198.51.100.7", 40000, "tls")
    assert s.receiver is not None
    s.receiver.frame_received(b"\x01hello")
    s.receiver.frames_done()
    assert r.delivered == [(b"\x01hello", ("198.51.100.7", 40000, "tls"))]
    assert r.batches == 1
    r.streams.send(b"\x02back", ("198.51.100.7", 40000, "tls"))
    assert s.sent == [b"\x02back"]
    assert r.stats.streams_open == 1


def test_per_source_limit_refuses_and_closes_the_extra_one() -> None:
    r = Relay(StreamLimits(max_streams=10, max_streams_per_source=2))
    a1 = r.connect("198.51.100.7", 1)
    a2 = r.connect("198.51.100.7", 2)
    a3 = r.connect("198.51.100.7", 3)
    assert not a1.closed
    assert not a2.closed
    assert a3.closed  # refused: closed as soon as it was up
    assert r.drops(DropReason.STREAM_LIMIT) == 1
    assert a3.receiver is not None
    a3.receiver.frame_received(b"\x01ignored")
    assert r.delivered == []
    b1 = r.connect("198.51.100.8", 1)  # another host has its own budget
    assert not b1.closed
    assert r.stats.streams_open == 3
    # one of the first host's closes: its budget has room again
    a1.close()
    assert r.stats.streams_open == 2
    assert not r.connect("198.51.100.7", 4).closed


def test_ipv6_sources_share_a_slash_64() -> None:
    r = Relay(StreamLimits(max_streams=10, max_streams_per_source=1))
    assert not r.connect("2001:db8:1:2::1", 1).closed
    assert r.connect("2001:db8:1:2::ffff", 1).closed  # the same /64
    assert not r.connect("2001:db8:1:3::1", 1).closed


def test_total_limit() -> None:
    r = Relay(StreamLimits(max_streams=2, max_streams_per_source=64))
    r.connect("198.51.100.1", 1)
    second = r.connect("198.51.100.2", 1)
    assert r.connect("198.51.100.3", 1).closed
    assert r.drops(DropReason.STREAM_LIMIT) == 1
    second.close()
    assert not r.connect("198.51.100.3", 1).closed
    assert r.stats.streams_open == 2


def test_a_replaced_connection_does_not_take_the_new_one_with_it() -> None:
    """The same source address and port again (the old connection is dead
    but its close may come later): the new one stays, whenever the old close
    arrives, and the source's count stays one."""
    r = Relay(StreamLimits(max_streams=10, max_streams_per_source=1))
    key = ("198.51.100.7", 5000, "tcp")
    old = FakeStream(key[:2])
    old_receiver = r.streams.acceptor("tcp")(key[:2], old)
    new = r.connect("198.51.100.7", 5000)  # replaces: not refused by the limit of 1
    assert old.closed
    assert not new.closed
    old_receiver.stream_closed("connection reset by peer")  # (again, late)
    old_receiver.frame_received(b"\x01stale")
    assert r.delivered == []
    r.streams.send(b"\x02to-new", key)
    assert new.sent == [b"\x02to-new"]
    assert r.stats.streams_open == 1
    assert r.drops(DropReason.STREAM_LIMIT) == 0
    new.close()
    assert r.stats.streams_open == 0
    assert not r.connect("198.51.100.7", 5001).closed  # the source's count went to 0


ALL_REGISTERED = (("198.51.100.1", 1, "tcp"), ("198.51.100.2", 1, "tcp"))


def test_idle_sweep_closes_silent_connections_only() -> None:
    r = Relay(StreamLimits(idle_close_s=60.0))
    quiet = r.connect("198.51.100.1", 1)
    talker = r.connect("198.51.100.2", 1)
    r.now = 50.0
    assert talker.receiver is not None
    talker.receiver.frame_received(b"\x01alive")
    talker.receiver.frames_done()  # (a transport reports the read's end)
    r.streams.sweep(60.0, ALL_REGISTERED)  # exactly idle_close_s: not yet
    assert not quiet.closed
    r.now = 61.0
    r.streams.sweep(61.0, ALL_REGISTERED)
    assert quiet.closed
    assert not talker.closed
    assert r.stats.streams_open == 1
    r.streams.send(b"\x02gone", ("198.51.100.1", 1, "tcp"))
    assert r.drops(DropReason.STREAM_CLOSED) == 1
    r.streams.sweep(111.0, ALL_REGISTERED)
    assert talker.closed
    assert r.stats.streams_open == 0


def test_a_connection_without_a_registration_is_closed_after_register_within_s() -> None:
    """Junk that never registers keeps nobody's slot: sending something
    every few seconds (the idle sweep alone) held all 4,096 for good."""
    r = Relay(StreamLimits(register_within_s=10.0, idle_close_s=60.0))
    junk = r.connect("198.51.100.1", 1)
    agent = r.connect("198.51.100.2", 1)
    for t in (3.0, 6.0, 9.0, 10.5):
        r.now = t
        assert junk.receiver is not None
        junk.receiver.frame_received(b"\x01junk")  # heard, never registered
        junk.receiver.frames_done()
        r.streams.sweep(t, {("198.51.100.2", 1, "tcp")})
    assert junk.closed
    assert not agent.closed
    assert r.stats.streams_open == 1


def test_admission_before_the_handshake_holds_the_limits_and_gives_slots_back() -> None:
    """Limits count connections from their arrival (a TLS handshake that
    never finishes holds a slot, and only until it fails)."""
    r = Relay(StreamLimits(max_streams=10, max_streams_per_source=2))
    admit, release = r.streams.admitter("tls")
    assert admit(("198.51.100.1", 1))
    assert admit(("198.51.100.1", 2))
    assert not admit(("198.51.100.1", 3))  # the source's two are in handshakes
    assert r.drops(DropReason.STREAM_LIMIT) == 1
    assert admit(("198.51.100.1", 1))  # the same 4-tuple again: a replacement
    release(("198.51.100.1", 2))  # that handshake failed
    assert admit(("198.51.100.1", 3))
    # an admitted one accepted takes no second slot
    stream = FakeStream(("198.51.100.1", 3))
    stream.receiver = r.streams.acceptor("tls")(("198.51.100.1", 3), stream)
    assert not stream.closed
    assert not admit(("198.51.100.1", 4))
    assert r.stats.streams_open == 1


def test_send_to_a_gone_address_counts_stream_closed() -> None:
    r = Relay()
    s = r.connect("198.51.100.1", 1)
    r.streams.send(b"\x02x", ("198.51.100.9", 1, "tcp"))  # never connected
    r.streams.send(b"\x02x", ("198.51.100.1", 1, "tls"))  # the same source, other kind
    assert r.drops(DropReason.STREAM_CLOSED) == 2
    s.close()
    r.streams.send(b"\x02x", ("198.51.100.1", 1, "tcp"))
    assert r.drops(DropReason.STREAM_CLOSED) == 3
    assert s.sent == []


def test_a_full_send_buffer_counts_backpressure() -> None:
    r = Relay()
    slow = r.connect("198.51.100.1", 1)
    fast = r.connect("198.51.100.2", 1)
    slow.full = True
    for _ in range(5):
        r.streams.send(b"\x02x", ("198.51.100.1", 1, "tcp"))
        r.streams.send(b"\x02y", ("198.51.100.2", 1, "tcp"))
    assert r.drops(DropReason.STREAM_BACKPRESSURE) == 5
    assert slow.sent == []
    assert fast.sent == [b"\x02y"] * 5
    assert not slow.closed  # it loses its own frames, nothing more


def test_bad_framing_is_counted() -> None:
    r = Relay()
    s = r.connect("198.51.100.1", 1)
    assert s.receiver is not None
    s.receiver.stream_closed("bad framing: empty frame")
    assert r.drops(DropReason.STREAM_BAD_FRAMING) == 1
    assert r.stats.streams_open == 0
    t = r.connect("198.51.100.1", 2)
    t.close()  # a clean close is no framing error
    assert r.drops(DropReason.STREAM_BAD_FRAMING) == 1


def test_close_closes_everything() -> None:
    r = Relay()
    streams = [r.connect("198.51.100.1", p) for p in range(1, 4)]
    r.streams.close()
    assert all(s.closed for s in streams)
    assert r.stats.streams_open == 0
    assert r.streams.conns == {}
