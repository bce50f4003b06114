"""Two peers and an open session on a relay, ready to hand to the load generator.

The generator (``bench/build/udpgen`` or the shared harness's) only moves data
frames with a static header; the control plane happens here first, on the two
sockets the generator then inherits. The relay forwards data only between the
two *registered* addresses of a session, so the sockets that register must be
the sockets that send.

``open_wgrelay_pair`` drives two sans-I/O ``RelayLink`` objects over blocking
sockets with ``select`` (no asyncio: nothing here is long-lived, and the
generator needs plain file descriptors). ``open_forwarder_pair`` does the
trivial registration of ``bench/pyforwarder.py``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wgrelay.client.events import LinkEvent, LinkRejected, SessionFailed
from wgrelay.client.link import LinkConfig, LinkState, RelayLink
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.proto.constants import MsgType
from wgrelay.proto.data import data_header

HOST = "127.0.0.1"
WG_TRANSPORT_PREFIX = b"\x04\x00\x00\x00"
"""The relay forwards only what can be WireGuard: the generator's payload follows
WireGuard's transport-data type, so a ``--size N`` packet is a WireGuard message
of N + 4 bytes (the same on every relay measured, for a fair comparison)."""
CONTROL_TIMEOUT_S = 10.0
_DATA = int(MsgType.DATA)

Addr = tuple[str, int]


def loopback_endpoint(text: str) -> Addr:
    """``127.x.y.z:PORT``; anything off loopback is refused (benchmarks stay local)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host.startswith("127."):
        raise ValueError(f"{text!r}: only 127.0.0.0/8 endpoints are allowed")
    return host, int(port)


@dataclass
class Pair:
    """Peer A's and peer B's sockets and the data header both put on every frame."""

    a: socket.socket
    b: socket.socket
    header: bytes
    _on_close: Callable[[], None] = field(default=lambda: None)

    def udpgen_args(self, relay: Addr) -> list[str]:
        """The generator's framing: same header both ways, stripped on receipt."""
        hdr = self.header.hex()
        n = str(len(self.header))
        return [
            "--dst",
            f"{relay[0]}:{relay[1]}",
            "--tx-fd",
            str(self.a.fileno()),
            "--rx-fd",
            str(self.b.fileno()),
            "--tx-hdr",
            hdr,
            "--rx-hdr-len",
            n,
            "--echo-hdr",
            hdr,
            "--back-hdr-len",
            n,
        ]

    @property
    def fds(self) -> tuple[int, int]:
        return self.a.fileno(), self.b.fileno()

    def close(self) -> None:
        try:
            self._on_close()
        finally:
            self.a.close()
            self.b.close()


def _bound_socket(host: str = HOST) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


# ---------------------------------------------------------------- wgrelay


class ControlPeer:
    """One RelayLink on one non-blocking socket bound to ``host`` (the agent's
    control socket)."""

    def __init__(self, relay_key: PublicKey, relay: Addr, host: str = HOST) -> None:
        self.relay = relay
        self.sock = _bound_socket(host)
        self.sock.setblocking(False)
        self.key = PrivateKey.generate()
        self.public = self.key.public_key()
        self.link = RelayLink(
            self.key, relay_key, LinkConfig(), now=time.monotonic(), wall=time.time()
        )
        self.events: list[LinkEvent] = []

    def flush(self) -> None:
        for data in self.link.datagrams_to_send():
            self.sock.sendto(data, self.relay)

    def read(self, now: float) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                return
            # data frames are the generator's business, and only the relay talks to us
            if addr == self.relay and data and data[0] != _DATA:
                self.link.receive(data, now)

    def pump(self, now: float) -> None:
        self.link.handle_timer(now)
        self.flush()
        while (ev := self.link.next_event()) is not None:
            if isinstance(ev, LinkRejected | SessionFailed):
                raise RuntimeError(f"relay refused the benchmark peer: {ev}")
            self.events.append(ev)


def run_until(peers: list[ControlPeer], done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CONTROL_TIMEOUT_S
    by_fd = {p.sock.fileno(): p for p in peers}
    while True:
        now = time.monotonic()
        for p in peers:
            p.pump(now)
        if done():
            return
        if now > deadline:
            raise TimeoutError(f"relay control plane: no {what} within {CONTROL_TIMEOUT_S} s")
        wait = min(p.link.next_timer() for p in peers) - now
        ready, _, _ = select.select(list(by_fd), [], [], min(max(wait, 0.0), 0.05))
        now = time.monotonic()
        for fd in ready:
            by_fd[fd].read(now)


def open_session(
    relay: Addr,
    relay_key: PublicKey,
    opened: Callable[[ControlPeer, ControlPeer], bool],
    what: str,
    host: str = HOST,
) -> tuple[ControlPeer, ControlPeer]:
    """Register two fresh keys with the relay and request a session from A to B;
    return once ``opened(a, b)`` (``what`` names that state in a timeout)."""
    a, b = ControlPeer(relay_key, relay, host), ControlPeer(relay_key, relay, host)
    try:
        now = time.monotonic()
        a.link.connect(now)
        b.link.connect(now)
        run_until(
            [a, b],
            lambda: a.link.state == b.link.state == LinkState.REGISTERED,
            "registration",
        )
        a.link.request_session(b.public, time.monotonic())
        run_until([a, b], lambda: opened(a, b), what)
    except BaseException:
        a.sock.close()
        b.sock.close()
        raise
    return a, b


def open_wgrelay_pair(relay: Addr, relay_key: PublicKey) -> Pair:
    """Register two fresh keys with the relay and open a session from A to B."""
    a, b = open_session(
        relay,
        relay_key,
        lambda a, b: b.public in a.link.session_of and a.public in b.link.session_of,
        "session",
    )
    sid = a.link.session_of[b.public]
    # blocking again: udpgen sets the mode it wants on the shared file description
    a.sock.setblocking(True)
    b.sock.setblocking(True)

    def close_session() -> None:
        # tell the relay, so repeated runs do not pile up sessions until idle timeout
        with contextlib.suppress(OSError):
            a.link.close_session(b.public, time.monotonic())
            a.flush()

    return Pair(a.sock, b.sock, data_header(sid) + WG_TRANSPORT_PREFIX, close_session)


# ---------------------------------------------------------------- pyforwarder

FWD_REGISTER, FWD_REGISTER_ACK = 0x01, 0x02


def open_forwarder_pair(relay: Addr, session_id: bytes) -> Pair:
    """Register A and B with bench/pyforwarder.py for ``session_id`` (8 bytes)."""
    a, b = _bound_socket(), _bound_socket()
    try:
        for s in (a, b):
            s.settimeout(0.2)
            for _ in range(25):
                s.sendto(bytes((FWD_REGISTER, 0)) + session_id, relay)
                try:
                    reply = s.recv(64)
                except TimeoutError:
                    continue
                if reply == bytes((FWD_REGISTER_ACK, 0)) + session_id:
                    break
            else:
                raise TimeoutError("pyforwarder did not acknowledge the registration")
            s.settimeout(None)
    except BaseException:
        a.close()
        b.close()
        raise
    return Pair(a, b, data_header(session_id) + WG_TRANSPORT_PREFIX)
