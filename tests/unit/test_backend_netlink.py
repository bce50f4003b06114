"""The netlink backend: its codec against hand-built bytes, its calls against an
in-memory kernel, and its error path against the real kernel.

The byte layouts here are built with literal attribute numbers copied from
include/uapi/linux/wireguard.h and linux/netlink.h, not with the module's
constants, so a wrong constant in the module shows up as a failing test. No
kernel WireGuard module exists on the machines these tests were written on:
the in-memory kernel below is how WG_CMD_GET_DEVICE / WG_CMD_SET_DEVICE are
exercised, and the real kernel is asked only what it can answer (the family is
absent, the controller itself resolves).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgrelay.errors import BackendError
from wgrelay.keys import PrivateKey
from wgrelay.mesh.backend import KernelBackend, NetlinkBackend, PeerInfo, detect_backend
from wgrelay.mesh.backend.genl import (
    FamilyNotFound,
    GenlSocket,
    NetlinkError,
    NetlinkMessage,
    attr_dict,
    decode_attrs,
    resolve_family,
)
from wgrelay.mesh.backend.kernel import CommandFailed
from wgrelay.mesh.backend.netlink import (
    decode_sockaddr,
    encode_set_device,
    encode_sockaddr,
    parse_device,
    peers_set_endpoint,
)

FAMILY = 0x1D
KEY_A = PrivateKey(bytes(range(1, 33))).public_key()
KEY_B = PrivateKey(bytes(range(33, 65))).public_key()
PRIV = PrivateKey(bytes(range(65, 97)))
PSK = bytes(range(100, 132))

# ------------------------------------------------------------ hand encoder


def nla(attr_type: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, attr_type) + payload + bytes(-n % 4)


def nest(attr_type: int, *attrs: bytes) -> bytes:
    return nla(attr_type | 0x8000, b"".join(attrs))  # NLA_F_NESTED, as the kernel sets it


def u8(t: int, v: int) -> bytes:
    return nla(t, struct.pack("=B", v))


def u16(t: int, v: int) -> bytes:
    return nla(t, struct.pack("=H", v))


def u32(t: int, v: int) -> bytes:
    return nla(t, struct.pack("=I", v))


def u64(t: int, v: int) -> bytes:
    return nla(t, struct.pack("=Q", v))


def nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), msg_type, flags, seq, 0) + payload


def genl(cmd: int, attrs: bytes) -> bytes:
    return struct.pack("=BBH", cmd, 1, 0) + attrs


def sockaddr4(ip: str, port: int) -> bytes:
    return struct.pack("=H", 2) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr6(ip: str, port: int, scope: int = 0) -> bytes:
    addr = socket.inet_pton(socket.AF_INET6, ip)
    return struct.pack("=H", 10) + struct.pack("!HI", port, 0) + addr + struct.pack("=I", scope)


def allowed(ip: str, mask: int) -> bytes:
    fam = 10 if ":" in ip else 2
    return nest(0, u16(1, fam), nla(2, socket.inet_pton(fam, ip)), u8(3, mask))


def msg(payload: bytes, flags: int = 0x02) -> NetlinkMessage:
    return NetlinkMessage(FAMILY, flags, 2, payload)


# ------------------------------------------------------------ codec


def test_sockaddr_layouts() -> None:
    assert encode_sockaddr(("192.0.2.7", 51820)) == sockaddr4("192.0.2.7", 51820)
    assert encode_sockaddr(("2001:db8::1", 443)) == sockaddr6("2001:db8::1", 443)
    assert encode_sockaddr(("fe80::1%3", 443)) == sockaddr6("fe80::1", 443, scope=3)
    assert decode_sockaddr(sockaddr6("2001:db8::1", 443), "wg0") == ("2001:db8::1", 443)
    assert decode_sockaddr(sockaddr6("fe80::1", 9, scope=3), "wg0") == ("fe80::1%3", 9)
    assert decode_sockaddr(bytes(16), "wg0") is None  # family 0: no endpoint yet
    with pytest.raises(BackendError, match="endpoint family 2, 12 bytes"):
        decode_sockaddr(sockaddr4("192.0.2.7", 1)[:12], "wg0")
    with pytest.raises(BackendError, match="not an IP address"):
        encode_sockaddr(("relay.example", 1))


def test_set_endpoint_request_golden_bytes() -> None:
    request = encode_set_device(FAMILY, "wg0", 7, peers_set_endpoint(KEY_A, ("192.0.2.7", 51820)))
    peer = nest(0, nla(1, KEY_A.raw), u32(3, 4), nla(4, sockaddr4("192.0.2.7", 51820)))
    body = genl(1, nla(2, b"wg0\0") + nest(8, peer))  # WG_CMD_SET_DEVICE, IFNAME, PEERS
    assert request == nlmsg(FAMILY, 0x01 | 0x04, 7, body)  # REQUEST | ACK


def dump_part_one() -> bytes:
    peer_a = nest(
        0,
        nla(1, KEY_A.raw),
        nla(2, bytes(32)),  # all-zero preshared key: none
        nla(4, sockaddr4("198.51.100.2", 51820)),
        u16(5, 25),
        nla(6, struct.pack("=qq", 1_700_000_000, 500_000_000)),
        u64(7, 1234),
        u64(8, 5678),
        u32(10, 1),
        nest(9, allowed("10.0.0.2", 32)),
        nla(99, b"from a newer kernel"),
    )
    return genl(
        0,
        u16(6, 51820)
        + u32(7, 0)
        + u32(1, 4)
        + nla(2, b"wg0\0")
        + nla(3, PRIV.raw)
        + nla(4, PRIV.public_key().raw)
        + nest(8, peer_a),
    )


def dump_part_two() -> bytes:
    # peer A goes on (key repeated, only the rest of its allowed IPs), then peer B
    more_a = nest(0, nla(1, KEY_A.raw), nest(9, allowed("fd00::2", 128)))
    peer_b = nest(
        0,
        nla(1, KEY_B.raw),
        nla(2, PSK),
        nla(4, sockaddr6("2001:db8::9", 4500)),
        u16(5, 0),
        nla(6, bytes(16)),
        u64(7, 0),
        u64(8, 0),
        nest(9),
    )
    return genl(0, nest(8, more_a, peer_b))


def test_parse_multi_part_dump() -> None:
    info = parse_device([msg(dump_part_one()), msg(dump_part_two())], "wg0")
    assert info.listen_port == 51820
    assert info.fwmark is None
    assert info.private_key == PRIV
    assert info.public_key == PRIV.public_key()
    a, b = (info.peer(KEY_A), info.peer(KEY_B))
    assert a == PeerInfo(
        public_key=KEY_A,
        endpoint=("198.51.100.2", 51820),
        allowed_ips=("10.0.0.2/32", "fd00::2/128"),
        latest_handshake=1_700_000_000.5,
        rx_bytes=1234,
        tx_bytes=5678,
        persistent_keepalive=25,
    )
    assert a is not None
    assert a.preshared_key is None
    assert b is not None
    assert b.endpoint == ("2001:db8::9", 4500)
    assert b.allowed_ips == ()
    assert b.latest_handshake is None
    assert b.persistent_keepalive is None
    assert b.preshared_key == PSK


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (genl(0, struct.pack("=HH", 40, 6) + b"\0\0\0\0"), "bad attribute length 40"),
        (genl(0, u32(6, 1)), "listen port is 4 bytes, expected 2"),
        (genl(0, nest(8, nest(0, nla(1, b"short")))), "peer key is 5 bytes"),
        (
            genl(0, nest(8, nest(0, nla(1, KEY_A.raw), nest(9, nest(0, u16(1, 2), u8(3, 8)))))),
            r"bad allowed-ip \(family 2, /8\)",
        ),
        (b"\0", "shorter than its header"),
    ],
)
def test_malformed_dump_is_a_backend_error(payload: bytes, match: str) -> None:
    with pytest.raises(BackendError, match=match):
        parse_device([msg(payload)], "wg0")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_backend_error(data: bytes) -> None:
    with contextlib.suppress(BackendError):
        parse_device([msg(data)], "wg0")


def _nests(t: int, items: st.SearchStrategy[bytes], n: int) -> st.SearchStrategy[bytes]:
    return st.lists(items, max_size=n).map(lambda xs: nest(t, *xs))


# attribute trees shaped like a dump (device > peers > peer > allowed-ips),
# with random types and payloads at every level: deeper than random bytes reach
_LEAF = st.builds(nla, st.integers(0, 12), st.binary(max_size=40))
_PEER = _nests(0, st.one_of(_LEAF, _nests(9, _nests(0, _LEAF, 4), 3)), 8)
_DEVICE = st.lists(st.one_of(_LEAF, _nests(8, _PEER, 3)), max_size=6).map(
    lambda xs: genl(0, b"".join(xs))
)


@given(st.lists(_DEVICE, min_size=1, max_size=3))
def test_malformed_attribute_trees_raise_only_backend_error(parts: list[bytes]) -> None:
    with contextlib.suppress(BackendError):
        parse_device([msg(p) for p in parts], "wg0")


# ------------------------------------------------------------ in-memory kernel


@dataclass
class FakePeer:
    endpoint: bytes = b""
    keepalive: int = 0
    psk: bytes = bytes(32)
    allowed: list[bytes] = field(default_factory=list)
    rx: int = 0


@dataclass
class FakeKernel:
    """A kernel with the "wireguard" family, answering as wireguard/netlink.c
    does: dumps split so that at most ``per_part`` allowed IPs travel in one
    message, each part its own datagram, ``NLMSG_DONE`` last."""

    family: int | None = FAMILY
    devices: dict[str, dict[bytes, FakePeer]] = field(default_factory=dict)
    not_wireguard: set[str] = field(default_factory=set)
    per_part: int = 2
    intr_dumps: int = 0
    sets: list[list[dict[int, bytes]]] = field(default_factory=list)
    keepalives_sent: int = 0
    channels_closed: int = 0

    def connect(self) -> FakeChannel:
        return FakeChannel(self)

    def handle(self, data: bytes) -> list[bytes]:
        _, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", data)
        payload = data[16:]
        if msg_type == 0x10:  # controller: CTRL_CMD_GETFAMILY
            if self.family is None:
                return [self.error(seq, -errno.ENOENT)]
            return [nlmsg(0x10, 0, seq, genl(1, u16(1, self.family) + nla(2, b"wireguard\0")))]
        assert msg_type == self.family
        cmd, attrs = payload[0], attr_dict(payload[4:])
        name = attrs[2].rstrip(b"\0").decode()
        if name in self.not_wireguard:
            return [self.error(seq, -errno.EOPNOTSUPP)]
        if name not in self.devices:
            return [self.error(seq, -errno.ENODEV)]
        if cmd == 0:
            assert flags & 0x300 == 0x300, "WG_CMD_GET_DEVICE is dump-only"
            return self.dump(self.devices[name], seq)
        entries = [attr_dict(p) for _, p in decode_attrs(attrs[8])]
        self.sets.append(entries)
        for entry in entries:
            self.apply(self.devices[name], entry)
        return [self.error(seq, 0)]

    def apply(self, peers: dict[bytes, FakePeer], entry: dict[int, bytes]) -> None:
        key, flags = entry[1], struct.unpack("=I", entry.get(3, bytes(4)))[0]
        if flags & 1:  # WGPEER_F_REMOVE_ME
            peers.pop(key, None)
            return
        if key not in peers:
            if flags & 4:  # WGPEER_F_UPDATE_ONLY: skipped, silently
                return
            peers[key] = FakePeer()
        peer = peers[key]
        if 4 in entry:
            peer.endpoint = entry[4]
        if 5 in entry:
            new = struct.unpack("=H", entry[5])[0]
            self.keepalives_sent += not peer.keepalive and new > 0
            peer.keepalive = new
        if 2 in entry:
            peer.psk = entry[2]
        if flags & 2:  # WGPEER_F_REPLACE_ALLOWEDIPS
            peer.allowed = []
        peer.allowed += [
            nest(0, *(nla(t, v) for t, v in decode_attrs(p)))
            for _, p in decode_attrs(entry.get(9, b""))
        ]

    def dump(self, peers: dict[bytes, FakePeer], seq: int) -> list[bytes]:
        parts: list[list[bytes]] = [[]]
        budget = self.per_part
        for key, p in peers.items():
            ips = list(p.allowed)
            first = [nla(1, key), nla(2, p.psk), nla(4, p.endpoint), u16(5, p.keepalive)]
            first += [u64(7, p.rx), u64(8, 0), nla(6, bytes(16))]
            while True:
                take, ips = ips[:budget], ips[budget:]
                parts[-1].append(nest(0, *first, nest(9, *take)))
                budget -= len(take)
                first = [nla(1, key)]
                if budget == 0:
                    parts.append([])
                    budget = self.per_part
                if not ips:
                    break
        flags = 0x02 | (0x10 if self.intr_dumps else 0)
        self.intr_dumps = max(0, self.intr_dumps - 1)
        head = u16(6, 51820) + nla(2, b"wg0\0")
        out = [
            nlmsg(FAMILY, flags, seq, genl(0, (head if i == 0 else b"") + nest(8, *part)))
            for i, part in enumerate(parts)
        ]
        return [*out, nlmsg(3, 0x02, seq, struct.pack("=i", 0))]

    @staticmethod
    def error(seq: int, err: int) -> bytes:
        return nlmsg(2, 0, seq, struct.pack("=i", err) + bytes(16))


class FakeChannel:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.pending: deque[bytes] = deque()

    def send(self, data: bytes) -> None:
        self.pending.extend(self.kernel.handle(data))

    def recv(self) -> bytes:
        return self.pending.popleft()

    def close(self) -> None:
        self.kernel.channels_closed += 1


def kernel_with_peers() -> FakeKernel:
    ips = [allowed(f"10.0.0.{i}", 32) for i in range(2, 7)]
    peers = {
        KEY_A.raw: FakePeer(sockaddr4("198.51.100.2", 51820), 25, PSK, ips, rx=99),
        KEY_B.raw: FakePeer(
            sockaddr6("2001:db8::9", 4500), 0, bytes(32), [allowed("fd00::9", 128)]
        ),
    }
    return FakeKernel(devices={"wg0": peers})


def test_read_through_split_dump() -> None:
    kernel = kernel_with_peers()
    info = NetlinkBackend(connect=kernel.connect).read("wg0")
    a = info.peer(KEY_A)
    assert a is not None
    assert a.allowed_ips == tuple(f"10.0.0.{i}/32" for i in range(2, 7))  # over three parts
    assert a.endpoint == ("198.51.100.2", 51820)
    assert a.preshared_key == PSK
    assert info.peer(KEY_B) is not None
    assert info.listen_port == 51820
    assert kernel.channels_closed == 1


def test_interrupted_dump_is_read_again() -> None:
    kernel = kernel_with_peers()
    kernel.intr_dumps = 2
    assert len(NetlinkBackend(connect=kernel.connect).read("wg0").peers) == 2
    kernel.intr_dumps = 3
    with pytest.raises(BackendError, match="kept changing during 3 reads"):
        NetlinkBackend(connect=kernel.connect).read("wg0")


def test_set_endpoint_is_update_only_and_missing_peer_raises() -> None:
    kernel = kernel_with_peers()
    backend = NetlinkBackend(connect=kernel.connect)
    backend.set_endpoint("wg0", KEY_B, ("127.0.0.1", 40001))
    assert kernel.sets[-1] == [
        {1: KEY_B.raw, 3: struct.pack("=I", 4), 4: sockaddr4("127.0.0.1", 40001)}
    ]
    assert backend.read("wg0").peer(KEY_B).endpoint == ("127.0.0.1", 40001)  # type: ignore[union-attr]
    stranger = PrivateKey(bytes(range(2, 34))).public_key()
    with pytest.raises(BackendError, match="is not on interface wg0"):
        backend.set_endpoint("wg0", stranger, ("127.0.0.1", 40001))
    assert len(kernel.sets) == 1
    assert stranger.raw not in kernel.devices["wg0"]


def test_keepalive_kick_goes_through_zero_in_one_message() -> None:
    kernel = kernel_with_peers()
    NetlinkBackend(connect=kernel.connect).set_keepalive("wg0", KEY_A, 5, kick=True)
    assert [e[5] for e in kernel.sets[-1]] == [struct.pack("=H", 0), struct.pack("=H", 5)]
    assert kernel.keepalives_sent == 1


def test_restart_peer_is_one_transaction() -> None:
    kernel = kernel_with_peers()
    backend = NetlinkBackend(connect=kernel.connect)
    before = backend.read("wg0").peer(KEY_A)
    assert before is not None
    assert before.rx_bytes == 99
    closed = kernel.channels_closed
    backend.restart_peer("wg0", before, ("127.0.0.1", 40002), 3)
    assert kernel.channels_closed == closed + 1  # one call, no read first
    [entries] = kernel.sets
    remove, add = entries
    assert remove == {1: KEY_A.raw, 3: struct.pack("=I", 1)}  # WGPEER_F_REMOVE_ME
    assert add[1] == KEY_A.raw
    assert add[2] == PSK
    assert add[4] == sockaddr4("127.0.0.1", 40002)
    assert add[5] == struct.pack("=H", 3)
    after = backend.read("wg0").peer(KEY_A)
    assert after is not None
    assert after.rx_bytes == 0  # a new peer: the session is gone
    assert (after.allowed_ips, after.preshared_key) == (before.allowed_ips, PSK)
    assert after.endpoint == ("127.0.0.1", 40002)
    assert kernel.keepalives_sent == 1


def test_restart_peer_validates_before_sending() -> None:
    kernel = kernel_with_peers()
    backend = NetlinkBackend(connect=kernel.connect)
    peer = backend.read("wg0").peer(KEY_A)
    assert peer is not None
    with pytest.raises(BackendError, match="keepalive 70000 out of range"):
        backend.restart_peer("wg0", peer, ("127.0.0.1", 40002), 70000)
    assert kernel.sets == []
    assert KEY_A.raw in kernel.devices["wg0"]


def test_kernel_errors_in_words() -> None:
    kernel = kernel_with_peers()
    kernel.not_wireguard.add("tun0")
    backend = NetlinkBackend(connect=kernel.connect)
    with pytest.raises(NetlinkError, match=r"^interface wg9 not found$"):
        backend.read("wg9")
    with pytest.raises(BackendError, match="tun0 is not a kernel WireGuard interface"):
        backend.read("tun0")
    assert (backend.exists("wg0"), backend.exists("wg9"), backend.exists("tun0")) == (
        True,
        False,
        False,
    )
    assert not NetlinkBackend(connect=FakeKernel(family=None).connect).exists("wg0")


# ------------------------------------------------------------ real kernel


def test_real_kernel_controller_resolves_itself() -> None:
    channel = GenlSocket()
    try:
        assert resolve_family(channel, "nlctrl", seq=1) == 0x10  # GENL_ID_CTRL
    finally:
        channel.close()


def test_real_kernel_without_wireguard_family() -> None:
    backend = NetlinkBackend()
    with pytest.raises(BackendError) as raised:
        backend.read("wgrnl0")
    if isinstance(raised.value, FamilyNotFound):
        # this machine: no WireGuard module, the controller answers ENOENT
        assert str(raised.value) == (
            "the kernel has no generic netlink family 'wireguard' "
            "(no WireGuard kernel module loaded)"
        )
    else:  # a host with the module: the family resolves, the device is missing
        assert isinstance(raised.value, NetlinkError)
        assert raised.value.errno == errno.ENODEV
    assert backend.exists("wgrnl0") is False


# ------------------------------------------------------------ detection


def wg_knows(*names: str) -> Callable[[Sequence[str]], str]:
    def run(argv: Sequence[str]) -> str:
        if argv[2] in names:
            return "g467oauZY4K9DV71JtXtZ+Mpq4OVoYGjQeiXTCJ+DGg=\n"
        raise CommandFailed("wg show failed (exit 1): No such device", 1, "")

    return run


def test_detect_prefers_netlink_over_the_wg_tool(tmp_path: Path) -> None:
    (tmp_path / "wg0").mkdir()
    kernel = kernel_with_peers()
    backend = detect_backend(
        "wg0",
        socket_dir=tmp_path,
        sys_class_net=tmp_path,
        runner=wg_knows("wg0"),
        netlink=NetlinkBackend(connect=kernel.connect),
    )
    assert isinstance(backend, NetlinkBackend)
    assert backend.name == "netlink"


def test_detect_falls_back_to_the_wg_tool_without_the_family(tmp_path: Path) -> None:
    # the real kernel of this machine: no "wireguard" family (wireguard-go only)
    (tmp_path / "wg0").mkdir()
    backend = detect_backend(
        "wg0", socket_dir=tmp_path, sys_class_net=tmp_path, runner=wg_knows("wg0")
    )
    assert isinstance(backend, KernelBackend)
    tun = kernel_with_peers()
    tun.not_wireguard.add("wg0")  # a tun device (wireguard-go's) answers EOPNOTSUPP
    backend = detect_backend(
        "wg0",
        socket_dir=tmp_path,
        sys_class_net=tmp_path,
        runner=wg_knows("wg0"),
        netlink=NetlinkBackend(connect=tun.connect),
    )
    assert isinstance(backend, KernelBackend)


def test_forced_netlink_says_why_it_cannot(tmp_path: Path) -> None:
    absent = NetlinkBackend(connect=FakeKernel(family=None).connect)
    with pytest.raises(
        BackendError,
        match=r"^interface wg0 not usable by the netlink backend: the kernel has no generic "
        r"netlink family 'wireguard' \(no WireGuard kernel module loaded\)$",
    ):
        detect_backend(
            "wg0", "netlink", socket_dir=tmp_path, sys_class_net=tmp_path, netlink=absent
        )
    present = NetlinkBackend(connect=kernel_with_peers().connect)
    assert detect_backend("wg0", "netlink", socket_dir=tmp_path, netlink=present) is present


def test_cli_up_backend_netlink_is_one_clear_line(tmp_path: Path) -> None:
    argv = ["up", "wgrnl0", "--backend", "netlink", "--state-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "wgrelay", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("wgrelay: error: interface wgrnl0 not usable by the netlink")
    assert len(proc.stderr.strip().splitlines()) == 1
