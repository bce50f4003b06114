"""The netlink backend: kernel WireGuard through its generic netlink family.

What ``wg`` itself does on Linux, without a ``wg`` process per call: resolve the
generic netlink family "wireguard" through the controller, then
``WG_CMD_GET_DEVICE`` (a dump) to read and ``WG_CMD_SET_DEVICE`` to write. The
attributes are those of include/uapi/linux/wireguard.h, nested like this::

    WGDEVICE_A_IFNAME "wg0", WGDEVICE_A_LISTEN_PORT u16, WGDEVICE_A_FWMARK u32,
    WGDEVICE_A_PRIVATE_KEY / PUBLIC_KEY [32],
    WGDEVICE_A_PEERS {
        0 { WGPEER_A_PUBLIC_KEY [32], WGPEER_A_PRESHARED_KEY [32] (zeros: none),
            WGPEER_A_FLAGS u32 (set only), WGPEER_A_ENDPOINT sockaddr_in|sockaddr_in6,
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL u16,
            WGPEER_A_LAST_HANDSHAKE_TIME { s64 sec, s64 nsec },
            WGPEER_A_RX_BYTES u64, WGPEER_A_TX_BYTES u64, WGPEER_A_PROTOCOL_VERSION u32,
            WGPEER_A_ALLOWEDIPS {
                0 { WGALLOWEDIP_A_FAMILY u16, WGALLOWEDIP_A_IPADDR [4|16],
                    WGALLOWEDIP_A_CIDR_MASK u8 } ... } }
        0 { ... next peer } }

A sockaddr keeps its port (and IPv6 flowinfo) in network byte order, the rest in
host order. The get dump spreads a device over several ``NLM_F_MULTI``
messages; the device attributes come in the first only, and a peer with more
allowed IPs than fit in one message goes on in the next one with its public key
repeated and only the rest of its allowed IPs: such a peer is merged, as
``wg`` does.

Writes: ``WGPEER_F_UPDATE_ONLY`` makes the kernel skip a peer that is gone
instead of creating it again (the ``wg`` tool has no such switch; see
kernel.py). The skip is silent, so ``set_endpoint`` reads first and raises for a
missing peer, as the userspace backend does. ``restart_peer`` is one
``WG_CMD_SET_DEVICE`` message holding two peer entries, remove then add, which
the kernel applies in order under one lock; it validates the attributes of each
entry as it reaches it, so everything is validated here before sending, and
nothing but a failed allocation can leave the peer removed.

Honesty note: the machine this was written on has no WireGuard kernel module
(wireguard-go only), so this backend has not been run against a kernel
WireGuard interface. Its codec is tested against byte layouts built by hand
from the uapi header's attribute numbers, and its error path (family absent)
against the real kernel.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable
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
    read_mtu,
    sort_peers,
)
from wgrelay.mesh.backend.genl import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    FamilyNotFound,
    GenlSocket,
    NetlinkChannel,
    NetlinkError,
    NetlinkMessage,
    attr_dict,
    decode_attrs,
    decode_uint,
    encode_attr,
    encode_genl,
    encode_nested,
    encode_str,
    encode_u8,
    encode_u16,
    encode_u32,
    genl_attrs,
    resolve_family,
    transact,
)

# include/uapi/linux/wireguard.h
WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_KEY_LEN = 32
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1

WGDEVICE_A_IFINDEX = 1  # u32
WGDEVICE_A_IFNAME = 2  # string
WGDEVICE_A_PRIVATE_KEY = 3  # [32]
WGDEVICE_A_PUBLIC_KEY = 4  # [32]
WGDEVICE_A_FLAGS = 5  # u32, WGDEVICE_F_REPLACE_PEERS (never sent here)
WGDEVICE_A_LISTEN_PORT = 6  # u16
WGDEVICE_A_FWMARK = 7  # u32
WGDEVICE_A_PEERS = 8  # nest of nests

WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2

WGPEER_A_PUBLIC_KEY = 1  # [32]
WGPEER_A_PRESHARED_KEY = 2  # [32]
WGPEER_A_FLAGS = 3  # u32
WGPEER_A_ENDPOINT = 4  # struct sockaddr_in (16) or sockaddr_in6 (28)
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5  # u16
WGPEER_A_LAST_HANDSHAKE_TIME = 6  # struct __kernel_timespec: s64 sec, s64 nsec
WGPEER_A_RX_BYTES = 7  # u64
WGPEER_A_TX_BYTES = 8  # u64
WGPEER_A_ALLOWEDIPS = 9  # nest of nests
WGPEER_A_PROTOCOL_VERSION = 10  # u32

WGALLOWEDIP_A_FAMILY = 1  # u16 AF_INET / AF_INET6
WGALLOWEDIP_A_IPADDR = 2  # struct in_addr / in6_addr
WGALLOWEDIP_A_CIDR_MASK = 3  # u8

SOCKADDR_IN = struct.Struct("=H2s4s8x")  # family, port (big-endian), addr, zero
SOCKADDR_IN6 = struct.Struct("=H2s4s16sI")  # family, port (BE), flowinfo (BE), addr, scope
TIMESPEC = struct.Struct("=qq")

DUMP_RETRIES = 3
"""A dump flagged NLM_F_DUMP_INTR saw the peer list change; ask again this often."""

_ZERO_KEY = bytes(WG_KEY_LEN)


# ------------------------------------------------------------------ codec


def encode_sockaddr(endpoint: Endpoint) -> bytes:
    """``WGPEER_A_ENDPOINT``'s payload for an IP-literal endpoint."""
    format_endpoint(endpoint)  # the same validation as the other backends
    host, port = endpoint
    ip = ipaddress.ip_address(host)
    port_be = port.to_bytes(2, "big")
    if isinstance(ip, ipaddress.IPv4Address):
        return SOCKADDR_IN.pack(socket.AF_INET, port_be, ip.packed)
    scope = 0
    if ip.scope_id:
        if ip.scope_id.isdigit():
            scope = int(ip.scope_id)
        else:
            try:
                scope = socket.if_nametoindex(ip.scope_id)
            except OSError:
                raise BackendError(f"endpoint scope {ip.scope_id!r} is not an interface") from None
    addr = ipaddress.IPv6Address(int(ip)).packed
    return SOCKADDR_IN6.pack(socket.AF_INET6, port_be, bytes(4), addr, scope)


def decode_sockaddr(payload: bytes, interface: str) -> Endpoint | None:
    """The endpoint in a ``WGPEER_A_ENDPOINT``; None for an unset (family 0) one."""
    if len(payload) < 2:
        raise BackendError(f"netlink {interface}: endpoint of {len(payload)} bytes")
    (family,) = struct.unpack_from("=H", payload)
    if family == socket.AF_INET and len(payload) == SOCKADDR_IN.size:
        _, port_be, addr = SOCKADDR_IN.unpack(payload)
        return str(ipaddress.IPv4Address(addr)), int.from_bytes(port_be, "big")
    if family == socket.AF_INET6 and len(payload) == SOCKADDR_IN6.size:
        _, port_be, _flow, addr6, scope = SOCKADDR_IN6.unpack(payload)
        host = str(ipaddress.IPv6Address(addr6))
        return (f"{host}%{scope}" if scope else host), int.from_bytes(port_be, "big")
    if family == 0:
        return None
    raise BackendError(f"netlink {interface}: endpoint family {family}, {len(payload)} bytes")


def encode_allowed_ip(cidr: str) -> bytes:
    if not is_cidr(cidr):
        raise BackendError(f"allowed-ip {cidr!r} is not a CIDR")
    net = ipaddress.ip_interface(cidr)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return encode_nested(
        0,
        [
            encode_u16(WGALLOWEDIP_A_FAMILY, family),
            encode_attr(WGALLOWEDIP_A_IPADDR, net.ip.packed),
            encode_u8(WGALLOWEDIP_A_CIDR_MASK, net.network.prefixlen),
        ],
    )


def decode_allowed_ip(payload: bytes, interface: str) -> str:
    attrs = attr_dict(payload)
    family = decode_uint(attrs.get(WGALLOWEDIP_A_FAMILY, b""), 2, "allowed-ip family")
    addr = attrs.get(WGALLOWEDIP_A_IPADDR, b"")
    mask = decode_uint(attrs.get(WGALLOWEDIP_A_CIDR_MASK, b""), 1, "allowed-ip mask")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == socket.AF_INET and len(addr) == 4 and mask <= 32:
        ip = ipaddress.IPv4Address(addr)
    elif family == socket.AF_INET6 and len(addr) == 16 and mask <= 128:
        ip = ipaddress.IPv6Address(addr)
    else:
        raise BackendError(f"netlink {interface}: bad allowed-ip (family {family}, /{mask})")
    return f"{ip}/{mask}"


def _ifname(interface: str) -> bytes:
    check_interface_name(interface)
    return encode_str(WGDEVICE_A_IFNAME, interface)


def encode_get_device(family: int, interface: str, seq: int) -> bytes:
    """The dump request for one device, by name."""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP
    return encode_genl(family, WG_CMD_GET_DEVICE, WG_GENL_VERSION, flags, seq, _ifname(interface))


def encode_set_device(family: int, interface: str, seq: int, peers: list[list[bytes]]) -> bytes:
    """One ``WG_CMD_SET_DEVICE`` request: the kernel applies ``peers`` in order."""
    body = _ifname(interface) + encode_nested(
        WGDEVICE_A_PEERS, [encode_nested(0, attrs) for attrs in peers]
    )
    flags = NLM_F_REQUEST | NLM_F_ACK
    return encode_genl(family, WG_CMD_SET_DEVICE, WG_GENL_VERSION, flags, seq, body)


def _peer_head(peer: PublicKey, flags: int) -> list[bytes]:
    return [encode_attr(WGPEER_A_PUBLIC_KEY, peer.raw), encode_u32(WGPEER_A_FLAGS, flags)]


def _keepalive(seconds: int) -> bytes:
    if not 0 <= seconds <= 0xFFFF:
        raise BackendError(f"persistent keepalive {seconds} out of range 0-65535")
    return encode_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, seconds)


def peers_set_endpoint(peer: PublicKey, endpoint: Endpoint) -> list[list[bytes]]:
    head = _peer_head(peer, WGPEER_F_UPDATE_ONLY)
    return [[*head, encode_attr(WGPEER_A_ENDPOINT, encode_sockaddr(endpoint))]]


def peers_set_keepalive(peer: PublicKey, seconds: int, kick: bool) -> list[list[bytes]]:
    """Through 0 first when kicking: the kernel sends a keepalive when the
    interval goes from 0 to non-zero, and applies the two entries in order."""
    head = _peer_head(peer, WGPEER_F_UPDATE_ONLY)
    entries = [[*head, _keepalive(0)]] if kick and seconds else []
    return [*entries, [*head, _keepalive(seconds)]]


def peers_restart(info: PeerInfo, endpoint: Endpoint, keepalive_s: int) -> list[list[bytes]]:
    """Remove the peer, then add it back as ``info`` says, at ``endpoint``."""
    add = [
        *_peer_head(info.public_key, WGPEER_F_REPLACE_ALLOWEDIPS),
        encode_attr(WGPEER_A_ENDPOINT, encode_sockaddr(endpoint)),
        _keepalive(keepalive_s),
        encode_nested(WGPEER_A_ALLOWEDIPS, [encode_allowed_ip(c) for c in info.allowed_ips]),
    ]
    if info.preshared_key is not None:
        if len(info.preshared_key) != WG_KEY_LEN:
            raise BackendError("preshared key is not 32 bytes")
        add.append(encode_attr(WGPEER_A_PRESHARED_KEY, info.preshared_key))
    return [_peer_head(info.public_key, WGPEER_F_REMOVE_ME), add]


@dataclass(slots=True)
class _PeerBuilder:
    public_key: PublicKey
    endpoint: Endpoint | None = None
    allowed_ips: list[str] = field(default_factory=list)
    handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int = 0
    preshared_key: bytes | None = None

    def build(self) -> PeerInfo:
        return PeerInfo(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips),
            latest_handshake=self.handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            persistent_keepalive=self.keepalive or None,
            preshared_key=self.preshared_key,
        )


def _key(payload: bytes, what: str, interface: str) -> bytes:
    if len(payload) != WG_KEY_LEN:
        raise BackendError(f"netlink {interface}: {what} is {len(payload)} bytes")
    return payload


def _update_peer(b: _PeerBuilder, attrs: dict[int, bytes], interface: str) -> None:
    if WGPEER_A_ENDPOINT in attrs:
        b.endpoint = decode_sockaddr(attrs[WGPEER_A_ENDPOINT], interface)
    if WGPEER_A_LAST_HANDSHAKE_TIME in attrs:
        raw = attrs[WGPEER_A_LAST_HANDSHAKE_TIME]
        if len(raw) != TIMESPEC.size:
            raise BackendError(f"netlink {interface}: handshake time of {len(raw)} bytes")
        sec, nsec = TIMESPEC.unpack(raw)
        b.handshake = sec + nsec / 1e9 if sec or nsec else None
    if WGPEER_A_RX_BYTES in attrs:
        b.rx_bytes = decode_uint(attrs[WGPEER_A_RX_BYTES], 8, "rx bytes")
    if WGPEER_A_TX_BYTES in attrs:
        b.tx_bytes = decode_uint(attrs[WGPEER_A_TX_BYTES], 8, "tx bytes")
    if WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL in attrs:
        b.keepalive = decode_uint(attrs[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL], 2, "keepalive")
    if WGPEER_A_PRESHARED_KEY in attrs:
        psk = _key(attrs[WGPEER_A_PRESHARED_KEY], "preshared key", interface)
        b.preshared_key = psk if psk != _ZERO_KEY else None
    for _, nest in decode_attrs(attrs.get(WGPEER_A_ALLOWEDIPS, b"")):
        b.allowed_ips.append(decode_allowed_ip(nest, interface))


def parse_device(messages: list[NetlinkMessage], interface: str) -> InterfaceInfo:
    """Turn the parts of a ``WG_CMD_GET_DEVICE`` dump into an ``InterfaceInfo``.

    Raises ``BackendError`` on malformed attributes; unknown ones are skipped
    (newer kernels add some).
    """
    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    peers: list[_PeerBuilder] = []
    for msg in messages:
        attrs = attr_dict(genl_attrs(msg))
        if WGDEVICE_A_PRIVATE_KEY in attrs:
            raw = _key(attrs[WGDEVICE_A_PRIVATE_KEY], "private key", interface)
            private_key = PrivateKey(raw) if raw != _ZERO_KEY else None
        if WGDEVICE_A_LISTEN_PORT in attrs:
            listen_port = decode_uint(attrs[WGDEVICE_A_LISTEN_PORT], 2, "listen port") or None
        if WGDEVICE_A_FWMARK in attrs:
            fwmark = decode_uint(attrs[WGDEVICE_A_FWMARK], 4, "fwmark") or None
        for _, peer_nest in decode_attrs(attrs.get(WGDEVICE_A_PEERS, b"")):
            peer_attrs = attr_dict(peer_nest)
            key = PublicKey(_key(peer_attrs.get(WGPEER_A_PUBLIC_KEY, b""), "peer key", interface))
            # a peer whose allowed IPs did not fit goes on in the next part
            if not peers or peers[-1].public_key != key:
                peers.append(_PeerBuilder(key))
            _update_peer(peers[-1], peer_attrs, interface)
    return InterfaceInfo(
        name=interface,
        private_key=private_key,
        public_key=private_key.public_key() if private_key is not None else None,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=sort_peers([p.build() for p in peers]),
    )


# ------------------------------------------------------------------ backend

Connect = Callable[[], NetlinkChannel]


class NetlinkBackend:
    """``WireGuardBackend`` over the kernel's generic netlink family "wireguard".

    ``connect`` opens a channel per call (the real socket by default; tests
    pass an in-memory kernel). The family id is resolved on every call: it
    changes when the module is reloaded, and costs one short exchange.
    """

    name = "netlink"

    def __init__(
        self, *, connect: Connect = GenlSocket, sys_class_net: Path = SYS_CLASS_NET
    ) -> None:
        self._connect = connect
        self._sys_class_net = sys_class_net

    def __repr__(self) -> str:
        return "NetlinkBackend()"

    def read(self, interface: str) -> InterfaceInfo:
        check_interface_name(interface)
        for _ in range(DUMP_RETRIES):
            parts = self._call(interface, lambda fam, seq: encode_get_device(fam, interface, seq))
            if not any(m.flags & NLM_F_DUMP_INTR for m in parts):
                return parse_device(parts, interface)
        raise BackendError(
            f"netlink {interface}: the peer list kept changing during {DUMP_RETRIES} reads"
        )

    def set_endpoint(self, interface: str, peer: PublicKey, endpoint: Endpoint) -> None:
        peers = peers_set_endpoint(peer, endpoint)  # validates before any I/O
        self._require_peer(interface, peer)
        self._set(interface, peers)

    def set_keepalive(
        self, interface: str, peer: PublicKey, seconds: int, kick: bool = False
    ) -> None:
        peers = peers_set_keepalive(peer, seconds, kick)
        self._require_peer(interface, peer)
        self._set(interface, peers)

    def restart_peer(
        self, interface: str, peer: PeerInfo, endpoint: Endpoint, keepalive_s: int
    ) -> None:
        self._set(interface, peers_restart(peer, endpoint, keepalive_s))

    def exists(self, interface: str) -> bool:
        """Whether the family exists and ``interface`` is a kernel WireGuard link.

        False when the module is absent, the device is missing, or it is not a
        WireGuard link (a wireguard-go tun device answers EOPNOTSUPP); other
        failures (no CAP_NET_ADMIN) raise.
        """
        try:
            self.read(interface)
        except FamilyNotFound:
            return False
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.EOPNOTSUPP):
                return False
            raise
        return True

    def mtu(self, interface: str) -> int | None:
        return read_mtu(interface, self._sys_class_net)

    def _require_peer(self, interface: str, peer: PublicKey) -> None:
        if self.read(interface).peer(peer) is None:
            raise BackendError(f"peer {peer.short()} is not on interface {interface}")

    def _set(self, interface: str, peers: list[list[bytes]]) -> None:
        self._call(interface, lambda fam, seq: encode_set_device(fam, interface, seq, peers))

    def _call(self, interface: str, build: Callable[[int, int], bytes]) -> list[NetlinkMessage]:
        """Resolve the family, send one request, return its answer's parts."""
        channel = self._connect()
        try:
            family = resolve_family(channel, WG_GENL_NAME, seq=1)
            return transact(channel, build(family, 2), 2, f"netlink {interface}")
        except NetlinkError as e:
            raise _explain(e, interface) from None
        finally:
            channel.close()


def _explain(e: NetlinkError, interface: str) -> NetlinkError:
    """The kernel's errnos for WireGuard requests, in words a user can act on."""
    why = {
        errno.ENODEV: f"interface {interface} not found",
        errno.EOPNOTSUPP: f"{interface} is not a kernel WireGuard interface",
        errno.EPERM: f"netlink {interface}: operation not permitted (needs CAP_NET_ADMIN)",
    }.get(e.errno)
    if why is None:
        return e
    return NetlinkError(why, e.errno)
