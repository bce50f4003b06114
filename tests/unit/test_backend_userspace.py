"""The userspace (UAPI) backend: parsing recorded output and a fake daemon on a real socket."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.backend.userspace import (
    UserspaceBackend,
    encode_set_endpoint,
    parse_get_response,
    parse_set_response,
)

# Recorded from wireguard-go 0.0.20230223 (Debian 12) after
#   wg set IF private-key K listen-port 51999 \
#     peer RE3P.. allowed-ips 10.0.0.2/32,fd00::2/128 endpoint 127.0.0.1:51998 \
#       persistent-keepalive 25 \
#     peer NicC.. endpoint [::1]:4000
# with a handshake, counters and an unknown key added to the second peer, and a
# third peer without endpoint. `wg show IF dump` printed the same keys as
#   aJ8mYX7lRhzTTf3YA+W+nhrbO0EMflN+L2njL3k95lE=  (private)
#   g467oauZY4K9DV71JtXtZ+Mpq4OVoYGjQeiXTCJ+DGg=  (public)
PRIVATE_HEX = "689f26617ee5461cd34dfdd803e5be9e1adb3b410c7e537e2f69e32f793de651"
PEER_V6_HEX = "362702e4ab95509ad7ae7437c2555ddb5aa919c86688ebb8b8ab8ec83b876740"
PEER_V4_HEX = "444dcf0e8f97ba10f5f66b51045033df210f603026dc3dad5a31d8f66c7b6802"
PEER_BARE_HEX = "01" * 32
ZERO_HEX = "00" * 32

RECORDED_GET = (
    f"private_key={PRIVATE_HEX}\n"
    "listen_port=51999\n"
    "fwmark=51820\n"
    "future_device_key=whatever\n"
    f"public_key={PEER_V6_HEX}\n"
    f"preshared_key={ZERO_HEX}\n"
    "protocol_version=1\n"
    "endpoint=[::1]:4000\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    f"public_key={PEER_V4_HEX}\n"
    f"preshared_key={ZERO_HEX}\n"
    "protocol_version=1\n"
    "endpoint=127.0.0.1:51998\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=1234\n"
    "rx_bytes=5678\n"
    "persistent_keepalive_interval=25\n"
    "future_peer_key=42\n"
    "allowed_ip=10.0.0.2/32\n"
    "allowed_ip=fd00::2/128\n"
    f"public_key={PEER_BARE_HEX}\n"
    "allowed_ip=10.0.0.3/32\n"
    "errno=0\n"
    "\n"
)


def key(hex_text: str) -> PublicKey:
    return PublicKey(bytes.fromhex(hex_text))


def test_parse_recorded_get_response() -> None:
    info = parse_get_response(RECORDED_GET, "wg0")
    assert info.name == "wg0"
    assert str(info.private_key) == "aJ8mYX7lRhzTTf3YA+W+nhrbO0EMflN+L2njL3k95lE="
    assert str(info.public_key) == "g467oauZY4K9DV71JtXtZ+Mpq4OVoYGjQeiXTCJ+DGg="
    assert info.listen_port == 51999
    assert info.fwmark == 51820
    assert len(info.peers) == 3

    v6 = info.peer(key(PEER_V6_HEX))
    assert v6 is not None
    assert v6.endpoint == ("::1", 4000)
    assert v6.latest_handshake is None
    assert v6.allowed_ips == ()
    assert v6.persistent_keepalive is None
    assert (v6.rx_bytes, v6.tx_bytes) == (0, 0)

    v4 = info.peer(key(PEER_V4_HEX))
    assert v4 is not None
    assert v4.endpoint == ("127.0.0.1", 51998)
    assert v4.latest_handshake == 1_700_000_000.5
    assert v4.allowed_ips == ("10.0.0.2/32", "fd00::2/128")
    assert (v4.rx_bytes, v4.tx_bytes) == (5678, 1234)
    assert v4.persistent_keepalive == 25

    bare = info.peer(key(PEER_BARE_HEX))
    assert bare is not None
    assert bare.endpoint is None
    assert bare.allowed_ips == ("10.0.0.3/32",)


def test_parse_sorts_peers_by_key() -> None:
    keys = [p.public_key.raw for p in parse_get_response(RECORDED_GET, "wg0").peers]
    assert keys == sorted(keys)


def test_parse_unconfigured_device() -> None:
    # What a fresh `wireguard-go IF` answers: no key, a random port, no peers.
    info = parse_get_response("listen_port=33211\nerrno=0\n\n", "wg0")
    assert info.private_key is None
    assert info.public_key is None
    assert info.listen_port == 33211
    assert info.fwmark is None
    assert info.peers == ()


def test_nonzero_errno_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="errno=-22"):
        parse_get_response("errno=-22\n\n", "wg0")
    with pytest.raises(BackendError, match="errno=-22"):
        parse_set_response("errno=-22\n\n", "wg0")
    parse_set_response("errno=0\n\n", "wg0")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ("listen_port=1\nerrno=0\n", "not terminated"),
        ("listen_port=1\n\n", "does not end with errno"),
        ("errno=0\nlisten_port=1\n\n", "does not end with errno"),
        ("errno=zero\n\n", "bad errno"),
        ("listen_port=abc\nerrno=0\n\n", "'listen_port=abc'"),
        ("listen_port=-1\nerrno=0\n\n", "bad number"),
        ("listen_port=70000\nerrno=0\n\n", "out of range"),
        ("garbage\nerrno=0\n\n", "'garbage'"),
        (f"public_key={PEER_V4_HEX}\nendpoint=nowhere\nerrno=0\n\n", "'endpoint=nowhere'"),
        (f"public_key={PEER_V4_HEX}\nallowed_ip=10.0.0.300/32\nerrno=0\n\n", "bad CIDR"),
        (f"public_key={PEER_V4_HEX}\nrx_bytes=1e9\nerrno=0\n\n", "'rx_bytes=1e9'"),
        ("public_key=abcd\nerrno=0\n\n", "bad hex key"),
    ],
)
def test_malformed_responses_name_the_line(response: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        parse_get_response(response, "wg0")


def test_malformed_private_key_is_not_echoed() -> None:
    secret = PRIVATE_HEX[:-1] + "z"
    with pytest.raises(BackendError, match="redacted") as info:
        parse_get_response(f"private_key={secret}\nerrno=0\n\n", "wg0")
    assert secret not in str(info.value)


@given(st.text(alphabet=st.sampled_from("=\n_0123456789abcdefkeyporti:[]./-"), max_size=300))
def test_garbage_raises_only_backend_error(text: str) -> None:
    with contextlib.suppress(BackendError):
        parse_get_response(text, "wg0")


def test_encode_set_endpoint_is_update_only() -> None:
    request = encode_set_endpoint(key(PEER_V6_HEX), ("fd00::1", 51820))
    assert (
        request
        == (
            f"set=1\npublic_key={PEER_V6_HEX}\nupdate_only=true\nendpoint=[fd00::1]:51820\n\n"
        ).encode()
    )


# --------------------------------------------------------- a fake daemon


Handler = Callable[[bytes], bytes | None]
"""Maps one request to its reply; None means never answer."""


class FakeUapiDaemon:
    """A UAPI server on a real unix socket, served from a thread.

    Like wireguard-go it keeps reading requests on a connection until EOF.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.requests: list[bytes] = []
        self._handler = handler
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        # Short timeouts only bound how long close() waits for the thread.
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            buf += chunk
            while b"\n\n" in buf:
                request, buf = buf.split(b"\n\n", 1)
                self.requests.append(request + b"\n\n")
                reply = self._handler(request + b"\n\n")
                if reply is None:
                    self._stop.wait()  # a hung daemon: hold the connection open
                    return
                conn.sendall(reply)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[Handler], FakeUapiDaemon]]:
    started: list[FakeUapiDaemon] = []

    def start(handler: Handler) -> FakeUapiDaemon:
        d = FakeUapiDaemon(tmp_path / "wg0.sock", handler)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def stateful_handler() -> Handler:
    """Answers get with RECORDED_GET, and applies set endpoint requests to it."""
    state = {"text": RECORDED_GET}

    def handle(request: bytes) -> bytes:
        text = request.decode()
        if text == "get=1\n\n":
            return state["text"].encode()
        lines = dict(line.split("=", 1) for line in text.strip().split("\n"))
        assert lines["update_only"] == "true"
        # Rewrite the endpoint line of that peer (peer blocks start at public_key=).
        blocks = state["text"].split("public_key=")
        for i, block in enumerate(blocks[1:], start=1):
            if block.startswith(lines["public_key"]):
                kept = [ln for ln in block.split("\n") if not ln.startswith("endpoint=")]
                kept.insert(1, f"endpoint={lines['endpoint']}")
                blocks[i] = "\n".join(kept)
        state["text"] = "public_key=".join(blocks)
        return b"errno=0\n\n"

    return handle


def test_read_over_a_socket(tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]) -> None:
    d = daemon(lambda _req: RECORDED_GET.encode())
    info = UserspaceBackend(socket_dir=tmp_path).read("wg0")
    assert info == parse_get_response(RECORDED_GET, "wg0")
    assert d.requests == [b"get=1\n\n"]


def test_read_survives_byte_by_byte_delivery(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    class Trickle(FakeUapiDaemon):
        def _handle(self, conn: socket.socket) -> None:
            conn.recv(4096)
            for b in RECORDED_GET.encode():
                conn.sendall(bytes([b]))

    d = Trickle(tmp_path / "wg0.sock", lambda _r: None)
    try:
        assert UserspaceBackend(socket_dir=tmp_path).read("wg0").listen_port == 51999
    finally:
        d.close()


def test_set_endpoint_round_trip(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    d = daemon(stateful_handler())
    backend = UserspaceBackend(socket_dir=tmp_path)
    before = backend.read("wg0")
    backend.set_endpoint("wg0", key(PEER_V4_HEX), ("127.0.0.1", 40000))
    after = backend.read("wg0")

    moved = after.peer(key(PEER_V4_HEX))
    old = before.peer(key(PEER_V4_HEX))
    assert moved is not None
    assert old is not None
    assert moved.endpoint == ("127.0.0.1", 40000)
    assert moved.allowed_ips == old.allowed_ips
    assert after.peer(key(PEER_V6_HEX)) == before.peer(key(PEER_V6_HEX))
    get = b"get=1\n\n"
    set_request = encode_set_endpoint(key(PEER_V4_HEX), ("127.0.0.1", 40000))
    # read, (set_endpoint: existence check, set), read
    assert d.requests == [get, get, set_request, get]


def test_set_endpoint_for_missing_peer_raises_without_writing(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    d = daemon(stateful_handler())
    with pytest.raises(BackendError, match="not on interface wg0"):
        UserspaceBackend(socket_dir=tmp_path).set_endpoint("wg0", key("02" * 32), ("127.0.0.1", 1))
    assert d.requests == [b"get=1\n\n"]


def test_set_endpoint_errno_is_a_backend_error(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    daemon(lambda req: RECORDED_GET.encode() if req == b"get=1\n\n" else b"errno=-22\n\n")
    with pytest.raises(BackendError, match="errno=-22"):
        UserspaceBackend(socket_dir=tmp_path).set_endpoint(
            "wg0", key(PEER_V4_HEX), ("127.0.0.1", 1)
        )


def test_hung_daemon_times_out_quickly(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    daemon(lambda _req: None)
    backend = UserspaceBackend(socket_dir=tmp_path, timeout_s=0.2)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer to get within 0\.2s"):
        backend.read("wg0")
    assert time.monotonic() - start < 2


def test_daemon_closing_mid_response(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    class HalfAnswer(FakeUapiDaemon):
        def _handle(self, conn: socket.socket) -> None:
            conn.recv(4096)
            conn.sendall(b"listen_port=1\n")

    d = HalfAnswer(tmp_path / "wg0.sock", lambda _r: None)
    try:
        with pytest.raises(BackendError, match="closed the connection"):
            UserspaceBackend(socket_dir=tmp_path).read("wg0")
    finally:
        d.close()


def test_oversized_response_is_refused(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    daemon(lambda _req: RECORDED_GET.encode())
    with pytest.raises(BackendError, match="exceeds 100 bytes"):
        UserspaceBackend(socket_dir=tmp_path, max_response_bytes=100).read("wg0")


def test_missing_socket(tmp_path: Path) -> None:
    backend = UserspaceBackend(socket_dir=tmp_path)
    assert not backend.exists("wg0")
    with pytest.raises(BackendError, match=r"interface wg0 not found \(no socket"):
        backend.read("wg0")


def test_stale_socket_of_a_dead_daemon(tmp_path: Path) -> None:
    # A bound but never listening socket refuses connections, like the file a
    # SIGKILLed wireguard-go leaves behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(tmp_path / "wg0.sock"))
        backend = UserspaceBackend(socket_dir=tmp_path)
        assert not backend.exists("wg0")
        with pytest.raises(BackendError, match="daemon not running"):
            backend.read("wg0")


def test_exists_with_a_live_daemon(
    tmp_path: Path, daemon: Callable[[Handler], FakeUapiDaemon]
) -> None:
    daemon(lambda _req: b"errno=0\n\n")
    assert UserspaceBackend(socket_dir=tmp_path).exists("wg0")


def test_bad_interface_name_never_reaches_the_filesystem(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="invalid interface name"):
        UserspaceBackend(socket_dir=tmp_path).read("../wg0")


def test_mtu_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "wg0").mkdir()
    (tmp_path / "wg0" / "mtu").write_text("1380\n")
    backend = UserspaceBackend(socket_dir=tmp_path, sys_class_net=tmp_path)
    assert backend.mtu("wg0") == 1380
    assert backend.mtu("wg1") is None


def test_private_key_not_in_repr() -> None:
    info = parse_get_response(RECORDED_GET, "wg0")
    assert "aJ8mYX7l" not in repr(info)
    assert PRIVATE_HEX not in repr(info)
    assert isinstance(info.private_key, PrivateKey)


def test_encode_set_keepalive_kick_passes_through_zero() -> None:
    from wgrelay.mesh.backend.userspace import encode_set_keepalive

    key = PrivateKey.generate().public_key()
    text = encode_set_keepalive(key, 25, kick=True).decode()
    assert text == (
        f"set=1\npublic_key={key.raw.hex()}\nupdate_only=true\n"
        "persistent_keepalive_interval=0\npersistent_keepalive_interval=25\n\n"
    )
    assert "=0\n" not in encode_set_keepalive(key, 25, kick=False).decode()
