"""One benchmark peer of a relay session, over UDP, TCP or TLS, as a child process.

``stream_throughput.py`` and ``stream_backpressure.py`` need peers that reach
the relay over a stream, which ``bench/build/udpgen`` (UDP only) cannot be. A
peer here is its own process (its own core time, its own TLS session): it
registers a fresh key with the relay through a sans-I/O ``RelayLink`` on its
socket, takes part in one session, then moves data for a fixed time:

* ``send``: data frames to the session, paced to ``--rate`` frames/s, or
  closed loop: at most ``--window`` frames sent and not yet counted by the
  receiver (whose count it reads from the shared ``--counter`` file), as
  ``udpgen tput`` does, so no socket buffer overflows and the rate is a
  zero-loss rate; UDP with ``sendmmsg`` batches, a stream with one
  ``sendall`` of many length-prefixed frames;
* ``recv``: counts the frames that arrive (UDP with ``recvmmsg``, a stream by
  its bytes: every frame has the same size) and reports the rate over the
  measured window;
* ``stuck``: never reads again (a client whose application hangs).

Talks to the parent on stdin/stdout, one line each: it prints ``key B64``
once registered; a ``session B64`` line makes it request a session with that
key; it prints ``sid HEX`` once it has the session; ``go`` starts the data
phase; a ``recv`` peer prints a JSON result, then every peer exits when its
time is up (``stuck``: when stdin closes). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import select
import socket
import ssl
import sys
import time

from relay_pair import WG_TRANSPORT_PREFIX, loopback_endpoint

from wgrelay.client.link import LinkConfig, LinkState, RelayLink
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import MsgType
from wgrelay.proto.data import data_header
from wgrelay.transport import _mmsg
from wgrelay.transport.base import Addr
from wgrelay.transport.stream import FrameReader, client_tls_context, encode_frame

_DATA = int(MsgType.DATA)
CONTROL_TIMEOUT_S = 15.0
STREAM_CHUNK_FRAMES = 64
"""Frames per ``sendall`` on a stream (what a busy agent's writes coalesce to
in the kernel anyway; the relay reads whatever arrives)."""
STALL_S = 0.05
LINGER_S = 1.5


class UdpConn:
    def __init__(self, relay: tuple[str, int]) -> None:
        self.relay = relay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def send(self, msg: bytes) -> None:
        self.sock.sendto(msg, self.relay)

    def messages(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return out
            if addr == self.relay:
                out.append(data)


class StreamConn:
    def __init__(self, where: tuple[str, int], tls: bool) -> None:
        raw = socket.create_connection(where, timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = raw
        if tls:
            self.sock = client_tls_context().wrap_socket(raw, server_hostname=where[0])
        self.sock.setblocking(False)
        self.reader = FrameReader()

    def send(self, msg: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(encode_frame(msg))
        finally:
            self.sock.setblocking(False)

    def messages(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return out
            if not data:
                raise ConnectionError("the relay closed the stream")
            out += self.reader.feed(data)


Conn = UdpConn | StreamConn


class Peer:
    def __init__(self, o: argparse.Namespace) -> None:
        relay = loopback_endpoint(o.relay)
        self.conn: Conn = (
            UdpConn(relay)
            if o.carrier == "udp"
            else StreamConn((relay[0], o.stream_port), o.carrier == "tls")
        )
        key = PrivateKey.generate()
        self.public = key.public_key()
        self.link = RelayLink(
            key,
            PublicKey.from_base64(o.relay_key),
            LinkConfig(),
            now=time.monotonic(),
            wall=time.time(),
        )

    def pump(self, wait_s: float) -> list[str]:
        """One round of the control plane; returns the parent's lines meanwhile."""
        now = time.monotonic()
        self.link.handle_timer(now)
        for data in self.link.datagrams_to_send():
            self.conn.send(data)
        while self.link.next_event() is not None:
            pass
        ready, _, _ = select.select([self.conn.sock, sys.stdin], [], [], wait_s)
        lines = []
        if sys.stdin in ready:
            line = sys.stdin.readline()
            lines.append(line.strip() if line else "eof")
        for data in self.conn.messages():
            if data and data[0] != _DATA:
                self.link.receive(data, time.monotonic())
        return lines

    def control(self) -> bytes:
        """Register, get a session, wait for ``go``: the session's data header."""
        self.link.connect(time.monotonic())
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        said_key = said_sid = False
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("relay control plane: no session in time")
            lines = self.pump(0.02)
            if self.link.state == LinkState.REGISTERED and not said_key:
                print(f"key {self.public}", flush=True)
                said_key = True
            for line in lines:
                if line.startswith("session "):
                    self.link.request_session(PublicKey.from_base64(line[8:]), time.monotonic())
                elif line == "go" and said_sid:
                    (sid,) = self.link.session_of.values()
                    return data_header(sid)
                elif line == "eof":
                    raise SystemExit(0)
            if self.link.session_of and not said_sid:
                (sid,) = self.link.session_of.values()
                print(f"sid {sid.hex()}", flush=True)
                said_sid = True


class Counter:
    """The receiver's count of frames, shared with the sender (closed loop)."""

    def __init__(self, path: str | None) -> None:
        self._map: mmap.mmap | None = None
        if path is not None:
            with open(path, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), 8)

    def get(self) -> int:
        return int.from_bytes(self._map[:8], "little") if self._map is not None else 0

    def set(self, n: int) -> None:
        if self._map is not None:
            self._map[:8] = n.to_bytes(8, "little")


def send(
    conn: Conn, frame: bytes, rate: float, seconds: float, window: int, received: Counter
) -> dict[str, int]:
    """Frames offered in ``seconds``: ``rate`` frames/s, or (0) as fast as the
    window allows: at most ``window`` frames sent and not yet counted by the
    receiver (0: no window). A window that does not move for ``STALL_S`` (frames
    lost) is reopened and counted as a stall."""
    sent = stalls = 0
    base = 0  # frames written off by stalls
    t0 = time.monotonic()
    end = t0 + seconds
    udp = isinstance(conn, UdpConn)
    if isinstance(conn, UdpConn):
        batch: list[tuple[bytes | memoryview, Addr]] = [(frame, conn.relay)] * int(_mmsg.BATCH)
        per_call = len(batch)
        conn.sock.setblocking(False)
    else:
        chunk = encode_frame(frame) * STREAM_CHUNK_FRAMES
        per_call = STREAM_CHUNK_FRAMES
        conn.sock.setblocking(True)
        conn.sock.settimeout(0.2)
    fd = conn.sock.fileno()
    waiting_since = 0.0
    while (now := time.monotonic()) < end:
        if rate and sent >= (now - t0) * rate:
            time.sleep(0.0005)
            continue
        if window and sent - base - received.get() > window - per_call:
            if not waiting_since:
                waiting_since = now
            elif now - waiting_since > STALL_S:
                stalls += 1
                base = sent - received.get()
            os.sched_yield()  # the receiver (same core) runs
            continue
        waiting_since = 0.0
        if udp:
            failed = _mmsg.send_batch(fd, socket.AF_INET, batch)
            sent += per_call - len(failed)
            if failed:
                select.select([], [fd], [], 0.01)
            continue
        try:
            conn.sock.sendall(chunk)
        except TimeoutError:
            break  # the relay stopped reading: nothing more to offer
        sent += per_call
    return {"sent": sent, "stalls": stalls}


def receive(
    conn: Conn, frame_len: int, warmup: float, seconds: float, counter: Counter
) -> dict[str, float]:
    """Frames received during ``seconds`` after ``warmup`` (from the first one).
    Goes on counting (the sender's window) for ``LINGER_S`` after that: the
    sender stops a little later than the window ends."""
    fd = conn.sock.fileno()
    count = 0
    start = end = 0.0
    measured = 0
    carry = 0
    buf = bytearray(1 << 20)
    first: float | None = None
    deadline = time.monotonic() + warmup + seconds + LINGER_S + 5
    while True:
        now = time.monotonic()
        if (first is not None and now >= end + LINGER_S) or now > deadline:
            break
        select.select([fd], [], [], 0.05)
        if isinstance(conn, UdpConn):
            try:
                n = len(_mmsg.recv_batch(fd, 65535))
            except BlockingIOError:
                continue
        else:
            try:
                got = conn.sock.recv_into(buf)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            if not got:
                break
            carry += got
            n, carry = divmod(carry, frame_len + 2)
        now = time.monotonic()
        if first is None:
            first = now
            start, end = now + warmup, now + warmup + seconds
        if start <= now < end:
            measured += n
        count += n
        counter.set(count)
    if first is None:
        return {"pps": 0.0, "received": 0, "window_s": 0.0}
    return {"pps": measured / seconds, "received": count, "window_s": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--relay", required=True, help="127.0.0.1:PORT, the relay's UDP address")
    ap.add_argument("--relay-key", required=True)
    ap.add_argument("--carrier", choices=("udp", "tcp", "tls"), default="udp")
    ap.add_argument("--stream-port", type=int, default=0, help="the relay's TCP or TLS port")
    ap.add_argument("--role", choices=("send", "recv", "stuck"), required=True)
    ap.add_argument("--size", type=int, default=1400, help="WireGuard payload bytes")
    ap.add_argument("--rate", type=float, default=0.0, help="send: frames/s (0: flat out)")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds")
    ap.add_argument("--counter", help="file of 8 bytes: the receiver's count, for the sender")
    ap.add_argument("--window", type=int, default=0, help="send: frames in flight at most")
    o = ap.parse_args()
    peer = Peer(o)
    header = peer.control()
    frame = header + WG_TRANSPORT_PREFIX + os.urandom(o.size)
    if o.role == "send":
        counter = Counter(o.counter)
        res = send(peer.conn, frame, o.rate, o.warmup + o.seconds + 1.0, o.window, counter)
        print(json.dumps(res), flush=True)
    elif o.role == "recv":
        got = receive(peer.conn, len(frame), o.warmup, o.seconds, Counter(o.counter))
        print(json.dumps(got), flush=True)
    else:
        sys.stdin.read()  # until the parent is done with us; never reading the relay
    return 0


if __name__ == "__main__":
    sys.exit(main())
