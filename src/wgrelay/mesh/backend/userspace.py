"""The userspace backend: the cross-platform UAPI of wireguard-go and friends.

Protocol (https://www.wireguard.com/xplatform/), over a unix stream socket
``/var/run/wireguard/<iface>.sock``; every request and every response ends with
an empty line::

    -> get=1\\n\\n
    <- private_key=<hex>\\n listen_port=N\\n [fwmark=N\\n]
       public_key=<hex>\\n            (starts a peer; every later key belongs to it)
       preshared_key=<hex>\\n protocol_version=1\\n [endpoint=IP:PORT | [V6]:PORT\\n]
       last_handshake_time_sec=N\\n last_handshake_time_nsec=N\\n
       tx_bytes=N\\n rx_bytes=N\\n persistent_keepalive_interval=N\\n
       allowed_ip=CIDR\\n ...        (repeated, possibly absent)
       ...                          (next peer)
       errno=0\\n\\n

    -> set=1\\n public_key=<hex>\\n update_only=true\\n endpoint=IP:PORT\\n\\n
    <- errno=0\\n\\n

Keys are hex, not base64. The device's own public key is not reported (we
derive it from the private key), zero values of ``private_key``, ``listen_port``
and ``fwmark`` are left out, and errno is negative on failure (wireguard-go
answers ``errno=-22`` for EINVAL). An unknown operation makes wireguard-go
close the connection without any answer.

``update_only=true`` makes the daemon ignore the peer if it no longer exists
instead of creating it. It ignores it *silently*, so ``set_endpoint`` reads
first and raises if the peer is gone: the agent must learn that, not believe
it moved a peer nobody has.

Parsing is a pure function over the response text (no socket), so it is
tested on recorded output; the socket layer adds a total deadline (a hung daemon
costs at most ``timeout_s``) and a size bound.
"""

from __future__ import annotations

import re
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from wgrelay.endpoint import Endpoint
from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey, PublicKey
from wgrelay.mesh.backend.base import (
    SYS_CLASS_NET,
    InterfaceInfo,
    PeerInfo,
    check_interface_name,
    format_endpoint,
    is_cidr,
    parse_endpoint,
    read_mtu,
    sort_peers,
)

DEFAULT_SOCKET_DIR = Path("/var/run/wireguard")
DEFAULT_TIMEOUT_S = 5.0
"""A healthy daemon answers in milliseconds; this only bounds a hung one."""
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A peer costs ~450 bytes plus ~25 per allowed IP: room for tens of thousands."""
RECV_CHUNK_BYTES = 65536

_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_UINT_RE = re.compile(r"[0-9]{1,20}")
_ERRNO_RE = re.compile(r"-?[0-9]{1,10}")
_ZERO_KEY = bytes(32)
# Values we never echo into an error message, even when malformed.
_SECRET_KEYS = frozenset({"private_key", "preshared_key"})


def socket_path(interface: str, socket_dir: Path = DEFAULT_SOCKET_DIR) -> Path:
    check_interface_name(interface)
    return socket_dir / f"{interface}.sock"


# ------------------------------------------------------------------ codec


def encode_get() -> bytes:
    return b"get=1\n\n"


def encode_set_endpoint(peer: PublicKey, endpoint: Endpoint) -> bytes:
    """A set request that changes one peer's endpoint and nothing else."""
    return (
        f"set=1\npublic_key={peer.raw.hex()}\nupdate_only=true\n"
        f"endpoint={format_endpoint(endpoint)}\n\n"
    ).encode("ascii")


def encode_restart_peer(info: PeerInfo, endpoint: Endpoint, keepalive_s: int) -> bytes:
    """One set transaction: remove ``info``'s peer, then add it back as it
    was, at ``endpoint`` (wireguard-go applies a request's peer sections in
    order, and none of it when a line is refused)."""
    if not 0 <= keepalive_s <= 0xFFFF:
        raise BackendError(f"persistent keepalive {keepalive_s} out of range 0-65535")
    key = info.public_key.raw.hex()
    lines = [f"set=1\npublic_key={key}\nremove=true\npublic_key={key}\n"]
    if info.preshared_key is not None:
        lines.append(f"preshared_key={info.preshared_key.hex()}\n")
    lines.append(f"endpoint={format_endpoint(endpoint)}\n")
    lines.append(f"persistent_keepalive_interval={keepalive_s}\n")
    lines += [f"allowed_ip={cidr}\n" for cidr in info.allowed_ips]
    lines.append("\n")
    return "".join(lines).encode("ascii")


def encode_set_keepalive(peer: PublicKey, seconds: int, kick: bool) -> bytes:
    """One transaction: through 0 first when kicking (wireguard-go sends a
    keepalive when the interval goes from 0 to non-zero)."""
    if not 0 <= seconds <= 0xFFFF:
        raise BackendError(f"persistent keepalive {seconds} out of range 0-65535")
    lines = [f"set=1\npublic_key={peer.raw.hex()}\nupdate_only=true\n"]
    if kick and seconds:
        lines.append("persistent_keepalive_interval=0\n")
    lines.append(f"persistent_keepalive_interval={seconds}\n\n")
    return "".join(lines).encode("ascii")


@dataclass(slots=True)
class _PeerBuilder:
    public_key: PublicKey
    endpoint: Endpoint | None = None
    allowed_ips: list[str] = field(default_factory=list)
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int = 0
    preshared_key: bytes | None = None

    def build(self) -> PeerInfo:
        handshake = None
        if self.handshake_sec or self.handshake_nsec:
            handshake = self.handshake_sec + self.handshake_nsec / 1e9
        return PeerInfo(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips),
            latest_handshake=handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            persistent_keepalive=self.keepalive or None,
            preshared_key=self.preshared_key,
        )


def _bad_line(interface: str, key: str, line: str, why: str) -> BackendError:
    shown = f"{key}=<redacted>" if key in _SECRET_KEYS else line
    return BackendError(f"UAPI {interface}: {why} in line {shown[:120]!r}")


def _split_lines(text: str, interface: str) -> list[tuple[str, str, str]]:
    """(key, value, line) for every line, after checking the errno trailer."""
    if not text.endswith("\n\n"):
        raise BackendError(f"UAPI {interface}: response not terminated by an empty line")
    lines = text[:-2].split("\n")
    out: list[tuple[str, str, str]] = []
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise _bad_line(interface, key, line, "no key=value")
        out.append((key, value, line))
    key, value, line = out[-1]
    if key != "errno":
        raise BackendError(f"UAPI {interface}: response does not end with errno=")
    if not _ERRNO_RE.fullmatch(value):
        raise _bad_line(interface, key, line, "bad errno")
    errno = int(value)
    if errno != 0:
        raise BackendError(f"UAPI {interface}: daemon answered errno={errno}")
    return out[:-1]


def parse_set_response(text: str, interface: str) -> None:
    """Accept ``errno=0``; raise ``BackendError`` for anything else."""
    if _split_lines(text, interface):
        raise BackendError(f"UAPI {interface}: unexpected lines before errno in set response")


def parse_get_response(text: str, interface: str) -> InterfaceInfo:
    """Turn a ``get=1`` response into an ``InterfaceInfo``.

    Unknown keys are skipped (newer daemons add some); known keys with
    malformed values raise ``BackendError`` naming the line.
    """
    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    peers: list[PeerInfo] = []
    current: _PeerBuilder | None = None

    def uint(key: str, value: str, line: str) -> int:
        if not _UINT_RE.fullmatch(value):
            raise _bad_line(interface, key, line, "bad number")
        return int(value)

    def hex_key(key: str, value: str, line: str) -> bytes:
        if not _HEX_KEY_RE.fullmatch(value):
            raise _bad_line(interface, key, line, "bad hex key")
        return bytes.fromhex(value)

    for key, value, line in _split_lines(text, interface):
        if key == "public_key":
            if current is not None:
                peers.append(current.build())
            current = _PeerBuilder(PublicKey(hex_key(key, value, line)))
        elif current is None:
            if key == "private_key":
                raw = hex_key(key, value, line)
                private_key = PrivateKey(raw) if raw != _ZERO_KEY else None
            elif key == "listen_port":
                listen_port = uint(key, value, line) or None
            elif key == "fwmark":
                fwmark = uint(key, value, line) or None
        elif key == "endpoint":
            try:
                current.endpoint = parse_endpoint(value)
            except ValueError as e:
                raise _bad_line(interface, key, line, str(e)) from None
        elif key == "allowed_ip":
            if not is_cidr(value):
                raise _bad_line(interface, key, line, "bad CIDR")
            current.allowed_ips.append(value)
        elif key == "last_handshake_time_sec":
            current.handshake_sec = uint(key, value, line)
        elif key == "last_handshake_time_nsec":
            current.handshake_nsec = uint(key, value, line)
        elif key == "rx_bytes":
            current.rx_bytes = uint(key, value, line)
        elif key == "tx_bytes":
            current.tx_bytes = uint(key, value, line)
        elif key == "persistent_keepalive_interval":
            current.keepalive = uint(key, value, line)
        elif key == "preshared_key":
            psk = hex_key(key, value, line)
            current.preshared_key = psk if psk != _ZERO_KEY else None
    if current is not None:
        peers.append(current.build())
    if listen_port is not None and listen_port > 0xFFFF:
        raise BackendError(f"UAPI {interface}: listen_port {listen_port} out of range")
    return InterfaceInfo(
        name=interface,
        private_key=private_key,
        public_key=private_key.public_key() if private_key is not None else None,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=sort_peers(peers),
    )


# ------------------------------------------------------------------ backend


class UserspaceBackend:
    """``WireGuardBackend`` over the UAPI socket of a userspace implementation."""

    name = "userspace"

    def __init__(
        self,
        *,
        socket_dir: Path = DEFAULT_SOCKET_DIR,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        sys_class_net: Path = SYS_CLASS_NET,
    ) -> None:
        self._socket_dir = socket_dir
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._sys_class_net = sys_class_net

    def __repr__(self) -> str:
        return f"UserspaceBackend(socket_dir={str(self._socket_dir)!r})"

    def read(self, interface: str) -> InterfaceInfo:
        return parse_get_response(self._exchange(interface, encode_get()), interface)

    def set_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint) -> None:
        request = encode_set_endpoint(peer, endpoint)  # validates before any I/O
        if self.read(interface).peer(peer) is None:
            raise BackendError(f"peer {peer.short()} is not on interface {interface}")
        parse_set_response(self._exchange(interface, request), interface)

    def set_keepalive(
        self, interface: str, peer: PublicKey, seconds: int, kick: bool = False
    ) -> None:
        request = encode_set_keepalive(peer, seconds, kick)
        if self.read(interface).peer(peer) is None:
            raise BackendError(f"peer {peer.short()} is not on interface {interface}")
        parse_set_response(self._exchange(interface, request), interface)

    def restart_peer(
        self, interface: str, peer: PeerInfo, endpoint: Endpoint, keepalive_s: int
    ) -> None:
        request = encode_restart_peer(peer, endpoint, keepalive_s)
        parse_set_response(self._exchange(interface, request), interface)

    def exists(self, interface: str) -> bool:
        """True if a daemon accepts connections on the interface's socket.

        Connecting (not just finding the file) tells a live daemon from the
        socket a killed one left behind.
        """
        path = socket_path(interface, self._socket_dir)
        try:
            if not stat.S_ISSOCK(path.stat().st_mode):
                return False
        except OSError:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(str(path))
        except OSError:
            return False
        return True

    def mtu(self, interface: str) -> int | None:
        return read_mtu(interface, self._sys_class_net)

    def _exchange(self, interface: str, request: bytes) -> str:
        """Send one request, return the response up to its empty line.

        One deadline covers connect, send and every recv, so a daemon that
        trickles bytes cannot stretch the wait past ``timeout_s``.
        """
        path = socket_path(interface, self._socket_dir)
        deadline = time.monotonic() + self._timeout_s
        op = request.split(b"=", 1)[0].decode("ascii")
        buf = bytearray()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(str(path))
                sock.settimeout(_remaining(deadline))
                sock.sendall(request)
                while not buf.endswith(b"\n\n"):
                    sock.settimeout(_remaining(deadline))
                    chunk = sock.recv(RECV_CHUNK_BYTES)
                    if not chunk:
                        raise BackendError(
                            f"UAPI {interface}: daemon closed the connection mid-response ({op})"
                        )
                    buf += chunk
                    if len(buf) > self._max_response_bytes:
                        raise BackendError(
                            f"UAPI {interface}: response exceeds {self._max_response_bytes} bytes"
                        )
        except TimeoutError:
            raise BackendError(
                f"UAPI {interface}: no answer to {op} within {self._timeout_s:g}s"
            ) from None
        except FileNotFoundError:
            raise BackendError(f"interface {interface} not found (no socket {path})") from None
        except ConnectionRefusedError:
            raise BackendError(
                f"UAPI {interface}: nothing listens on {path} (daemon not running?)"
            ) from None
        except OSError as e:
            raise BackendError(f"UAPI {interface}: {path}: {e.strerror or e}") from None
        try:
            return buf.decode("utf-8")
        except UnicodeDecodeError:
            raise BackendError(f"UAPI {interface}: response is not UTF-8") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left
